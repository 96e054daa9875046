"""The mail plugin against a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import ssl
from dataclasses import dataclass, field

import pytest
import queuecore_mail
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from queuecore import Status

PASSWORD = "hunter2-never-shown"


@dataclass
class Inbox:
    """What the server received, and scripted answers to RCPT TO / DATA (consumed in order)."""

    host: str = "127.0.0.1"
    port: int = 0
    messages: list = field(default_factory=list)
    rcpt_answers: dict = field(default_factory=dict)  # address -> list of answers
    data_answers: list = field(default_factory=list)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        answers = self.rcpt_answers.get(address)
        if answers:
            answer = answers.pop(0)
            if not answer.startswith("250"):
                return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_answers:
            return self.data_answers.pop(0)
        parsed = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), parsed))
        return "250 Message accepted"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(inbox, port=None, **options):
    inbox.port = port or free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=inbox.port, **options)
    controller.start()
    return controller


@pytest.fixture
def inbox(monkeypatch):
    box = Inbox()
    controller = start_server(box)
    monkeypatch.setenv("QUEUECORE_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("QUEUECORE_SMTP_PORT", str(box.port))
    yield box
    controller.stop()


@pytest.fixture
def harness(queuecore_harness, monkeypatch):
    for name in ("HOST", "PORT", "USER", "PASSWORD", "STARTTLS", "TLS", "CAFILE", "FROM", "TIMEOUT"):
        monkeypatch.delenv(f"QUEUECORE_SMTP_{name}", raising=False)
    monkeypatch.setenv("QUEUECORE_SMTP_FROM", "Queue <queue@example.org>")
    queuecore_harness.register("mail", queuecore_mail)
    return queuecore_harness


def mail(to="ann@example.com", subject="Hello", body="Hi there.\n", **extra):
    return ("mail", {"to": to, "subject": subject, "body": body, **extra})


def test_sends_utf8_mail_with_headers(harness, inbox):
    subject = "Café ✓ — größer"
    body = "Grüße aus Zürich.\nLine two: 日本語\n"
    [item] = harness.run_items(mail(["ann@example.com", "Bob <bob@example.com>"], subject, body))
    assert item.status is Status.DONE
    assert item.results == {"mail": True}
    [(mail_from, rcpts, message)] = inbox.messages
    assert mail_from == "queue@example.org"
    assert rcpts == ["ann@example.com", "bob@example.com"]
    assert message["Subject"] == subject
    assert message.get_content().replace("\r\n", "\n") == body
    assert message.get_content_charset() == "utf-8"
    assert message["From"] == "Queue <queue@example.org>"
    assert message["To"] == "ann@example.com, Bob <bob@example.com>"
    assert message["Message-ID"].startswith(f"<queuecore.{item.id}.") and message["Message-ID"].endswith("@example.org>")
    assert message["Date"].datetime.replace(tzinfo=None) == item.creation_dtime.replace(microsecond=0)


def test_from_in_payload_wins(harness, inbox):
    [item] = harness.run_items(mail(**{"from": "ops@example.net"}))
    assert item.status is Status.DONE
    assert inbox.messages[0][0] == "ops@example.net"


def test_not_our_type(harness, inbox):
    [item] = harness.run_items(("webhook", {"to": "ann@example.com"}))
    assert inbox.messages == []
    assert "mail" not in item.results


def test_greylisted_recipient_is_retried_then_delivered(harness, inbox):
    inbox.rcpt_answers["ann@example.com"] = ["451 4.7.1 Greylisted, try again later"]
    item = harness.enqueue(*mail())
    [item] = harness.run_items(item)
    assert item.status is Status.NEED_RETRY
    assert item.results == {"mail": False}
    assert "451 4.7.1 Greylisted" in item.errors["mail"]
    assert item.errors["mail"].startswith("DeliveryError: SMTP 127.0.0.1:")
    [item] = harness.run_items(item)
    assert item.status is Status.DONE and item.errors == {}
    assert len(inbox.messages) == 1


def test_unknown_recipient_is_permanent(harness, inbox):
    inbox.rcpt_answers["nobody@example.com"] = ["550 5.1.1 No such user"]
    [item] = harness.run_items(mail("nobody@example.com"))
    assert item.status is Status.ERROR and item.trials == 1
    assert item.errors["mail"] == (
        f"PermanentError: SMTP 127.0.0.1:{inbox.port} refused every recipient: nobody@example.com: 550 5.1.1 No such user"
    )


def test_partly_refused_is_permanent_and_says_who_got_it(harness, inbox):
    inbox.rcpt_answers["gone@example.com"] = ["550 5.1.1 No such user"]
    [item] = harness.run_items(mail(["ann@example.com", "gone@example.com"]))
    assert item.status is Status.ERROR
    assert "accepted the mail for ann@example.com but refused gone@example.com: 550" in item.errors["mail"]
    assert len(inbox.messages) == 1


def test_data_4xx_retried_and_5xx_permanent(harness, inbox):
    inbox.data_answers[:] = ["452 4.3.1 Insufficient system storage"]
    [item] = harness.run_items(mail())
    assert item.status is Status.NEED_RETRY and "452 4.3.1" in item.errors["mail"]
    inbox.data_answers[:] = ["554 5.7.1 Message rejected as spam"]
    [item] = harness.run_items(item)
    assert item.status is Status.ERROR and "554 5.7.1 Message rejected as spam" in item.errors["mail"]


def test_connection_refused_is_retried_until_the_server_is_up(harness, monkeypatch):
    port = free_port()
    monkeypatch.setenv("QUEUECORE_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("QUEUECORE_SMTP_PORT", str(port))
    item = harness.enqueue(*mail())
    [item] = harness.run_items(item)
    assert item.status is Status.NEED_RETRY
    assert item.errors["mail"] == f"DeliveryError: SMTP 127.0.0.1:{port}: connection refused"
    box = Inbox()
    controller = start_server(box, port)
    try:
        [item] = harness.run_items(item)
    finally:
        controller.stop()
    assert item.status is Status.DONE
    assert len(box.messages) == 1


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_login(harness, inbox, monkeypatch):
    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append(auth_data.login)
        ok = auth_data.login == b"queue" and auth_data.password == PASSWORD.encode()
        return AuthResult(success=ok, handled=False)

    box = Inbox()
    controller = start_server(box, authenticator=authenticator, auth_require_tls=False)
    try:
        monkeypatch.setenv("QUEUECORE_SMTP_PORT", str(box.port))
        monkeypatch.setenv("QUEUECORE_SMTP_USER", "queue")
        monkeypatch.setenv("QUEUECORE_SMTP_PASSWORD", PASSWORD)
        [item] = harness.run_items(mail())
        assert item.status is Status.DONE
        assert len(box.messages) == 1 and logins == [b"queue"]

        monkeypatch.setenv("QUEUECORE_SMTP_PASSWORD", "wrong-" + PASSWORD)
        [item] = harness.run_items(mail())
    finally:
        controller.stop()
    # 535 is a 5xx answer: permanent, with a hint, and without the password.
    assert item.status is Status.ERROR
    assert "535" in item.errors["mail"] and "QUEUECORE_SMTP_PASSWORD" in item.errors["mail"]
    assert PASSWORD not in json.dumps(item.to_dict())


def test_starttls_required_but_not_offered(harness, inbox, monkeypatch):
    monkeypatch.setenv("QUEUECORE_SMTP_STARTTLS", "1")
    [item] = harness.run_items(mail())
    assert item.status is Status.NEED_RETRY
    assert "STARTTLS" in item.errors["mail"]
    assert inbox.messages == []


@pytest.fixture
def certificates(tmp_path):
    """A private CA, a server context with a certificate it signed for 127.0.0.1, and the CA's PEM file."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    return server_context, str(cafile)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_implicit_tls_with_login(harness, certificates, monkeypatch):
    server_context, cafile = certificates
    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append(auth_data.login)
        return AuthResult(success=auth_data.password == PASSWORD.encode(), handled=False)

    box = Inbox()
    # aiosmtpd offers AUTH only after its own STARTTLS unless told otherwise;
    # this connection is TLS from the first byte.
    controller = start_server(box, ssl_context=server_context, authenticator=authenticator, auth_require_tls=False)
    try:
        monkeypatch.setenv("QUEUECORE_SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("QUEUECORE_SMTP_PORT", str(box.port))
        monkeypatch.setenv("QUEUECORE_SMTP_TLS", "1")
        monkeypatch.setenv("QUEUECORE_SMTP_CAFILE", cafile)
        monkeypatch.setenv("QUEUECORE_SMTP_USER", "queue")
        monkeypatch.setenv("QUEUECORE_SMTP_PASSWORD", PASSWORD)
        [item] = harness.run_items(mail(subject="over TLS"))
    finally:
        controller.stop()
    assert item.status is Status.DONE, item.errors
    assert logins == [b"queue"]
    assert [m["Subject"] for _, _, m in box.messages] == ["over TLS"]


def test_starttls_upgrades_the_connection(harness, certificates, monkeypatch):
    server_context, cafile = certificates
    box = Inbox()
    controller = start_server(box, tls_context=server_context, require_starttls=True)
    try:
        monkeypatch.setenv("QUEUECORE_SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("QUEUECORE_SMTP_PORT", str(box.port))
        monkeypatch.setenv("QUEUECORE_SMTP_STARTTLS", "1")
        monkeypatch.setenv("QUEUECORE_SMTP_CAFILE", cafile)
        [item] = harness.run_items(mail())
        monkeypatch.delenv("QUEUECORE_SMTP_STARTTLS")
        # The server refuses mail on a connection that was not upgraded.
        [plain] = harness.run_items(mail())
    finally:
        controller.stop()
    assert item.status is Status.DONE, item.errors
    assert len(box.messages) == 1
    assert plain.status is not Status.DONE


def test_a_certificate_that_does_not_verify_is_retried_with_a_hint(harness, certificates, monkeypatch):
    server_context, _cafile = certificates
    box = Inbox()
    controller = start_server(box, ssl_context=server_context)
    try:
        monkeypatch.setenv("QUEUECORE_SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("QUEUECORE_SMTP_PORT", str(box.port))
        monkeypatch.setenv("QUEUECORE_SMTP_TLS", "1")  # no CAFILE: the private CA is not trusted
        [item] = harness.run_items(mail())
    finally:
        controller.stop()
    assert item.status is Status.NEED_RETRY
    assert "did not verify" in item.errors["mail"] and "QUEUECORE_SMTP_CAFILE" in item.errors["mail"]
    assert box.messages == []


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({"TLS": "1", "STARTTLS": "1"}, "not both"),
        ({"TLS": "maybe"}, "QUEUECORE_SMTP_TLS must be 1 or 0"),
        ({"CAFILE": "/nonexistent/ca.pem"}, "QUEUECORE_SMTP_CAFILE names no file"),
    ],
)
def test_bad_tls_settings_are_named(harness, inbox, monkeypatch, env, fragment):
    for name, value in env.items():
        monkeypatch.setenv(f"QUEUECORE_SMTP_{name}", value)
    [item] = harness.run_items(mail())
    assert item.status is Status.NEED_RETRY
    assert fragment in item.errors["mail"]
    assert inbox.messages == []


def test_tls_defaults_to_port_465():
    assert queuecore_mail.Settings.from_env({"QUEUECORE_SMTP_TLS": "1"}).port == 465
    assert queuecore_mail.Settings.from_env({}).port == 25
    assert queuecore_mail.Settings.from_env({"QUEUECORE_SMTP_TLS": "1", "QUEUECORE_SMTP_PORT": "2465"}).port == 2465


def test_missing_sender_waits_for_configuration(harness, inbox, monkeypatch):
    monkeypatch.delenv("QUEUECORE_SMTP_FROM")
    [item] = harness.run_items(mail())
    assert item.status is Status.NEED_RETRY
    assert "QUEUECORE_SMTP_FROM" in item.errors["mail"]
    monkeypatch.setenv("QUEUECORE_SMTP_FROM", "late@example.org")
    assert harness.run_items(item)[0].status is Status.DONE


@pytest.mark.parametrize(
    "payload, message",
    [
        ("just text", "a mail payload is an object"),
        ({"subject": "s", "body": "b"}, "'to' must be"),
        ({"to": [], "subject": "s", "body": "b"}, "'to' must be"),
        ({"to": "not-an-address", "subject": "s", "body": "b"}, "is not an e-mail address"),
        ({"to": "a@example.com", "body": "b"}, "needs a 'subject'"),
        ({"to": "a@example.com", "subject": "s", "body": 3}, "needs a 'body'"),
        ({"to": "a@example.com", "subject": "s\r\nBcc: victim@example.com", "body": "b"}, "cannot build the message"),
        ({"to": "a@example.com", "subject": "s", "body": "b", "from": 7}, "'from' must be"),
    ],
)
def test_bad_payloads_are_permanent(harness, inbox, payload, message):
    [item] = harness.run_items(("mail", payload))
    assert item.status is Status.ERROR
    assert message in item.errors["mail"]
    assert inbox.messages == []


def test_bad_port_setting_is_retried(harness, monkeypatch):
    monkeypatch.setenv("QUEUECORE_SMTP_PORT", "smtp")
    [item] = harness.run_items(mail())
    assert item.status is Status.NEED_RETRY
    assert "QUEUECORE_SMTP_PORT must be a port number" in item.errors["mail"]


def test_settings_repr_hides_password():
    settings = queuecore_mail.Settings.from_env({"QUEUECORE_SMTP_PASSWORD": PASSWORD, "QUEUECORE_SMTP_USER": "u"})
    assert settings.password == PASSWORD
    assert PASSWORD not in repr(settings)

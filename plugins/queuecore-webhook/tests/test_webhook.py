"""The webhook plugin against a real HTTP server on loopback."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field

import pytest
import queuecore_webhook

from queuecore import Status

SECRET = "s3cret-do-not-leak"


@dataclass
class Received:
    path: str
    headers: dict
    body: bytes
    signature_ok: bool | None


@dataclass
class Receiver:
    """Scripted answers, in order (the last one repeats); records every request."""

    url: str
    answers: list = field(default_factory=list)
    requests: list = field(default_factory=list)

    def answer(self, status=200, body=b"ok", headers=None, delay=0.0):
        self.answers.append((status, body, headers or {}, delay))


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that timed out and hung up is part of the tests


def start_receiver(port=0):
    """A receiver on 127.0.0.1 that checks signatures; returns (state, server)."""
    state = Receiver(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            signature = self.headers.get("X-Queuecore-Signature")
            ok = None
            if signature is not None:
                expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                ok = hmac.compare_digest(signature, expected)
            state.requests.append(Received(self.path, dict(self.headers), body, ok))
            status, text, headers, delay = state.answers.pop(0) if len(state.answers) > 1 else state.answers[0]
            if delay:
                time.sleep(delay)
            if ok is False:  # a real receiver rejects a bad signature
                status, text = 401, b"bad signature"
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *args):
            pass

    server = QuietServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    state.answer(200)
    return state, server


def stop(server):
    server.shutdown()
    server.server_close()


@pytest.fixture
def receiver():
    state, server = start_receiver()
    try:
        yield state
    finally:
        stop(server)


@pytest.fixture
def harness(queuecore_harness, monkeypatch):
    monkeypatch.setenv("QUEUECORE_WEBHOOK_SECRET", SECRET)
    monkeypatch.delenv("QUEUECORE_WEBHOOK_TIMEOUT", raising=False)
    queuecore_harness.register("webhook", queuecore_webhook)
    return queuecore_harness


def hook(url, body=None, **extra):
    return ("webhook", {"url": url, "body": body, **extra})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_posts_signed_json(harness, receiver):
    body = {"event": "push", "repo": "zoë/queuecore", "n": [1, 2.5, None]}
    [item] = harness.run_items(hook(receiver.url + "/hook?x=1", body, headers={"X-Extra": "yes"}))
    assert item.status is Status.DONE
    assert item.results == {"webhook": True}
    [req] = receiver.requests
    assert req.path == "/hook?x=1"
    assert req.signature_ok is True
    assert json.loads(req.body) == body
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["X-Queuecore-Item"] == str(item.id)
    assert req.headers["X-Extra"] == "yes"
    assert req.headers["User-Agent"].startswith("queuecore-webhook/")


def test_no_signature_without_secret(harness, receiver, monkeypatch):
    monkeypatch.delenv("QUEUECORE_WEBHOOK_SECRET")
    [item] = harness.run_items(hook(receiver.url, "plain"))
    assert item.status is Status.DONE
    assert "X-Queuecore-Signature" not in receiver.requests[0].headers
    assert receiver.requests[0].body == b'"plain"'


def test_wrong_secret_is_rejected_by_the_receiver(harness, receiver, monkeypatch):
    monkeypatch.setenv("QUEUECORE_WEBHOOK_SECRET", "another secret")
    [item] = harness.run_items(hook(receiver.url, {}))
    assert receiver.requests[0].signature_ok is False
    assert item.status is Status.ERROR
    assert item.errors["webhook"].startswith("PermanentError: POST http://127.0.0.1:")
    assert "HTTP 401" in item.errors["webhook"] and "bad signature" in item.errors["webhook"]
    assert "another secret" not in json.dumps(item.to_dict())


def test_not_our_type(harness, receiver):
    [item] = harness.run_items(("mail", {"url": receiver.url, "body": 1}))
    assert receiver.requests == []
    assert "webhook" not in item.results


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
def test_retryable_status_then_success(harness, receiver, status):
    receiver.answers[:] = []
    receiver.answer(status, b"<html>\n  upstream   down\n</html>")
    receiver.answer(200)
    item = harness.enqueue(*hook(receiver.url + "/h", {"a": 1}))
    [item] = harness.run_items(item)
    assert item.status is Status.NEED_RETRY
    assert item.results == {"webhook": False}
    error = item.errors["webhook"]
    assert error.startswith("DeliveryError: POST http://127.0.0.1:")
    assert f"HTTP {status}" in error and "<html> upstream down </html>" in error
    [item] = harness.run_items(item)
    assert item.status is Status.DONE
    assert item.results == {"webhook": True} and item.errors == {}
    assert len(receiver.requests) == 2
    # Both tries carry the same item id, so the receiver can de-duplicate.
    assert {r.headers["X-Queuecore-Item"] for r in receiver.requests} == {str(item.id)}


def test_retry_after_delays_the_next_try(harness, receiver):
    receiver.answers[:] = []
    receiver.answer(429, b"slow down", {"Retry-After": "120"})
    receiver.answer(200)
    [item] = harness.run_items(hook(receiver.url, {}))
    assert item.status is Status.NEED_RETRY
    assert item.errors["webhook"].startswith("Retry: POST")
    assert "Retry-After 120 s" in item.errors["webhook"]
    assert 110 < harness.retry_in(item) <= 120
    # Not due yet: a batch leaves it alone.
    assert harness.process().claimed == 0
    [item] = harness.run_items(item)  # make_due skips the wait
    assert item.status is Status.DONE


def test_retry_after_as_http_date(harness, receiver):
    receiver.answers[:] = []
    when = time.time() + 300
    receiver.answer(503, b"", {"Retry-After": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(when))})
    [item] = harness.run_items(hook(receiver.url, {}))
    assert 280 < harness.retry_in(item) <= 300


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
def test_client_errors_are_permanent(harness, receiver, status):
    receiver.answers[:] = []
    receiver.answer(status, b'{"error": "' + b"x" * 1000 + b'"}')
    [item] = harness.run_items(hook(receiver.url, {}))
    assert item.status is Status.ERROR
    assert item.trials == 1
    error = item.errors["webhook"]
    assert error.startswith("PermanentError: POST") and f"HTTP {status}" in error
    assert '{"error": "xxx' in error and len(error) < 400


def test_redirect_is_not_followed(harness, receiver):
    receiver.answers[:] = []
    receiver.answer(301, b"", {"Location": "http://elsewhere.example/new?token=abc"})
    [item] = harness.run_items(hook(receiver.url, {}))
    assert item.status is Status.ERROR
    assert "redirects are not followed" in item.errors["webhook"]
    assert "http://elsewhere.example/new?…" in item.errors["webhook"]
    assert len(receiver.requests) == 1


def test_connection_refused_then_success(harness):
    port = free_port()
    item = harness.enqueue(*hook(f"http://127.0.0.1:{port}/hook", {"n": 1}))
    [item] = harness.run_items(item)
    assert item.status is Status.NEED_RETRY
    error = item.errors["webhook"]
    assert error.startswith(f"DeliveryError: POST http://127.0.0.1:{port}/hook: could not connect:")
    assert "refused" in error.lower()
    # The receiver comes back up; the next try gets through.
    state, server = start_receiver(port)
    try:
        [item] = harness.run_items(item)
    finally:
        stop(server)
    assert item.status is Status.DONE and item.trials == 1
    assert json.loads(state.requests[0].body) == {"n": 1}


def test_timeout_then_success(harness, receiver, monkeypatch):
    monkeypatch.setenv("QUEUECORE_WEBHOOK_TIMEOUT", "0.3")
    receiver.answers[:] = []
    receiver.answer(200, delay=1.0)
    receiver.answer(200)
    item = harness.enqueue(*hook(receiver.url, {}))
    [item] = harness.run_items(item)
    assert item.status is Status.NEED_RETRY
    assert "no answer within 0.3 s (QUEUECORE_WEBHOOK_TIMEOUT)" in item.errors["webhook"]
    [item] = harness.run_items(item)
    assert item.status is Status.DONE


def test_gives_up_after_max_trials(harness, receiver):
    receiver.answers[:] = []
    receiver.answer(503, b"down")
    summary = harness.run()  # burst: retried at once until max_trials (3)
    assert summary.claimed == 0
    item = harness.enqueue(*hook(receiver.url, {}))
    harness.run(max_trials=2)
    item = harness.get(item)
    assert item.status is Status.ERROR and item.trials == 2
    assert "gave up after 2 tries" in item.errors["queuecore"]
    assert "HTTP 503" in item.errors["webhook"]


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"url": "ftp://example.com/x", "body": {}}, "only http and https"),
        ({"url": "file:///etc/passwd", "body": {}}, "only http and https"),
        ({"url": "http://", "body": {}}, "only http and https"),
        ({"body": {}}, "no 'url'"),
        ({"url": "http://127.0.0.1:9/"}, "no 'body'"),
        ([1, 2], "not list"),
        ({"url": "http://127.0.0.1:9/", "body": 1, "headers": ["x"]}, "'headers' must be an object"),
        ({"url": "http://127.0.0.1:9/", "body": 1, "headers": {"X-A": "a\r\nX-B: b"}}, "without line breaks"),
        ({"url": "http://127.0.0.1:9/", "body": 1, "headers": {"x-queuecore-signature": "forged"}}, "set by the plugin"),
    ],
)
def test_bad_payloads_are_permanent(harness, payload, message):
    [item] = harness.run_items(("webhook", payload))
    assert item.status is Status.ERROR
    assert message in item.errors["webhook"]


def test_bad_timeout_setting_is_retried(harness, receiver, monkeypatch):
    monkeypatch.setenv("QUEUECORE_WEBHOOK_TIMEOUT", "soon")
    item = harness.enqueue(*hook(receiver.url, {}))
    [item] = harness.run_items(item)
    assert item.status is Status.NEED_RETRY
    assert "QUEUECORE_WEBHOOK_TIMEOUT must be a number" in item.errors["webhook"]
    monkeypatch.setenv("QUEUECORE_WEBHOOK_TIMEOUT", "5")
    assert harness.run_items(item)[0].status is Status.DONE


def test_secret_never_logged_or_stored(harness, receiver, caplog):
    caplog.set_level(logging.DEBUG)
    receiver.answers[:] = []
    receiver.answer(500, b"oops")
    receiver.answer(200)
    item = harness.enqueue(*hook(receiver.url + "/s?token=t0k", {"k": "v"}))
    harness.run_items(item)
    harness.run_items(item)
    stored = json.dumps(harness.get(item).to_dict())
    assert SECRET not in caplog.text and SECRET not in stored
    assert "t0k" not in caplog.text
    assert receiver.requests[0].signature_ok is True


def test_retry_after_parsing():
    assert queuecore_webhook.retry_after("30") == 30
    assert queuecore_webhook.retry_after(None) is None
    assert queuecore_webhook.retry_after("soon") is None
    assert queuecore_webhook.retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_sign_matches_a_receivers_check():
    body = b'{"a":1}'
    assert queuecore_webhook.sign(body, "k") == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()

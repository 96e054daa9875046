"""queuecore-mail: send items as e-mail over SMTP.

Items of type ``mail`` with payload
``{"to": "a@example.com" | ["a@example.com", ...], "subject": "...", "body": "...", "from": "..."}``
(``from`` optional: ``QUEUECORE_SMTP_FROM`` otherwise). The message is plain
text in UTF-8, with ``Date`` (when the item was enqueued) and a ``Message-ID``
made from the item id, the same on every try so receivers can de-duplicate.

SMTP settings come from the environment: ``QUEUECORE_SMTP_HOST`` (default
``localhost``), ``QUEUECORE_SMTP_PORT`` (default 25, or 465 with
``QUEUECORE_SMTP_TLS``), ``QUEUECORE_SMTP_USER`` and
``QUEUECORE_SMTP_PASSWORD`` (log in when the user is set),
``QUEUECORE_SMTP_STARTTLS`` (``1`` to require STARTTLS) or
``QUEUECORE_SMTP_TLS`` (``1`` for TLS from the first byte, "SMTPS"),
``QUEUECORE_SMTP_CAFILE`` (PEM file of the CAs that sign the server's
certificate, when it is not a public one), ``QUEUECORE_SMTP_FROM``,
``QUEUECORE_SMTP_TIMEOUT`` (seconds, default 30). The server's certificate is
always verified.

Outcomes: accepted by the server is done; a 4xx answer, a refused or lost
connection, or a timeout fails the try (retried); a 5xx answer or a bad payload
is a :class:`queuecore.PermanentError`. The password never appears in an error text.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import os
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from queuecore import Item, PermanentError, hookimpl

__version__ = "0.1.0"

ITEM_TYPE = "mail"
ENV_PREFIX = "QUEUECORE_SMTP_"
DEFAULT_PORT = 25
DEFAULT_TLS_PORT = 465
DEFAULT_TIMEOUT = 30.0


class DeliveryError(Exception):
    """A send that failed for a reason that may pass: the item is retried."""


@dataclass(frozen=True)
class Settings:
    host: str = "localhost"
    port: int = DEFAULT_PORT
    user: str | None = None
    password: str | None = None
    starttls: bool = False
    sender: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    tls: bool = False
    cafile: str | None = None

    def __repr__(self) -> str:  # never show the password
        return (
            f"Settings(host={self.host!r}, port={self.port}, user={self.user!r}, "
            f"starttls={self.starttls}, tls={self.tls})"
        )

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the server's certificate: against ``cafile`` when set, else the system's CAs."""
        return ssl.create_default_context(cafile=self.cafile)

    @classmethod
    def from_env(cls, environ: Any = None) -> Settings:
        """Read ``QUEUECORE_SMTP_*``; a bad value fails the try (retried) with a message naming the variable."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name, "").strip()
            return value or None

        def flag(name: str) -> bool:
            value = (get(name) or "").lower()
            if value not in ("", "0", "1", "true", "false", "yes", "no", "on", "off"):
                raise DeliveryError(f"{ENV_PREFIX}{name} must be 1 or 0, not {value!r}")
            return value in ("1", "true", "yes", "on")

        starttls, tls = flag("STARTTLS"), flag("TLS")
        if starttls and tls:
            raise DeliveryError(
                f"set {ENV_PREFIX}TLS (TLS from the first byte, port 465) or {ENV_PREFIX}STARTTLS "
                "(upgrade a plain connection), not both"
            )
        cafile = get("CAFILE")
        if cafile is not None and not os.path.isfile(cafile):
            raise DeliveryError(f"{ENV_PREFIX}CAFILE names no file: {cafile!r}")
        port = get("PORT")
        timeout = get("TIMEOUT")
        try:
            port_number = int(port) if port else (DEFAULT_TLS_PORT if tls else DEFAULT_PORT)
            if not 0 < port_number < 65536:
                raise ValueError
        except ValueError:
            raise DeliveryError(f"{ENV_PREFIX}PORT must be a port number, not {port!r}") from None
        try:
            seconds = float(timeout) if timeout else DEFAULT_TIMEOUT
            if not seconds > 0:
                raise ValueError
        except ValueError:
            raise DeliveryError(f"{ENV_PREFIX}TIMEOUT must be a number of seconds > 0, not {timeout!r}") from None
        return cls(
            host=get("HOST") or "localhost",
            port=port_number,
            user=get("USER"),
            password=env.get(ENV_PREFIX + "PASSWORD") or None,
            starttls=starttls,
            sender=get("FROM"),
            timeout=seconds,
            tls=tls,
            cafile=cafile,
        )


@hookimpl
def process_item(item: Item) -> bool | None:
    """Send the item as a mail; None for items that are not mail."""
    if item.type != ITEM_TYPE:
        return None
    settings = Settings.from_env()
    message = build_message(item, settings.sender)
    send(message, settings)
    return True


def build_message(item: Item, default_sender: str | None = None) -> EmailMessage:
    """The message for a ``mail`` item; PermanentError for a bad payload."""
    payload = item.payload
    if not isinstance(payload, dict):
        raise PermanentError(f"a mail payload is an object with 'to', 'subject' and 'body', not {type(payload).__name__}")
    to = payload.get("to")
    recipients = [to] if isinstance(to, str) else to
    if not isinstance(recipients, list) or not recipients or not all(isinstance(r, str) for r in recipients):
        raise PermanentError("'to' must be an address or a non-empty list of addresses")
    for field_name in ("subject", "body"):
        if not isinstance(payload.get(field_name), str):
            raise PermanentError(f"the mail payload needs a {field_name!r} string")
    sender = payload.get("from")
    if sender is None:
        sender = default_sender
        if sender is None:
            # Not the payload's fault: once the operator sets it, retries go through.
            raise DeliveryError(f"no sender: give the payload a 'from' or set {ENV_PREFIX}FROM")
    elif not isinstance(sender, str):
        raise PermanentError("'from' must be an address")
    for address in [sender, *recipients]:
        _check_address(address)

    message = EmailMessage()
    try:
        message["From"] = sender
        message["To"] = ", ".join(recipients)
        message["Subject"] = payload["subject"]
        # When the item was enqueued: the same on every try, and the time the event happened.
        message["Date"] = email.utils.format_datetime(item.creation_dtime.replace(tzinfo=dt.timezone.utc))
        message["Message-ID"] = message_id(item, sender)
        message.set_content(payload["body"])
    except (ValueError, TypeError) as exc:  # line breaks in a header, undecodable text...
        raise PermanentError(f"cannot build the message: {exc}") from None
    return message


def message_id(item: Item, sender: str) -> str:
    """The same id on every try of one item, so a receiver can drop duplicates."""
    domain = email.utils.parseaddr(sender)[1].rpartition("@")[2] or "queuecore.invalid"
    stamp = item.creation_dtime.strftime("%Y%m%d%H%M%S%f")
    return f"<queuecore.{item.id}.{stamp}@{domain}>"


def send(message: EmailMessage, settings: Settings) -> None:
    """Hand ``message`` to the SMTP server; raises DeliveryError (retry) or PermanentError."""
    where = f"SMTP {settings.host}:{settings.port}"
    try:
        with _connect(settings) as smtp:
            if settings.starttls:
                smtp.starttls(context=settings.ssl_context())
            if settings.user:
                smtp.login(settings.user, settings.password or "")
            refused = smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        answers = "; ".join(f"{rcpt}: {_answer(code, text)}" for rcpt, (code, text) in exc.recipients.items())
        if any(400 <= code < 500 for code, _ in exc.recipients.values()):
            raise DeliveryError(f"{where} refused every recipient for now: {answers}") from None
        raise PermanentError(f"{where} refused every recipient: {answers}") from None
    except smtplib.SMTPResponseException as exc:  # sender refused, DATA refused, auth failed, bad greeting
        text = f"{where}: {_answer(exc.smtp_code, exc.smtp_error)}"
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            text += f" (login as {settings.user!r} failed; check {ENV_PREFIX}USER and {ENV_PREFIX}PASSWORD)"
        if 500 <= exc.smtp_code < 600:
            raise PermanentError(text) from None
        raise DeliveryError(text) from None
    except smtplib.SMTPNotSupportedError as exc:
        raise DeliveryError(f"{where}: {exc} (is {ENV_PREFIX}STARTTLS or {ENV_PREFIX}USER set for a server that does not offer it?)") from None
    except ConnectionRefusedError:
        raise DeliveryError(f"{where}: connection refused") from None
    except ssl.SSLCertVerificationError as exc:
        raise DeliveryError(
            f"{where}: the server's certificate did not verify ({exc.verify_message}); "
            f"if a private CA signed it, set {ENV_PREFIX}CAFILE"
        ) from None
    except (TimeoutError, OSError) as exc:
        if isinstance(exc, TimeoutError) or "timed out" in str(exc):
            raise DeliveryError(f"{where}: no answer within {settings.timeout:g} s") from None
        raise DeliveryError(f"{where}: {type(exc).__name__}: {exc.strerror or exc}") from None
    except smtplib.SMTPException as exc:  # server disconnected and the like
        raise DeliveryError(f"{where}: {type(exc).__name__}: {exc}") from None
    if refused:
        accepted = [r for r in _recipients(message) if r not in refused]
        answers = "; ".join(f"{rcpt}: {_answer(code, text)}" for rcpt, (code, text) in refused.items())
        # Some recipients have the mail: retrying would send it to them again.
        raise PermanentError(
            f"{where} accepted the mail for {', '.join(accepted)} but refused {answers}; not retried, "
            "since a retry would deliver it twice"
        )


def _connect(settings: Settings) -> smtplib.SMTP:
    if settings.tls:
        return smtplib.SMTP_SSL(settings.host, settings.port, timeout=settings.timeout, context=settings.ssl_context())
    return smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)


def _check_address(address: str) -> None:
    name, addr = email.utils.parseaddr(address)
    if "@" not in addr or any(c in address for c in "\r\n\0"):
        raise PermanentError(f"{address!r:.100} is not an e-mail address")


def _recipients(message: EmailMessage) -> list[str]:
    return [addr for _, addr in email.utils.getaddresses(message.get_all("To", []))]


def _answer(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{code} {' '.join(text.split())}"[:300]

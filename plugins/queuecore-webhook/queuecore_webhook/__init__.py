"""queuecore-webhook: POST an item's body as signed JSON to a URL.

Items of type ``webhook`` with payload
``{"url": "https://...", "body": <any JSON>, "headers": {"Name": "value"}}``
(``headers`` optional). The request carries ``Content-Type: application/json``,
``X-Queuecore-Item: <item id>`` (receivers de-duplicate on it) and, when
``QUEUECORE_WEBHOOK_SECRET`` is set, ``X-Queuecore-Signature: sha256=<hex>``:
the HMAC-SHA256 of the exact request body keyed by the secret.

Outcomes: 2xx is done; connection errors, timeouts, 408, 429 and 5xx fail the
try and are retried (after ``Retry-After`` when the server sends one); any
other 4xx, a redirect, or a bad payload is a :class:`queuecore.PermanentError`.
The secret never appears in an error text or a log line.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import hmac
import json
import logging
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from queuecore import Item, PermanentError, Retry, hookimpl

__version__ = "0.1.0"

log = logging.getLogger(__name__)

ITEM_TYPE = "webhook"
SECRET_ENV_VAR = "QUEUECORE_WEBHOOK_SECRET"
TIMEOUT_ENV_VAR = "QUEUECORE_WEBHOOK_TIMEOUT"
DEFAULT_TIMEOUT = 10.0
SIGNATURE_HEADER = "X-Queuecore-Signature"
ITEM_HEADER = "X-Queuecore-Item"
USER_AGENT = f"queuecore-webhook/{__version__}"
#: How much of an error response's body goes into the error text.
EXCERPT_CHARS = 200
#: Headers a payload may not set: the plugin owns them.
RESERVED_HEADERS = {"content-type", "content-length", "host", SIGNATURE_HEADER.lower(), ITEM_HEADER.lower()}
RETRY_STATUSES = {408, 429}


class DeliveryError(Exception):
    """A delivery that failed for a reason that may pass: the item is retried."""


@hookimpl
def process_item(item: Item) -> bool | None:
    """POST the item's body to its URL; None for items that are not webhooks."""
    if item.type != ITEM_TYPE:
        return None
    url, body, extra_headers = parse_payload(item.payload)
    deliver(url, body, item.id, extra_headers)
    return True


def parse_payload(payload: Any) -> tuple[str, bytes, dict[str, str]]:
    """The URL, the exact body bytes and the extra headers; PermanentError for a bad payload."""
    if not isinstance(payload, dict):
        raise PermanentError(f"a webhook payload is an object with 'url' and 'body', not {type(payload).__name__}")
    url = payload.get("url")
    if not isinstance(url, str):
        raise PermanentError("the webhook payload has no 'url' string")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise PermanentError(f"only http and https URLs can be called, not {_redact(url)!r}")
    if "body" not in payload:
        raise PermanentError("the webhook payload has no 'body' (use null for an empty one)")
    body = json.dumps(payload["body"], ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    headers = payload.get("headers") or {}
    if not isinstance(headers, dict):
        raise PermanentError(f"the webhook payload's 'headers' must be an object, not {type(headers).__name__}")
    for name, value in headers.items():
        if not isinstance(value, str) or not name or any(c in name + value for c in "\r\n\0"):
            raise PermanentError(f"invalid header {name!r:.60}: names and values are strings without line breaks")
        if name.lower() in RESERVED_HEADERS:
            raise PermanentError(f"the header {name!r} is set by the plugin and cannot be given in the payload")
    return url, body, headers


def sign(body: bytes, secret: str) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC-SHA256 of ``body``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV_VAR, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        # An operator's mistake: fail the try (retried) so fixing it lets the item through.
        raise DeliveryError(f"{TIMEOUT_ENV_VAR} must be a number of seconds > 0, not {raw!r}")
    return value


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A POST cannot be redirected safely; a 3xx surfaces as an HTTPError.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def deliver(url: str, body: bytes, item_id: int, extra_headers: dict[str, str] | None = None) -> None:
    """POST ``body`` to ``url``; returns on 2xx, raises otherwise (see the module docstring)."""
    headers = {"User-Agent": USER_AGENT, **(extra_headers or {})}
    headers["Content-Type"] = "application/json"
    headers[ITEM_HEADER] = str(item_id)
    secret = os.environ.get(SECRET_ENV_VAR)
    if secret:
        headers[SIGNATURE_HEADER] = sign(body, secret)
    seconds = timeout()
    where = _redact(url)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _opener.open(request, timeout=seconds) as response:
            response.read(64 * 1024)  # let the server finish; the body is not used
            status = response.status
    except urllib.error.HTTPError as exc:
        with exc:
            _raise_for_status(where, exc.code, exc.reason, exc.headers, _excerpt(exc))
    except (TimeoutError, socket.timeout):
        raise DeliveryError(f"POST {where}: no answer within {seconds:g} s ({TIMEOUT_ENV_VAR})") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise DeliveryError(f"POST {where}: no answer within {seconds:g} s ({TIMEOUT_ENV_VAR})") from None
        raise DeliveryError(f"POST {where}: could not connect: {_reason(reason)}") from None
    except (ConnectionError, OSError, ValueError) as exc:
        # RemoteDisconnected, resets, bad status lines, invalid URL details...
        raise DeliveryError(f"POST {where}: {type(exc).__name__}: {exc}") from None
    if not 200 <= status < 300:  # 1xx/3xx that urllib handed back as a success
        raise PermanentError(f"POST {where}: unexpected HTTP {status}")
    log.debug("item %d: POST %s -> %d", item_id, where, status)


def _raise_for_status(where: str, status: int, reason: str, headers: Any, excerpt: str) -> None:
    text = f"POST {where}: HTTP {status} {reason or ''}".rstrip()
    if excerpt:
        text += f": {excerpt}"
    if status in RETRY_STATUSES or status >= 500:
        after = retry_after(headers.get("Retry-After") if headers is not None else None)
        if after is not None:
            raise Retry(f"{text} (Retry-After {after:g} s)", after=after)
        raise DeliveryError(text)
    if 300 <= status < 400:
        location = headers.get("Location") if headers is not None else None
        raise PermanentError(f"{text}: redirects are not followed; update the URL" + (f" (Location: {_redact(location)})" if location else ""))
    raise PermanentError(text)


def retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, (when - dt.datetime.now(dt.timezone.utc)).total_seconds())


def _excerpt(response: Any) -> str:
    try:
        data = response.read(EXCERPT_CHARS * 4)
    except Exception:  # the body is a courtesy; the status says enough
        return ""
    text = " ".join(data.decode("utf-8", "replace").split())
    return text[:EXCERPT_CHARS] + ("…" if len(text) > EXCERPT_CHARS else "")


def _reason(reason: Any) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason)


def _redact(url: str) -> str:
    """The URL without credentials or query string, which may hold tokens."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    query = "?…" if parts.query else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{query}"

"""Exceptions: one root for the library's own errors, plus the two a plugin raises."""

from __future__ import annotations


class QueuecoreError(Exception):
    """Root of the errors queuecore raises about its own use."""


class ConfigurationError(QueuecoreError, ValueError):
    """A database URL, path or runner setting that cannot work."""


class InvalidItemError(QueuecoreError, ValueError):
    """An item that cannot be enqueued: bad type name, payload not JSON, too big."""


class PayloadTypeError(InvalidItemError, TypeError):
    """A payload holding something JSON cannot express (a set, bytes, an object)."""


class ItemNotFound(QueuecoreError, LookupError):
    """No item has the given id."""


class PluginLoadError(QueuecoreError):
    """A plugin could not be loaded or registered; the runner must not start without it."""


class PermanentError(Exception):
    """Raised by a plugin when retrying cannot help (bad payload, 4xx answer...).

    The item goes to ``error`` after this try, whatever its trial count; the
    message is stored as the plugin's error.
    """


class Retry(Exception):
    """Raised by a plugin to fail this try and ask for a retry no sooner than ``after`` seconds.

    Use it to honour a server's ``Retry-After``; a plain exception or ``False``
    retries on the runner's own backoff.
    """

    def __init__(self, reason: str = "retry requested", after: float | None = None) -> None:
        super().__init__(reason)
        if after is not None and not after >= 0:
            raise ValueError(f"Retry(after=...) must be a number of seconds >= 0, not {after!r}")
        self.after = after

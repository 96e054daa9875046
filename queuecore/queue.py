"""The application's side of the queue: enqueue, look up, count, retry, purge."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import peewee

from .errors import ConfigurationError, InvalidItemError, ItemNotFound, PayloadTypeError
from .items import Item
from .models import Status
from .storage import DEFAULT_URL, URL_ENV_VAR, Storage, open_database, redact_url, utcnow

MAX_TYPE_LENGTH = 200
#: Default ceiling on a payload's size as JSON text, enforced at enqueue.
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024

Delay = float | int | dt.timedelta | None


class Queue:
    """A queue in one database.

    :param database: a URL (``sqlite:///path.db``, ``postgresql://...``,
        ``mysql://...``), or a peewee ``Database`` the application already
        uses (then ``enqueue`` joins the application's open transaction).
        Default: ``$QUEUECORE_DATABASE_URL``, else ``sqlite:///queuecore.db``.
    :param max_payload_bytes: the largest payload accepted, as UTF-8 JSON text.

    The schema is created on first use.
    """

    def __init__(
        self,
        database: str | peewee.Database | None = None,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        if database is None:
            database = os.environ.get(URL_ENV_VAR) or DEFAULT_URL
        if isinstance(database, peewee.Database):
            self.url = None
            db = database
        else:
            self.url = database
            db = open_database(database)
        if not isinstance(max_payload_bytes, int) or max_payload_bytes <= 0:
            raise ConfigurationError(f"max_payload_bytes must be a positive int, not {max_payload_bytes!r}")
        self.max_payload_bytes = max_payload_bytes
        self.storage = Storage(db)

    def __repr__(self) -> str:
        where = redact_url(self.url) if self.url else type(self.storage.db).__name__
        return f"<Queue {where}>"

    @property
    def database(self) -> peewee.Database:
        return self.storage.db

    def init(self) -> int:
        """Create or upgrade the schema (idempotent); returns its version."""
        return self.storage.create_schema()

    def close(self) -> None:
        """Close this thread's database connection."""
        if not self.storage.db.is_closed():
            self.storage.db.close()

    # -- enqueue ------------------------------------------------------------

    def enqueue(self, type: str, payload: Any = None, *, priority: int = 0, delay: Delay = None) -> Item:
        """Add one item; returns it as stored. Higher ``priority`` goes first;
        ``delay`` (seconds or a timedelta) holds it back."""
        now = utcnow()
        row = self._prepare(type, payload, priority, now + _as_timedelta(delay))
        self.storage.ensure_schema()
        (item_id,) = self.storage.insert([row], now)
        return Item(
            id=item_id,
            type=type,
            payload=json.loads(row[1]),
            status=Status.PENDING,
            trials=0,
            results={},
            errors={},
            priority=priority,
            creation_dtime=now,
            lasttry_dtime=None,
            run_after=row[3],
        )

    def enqueue_many(
        self, items: Iterable[tuple[str, Any] | tuple[str, Any, int]], *, delay: Delay = None
    ) -> list[int]:
        """Add many ``(type, payload)`` or ``(type, payload, priority)`` items in one
        transaction; all or nothing. Returns their ids, in order."""
        now = utcnow()
        run_after = now + _as_timedelta(delay)
        rows = []
        for index, entry in enumerate(items):
            if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3):
                raise InvalidItemError(
                    f"item {index}: expected (type, payload) or (type, payload, priority), got {entry!r:.100}"
                )
            priority = entry[2] if len(entry) == 3 else 0
            try:
                rows.append(self._prepare(entry[0], entry[1], priority, run_after))
            except InvalidItemError as exc:
                raise type(exc)(f"item {index}: {exc}") from None
        if not rows:
            return []
        self.storage.ensure_schema()
        return self.storage.insert(rows, now)

    def _prepare(self, type_: Any, payload: Any, priority: Any, run_after: dt.datetime) -> tuple:
        _check_type_name(type_)
        if priority.__class__ is not int or not -(2**31) <= priority < 2**31:
            raise InvalidItemError(f"priority must be a 32-bit int, not {priority!r}")
        return (type_, encode_payload(payload, self.max_payload_bytes), priority, run_after)

    # -- reading ------------------------------------------------------------

    def get(self, item_id: int) -> Item:
        """The item with this id; :class:`ItemNotFound` (a ``LookupError``) if there is none."""
        self.storage.ensure_schema()
        with _undecodable_json(f"item {item_id}"):
            row = self.storage.get_row(_check_id(item_id))
        if row is None:
            raise ItemNotFound(f"no item with id {item_id}")
        return self._to_item(row)

    def counts(self) -> dict[Status, int]:
        """How many items have each status (every status present, 0 where none)."""
        self.storage.ensure_schema()
        return self.storage.counts()

    def counts_by_type(self) -> dict[str, dict[Status, int]]:
        self.storage.ensure_schema()
        return self.storage.counts_by_type()

    def oldest_due_age(self) -> float | None:
        """Seconds the longest-waiting due item has waited, or None when nothing waits."""
        self.storage.ensure_schema()
        now = utcnow()
        oldest = self.storage.parse_time(self.storage.oldest_due(now))
        return None if oldest is None else max(0.0, (now - oldest).total_seconds())

    def plugin_stats(self) -> list[Any]:
        """Per-plugin counters summed over every runner: rows with ``.plugin``,
        ``.successes``, ``.failures`` and ``.seconds`` (time spent in the plugin)."""
        self.storage.ensure_schema()
        return self.storage.plugin_stats()

    def has_due(self) -> bool:
        self.storage.ensure_schema()
        return self.storage.has_due(utcnow())

    def list(
        self,
        status: Status | Sequence[Status] | None = None,
        type: str | Sequence[str] | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[Item]:
        """Items newest first, optionally filtered; ``before_id`` pages further back."""
        self.storage.ensure_schema()
        if not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(f"limit must be a positive int, not {limit!r}")
        if before_id is not None:
            before_id = _check_id(before_id)
        with _undecodable_json("an item in this list"):
            rows = self.storage.select_rows(_as_statuses(status), _as_list(type), limit, before_id)
        return [self._to_item(r) for r in rows]

    # -- operating ----------------------------------------------------------

    def retry(
        self,
        ids: Sequence[int] | None = None,
        *,
        status: Status | Sequence[Status] | None = None,
        type: str | Sequence[str] | None = None,
        reset: bool = False,
    ) -> int:
        """Send items back to pending, due now, trials 0; returns how many.

        Select by ``ids`` or by ``status``/``type``. Plugins that already
        succeeded stay skipped unless ``reset`` clears results and errors.
        Items in progress are left to their runner.
        """
        if ids is None and status is None:
            raise ConfigurationError("retry needs item ids or a status")
        if ids is not None:
            ids = [_check_id(i) for i in ids]
        self.storage.ensure_schema()
        return self.storage.retry(ids, _as_statuses(status), _as_list(type), reset, utcnow())

    def purge(
        self,
        status: Status | Sequence[Status],
        *,
        older_than: dt.timedelta | float | None = None,
        type: str | Sequence[str] | None = None,
        dry_run: bool = False,
    ) -> int:
        """Delete done or error items (last tried more than ``older_than`` ago), in
        short chunks; returns how many (or would be, with ``dry_run``)."""
        self.storage.ensure_schema()
        cutoff = None if older_than is None else utcnow() - _as_timedelta(older_than)
        statuses = _as_statuses(status)
        if not statuses:
            raise ConfigurationError("purge needs a status: done or error")
        return self.storage.purge(statuses, cutoff, _as_list(type), dry_run)

    def _to_item(self, row: Any) -> Item:
        return Item(
            id=row.id,
            type=row.type,
            payload=row.payload,
            status=Status(row.status),
            trials=row.trials,
            results=row.results or {},
            errors=row.errors or {},
            priority=row.priority,
            creation_dtime=self.storage.parse_time(row.creation_dtime),
            lasttry_dtime=self.storage.parse_time(row.lasttry_dtime),
            run_after=self.storage.parse_time(row.run_after),
            lease_owner=row.lease_owner,
            lease_expires=self.storage.parse_time(row.lease_expires),
            claim_token=row.claim_token,
        )


@contextlib.contextmanager
def _undecodable_json(what: str) -> Iterator[None]:
    # Only a row edited by hand can hold JSON nested deeper than Python decodes
    # (enqueue refuses it); the driver or peewee then hits the recursion limit.
    try:
        yield
    except RecursionError:
        raise InvalidItemError(
            f"{what} holds JSON nested too deeply to decode (edited in the database by hand?)"
        ) from None


def encode_payload(payload: Any, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> str:
    """The payload as JSON text, or :class:`InvalidItemError` saying why it cannot be stored."""
    try:
        text = _encode_payload_json(payload)
    except TypeError as exc:
        raise PayloadTypeError(f"payload is not JSON-serialisable: {exc}") from None
    except ValueError as exc:  # NaN / Infinity, circular references
        raise InvalidItemError(f"payload is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidItemError("payload is nested too deeply to store as JSON") from None
    try:
        # ASCII text is its own size; anything else is encoded, which also
        # catches lone surrogates that no database can store.
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidItemError(f"payload holds text that is not valid Unicode: {exc.reason} at {exc.start}") from None
    if size > max_bytes:
        raise InvalidItemError(f"payload is {size} bytes as JSON; the limit is {max_bytes}")
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        # Refused on every backend, so a queue that moves from SQLite keeps working.
        raise InvalidItemError("payload holds a NUL character (\\u0000), which PostgreSQL cannot store in JSON")
    return text


# \u0000 in JSON text, unless its backslash is itself escaped ("\\u0000" is
# the six characters \u0000, which every backend stores).
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _payload_encoder() -> Callable[[Any], str]:
    standard = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    make_c_encoder = getattr(json.encoder, "c_make_encoder", None)
    if make_c_encoder is None:  # a Python without the _json accelerator
        return standard.encode
    # JSONEncoder.encode builds a C encoder on every call, a third of the cost
    # of a small payload; this one is built once. It keeps no record of the
    # containers it is inside (no circular-reference check), so threads may
    # share it; on any error the standard encoder runs and raises its own,
    # precise one ("Circular reference detected" where this one recursed).
    fast = make_c_encoder(
        None, standard.default, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )

    def encode(payload: Any) -> str:
        try:
            return "".join(fast(payload, 0))
        except (ValueError, TypeError, RecursionError):
            return standard.encode(payload)

    return encode


_encode_payload_json = _payload_encoder()


def _check_type_name(type_: Any) -> None:
    if not isinstance(type_, str):
        raise InvalidItemError(f"item type must be a string, not {type(type_).__name__}")
    _check_type_text(type_)


@functools.lru_cache(maxsize=1024)  # an application enqueues few distinct types, many times
def _check_type_text(type_: str) -> None:
    if not type_ or not type_.strip():
        raise InvalidItemError("item type must not be empty")
    if len(type_) > MAX_TYPE_LENGTH:
        raise InvalidItemError(f"item type is {len(type_)} characters; the limit is {MAX_TYPE_LENGTH}")
    bad = next((c for c in type_ if not c.isprintable()), None)
    if bad is not None:
        raise InvalidItemError(f"item type {type_!r} contains the control character {bad!r}")
    try:
        type_.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidItemError(f"item type {type_!r} is not valid Unicode") from None


def _check_id(item_id: Any) -> int:
    if isinstance(item_id, bool) or not isinstance(item_id, int):
        raise InvalidItemError(f"an item id is an int, not {item_id!r}")
    if not -(2**63) <= item_id < 2**63:  # the drivers overflow beyond a 64-bit column
        raise InvalidItemError(f"no item can have the id {item_id}: ids are 64-bit integers")
    return item_id


def _as_timedelta(delay: Delay) -> dt.timedelta:
    if delay is None:
        return dt.timedelta(0)
    if isinstance(delay, dt.timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, (int, float)) and not isinstance(delay, bool):
        seconds = float(delay)
    else:
        raise InvalidItemError(f"delay must be seconds or a timedelta, not {delay!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidItemError(f"delay must be a finite number of seconds >= 0, not {delay!r}")
    return dt.timedelta(seconds=seconds)


def _as_statuses(status: Status | str | Sequence[Status | str] | None) -> list[Status] | None:
    if status is None:
        return None
    values = [status] if isinstance(status, (Status, int, str)) else list(status)
    return [parse_status(v) for v in values]


def parse_status(value: Status | int | str) -> Status:
    """A Status from itself, its code or its lowercase name; ValueError naming the choices."""
    if isinstance(value, Status):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return Status(value)
        except ValueError:
            pass
    if isinstance(value, str):
        try:
            return Status[value.strip().upper()]
        except KeyError:
            pass
    choices = ", ".join(s.name.lower() for s in Status)
    raise ConfigurationError(f"unknown status {value!r}: choose from {choices}")


def _as_list(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)

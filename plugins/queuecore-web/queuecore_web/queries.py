"""The dashboard's own queries: finished-per-minute history and failure groups.

Both are bounded so they stay cheap on a table of millions of rows: the
history reads only the index on ``(status, lasttry_dtime)`` over a window of
hours, and failure grouping reads the newest ``scan`` failed items through
the same index. Everything else the dashboard shows comes from
:class:`queuecore.Queue`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import peewee

from queuecore import Queue, Status

#: The runner's own key in an item's errors (``queuecore.plugins.RESERVED_NAME``).
RUNNER_KEY = "queuecore"
#: How many of the newest failed items the failure groups are built from.
DEFAULT_SCAN = 1000
MAX_SCAN = 10_000
MAX_HOURS = 24
FAILED_STATUSES = (Status.NEED_RETRY, Status.ERROR)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


# -- history ----------------------------------------------------------------


@dataclass
class Throughput:
    """Items that ended done or error, per minute, oldest minute first."""

    minutes: list[dt.datetime]
    done: list[int]
    error: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "bucket_seconds": 60,
            "minutes": [_iso(m) for m in self.minutes],
            "done": self.done,
            "error": self.error,
        }


def throughput(queue: Queue, hours: int = 3, now: dt.datetime | None = None) -> Throughput:
    """Items finished (done) and failed (error) per minute over the last ``hours``.

    Counted from ``lasttry_dtime`` of items that are done or error now, so an
    item retried or purged since drops out of the history, and tries that
    ended in need_retry are not counted.
    """
    storage = queue.storage
    storage.ensure_schema()
    now = now or utcnow()
    end = now.replace(second=0, microsecond=0)
    start = end - dt.timedelta(hours=hours) + dt.timedelta(minutes=1)
    Item = storage.Item
    minute = _minute_expression(storage.backend, Item.lasttry_dtime)
    query = (
        Item.select(Item.status, minute, peewee.fn.COUNT(peewee.SQL("*")))
        .where(
            storage.tried_only(),  # lets SQLite use the partial (status, lasttry_dtime) index
            Item.status.in_([int(Status.DONE), int(Status.ERROR)]),
            Item.lasttry_dtime >= _param_time(storage, start),
        )
        # By position: PostgreSQL sees the two copies of a bound expression as different.
        .group_by(peewee.SQL("1"), peewee.SQL("2"))
        .tuples()
    )
    counts: dict[tuple[int, dt.datetime], int] = {}
    for status, bucket, n in query:
        when = _parse_minute(bucket)
        counts[(int(status), when)] = counts.get((int(status), when), 0) + n
    minutes = [start + dt.timedelta(minutes=i) for i in range(hours * 60)]
    return Throughput(
        minutes=minutes,
        done=[counts.get((int(Status.DONE), m), 0) for m in minutes],
        error=[counts.get((int(Status.ERROR), m), 0) for m in minutes],
    )


def _minute_expression(backend: str, column: Any) -> Any:
    # Truncate to the minute in the database, so only one row a minute comes back.
    if backend == "sqlite":
        # Times are stored as fixed-width text: "YYYY-MM-DD HH:MM:SS.ffffff".
        return peewee.fn.substr(column, 1, 16)
    if backend == "postgres":
        return peewee.fn.date_trunc("minute", column)
    return peewee.fn.DATE_FORMAT(column, "%Y-%m-%d %H:%i")


def _parse_minute(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value.replace(second=0, microsecond=0, tzinfo=None)
    return dt.datetime.fromisoformat(str(value)[:16])


def _param_time(storage: Any, value: dt.datetime) -> Any:
    # SQLite compares the stored text; format the bound the way the core stores times.
    if storage.backend == "sqlite":
        return value.isoformat(" ", "microseconds")
    return value


# -- failure groups -----------------------------------------------------------


@dataclass
class FailedItem:
    id: int
    type: str
    status: Status
    trials: int
    lasttry_dtime: dt.datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "status": self.status.name.lower(),
            "trials": self.trials,
            "lasttry_dtime": _iso(self.lasttry_dtime),
        }


@dataclass
class FailureGroup:
    """Failed items whose plugin recorded the same error text."""

    plugin: str
    error: str
    items: list[FailedItem] = field(default_factory=list)

    @property
    def key(self) -> str:
        return group_key(self.plugin, self.error)

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def summary(self) -> str:
        first = self.error.strip().splitlines()[0] if self.error.strip() else "(no message)"
        return first if len(first) <= 200 else first[:199] + "…"

    @property
    def by_status(self) -> dict[str, int]:
        counter = Counter(i.status for i in self.items)
        return {s.name.lower(): counter.get(s, 0) for s in FAILED_STATUSES}

    @property
    def types(self) -> dict[str, int]:
        return dict(Counter(i.type for i in self.items).most_common())

    @property
    def last_seen(self) -> dt.datetime | None:
        times = [i.lasttry_dtime for i in self.items if i.lasttry_dtime is not None]
        return max(times) if times else None

    def to_dict(self, with_items: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "key": self.key,
            "plugin": self.plugin,
            "error": self.error,
            "count": self.count,
            "by_status": self.by_status,
            "types": self.types,
            "last_seen": _iso(self.last_seen),
        }
        if with_items:
            data["items"] = [i.to_dict() for i in self.items]
        return data


@dataclass
class Failures:
    groups: list[FailureGroup]
    scanned: int
    scan_limit: int

    @property
    def truncated(self) -> bool:
        """True when there may be older failed items than the ones grouped."""
        return self.scanned >= self.scan_limit

    def find(self, key: str) -> FailureGroup | None:
        return next((g for g in self.groups if g.key == key), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scanned": self.scanned,
            "scan_limit": self.scan_limit,
            "truncated": self.truncated,
            "groups": [g.to_dict() for g in self.groups],
        }


def group_key(plugin: str, error: str) -> str:
    """A short stable id for a (plugin, error text) group, fit for a URL."""
    return hashlib.sha256(f"{plugin}\0{error}".encode()).hexdigest()[:16]


def failures(queue: Queue, scan: int = DEFAULT_SCAN) -> Failures:
    """Group the newest ``scan`` need_retry and error items by plugin and error text.

    An item with errors from several plugins is in several groups. The
    runner's own entry (``queuecore``: "gave up after N tries", ...) is left
    out when a plugin's error explains the failure, so it does not gather
    every failed item in one group. Groups come largest first.
    """
    storage = queue.storage
    storage.ensure_schema()
    Item = storage.Item
    rows: list[tuple] = []
    for status in FAILED_STATUSES:
        # One query per status walks the (status, lasttry_dtime) index
        # backwards and stops after `scan` rows: no sort, no table scan.
        query = (
            Item.select(Item.id, Item.type, Item.status, Item.trials, Item.lasttry_dtime, Item.errors)
            .where(storage.tried_only(), Item.status == int(status))
            .order_by(Item.lasttry_dtime.desc())
            .limit(scan)
            .tuples()
        )
        rows.extend(query)
    rows.sort(key=lambda r: (storage.parse_time(r[4]) or dt.datetime.min, r[0]), reverse=True)
    rows = rows[:scan]
    groups: dict[tuple[str, str], FailureGroup] = {}
    for item_id, typ, status, trials, lasttry, errors in rows:
        item = FailedItem(item_id, typ, Status(status), trials, storage.parse_time(lasttry))
        errors = _as_map(errors)
        entries = {p: e for p, e in errors.items() if p != RUNNER_KEY} or errors
        if not entries:
            entries = {RUNNER_KEY: "(no error recorded)"}
        for plugin, error in entries.items():
            text = str(error)
            group = groups.get((plugin, text))
            if group is None:
                group = groups[(plugin, text)] = FailureGroup(plugin, text)
            group.items.append(item)
    ordered = sorted(groups.values(), key=lambda g: (-g.count, g.plugin, g.error))
    return Failures(ordered, scanned=len(rows), scan_limit=scan)


def _as_map(value: Any) -> dict[str, Any]:
    # JSON columns come back decoded from most drivers, as text from some (MariaDB).
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.replace(tzinfo=dt.timezone.utc).isoformat()

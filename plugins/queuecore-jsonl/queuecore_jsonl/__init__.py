"""queuecore-jsonl: append each queued item as one JSON line to a file.

Items of type ``jsonl`` (and of the types listed in ``QUEUECORE_JSONL_TYPES``)
are appended to a JSON Lines file, one object per line::

    {"id": 42, "type": "jsonl", "created": "2026-11-27T14:03:00.123456Z", "payload": {...}}

The file is the payload's ``"path"`` if it has one, else ``$QUEUECORE_JSONL_PATH``.
Lines are written with one ``write`` under an exclusive ``flock``, so several
runner threads and processes can share one file. Delivery is at least once:
consumers de-duplicate on ``"id"``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any

from queuecore import Item, PermanentError, hookimpl

try:
    import fcntl
except ImportError:  # Windows: O_APPEND alone keeps lines whole for one process
    fcntl = None  # type: ignore[assignment]

__version__ = "0.1.0"

ITEM_TYPE = "jsonl"
#: The file to append to when the payload names none.
PATH_ENV_VAR = "QUEUECORE_JSONL_PATH"
#: Extra item types to record too (comma-separated), e.g. "webhook,mail" for an audit log.
TYPES_ENV_VAR = "QUEUECORE_JSONL_TYPES"
#: "1" makes every line durable (fsync) before the item counts as done.
FSYNC_ENV_VAR = "QUEUECORE_JSONL_FSYNC"


@hookimpl
def process_item(item: Item) -> bool | None:
    """Append ``item`` to the JSON Lines file; None for item types that are not recorded."""
    if item.type not in accepted_types():
        return None
    path = target_path(item)
    line = json.dumps(
        {"id": item.id, "type": item.type, "created": _iso(item.creation_dtime), "payload": item.payload},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    append_line(path, line, fsync=os.environ.get(FSYNC_ENV_VAR, "") in ("1", "true", "yes"))
    return True


def accepted_types() -> set[str]:
    extra = os.environ.get(TYPES_ENV_VAR, "")
    return {ITEM_TYPE, *(t.strip() for t in extra.split(",") if t.strip())}


def target_path(item: Item) -> str:
    """The file for this item: the payload's ``path`` (for ``jsonl`` items), else the env var."""
    payload: Any = item.payload
    if item.type == ITEM_TYPE and isinstance(payload, dict) and "path" in payload:
        path = payload["path"]
        if not isinstance(path, str) or not path.strip():
            # Retrying cannot fix the payload.
            raise PermanentError(f"payload 'path' must be a non-empty string, not {path!r:.100}")
        return path
    path = os.environ.get(PATH_ENV_VAR, "").strip()
    if not path:
        # A plain error, not a permanent one: once the operator sets the
        # variable, the retries go through.
        raise RuntimeError(f"no file to append to: set {PATH_ENV_VAR} or give the payload a 'path'")
    return path


def append_line(path: str, line: str, fsync: bool = False) -> None:
    """Append ``line`` plus a newline to ``path`` in one write, under an exclusive lock."""
    data = (line + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except FileNotFoundError:
        raise RuntimeError(f"cannot open {path}: its directory does not exist") from None
    except OSError as exc:
        raise RuntimeError(f"cannot open {path}: {exc.strerror}") from None
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        written = os.write(fd, data)
        if written != len(data):  # a full disk can cut a write short
            raise RuntimeError(f"short write to {path}: {written} of {len(data)} bytes (disk full?)")
        if fsync:
            os.fsync(fd)
    except OSError as exc:
        raise RuntimeError(f"cannot write to {path}: {exc.strerror}") from None
    finally:
        os.close(fd)  # also releases the lock


def _iso(value: dt.datetime | None) -> str | None:
    # queuecore hands out naive UTC datetimes.
    return None if value is None else value.isoformat() + "Z"

"""The item as the library hands it out: to plugins, and from ``Queue.get``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .models import Status


@dataclass(slots=True)
class Item:
    """One queued item. Changing it changes nothing in the database."""

    id: int
    type: str
    payload: Any
    status: Status
    trials: int
    results: Mapping[str, bool]
    errors: Mapping[str, str]
    priority: int
    creation_dtime: dt.datetime
    lasttry_dtime: dt.datetime | None
    run_after: dt.datetime | None = None
    lease_owner: str | None = field(default=None, repr=False)
    lease_expires: dt.datetime | None = field(default=None, repr=False)
    claim_token: int = field(default=0, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The item as JSON-ready data (times in ISO 8601 UTC), as the CLI prints it."""
        return {
            "id": self.id,
            "type": self.type,
            "payload": self.payload,
            "status": self.status.name.lower(),
            "trials": self.trials,
            "results": dict(self.results),
            "errors": dict(self.errors),
            "priority": self.priority,
            "creation_dtime": _iso(self.creation_dtime),
            "lasttry_dtime": _iso(self.lasttry_dtime),
            "run_after": _iso(self.run_after),
            "lease_owner": self.lease_owner,
            "lease_expires": _iso(self.lease_expires),
        }


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.replace(tzinfo=dt.timezone.utc).isoformat()

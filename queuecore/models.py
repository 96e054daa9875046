"""The peewee models of the queue's tables, and the status codes of an item."""

from __future__ import annotations

import enum

import peewee

database_proxy = peewee.DatabaseProxy()

SCHEMA_VERSION = 1


class Status(enum.IntEnum):
    """Where an item stands. The codes are IDF_Queue's, so rows read the same."""

    #: Waiting for its first try, or released by a runner that stopped.
    PENDING = 0
    #: Claimed by a runner; its lease says until when.
    IN_PROGRESS = 1
    #: A try failed; due again at ``run_after``.
    NEED_RETRY = 2
    #: Every plugin that accepted it returned True.
    DONE = 3
    #: Gave up: ``max_trials`` reached or a permanent failure; ``errors`` says why.
    ERROR = 4


#: Statuses whose items may still be claimed; the claim index covers only these.
ACTIVE_STATUSES = (Status.PENDING, Status.IN_PROGRESS, Status.NEED_RETRY)
#: Statuses of items that have been tried (retrying, done, error); the index on
#: (status, lasttry_dtime) covers only these, so a claim of a pending item and
#: the write-back of its first try touch it once, not four times.
TRIED_STATUSES = (Status.NEED_RETRY, Status.DONE, Status.ERROR)


class ItemIdField(peewee.BigAutoField):
    """The item id. On SQLite it is AUTOINCREMENT so the ids of purged items
    are never handed out again: receivers de-duplicate by item id."""

    def ddl(self, ctx):  # type: ignore[no-untyped-def]
        node = super().ddl(ctx)
        if isinstance(self.model._meta.database, peewee.SqliteDatabase):
            return peewee.NodeList((node, peewee.SQL("AUTOINCREMENT")))
        return node


class PreciseDateTimeField(peewee.DateTimeField):
    """Naive UTC, to the microsecond on every backend (MySQL's DATETIME keeps
    whole seconds unless asked for more)."""

    def get_modifiers(self) -> list[int]:
        return [6]


class BaseModel(peewee.Model):
    class Meta:
        database = database_proxy
        # Index names from the table name, so every backend shows queuecore_item_*.
        legacy_table_names = False


class QueueItem(BaseModel):
    """One queued item.

    ``run_after`` is when the item is next claimable: its due time while
    pending or waiting for a retry, its lease expiry while in progress. One
    column for both lets a single ordered index serve every claim.
    """

    id = ItemIdField()
    type = peewee.CharField(max_length=200)
    payload = peewee.JSONField()
    status = peewee.SmallIntegerField(default=Status.PENDING)
    trials = peewee.IntegerField(default=0)
    results = peewee.JSONField(default=dict)
    errors = peewee.JSONField(default=dict)
    priority = peewee.IntegerField(default=0)
    run_after = PreciseDateTimeField()
    lease_owner = peewee.CharField(max_length=200, null=True)
    lease_expires = PreciseDateTimeField(null=True)
    claim_token = peewee.BigIntegerField(default=0)
    creation_dtime = PreciseDateTimeField()
    lasttry_dtime = PreciseDateTimeField(null=True)

    class Meta:
        table_name = "queuecore_item"
        # The indexes are backend-specific (partial where the backend allows
        # it, so the runner's status changes move few index entries) and are
        # created by storage.create_schema.


class SchemaInfo(BaseModel):
    """Key/value facts about the schema; ``version`` lets later releases migrate."""

    key = peewee.CharField(max_length=64, primary_key=True)
    value = peewee.CharField(max_length=255)

    class Meta:
        table_name = "queuecore_schema"


class PluginStat(BaseModel):
    """Monotonic per-plugin counters; every runner on every host adds to them at write-back."""

    plugin = peewee.CharField(max_length=200, primary_key=True)
    successes = peewee.BigIntegerField(default=0)
    failures = peewee.BigIntegerField(default=0)
    seconds = peewee.DoubleField(default=0.0)

    class Meta:
        table_name = "queuecore_plugin_stats"


MODELS = (QueueItem, SchemaInfo, PluginStat)

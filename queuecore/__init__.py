"""queuecore: a durable, database-backed work queue whose work is done by plugins."""

from .errors import (
    ConfigurationError,
    InvalidItemError,
    ItemNotFound,
    PayloadTypeError,
    PermanentError,
    PluginLoadError,
    QueuecoreError,
    Retry,
)
from .hookspecs import hookimpl, hookspec
from .items import Item
from .models import Status
from .queue import Queue
from .runner import BatchSummary, PluginFailure, Runner

__all__ = [
    "BatchSummary",
    "ConfigurationError",
    "InvalidItemError",
    "Item",
    "ItemNotFound",
    "PayloadTypeError",
    "PermanentError",
    "PluginFailure",
    "PluginLoadError",
    "Queue",
    "QueuecoreError",
    "Retry",
    "Runner",
    "Status",
    "hookimpl",
    "hookspec",
]

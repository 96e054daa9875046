"""The hook markers and the hook specifications plugins implement."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .items import Item

PROJECT_NAME = "queuecore"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# -------------------------------------------------------------------------
# Processing items
# -------------------------------------------------------------------------


@hookspec
def process_item(item: Item, results: Mapping[str, bool]) -> bool | None:
    """Do this plugin's work on one queued item.

    The runner calls every installed plugin for each item it claims, one
    plugin at a time in pluggy's order (``tryfirst``/``trylast`` respected).
    A plugin that already returned ``True`` for this item is not called again
    on a later try, so an implementation does not need to check ``results``
    itself. An implementation may declare only some of the arguments, in any
    order. With ``Runner(concurrency=N)`` items are processed on N threads, so
    an implementation may be called from several threads at once.

    Delivery is at least once per plugin: a call is repeated only if the
    runner died (or lost its lease) after the call and before it wrote the
    outcome back. Make the work idempotent for that window, for example by
    de-duplicating on ``item.id``.

    :param item:
        The item, read-only: ``id``, ``type``, ``payload`` (decoded JSON),
        ``trials`` (earlier tries that did not finish it: 0 on the first),
        ``priority``, ``creation_dtime``, ``lasttry_dtime`` (naive UTC
        datetimes). Changes to it are not saved.
    :param results:
        A read-only view of this item's results so far: plugin name -> ``True``
        (done) or ``False`` (failed its last try).

    :returns:
        ``True`` when this plugin is done with the item; ``False`` to fail
        this try and be called again after a backoff; ``None`` when the item
        is not this plugin's business (nothing is recorded).

    Raising an exception fails this try like ``False`` and stores the
    exception's type and message as this plugin's error. Raising
    :class:`queuecore.PermanentError` sends the item to ``error`` after this
    try; raising :class:`queuecore.Retry` with ``after=seconds`` delays the
    next try by at least that long. Any other return value is a plugin bug,
    recorded as a failure that names the value.
    """


# -------------------------------------------------------------------------
# Command line
# -------------------------------------------------------------------------


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the ``queuecore`` command line.

    Called once when the CLI starts, for every loaded plugin.

    :param cli:
        The root :class:`click.Group`; add commands with ``@cli.command()``
        or ``cli.add_command(...)``. Commands get the database URL chosen by
        ``--db`` through ``click.get_current_context().obj.url``.

    :returns: Nothing; the return value is ignored.
    """

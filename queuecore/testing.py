"""Fixtures for testing queuecore plugins (a pytest plugin, registered through ``pytest11``).

Installing queuecore makes these fixtures available in every pytest run; no
``conftest.py`` is needed.

``queuecore_queue``
    A fresh :class:`queuecore.Queue` on a SQLite file in the test's temporary
    directory, schema created, closed after the test.

``queuecore_harness``
    A :class:`Harness` around that queue: register plugins under a name,
    enqueue and run items, read back what happened. Every plugin it
    registers is unregistered when the test ends, pass or fail, and nothing
    is loaded from the installed entry points unless asked for.

A plugin's test is a few lines::

    from queuecore import Status
    import queuecore_jsonl

    def test_writes_a_line(queuecore_harness, tmp_path):
        queuecore_harness.register("jsonl", queuecore_jsonl)
        [item] = queuecore_harness.run_items(("jsonl", {"path": str(tmp_path / "out.jsonl")}))
        assert item.status is Status.DONE
        assert item.results == {"jsonl": True}

The harness's runner is tuned for tests: ``retry_delay=0`` (a failed item is
due again at once), ``max_trials=3``, a short lease. Pass any
:class:`queuecore.Runner` argument to :meth:`Harness.run_items`,
:meth:`Harness.process` or :meth:`Harness.run` to change that for one call.

:meth:`Harness.run_items` gives each item exactly one try (one batch), so a
test can check a failure, change the world (start the server, fix the file)
and run the same item again to see it succeed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from .errors import PluginLoadError
from .items import Item
from .models import Status
from .plugins import ENTRY_POINT_GROUP
from .queue import Queue
from .runner import BatchSummary, Runner
from .storage import utcnow

__all__ = ["Harness", "queuecore_harness", "queuecore_queue"]

#: Runner settings of the harness unless a call overrides them.
DEFAULT_RUNNER_OPTIONS: Mapping[str, Any] = {
    "max_trials": 3,
    "retry_delay": 0,
    "lease_seconds": 30.0,
}

ItemSpec = Item | int | tuple[str, Any] | tuple[str, Any, int]


class Harness:
    """A queue, the plugins registered for this test, and a runner built from them.

    :param queue: the queue to work on (the ``queuecore_queue`` fixture's).
    """

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self._plugins: dict[str, object] = {}

    # -- plugins ------------------------------------------------------------

    def register(self, name: str, plugin: object) -> object:
        """Register ``plugin`` (a module or object with ``@hookimpl`` functions)
        under ``name``, its key in an item's results. Returns the plugin, so
        ``register("x", MyPlugin())`` can be kept in a variable."""
        if name in self._plugins:
            raise PluginLoadError(f"a plugin named {name!r} is already registered in this test")
        self._plugins[name] = plugin
        # Build a runner now so an invalid plugin fails here, naming itself,
        # rather than at the first run.
        try:
            Runner(self.queue, self._plugins)
        except Exception:
            del self._plugins[name]
            raise
        return plugin

    def register_entry_point(self, name: str) -> object:
        """Load the installed plugin whose ``queuecore`` entry point is ``name``
        and register it under that name, as a real runner would find it.

        This checks the distribution's packaging too: it fails when the entry
        point is missing or does not import."""
        import importlib.metadata

        found = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if not found:
            raise PluginLoadError(f"no installed distribution has a {ENTRY_POINT_GROUP!r} entry point named {name!r}")
        return self.register(name, found[0].load())

    def unregister(self, name: str) -> None:
        """Forget the plugin registered under ``name``."""
        self._plugins.pop(name)

    @property
    def plugins(self) -> dict[str, object]:
        """The registered plugins, name -> plugin (a copy)."""
        return dict(self._plugins)

    def clear(self) -> None:
        """Unregister every plugin (done for you when the test ends)."""
        self._plugins.clear()

    # -- running ------------------------------------------------------------

    def runner(self, **options: Any) -> Runner:
        """A :class:`Runner` over this queue with exactly the registered plugins."""
        return Runner(self.queue, self._plugins, **{**DEFAULT_RUNNER_OPTIONS, **options})

    def enqueue(self, type: str, payload: Any = None, **options: Any) -> Item:
        """Enqueue one item (see :meth:`Queue.enqueue`) and return it."""
        return self.queue.enqueue(type, payload, **options)

    def run_items(self, *items: ItemSpec, **runner_options: Any) -> list[Item]:
        """Give each item one try and return them as stored afterwards, in order.

        Each argument is an :class:`Item` or item id already enqueued, or a
        ``(type, payload)`` / ``(type, payload, priority)`` tuple to enqueue
        now. Items waiting for a retry are made due first, so calling this
        again with the same items is "the next try". Other due items in the
        queue are processed too.
        """
        ids = []
        for spec in items:
            if isinstance(spec, Item):
                ids.append(spec.id)
            elif isinstance(spec, int) and not isinstance(spec, bool):
                ids.append(spec)
            elif isinstance(spec, (tuple, list)) and len(spec) in (2, 3):
                priority = spec[2] if len(spec) == 3 else 0
                ids.append(self.enqueue(spec[0], spec[1], priority=priority).id)
            else:
                raise TypeError(f"run_items takes Items, item ids or (type, payload) tuples, not {spec!r:.100}")
        self.make_due(*ids)
        self.process(batch_size=max(len(ids), 1) + 1000, **runner_options)
        return [self.get(i) for i in ids]

    def process(self, batch_size: int = 1000, **runner_options: Any) -> BatchSummary:
        """Process one batch of due items: each gets one try."""
        runner = self.runner(**runner_options)
        try:
            return runner.process_batch(batch_size)
        finally:
            runner.close()

    def run(self, **runner_options: Any) -> BatchSummary:
        """Run until nothing is due (``Runner.run(burst=True)``). With the
        default ``retry_delay=0`` a failing item is retried until ``max_trials``."""
        runner = self.runner(**runner_options)
        try:
            return runner.run(burst=True)
        finally:
            runner.close()

    def make_due(self, *ids: int) -> int:
        """Make items that wait for a retry (or a delay) due now, trials and
        results unchanged; returns how many. Use it to skip a ``Retry-After``."""
        if not ids:
            return 0
        storage = self.queue.storage
        model = storage.Item
        # A test-only shortcut past the backoff: no public API moves run_after
        # without resetting trials (Queue.retry does).
        return (
            model.update(run_after=storage._time(utcnow()))
            .where(model.id.in_(list(ids)), model.status.in_([Status.PENDING, Status.NEED_RETRY]))
            .execute()
        )

    # -- reading back ---------------------------------------------------------

    def get(self, item: Item | int) -> Item:
        """The item as stored now."""
        return self.queue.get(item.id if isinstance(item, Item) else item)

    def results(self, item: Item | int) -> dict[str, bool]:
        """The item's results map: plugin name -> True (done) / False (failed last try)."""
        return dict(self.get(item).results)

    def errors(self, item: Item | int) -> dict[str, str]:
        """The item's last error per plugin (and ``"queuecore"`` for the runner's own)."""
        return dict(self.get(item).errors)

    def status(self, item: Item | int) -> Status:
        return self.get(item).status

    def retry_in(self, item: Item | int) -> float:
        """Seconds until the item is due again (0 when due); for checking ``Retry(after=...)``."""
        run_after = self.get(item).run_after
        if run_after is None:
            return 0.0
        return max(0.0, (run_after - utcnow()).total_seconds())


@pytest.fixture
def queuecore_queue(tmp_path: Path) -> Iterator[Queue]:
    """A fresh :class:`queuecore.Queue` on a SQLite file in ``tmp_path``."""
    queue = Queue(f"sqlite:///{tmp_path / 'queuecore-test.db'}")
    queue.init()
    try:
        yield queue
    finally:
        queue.close()


@pytest.fixture
def queuecore_harness(queuecore_queue: Queue) -> Iterator[Harness]:
    """A :class:`Harness` on ``queuecore_queue``; its plugins are unregistered after the test."""
    harness = Harness(queuecore_queue)
    try:
        yield harness
    finally:
        harness.clear()

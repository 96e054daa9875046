"""queuecore.testing: the fixtures plugin authors use."""

from __future__ import annotations

import pytest

from queuecore import PermanentError, PluginLoadError, Queue, Retry, Status, hookimpl
from queuecore.testing import Harness

pytest_plugins = ["pytester"]


class Recorder:
    """Accepts items of type "rec"; fails the first ``failures`` calls per item."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[int] = []

    @hookimpl
    def process_item(self, item):
        if item.type != "rec":
            return None
        self.calls.append(item.id)
        if self.calls.count(item.id) <= self.failures:
            raise ConnectionError(f"try {self.calls.count(item.id)} failed")
        return True


def test_queue_fixture_is_a_fresh_sqlite_file(queuecore_queue, tmp_path):
    assert isinstance(queuecore_queue, Queue)
    assert queuecore_queue.url.startswith("sqlite:///")
    assert str(tmp_path) in queuecore_queue.url
    assert sum(queuecore_queue.counts().values()) == 0


def test_run_items_returns_processed_items_in_order(queuecore_harness):
    rec = queuecore_harness.register("rec", Recorder())
    first = queuecore_harness.enqueue("rec", {"n": 1})
    items = queuecore_harness.run_items(("rec", {"n": 2}), first.id, ("rec", {"n": 3}, 5), first)
    assert [i.payload["n"] for i in items] == [2, 1, 3, 1]
    assert all(i.status is Status.DONE and i.results == {"rec": True} for i in items)
    assert sorted(rec.calls) == sorted({i.id for i in items})  # one try each


def test_run_items_rejects_what_is_not_an_item(queuecore_harness):
    with pytest.raises(TypeError, match="run_items takes"):
        queuecore_harness.run_items("rec")


def test_a_retry_that_later_succeeds(queuecore_harness):
    queuecore_harness.register("rec", Recorder(failures=1))
    [item] = queuecore_harness.run_items(("rec", None))
    assert item.status is Status.NEED_RETRY
    assert queuecore_harness.results(item) == {"rec": False}
    assert queuecore_harness.errors(item) == {"rec": "ConnectionError: try 1 failed"}
    [item] = queuecore_harness.run_items(item)
    assert queuecore_harness.status(item) is Status.DONE
    assert item.trials == 1 and item.errors == {}


def test_retry_after_is_kept_until_made_due(queuecore_harness):
    class Later:
        @hookimpl
        def process_item(self, item):
            raise Retry("busy", after=60)

    queuecore_harness.register("later", Later())
    [item] = queuecore_harness.run_items(("x", None))
    assert 50 < queuecore_harness.retry_in(item) <= 60
    assert queuecore_harness.process().claimed == 0
    assert queuecore_harness.make_due(item.id) == 1
    assert queuecore_harness.retry_in(item) == 0
    assert queuecore_harness.process().claimed == 1


def test_run_retries_until_max_trials(queuecore_harness):
    queuecore_harness.register("rec", Recorder(failures=100))
    item = queuecore_harness.enqueue("rec")
    summary = queuecore_harness.run()
    item = queuecore_harness.get(item)
    assert summary.claimed == 3 and item.status is Status.ERROR and item.trials == 3
    other = queuecore_harness.enqueue("rec")
    queuecore_harness.run(max_trials=1)
    assert queuecore_harness.get(other).trials == 1


def test_permanent_error(queuecore_harness):
    class Picky:
        @hookimpl
        def process_item(self, item):
            raise PermanentError("never")

    queuecore_harness.register("picky", Picky())
    [item] = queuecore_harness.run_items(("x", 1))
    assert item.status is Status.ERROR and item.errors["picky"] == "PermanentError: never"


def test_register_rejects_duplicates_and_invalid_plugins(queuecore_harness):
    queuecore_harness.register("rec", Recorder())
    with pytest.raises(PluginLoadError, match="already registered"):
        queuecore_harness.register("rec", Recorder())

    class Misspelled:
        @hookimpl
        def process_item(self, itme):
            return True

    with pytest.raises(PluginLoadError, match="'bad'"):
        queuecore_harness.register("bad", Misspelled())
    assert list(queuecore_harness.plugins) == ["rec"]
    queuecore_harness.unregister("rec")
    assert queuecore_harness.plugins == {}


def test_register_entry_point(queuecore_harness):
    with pytest.raises(PluginLoadError, match="no installed distribution"):
        queuecore_harness.register_entry_point("no-such-plugin")
    try:
        import queuecore_jsonl
    except ImportError:
        pytest.skip("queuecore-jsonl is not installed")
    assert queuecore_harness.register_entry_point("jsonl") is queuecore_jsonl


def test_runner_has_exactly_the_registered_plugins(queuecore_harness):
    assert queuecore_harness.runner().plugin_set.names() == []
    queuecore_harness.register("rec", Recorder())
    runner = queuecore_harness.runner(max_trials=7)
    assert runner.plugin_set.names() == ["rec"] and runner.max_trials == 7


def test_harness_on_any_queue(tmp_path):
    harness = Harness(Queue(f"sqlite:///{tmp_path / 'q.db'}"))
    harness.register("rec", Recorder())
    assert harness.run_items(("rec", 1))[0].status is Status.DONE
    harness.clear()
    assert harness.plugins == {}


def test_fixtures_come_with_the_install_and_unregister_after_each_test(pytester):
    # No conftest: the fixtures arrive through the pytest11 entry point.
    pytester.makepyfile(
        """
        from queuecore import Status, hookimpl

        class Ok:
            @hookimpl
            def process_item(self, item):
                return True

        seen = []

        def test_one(queuecore_harness):
            seen.append(queuecore_harness)
            queuecore_harness.register("ok", Ok())
            assert queuecore_harness.run_items(("t", 1))[0].status is Status.DONE
            raise AssertionError("fails on purpose")

        def test_two(queuecore_harness):
            assert seen[0].plugins == {}
            assert queuecore_harness.plugins == {}
            assert sum(queuecore_harness.queue.counts().values()) == 0
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)

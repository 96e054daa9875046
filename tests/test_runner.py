"""Runner: the hook contract, the status machine, leases and fencing — on every backend."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest

from queuecore import ConfigurationError, PermanentError, Queue, Retry, Runner, Status, hookimpl
from queuecore.storage import utcnow


class Answers:
    """A plugin that answers from a script: one value (or exception) per call, then the last one forever."""

    def __init__(self, *answers, types=None):
        self.answers = list(answers) or [True]
        self.calls: list[tuple[int, int]] = []  # (item id, trials seen)
        self.types = types
        self.lock = threading.Lock()

    @hookimpl
    def process_item(self, item, results):
        if self.types is not None and item.type not in self.types:
            return None
        with self.lock:
            self.calls.append((item.id, item.trials))
            answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException) or (isinstance(answer, type) and issubclass(answer, BaseException)):
            raise answer
        return answer


def make_runner(queue, plugins, **options):
    return Runner(queue, plugins=plugins, **{"retry_delay": 0, **options})


def test_item_done_when_every_accepting_plugin_returns_true(queue):
    item = queue.enqueue("t", {"x": 1})
    a, b = Answers(True), Answers(True)
    summary = make_runner(queue, {"a": a, "b": b}).run(burst=True)
    assert (summary.claimed, summary.done) == (1, 1)
    got = queue.get(item.id)
    assert got.status is Status.DONE
    assert got.results == {"a": True, "b": True}
    assert got.errors == {}
    assert got.trials == 0
    assert got.lasttry_dtime is not None


def test_a_retry_calls_only_the_plugins_that_have_not_succeeded(queue):
    item = queue.enqueue("t", 1)
    ok, flaky = Answers(True), Answers(False, ValueError("boom"), True)
    runner = make_runner(queue, {"ok": ok, "flaky": flaky})
    runner.run(burst=True)
    assert [c[0] for c in ok.calls] == [item.id]
    assert [trials for _, trials in flaky.calls] == [0, 1, 2]
    got = queue.get(item.id)
    assert got.status is Status.DONE and got.results == {"ok": True, "flaky": True}
    assert got.trials == 2
    assert got.errors == {}  # a success clears the plugin's last error


def test_failures_are_recorded_per_plugin(queue):
    item = queue.enqueue("t", 1)
    runner = make_runner(
        queue,
        {"false": Answers(False), "raises": Answers(ValueError("bad value")), "ok": Answers(True), "none": Answers(None)},
        retry_delay=60,
    )
    summary = runner.process_batch()
    assert summary.retried == 1
    got = queue.get(item.id)
    assert got.status is Status.NEED_RETRY
    assert got.trials == 1
    assert got.results == {"false": False, "raises": False, "ok": True}
    assert got.errors == {"false": "returned False", "raises": "ValueError: bad value"}


@pytest.mark.parametrize("garbage", ["yes", 1, 0, [], {"done": True}])
def test_a_garbage_answer_is_a_failure_naming_plugin_and_value(queue, garbage):
    item = queue.enqueue("t", 1)
    make_runner(queue, {"weird": Answers(garbage)}, retry_delay=60).process_batch()
    got = queue.get(item.id)
    assert got.status is Status.NEED_RETRY
    assert "plugin 'weird' returned" in got.errors["weird"] and repr(garbage) in got.errors["weird"]


def test_permanent_error_sends_the_item_to_error_at_once(queue):
    item = queue.enqueue("t", 1)
    other = Answers(True)
    make_runner(queue, {"perm": Answers(PermanentError("HTTP 404 Not Found")), "other": other}, max_trials=10).run(
        burst=True
    )
    got = queue.get(item.id)
    assert got.status is Status.ERROR
    assert got.trials == 1  # a PermanentError counts as a try
    assert got.errors["perm"] == "PermanentError: HTTP 404 Not Found"
    assert got.results == {"perm": False, "other": True}  # one plugin failing never stops the others


def test_max_trials_ends_in_error_with_a_reason(queue):
    item = queue.enqueue("t", 1)
    failing = Answers(RuntimeError("still down"))
    make_runner(queue, {"f": failing}, max_trials=3).run(burst=True)
    got = queue.get(item.id)
    assert got.status is Status.ERROR
    assert got.trials == 3
    assert len(failing.calls) == 3
    assert got.errors["f"] == "RuntimeError: still down"
    assert got.errors["queuecore"] == "gave up after 3 tries (max_trials=3)"


def test_an_item_no_plugin_accepts_is_a_failed_try_not_done(queue):
    item = queue.enqueue("orphan", 1)
    make_runner(queue, {"mail": Answers(True, types={"mail"})}, max_trials=2).run(burst=True)
    got = queue.get(item.id)
    assert got.status is Status.ERROR
    assert got.trials == 2
    assert "no plugin accepted type 'orphan'" in got.errors["queuecore"]
    assert "mail" in got.errors["queuecore"]


def test_an_unaccepted_item_is_reported_like_a_plugin_failure(queue):
    item = queue.enqueue("orphan", 1)
    reports = []
    Runner(queue, plugins={}, on_failure=reports.append, retry_delay=60).process_batch()
    assert [(r.item_id, r.plugin) for r in reports] == [(item.id, "queuecore")]
    assert "no plugin accepted type 'orphan'" in reports[0].error


def test_installing_the_missing_plugin_later_lets_the_item_proceed(queue):
    item = queue.enqueue("late", 1)
    make_runner(queue, {}, max_trials=5).process_batch()
    assert queue.get(item.id).status is Status.NEED_RETRY
    make_runner(queue, {"late": Answers(True)}, max_trials=5).process_batch()
    got = queue.get(item.id)
    assert got.status is Status.DONE and "queuecore" not in got.errors


def test_backoff_grows_exponentially_with_jitter_never_below_half(queue):
    runner = make_runner(queue, {}, retry_delay=10, max_retry_delay=100)
    for trials, full in ((1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (30, 100)):
        delays = [runner.backoff(trials) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays), (trials, min(delays), max(delays))
        assert max(delays) - min(delays) > full / 10  # there is jitter
    assert make_runner(queue, {}, retry_delay=0).backoff(5) == 0


def test_a_failed_try_is_due_again_after_the_backoff(queue):
    item = queue.enqueue("t", 1)
    make_runner(queue, {"f": Answers(False)}, retry_delay=30).process_batch()
    got = queue.get(item.id)
    wait = (got.run_after - got.lasttry_dtime).total_seconds()
    assert 15 <= wait <= 30
    assert make_runner(queue, {"f": Answers(True)}).process_batch().claimed == 0  # not due yet


def test_retry_after_from_a_plugin_is_honoured(queue):
    item = queue.enqueue("t", 1)
    make_runner(queue, {"hook": Answers(Retry("429 Too Many Requests", after=120))}, retry_delay=1).process_batch()
    got = queue.get(item.id)
    assert got.errors["hook"] == "Retry: 429 Too Many Requests"
    assert (got.run_after - got.lasttry_dtime).total_seconds() >= 120


def test_trials_seen_by_plugins_count_earlier_tries(queue):
    queue.enqueue("t", 1)
    plugin = Answers(False, False, True)
    make_runner(queue, {"p": plugin}).run(burst=True)
    assert [trials for _, trials in plugin.calls] == [0, 1, 2]


def test_plugins_are_called_in_pluggy_order(queue):
    order = []

    def plugin(name, **marker):
        class P:
            @hookimpl(**marker)
            def process_item(self, item):
                order.append(name)
                return True

        return P()

    queue.enqueue("t", 1)
    plugins = {"last": plugin("last", trylast=True), "first": plugin("first", tryfirst=True), "mid": plugin("mid")}
    make_runner(queue, plugins).run(burst=True)
    assert order == ["first", "mid", "last"]


def test_implementations_get_only_the_arguments_they_declare(queue):
    seen = {}

    class ItemOnly:
        @hookimpl
        def process_item(self, item):
            seen["item_only"] = item.payload
            return True

    class ResultsOnly:
        @hookimpl
        def process_item(self, results):
            seen["results_only"] = dict(results)
            return True

    class Reversed:
        @hookimpl
        def process_item(self, results, item):
            seen["reversed"] = (item.type, type(results).__name__)
            return True

    class Nothing:
        @hookimpl
        def process_item(self):
            seen["nothing"] = True
            return True

    queue.enqueue("kind", {"p": 1})
    plugins = {"a": ItemOnly(), "b": ResultsOnly(), "c": Reversed(), "d": Nothing()}
    make_runner(queue, plugins).run(burst=True)
    assert seen["item_only"] == {"p": 1}
    assert seen["reversed"] == ("kind", "mappingproxy")
    assert seen["nothing"] is True
    assert "results_only" in seen


def test_results_are_read_only_to_plugins(queue):
    item = queue.enqueue("t", 1)

    class Meddler:
        @hookimpl
        def process_item(self, item, results):
            results["other"] = True  # raises: a plugin only answers for itself
            return True

    make_runner(queue, {"meddler": Meddler(), "other": Answers(False)}, retry_delay=60).process_batch()
    got = queue.get(item.id)
    assert got.results == {"meddler": False, "other": False}
    assert got.errors["meddler"].startswith("TypeError")


def test_module_plugins_work(queue, tmp_path, monkeypatch):
    (tmp_path / "module_plugin.py").write_text(
        "from queuecore import hookimpl\n\n@hookimpl\ndef process_item(item):\n    return item.payload == 'yes'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import module_plugin

    yes = queue.enqueue("t", "yes")
    make_runner(queue, {"mod": module_plugin}).process_batch()
    assert queue.get(yes.id).status is Status.DONE


@pytest.mark.parametrize("exc", [SystemExit(3), GeneratorExit(), type("Custom", (BaseException,), {})("x")])
def test_base_exceptions_from_plugins_are_failures_and_the_run_goes_on(queue, exc):
    first = queue.enqueue("t", 1)
    second = queue.enqueue("t", 2)
    after = Answers(True)
    summary = make_runner(queue, {"bad": Answers(exc, True), "after": after}, retry_delay=60).process_batch()
    assert summary.claimed == 2
    assert queue.get(first.id).status is Status.NEED_RETRY
    assert queue.get(first.id).errors["bad"].startswith(type(exc).__name__)
    assert queue.get(second.id).status is Status.DONE
    assert len(after.calls) == 2


def test_claims_take_highest_priority_then_oldest(queue):
    low = queue.enqueue_many([("t", i) for i in range(3)])
    high = queue.enqueue("t", "high", priority=5).id
    mid = queue.enqueue("t", "mid", priority=1).id
    order = []

    class Recorder:
        @hookimpl
        def process_item(self, item):
            order.append(item.id)
            return True

    make_runner(queue, {"r": Recorder()}).process_batch(batch_size=3)
    assert order == [high, mid, low[0]]
    make_runner(queue, {"r": Recorder()}).process_batch(batch_size=10)
    assert order[3:] == low[1:]


def test_delayed_items_are_not_claimed_before_they_are_due(queue):
    queue.enqueue("t", 1, delay=3600)
    assert make_runner(queue, {"p": Answers(True)}).run(burst=True).claimed == 0


def test_an_expired_lease_makes_the_item_claimable_and_counts_as_a_try(queue):
    item = queue.enqueue("t", 1)
    now = utcnow()
    # A runner that claimed and died: its lease is already over.
    claimed = queue.storage.claim("dead-runner", now, now - dt.timedelta(seconds=1), 10)
    assert [r[0] for r in claimed] == [item.id]  # ClaimedRow: id first
    assert queue.get(item.id).status is Status.IN_PROGRESS
    plugin = Answers(True)
    make_runner(queue, {"p": plugin}).run(burst=True)
    assert plugin.calls == [(item.id, 1)]
    assert queue.get(item.id).status is Status.DONE


def test_a_live_lease_keeps_other_runners_off(queue):
    queue.enqueue("t", 1)
    now = utcnow()
    queue.storage.claim("busy-runner", now, now + dt.timedelta(seconds=300), 10)
    assert make_runner(queue, {"p": Answers(True)}).process_batch().claimed == 0


def test_an_item_that_keeps_killing_runners_ends_in_error(queue):
    item = queue.enqueue("t", 1)
    for _ in range(3):
        now = utcnow()
        queue.storage.claim("doomed", now, now - dt.timedelta(seconds=1), 10)
    plugin = Answers(True)
    make_runner(queue, {"p": plugin}, max_trials=3).run(burst=True)
    got = queue.get(item.id)
    assert plugin.calls == []
    assert got.status is Status.ERROR
    assert got.trials == 3
    assert "lost its lease" in got.errors["queuecore"]


def test_a_stale_runner_cannot_overwrite_newer_work(queue):
    item = queue.enqueue("t", 1)
    now = utcnow()
    (stale,) = queue.storage.claim("stale", now, now - dt.timedelta(seconds=1), 10)
    make_runner(queue, {"p": Answers(True)}).run(burst=True)
    assert queue.get(item.id).status is Status.DONE
    # The stale runner wakes up and writes back its (failed) outcome with its old token.
    written = queue.storage.write_back(
        [(Status.NEED_RETRY, 1, '{"p": false}', '{"p": "late"}', now, now, stale[0], stale[-1])]  # ClaimedRow: id first, claim token last
    )
    assert written == 0
    got = queue.get(item.id)
    assert got.status is Status.DONE and got.results == {"p": True}


def test_leases_are_renewed_while_a_plugin_runs_long(queue):
    item = queue.enqueue("t", 1)
    started = threading.Event()

    class Slow:
        @hookimpl
        def process_item(self, item):
            started.set()
            time.sleep(1.6)
            return True

    runner = make_runner(queue, {"slow": Slow()}, lease_seconds=0.4)
    thread = threading.Thread(target=runner.process_batch)
    thread.start()
    started.wait(5)
    rival = Answers(True)
    rival_claims = 0
    other_queue = Queue(queue.url)
    while thread.is_alive():
        rival_claims += make_runner(other_queue, {"slow": rival}).process_batch().claimed
        time.sleep(0.05)
    thread.join()
    other_queue.close()
    assert rival_claims == 0 and rival.calls == []
    got = queue.get(item.id)
    assert got.status is Status.DONE and got.trials == 0


def test_a_corrupted_payload_sends_only_that_item_to_error(sqlite_url):
    queue = Queue(sqlite_url)
    good = queue.enqueue("t", 1)
    bad = queue.enqueue("t", 2)
    queue.database.execute_sql("UPDATE queuecore_item SET payload = '{not json' WHERE id = ?", (bad.id,))
    plugin = Answers(True)
    make_runner(queue, {"p": plugin}).run(burst=True)
    assert queue.get(good.id).status is Status.DONE
    broken = queue.storage.get_row(bad.id)
    assert broken.status == Status.ERROR
    assert "payload is not valid JSON" in broken.errors["queuecore"]
    assert [c[0] for c in plugin.calls] == [good.id]


def test_stop_finishes_the_call_in_hand_and_releases_the_rest(queue):
    ids = queue.enqueue_many([("t", i) for i in range(5)])
    runner = None

    class StopsDuringFirst:
        @hookimpl(tryfirst=True)
        def process_item(self, item):
            runner.stop()  # as SIGTERM would, while this call is in hand
            return True

    never = Answers(True)
    runner = make_runner(queue, {"first": StopsDuringFirst(), "second": never})
    summary = runner.run()
    assert summary.claimed == 5 and summary.released == 5
    assert never.calls == []
    first = queue.get(ids[0])
    assert first.status is Status.PENDING
    assert first.results == {"first": True}  # its answer is kept; no try counted
    assert first.trials == 0
    for item_id in ids[1:]:
        rest = queue.get(item_id)
        assert rest.status is Status.PENDING and rest.trials == 0 and rest.results == {}
    assert queue.counts()[Status.IN_PROGRESS] == 0
    # A new runner finishes them, calling "first" only where it had not answered.
    make_runner(queue, {"first": Answers(True), "second": never}).run(burst=True)
    assert queue.counts()[Status.DONE] == 5
    assert len(never.calls) == 5


def test_threads_process_a_batch_each_item_once(queue):
    ids = queue.enqueue_many([("t", i) for i in range(120)])
    seen_threads = set()

    class Sleepy:
        def __init__(self):
            self.calls = []
            self.lock = threading.Lock()

        @hookimpl
        def process_item(self, item):
            time.sleep(0.01)
            with self.lock:
                self.calls.append(item.id)
                seen_threads.add(threading.current_thread().name)
            return True

    plugin = Sleepy()
    summary = make_runner(queue, {"s": plugin}, concurrency=8).run(burst=True, batch_size=50)
    assert summary.done == 120
    assert sorted(plugin.calls) == ids
    assert len(seen_threads) > 1
    assert queue.counts()[Status.DONE] == 120


def test_plugin_counters_add_up(queue):
    queue.enqueue_many([("t", i) for i in range(4)])
    make_runner(queue, {"ok": Answers(True), "flaky": Answers(False, True)}).run(burst=True)
    stats = {s.plugin: (s.successes, s.failures) for s in queue.plugin_stats()}
    assert stats == {"ok": (4, 0), "flaky": (4, 1)}  # one failure, then four successes


def test_on_failure_reports_item_plugin_and_error(queue):
    item = queue.enqueue("t", 1)
    reports = []
    Runner(queue, plugins={"f": Answers(KeyError("k"))}, on_failure=reports.append, retry_delay=60).process_batch()
    assert [(r.item_id, r.plugin, r.error) for r in reports] == [(item.id, "f", "KeyError: 'k'")]


@pytest.mark.parametrize(
    "option, value",
    [("max_trials", 0), ("retry_delay", -1), ("lease_seconds", 0), ("concurrency", 0), ("max_trials", 2.5)],
)
def test_bad_runner_settings_are_refused(queue, option, value):
    with pytest.raises(ConfigurationError, match=option):
        Runner(queue, plugins={}, **{option: value})

"""Property-based tests of the status machine (hypothesis).

Random sequences of tries, each giving every plugin an outcome (True, False,
None, an exception, PermanentError, Retry, a garbage value) and possibly an
interruption: a stop request in the middle of the plugins (SIGTERM), or the
runner dying before its write-back (its lease then expires). After every try
the item's row is checked against a model of the machine and these
invariants: a plugin whose True was written back is never called again; trials
never exceed max_trials; an item in error carries a reason; every failed
plugin has an error; status codes stay in 0..4; done and error are final.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queuecore import PermanentError, Queue, Retry, Runner, Status, hookimpl

PLUGINS = ("p0", "p1", "p2")
OUTCOMES = ("true", "false", "none", "raise", "permanent", "retry", "garbage")


class Scripted:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.answer = "true"
        self.stop_runner = None

    @hookimpl
    def process_item(self, item):
        self.log.append(self.name)
        if self.stop_runner is not None:
            self.stop_runner()
        answer = self.answer
        if answer == "raise":
            raise RuntimeError("boom")
        if answer == "permanent":
            raise PermanentError("bad payload")
        if answer == "retry":
            raise Retry("later")
        return {"true": True, "false": False, "none": None, "garbage": "maybe"}[answer]


a_try = st.fixed_dictionaries(
    {
        "answers": st.fixed_dictionaries({p: st.sampled_from(OUTCOMES) for p in PLUGINS}),
        "interrupt": st.sampled_from(["none", "none", "none", "stop", "die"]),
        "stop_at": st.integers(0, len(PLUGINS) - 1),
    }
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(max_trials=st.integers(1, 4), tries=st.lists(a_try, min_size=1, max_size=7))
def test_status_machine_invariants(max_trials, tries):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q.db"
        q = Queue(f"sqlite:///{path}")
        item_id = q.enqueue("t", {"x": 1}).id
        log: list[str] = []
        plugins = {name: Scripted(name, log) for name in PLUGINS}
        # Model of the row.
        trials = 0
        confirmed: set[str] = set()  # plugins whose True is written back
        final = False
        abandoned = False  # a runner died holding the item; its lease has expired

        for step in tries:
            runner = Runner(q, plugins=plugins, max_trials=max_trials, retry_delay=0)
            order = list(runner.plugin_names)
            for plugin in plugins.values():
                plugin.answer = step["answers"][plugin.name]
                plugin.stop_runner = None
            if step["interrupt"] == "stop":
                plugins[order[step["stop_at"]]].stop_runner = runner.stop
            if step["interrupt"] == "die":
                runner.storage.write_back = lambda *args, **kwargs: 0  # dies before writing back
            log.clear()
            before = q.get(item_id)
            try:
                runner.process_batch()
            finally:
                runner.close()
                runner.storage.__dict__.pop("write_back", None)  # the storage is the queue's, shared
            after = q.get(item_id)

            # -- invariants ----------------------------------------------------
            assert 0 <= int(after.status) <= 4
            assert after.trials <= max_trials
            assert not confirmed.intersection(log), f"{confirmed & set(log)} called again after True"
            if final:
                assert log == [] and after == before, "a done or error item changed"
                continue
            if after.status == Status.ERROR:
                assert after.errors, "error without a reason"
            for name, ok in after.results.items():
                if ok is False:
                    assert after.errors.get(name), f"{name} failed without an error"

            # -- the model -----------------------------------------------------
            if abandoned:
                trials += 1  # the expired lease counted as a try
                abandoned = False
                if trials >= max_trials:
                    trials = max_trials  # a claim never counts past max_trials
                    assert log == []
                    if step["interrupt"] == "die":  # died before writing the error back
                        assert after.status == Status.IN_PROGRESS and after.trials == max_trials
                        abandoned = True
                        _expire_lease(path, item_id)
                        continue
                    assert after.status == Status.ERROR
                    assert "lost its lease" in after.errors["queuecore"]
                    final = True
                    continue
            to_call = [p for p in order if p not in confirmed]
            if step["interrupt"] == "stop":
                stop_index = order.index(order[step["stop_at"]])
                stopper = order[step["stop_at"]]
                if stopper in confirmed:  # never called, so never asked to stop
                    called = to_call
                else:
                    called = [p for p in to_call if order.index(p) <= stop_index]
            else:
                called = to_call
            assert log == called
            if step["interrupt"] == "die":
                assert after.status == Status.IN_PROGRESS
                abandoned = True
                _expire_lease(path, item_id)
                continue
            answers = {p: step["answers"][p] for p in called}
            accepted = bool(confirmed) or any(a != "none" for a in answers.values())
            failed = any(a not in ("true", "none") for a in answers.values()) or not accepted
            permanent = any(a == "permanent" for a in answers.values())
            if step["interrupt"] == "stop" and called != to_call:
                # Stopped with plugins left to call: released, no try counted.
                assert after.status == Status.PENDING and after.trials == trials
            elif not failed:
                assert after.status == Status.DONE and after.trials == trials
                final = True
            else:
                trials += 1
                if permanent or trials >= max_trials:
                    assert after.status == Status.ERROR
                    final = True
                else:
                    assert after.status == Status.NEED_RETRY
                assert after.trials == trials
                if not accepted:
                    assert "no plugin accepted" in after.errors["queuecore"]
            assert after.lease_owner is None
            confirmed |= {p for p in called if answers[p] == "true"}
            assert {p for p, ok in after.results.items() if ok} == confirmed
        q.close()


def _expire_lease(path: Path, item_id: int) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE queuecore_item SET run_after = '2000-01-01 00:00:00.000000', "
            "lease_expires = '2000-01-01 00:00:00.000000' WHERE id = ?",
            (item_id,),
        )

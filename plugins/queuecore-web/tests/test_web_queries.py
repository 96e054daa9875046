"""The dashboard's own queries on every backend, and that they stay on the indexes."""

from __future__ import annotations

import datetime as dt
import json

from queuecore import Status

from queuecore_web import queries


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _finish(queue, ids, status, when, errors=None):
    """Mark items done/error as last tried at ``when`` (what the runner's write-back does)."""
    backend = queue.storage.backend
    p = "?" if backend == "sqlite" else "%s"
    j = "CAST(%s AS jsonb)" if backend == "postgres" else p
    value = when.isoformat(" ", "microseconds") if backend == "sqlite" else when
    marks = ", ".join([p] * len(ids))
    # Raw SQL: peewee's JSON cast in an UPDATE is not valid on MariaDB.
    queue.database.execute_sql(
        f"UPDATE queuecore_item SET status = {p}, lasttry_dtime = {p}, errors = {j}, trials = 1 WHERE id IN ({marks})",
        (int(status), value, json.dumps(errors or {}), *ids),
    )


def test_throughput_buckets_by_minute(any_queue):
    q = any_queue
    now = _now().replace(second=30, microsecond=0)
    ids = q.enqueue_many([("t", {"n": i}) for i in range(10)])
    _finish(q, ids[:3], Status.DONE, now)  # this minute
    _finish(q, ids[3:5], Status.DONE, now - dt.timedelta(minutes=5))
    _finish(q, ids[5:6], Status.ERROR, now - dt.timedelta(minutes=5, seconds=10))
    _finish(q, ids[6:7], Status.DONE, now - dt.timedelta(hours=5))  # outside the window
    _finish(q, ids[7:8], Status.NEED_RETRY, now)  # not finished: not counted
    t = queries.throughput(q, hours=1, now=now)
    assert len(t.minutes) == 60
    assert t.minutes[-1] == now.replace(second=0)
    assert t.done[-1] == 3 and t.error[-1] == 0
    assert t.done[-6] == 2 and t.error[-6] == 1
    assert sum(t.done) == 5 and sum(t.error) == 1
    data = t.to_dict()
    assert data["minutes"][0] == (now.replace(second=0) - dt.timedelta(minutes=59)).isoformat() + "+00:00"


def test_failures_group_by_plugin_and_error(any_queue):
    q = any_queue
    now = _now()
    ids = q.enqueue_many([("mail", {}) for _ in range(6)] + [("doc", {})])
    _finish(q, ids[0:3], Status.ERROR, now, {"smtp": "ConnectionError: refused", "queuecore": "gave up after 5 tries"})
    _finish(q, ids[3:5], Status.NEED_RETRY, now, {"smtp": "ConnectionError: refused"})
    _finish(q, ids[5:6], Status.NEED_RETRY, now, {"smtp": "ConnectionError: refused", "index": "KeyError: 'x'"})
    _finish(q, ids[6:7], Status.ERROR, now, {"queuecore": "no plugin accepted type 'doc' (plugins: smtp)"})
    found = queries.failures(q)
    by = {(g.plugin, g.error): g for g in found.groups}
    assert set(by) == {("smtp", "ConnectionError: refused"), ("index", "KeyError: 'x'"),
                       ("queuecore", "no plugin accepted type 'doc' (plugins: smtp)")}
    smtp = by[("smtp", "ConnectionError: refused")]
    assert found.groups[0] is smtp  # largest first
    assert smtp.count == 6 and smtp.by_status == {"need_retry": 3, "error": 3}
    assert sorted(i.id for i in smtp.items) == sorted(ids[:6])
    assert smtp.types == {"mail": 6}
    assert found.find(smtp.key) is smtp and found.find("nope") is None
    assert found.scanned == 7 and not found.truncated


def test_failures_scan_takes_the_newest(any_queue):
    q = any_queue
    now = _now()
    ids = q.enqueue_many([("t", {}) for _ in range(5)])
    for n, item_id in enumerate(ids):
        status = Status.ERROR if n % 2 else Status.NEED_RETRY
        _finish(q, [item_id], status, now - dt.timedelta(minutes=n), {"p": f"E{n}"})
    found = queries.failures(q, scan=3)
    assert found.scanned == 3 and found.truncated
    assert sorted(g.error for g in found.groups) == ["E0", "E1", "E2"]


def test_group_summary_is_one_short_line():
    group = queries.FailureGroup("p", "Traceback: boom\n  line 2\n" + "x" * 500)
    assert group.summary == "Traceback: boom"
    long = queries.FailureGroup("p", "y" * 500)
    assert len(long.summary) == 200 and long.summary.endswith("…")
    assert queries.FailureGroup("p", "  ").summary == "(no message)"
    assert queries.group_key("a", "b") != queries.group_key("a\0b", "")


def _plan(queue, query) -> str:
    sql, params = query.sql()
    rows = queue.database.execute_sql("EXPLAIN QUERY PLAN " + sql, params).fetchall()
    return " | ".join(str(r[-1]) for r in rows)


def test_sqlite_plans_use_the_status_lasttry_index(queue):
    """Neither query scans the table: both walk the (status, lasttry_dtime) index."""
    Item = queue.storage.Item
    minute = queries._minute_expression("sqlite", Item.lasttry_dtime)
    import peewee

    history = (
        Item.select(Item.status, minute, peewee.fn.COUNT(peewee.SQL("*")))
        .where(queue.storage.tried_only(), Item.status.in_([3, 4]), Item.lasttry_dtime >= "2026-01-01")
        .group_by(Item.status, minute)
    )
    plan = _plan(queue, history)
    assert "queuecore_item_status_lasttry_dtime" in plan and "COVERING" in plan, plan
    assert "SCAN queuecore_item " not in plan + " "
    newest = (
        Item.select(Item.id, Item.errors)
        .where(queue.storage.tried_only(), Item.status == 4)
        .order_by(Item.lasttry_dtime.desc())
        .limit(10)
    )
    plan = _plan(queue, newest)
    assert "queuecore_item_status_lasttry_dtime" in plan, plan
    assert "TEMP B-TREE" not in plan  # no sort

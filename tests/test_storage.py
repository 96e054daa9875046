"""Storage: the claim's plan on each backend, URLs, schema, and PostgreSQL's LISTEN/NOTIFY."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time

import hypothesis
import pytest
from hypothesis import strategies as st

from queuecore import Queue, Runner, Status, hookimpl
from queuecore import runner as runner_module
from queuecore.storage import decode_claimed_json, redact_url, utcnow


def test_a_postgres_claim_finds_its_rows_by_key_in_a_large_backlog(postgres_url):
    queue = Queue(postgres_url)
    queue.enqueue_many([("t", i) for i in range(20_000)])
    queue.database.execute_sql("ANALYZE queuecore_item")
    plan = queue.storage.explain_claim()
    # The update finds the chosen ids through the primary key; a join would
    # scan the whole table for every batch.
    assert "Seq Scan" not in plan and "Join" not in plan, plan
    assert "queuecore_item_pkey" in plan, plan
    queue.close()


def test_a_claim_reads_neither_done_rows_nor_sorts_the_table(queue):
    ids = queue.enqueue_many([("t", i) for i in range(5000)])
    item_model = queue.storage.Item
    item_model.update(status=Status.DONE).where(item_model.id <= ids[-20]).execute()
    backend = queue.storage.backend
    if backend == "postgres":
        queue.database.execute_sql("ANALYZE queuecore_item")
    elif backend == "mysql":
        queue.database.execute_sql("ANALYZE TABLE queuecore_item")
    plan = queue.storage.explain_claim()
    if backend == "sqlite":
        # Walks the partial index (claimable rows only) in ORDER BY order: no sort step.
        assert "USING INDEX queuecore_item_claim" in plan or "USING COVERING INDEX queuecore_item_claim" in plan
        assert "TEMP B-TREE" not in plan
    elif backend == "postgres":
        assert "Seq Scan" not in plan
        assert "queuecore_item_claim" in plan or "(status < 3)" in plan
    else:
        assert "queuecore_item_claim" in plan and " range " in f" {plan} "
        assert "filesort" not in plan


def test_claimed_rows_come_back_in_priority_then_age_order(queue):
    queue.enqueue_many([("t", i, i % 3) for i in range(30)])
    now = utcnow()
    rows = queue.storage.claim("me", now, now + dt.timedelta(seconds=60), 30)
    keys = [(-r[6], r[0]) for r in rows]  # ClaimedRow: (id, ..., priority at 6, ...)
    assert keys == sorted(keys) and len(rows) == 30


def test_schema_version_is_recorded_and_a_newer_one_refused(db_url):
    queue = Queue(db_url)
    queue.init()
    queue.storage.Schema.update(value="99").where(queue.storage.Schema.key == "version").execute()
    fresh = Queue(db_url)
    with pytest.raises(ValueError, match="version 99, newer than this queuecore understands"):
        fresh.init()


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql://app:hunter2@db:5432/q", "postgresql://app:***@db:5432/q"),
        ("mysql://root@db/q", "mysql://root@db/q"),
        ("sqlite:///q.db", "sqlite:///q.db"),
    ],
)
def test_passwords_are_redacted(url, shown):
    assert redact_url(url) == shown


def test_unreachable_server_is_a_connection_error_without_password():
    import peewee

    queue = Queue("postgresql://postgres:topsecret@127.0.0.1:1/nothing")
    with pytest.raises(peewee.OperationalError) as caught:
        queue.counts()
    assert "topsecret" not in str(caught.value)


def test_an_idle_postgres_runner_is_woken_by_notify(monkeypatch, postgres_url):
    """With polling slowed to 60 s, only the NOTIFY sent by enqueue can start the item promptly."""
    url = postgres_url
    queue = Queue(url)
    queue.init()
    monkeypatch.setattr(runner_module, "IDLE_POLL_MIN", 60.0)
    monkeypatch.setattr(runner_module, "IDLE_POLL_MAX", 60.0)
    called = threading.Event()
    latencies = []

    class Stamp:
        @hookimpl
        def process_item(self, item):
            latencies.append(time.time() - item.payload["sent"])
            called.set()
            return True

    runner = Runner(queue, plugins={"stamp": Stamp()})
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)  # the runner finds nothing and starts waiting
        for _ in range(3):
            called.clear()
            Queue(url).enqueue("t", {"sent": time.time()})
            assert called.wait(10), "an enqueue did not wake the idle runner"
            time.sleep(0.2)
    finally:
        runner.stop()
        thread.join(10)
    assert len(latencies) == 3
    assert max(latencies) < 10
    assert queue.counts()[Status.DONE] == 3


def test_a_database_user_without_ddl_rights_can_use_an_existing_queue(postgres_url):
    """Deployments often run the app as a user that may not create tables: only `init` needs that."""
    import psycopg

    Queue(postgres_url).init()
    role = "qc_app_user"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            conn.execute(f"DROP OWNED BY {role}")  # left by an interrupted run
            conn.execute(f"DROP ROLE {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
        conn.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}")
    app_url = postgres_url.replace("postgresql://postgres@", f"postgresql://{role}@")
    try:
        queue = Queue(app_url)
        item = queue.enqueue("t", {"by": role})
        Runner(queue, plugins={"p": _AlwaysDone()}).run(burst=True)
        assert queue.get(item.id).status is Status.DONE
        queue.close()
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
            )
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


class _AlwaysDone:
    @hookimpl
    def process_item(self):
        return True


def test_runner_status_changes_leave_pending_rows_out_of_the_tried_index(sqlite_url):
    """A pending item is in no index but the claim's: its claim and first write-back are cheap."""
    queue = Queue(sqlite_url)
    queue.enqueue_many([("t", i) for i in range(3)])
    db = queue.database
    in_tried_index = "SELECT COUNT(*) FROM queuecore_item INDEXED BY queuecore_item_status_lasttry_dtime WHERE status >= 2"
    assert db.execute_sql(in_tried_index).fetchone()[0] == 0
    Runner(queue, plugins={"p": _AlwaysDone()}).run(burst=True)
    assert db.execute_sql(in_tried_index).fetchone()[0] == 3
    # Operators' queries on tried items use it.
    errors = queue.storage.Item.select().where(queue.storage.tried_only(), queue.storage.Item.status == 4)
    sql, params = errors.sql()
    plan = " ".join(str(r[-1]) for r in db.execute_sql("EXPLAIN QUERY PLAN " + sql, params))
    assert "queuecore_item_status_lasttry_dtime" in plan


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    st.one_of(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
            max_leaves=12,
        ).map(json.dumps),
        st.text(max_size=30),
        st.sampled_from([" {}", "{} ", '{"a": 1} x', "\n[1]\n", "{", "", "NaN", "[1,]", '"\\ud800"', "{}{}"]),
    )
)
def test_decoding_a_claimed_json_column_agrees_with_json_loads(text):
    # The claim's decoder takes a fast path; it must accept and refuse exactly what json.loads does.
    try:
        expected = json.loads(text)
    except ValueError as exc:
        with pytest.raises(ValueError) as raised:
            decode_claimed_json(text)
        assert str(raised.value) == str(exc)
        return
    same = json.dumps(expected)  # compared as JSON text: NaN is not equal to itself
    assert json.dumps(decode_claimed_json(text)) == same
    assert json.dumps(decode_claimed_json(text.encode("utf-8"))) == same


def test_a_write_back_of_mixed_outcomes_stores_each_row_its_own(queue):
    ids = queue.enqueue_many([("t", i) for i in range(6)])
    claimed_at = utcnow()
    rows = {row[0]: row for row in queue.storage.claim("me", claimed_at, claimed_at + dt.timedelta(seconds=60), 10)}
    now = claimed_at.replace(microsecond=123456)
    later = now + dt.timedelta(minutes=5)
    done = '{"a":true}'
    wanted = {  # id -> (status, trials, results, errors, run_after, lasttry)
        ids[0]: (Status.DONE, 0, done, "{}", now, now),
        ids[1]: (Status.DONE, 0, done, "{}", now, now),  # the same outcome as the first
        ids[2]: (Status.NEED_RETRY, 1, '{"a":false}', '{"a":"boom"}', later, now),
        ids[3]: (Status.NEED_RETRY, 2, '{"a":false}', '{"a":"boom"}', later, now),  # differs in trials only
        ids[4]: (Status.ERROR, 3, '{"a":false,"b":true}', '{"a":"ünï \\"quoted\\""}', now, now),
        ids[5]: (Status.PENDING, 0, "{}", "{}", now, None),  # released untried: no last try
    }
    outcomes = [(*values, item_id, rows[item_id][-1]) for item_id, values in wanted.items()]
    assert queue.storage.write_back(outcomes) == 6
    for item_id, (status, trials, results, errors, run_after, lasttry) in wanted.items():
        item = queue.get(item_id)
        assert (item.status, item.trials) == (status, trials)
        assert (item.results, item.errors) == (json.loads(results), json.loads(errors))
        assert (item.run_after, item.lasttry_dtime) == (run_after, lasttry)
        assert item.lease_owner is None

"""Queue: enqueue, read back, validate, operate — on every backend."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3

import peewee
import pytest

from queuecore import ConfigurationError, InvalidItemError, ItemNotFound, Queue, Status
from queuecore.storage import utcnow


def test_enqueue_then_get_round_trips_every_field(queue):
    before = utcnow()
    item = queue.enqueue("new_commit", {"sha": "abc", "n": [1, 2.5, None, "é"]}, priority=3)
    got = queue.get(item.id)
    assert got.id == item.id
    assert got.type == "new_commit"
    assert got.payload == {"sha": "abc", "n": [1, 2.5, None, "é"]}
    assert got.status is Status.PENDING
    assert got.trials == 0
    assert got.results == {} and got.errors == {}
    assert got.priority == 3
    assert got.lasttry_dtime is None
    assert before <= got.creation_dtime <= utcnow()
    assert got.creation_dtime.tzinfo is None  # naive UTC
    assert abs((got.creation_dtime - item.creation_dtime).total_seconds()) < 1e-3


def test_enqueue_many_returns_ids_in_order(queue):
    ids = queue.enqueue_many([("t", {"i": i}) for i in range(2500)])
    assert len(ids) == 2500
    assert ids == sorted(ids) and len(set(ids)) == 2500
    for index in (0, 1234, 2499):
        assert queue.get(ids[index]).payload == {"i": index}


def test_enqueue_many_accepts_priority_and_empty_input(queue):
    assert queue.enqueue_many([]) == []
    (item_id,) = queue.enqueue_many([("t", None, 7)])
    assert queue.get(item_id).priority == 7


def test_enqueue_many_is_all_or_nothing(queue):
    with pytest.raises(InvalidItemError, match="item 2"):
        queue.enqueue_many([("t", 1), ("t", 2), ("t", {1, 2})])
    assert sum(queue.counts().values()) == 0


def test_delay_holds_an_item_back(queue):
    item = queue.enqueue("t", 1, delay=60)
    assert (item.run_after - item.creation_dtime).total_seconds() == pytest.approx(60, abs=0.01)
    assert not queue.has_due()
    queue.enqueue("t", 2, delay=dt.timedelta(0))
    assert queue.has_due()


def test_counts_has_every_status(queue):
    assert queue.counts() == {s: 0 for s in Status}
    queue.enqueue_many([("a", 1), ("a", 2), ("b", 3)])
    assert queue.counts()[Status.PENDING] == 3
    by_type = queue.counts_by_type()
    assert by_type["a"][Status.PENDING] == 2 and by_type["b"][Status.PENDING] == 1


def test_get_unknown_id_is_a_lookup_error(queue):
    with pytest.raises(ItemNotFound, match="no item with id 999"):
        queue.get(999)
    with pytest.raises(LookupError):
        queue.get(999)


@pytest.mark.parametrize(
    "type_, message",
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("x" * 201, "limit is 200"),
        ("bad\ntype", "control character"),
        ("bad\x00type", "control character"),
        (None, "must be a string"),
        (b"bytes", "must be a string"),
    ],
)
def test_bad_type_names_are_refused(queue, type_, message):
    with pytest.raises(InvalidItemError, match=message):
        queue.enqueue(type_, {})
    assert sum(queue.counts().values()) == 0


def test_type_of_200_characters_is_fine(queue):
    assert queue.get(queue.enqueue("x" * 200, {}).id).type == "x" * 200


@pytest.mark.parametrize(
    "payload, error, message",
    [
        ({1, 2}, InvalidItemError, "not JSON-serialisable"),
        (b"raw bytes", InvalidItemError, "not JSON-serialisable"),
        (object(), TypeError, "not JSON-serialisable"),
        (float("nan"), ValueError, "not valid JSON"),
        ({"x": float("inf")}, ValueError, "not valid JSON"),
        ("\ud800 lone surrogate", ValueError, "not valid Unicode"),
    ],
)
def test_bad_payloads_are_refused(queue, payload, error, message):
    with pytest.raises(error, match=message):
        queue.enqueue("t", payload)
    assert sum(queue.counts().values()) == 0


def test_deeply_nested_payload_is_refused_not_crashing(queue):
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(InvalidItemError, match="nested too deeply"):
        queue.enqueue("t", deep)


def test_payload_size_limit_is_enforced(db_url):
    queue = Queue(db_url, max_payload_bytes=1000)
    queue.enqueue("t", "x" * 990)
    with pytest.raises(InvalidItemError, match="limit is 1000"):
        queue.enqueue("t", "x" * 1000)
    assert sum(queue.counts().values()) == 1


def test_bad_priority_and_delay_are_refused(queue):
    with pytest.raises(InvalidItemError, match="priority"):
        queue.enqueue("t", 1, priority="high")
    with pytest.raises(InvalidItemError, match="priority"):
        queue.enqueue("t", 1, priority=2**40)
    with pytest.raises(InvalidItemError, match="delay"):
        queue.enqueue("t", 1, delay=-1)
    with pytest.raises(InvalidItemError, match="delay"):
        queue.enqueue("t", 1, delay=float("nan"))


@pytest.mark.parametrize(
    "url, message",
    [
        ("not a url", "not a database URL"),
        ("redis://localhost/0", "unknown database scheme 'redis'"),
        ("sqlite://", "no file name"),
        ("sqlite:////no/such/folder/q.db", "does not exist"),
    ],
)
def test_bad_urls_are_clear_value_errors(url, message):
    with pytest.raises(ConfigurationError, match=message):
        Queue(url)
    with pytest.raises(ValueError):
        Queue(url)


def test_default_url_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("QUEUECORE_DATABASE_URL", f"sqlite:///{tmp_path}/env.db")
    Queue().enqueue("t", 1)
    assert (tmp_path / "env.db").exists()
    monkeypatch.delenv("QUEUECORE_DATABASE_URL")
    monkeypatch.chdir(tmp_path)
    Queue().enqueue("t", 1)
    assert (tmp_path / "queuecore.db").exists()


def test_password_is_redacted_in_repr():
    queue = Queue("postgresql://user:s3cret@127.0.0.1:1/db")
    assert "s3cret" not in repr(queue)


def test_sqlite_connection_settings(sqlite_url):
    queue = Queue(sqlite_url)
    queue.enqueue("t", 1)
    db = queue.database
    assert db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute_sql("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert db.execute_sql("PRAGMA busy_timeout").fetchone()[0] >= 5000


def test_sqlite_ids_are_not_reused_after_purge(sqlite_url):
    queue = Queue(sqlite_url)
    first = queue.enqueue("t", 1).id
    queue.storage.Item.update(status=Status.DONE).execute()
    assert queue.purge(Status.DONE) == 1
    assert queue.enqueue("t", 2).id > first


def test_enqueue_joins_the_applications_transaction(tmp_path):
    db = peewee.SqliteDatabase(str(tmp_path / "app.db"))
    queue = Queue(db)
    queue.init()

    class Failure(Exception):
        pass

    with pytest.raises(Failure):
        with db.atomic():
            queue.enqueue("t", "rolled back")
            raise Failure
    with db.atomic():
        kept = queue.enqueue("t", "kept")
    assert [i.payload for i in queue.list()] == ["kept"]
    assert queue.get(kept.id).payload == "kept"


def test_schema_is_created_on_first_use_and_init_is_idempotent(db_url):
    queue = Queue(db_url)
    assert queue.counts()[Status.PENDING] == 0
    assert queue.init() == queue.init() == 1
    assert queue.storage.schema_version() == 1


def test_list_is_newest_first_with_filters_and_paging(queue):
    ids = queue.enqueue_many([("a", i) for i in range(5)] + [("b", 5)])
    assert [i.id for i in queue.list()] == list(reversed(ids))
    assert [i.id for i in queue.list(type="a", limit=2)] == [ids[4], ids[3]]
    assert [i.id for i in queue.list(type="a", before_id=ids[3], limit=10)] == ids[2::-1]
    assert queue.list(status="done") == []
    with pytest.raises(ConfigurationError, match="unknown status 'finished'"):
        queue.list(status="finished")


def test_retry_and_purge(queue):
    ids = queue.enqueue_many([("a", i) for i in range(4)])
    item_model = queue.storage.Item
    old = utcnow() - dt.timedelta(days=10)
    results = peewee.SQL("""'{"p": true, "q": false}'""")  # a literal: MariaDB has no CAST AS JSON
    item_model.update(status=Status.ERROR, trials=10, results=results, lasttry_dtime=old).where(
        item_model.id.in_(ids[:2])
    ).execute()
    item_model.update(status=Status.DONE, lasttry_dtime=utcnow()).where(item_model.id == ids[2]).execute()

    assert queue.retry([ids[0]]) == 1
    again = queue.get(ids[0])
    assert again.status is Status.PENDING and again.trials == 0 and again.results == {"p": True, "q": False}
    assert queue.retry(status="error", reset=True) == 1
    assert queue.get(ids[1]).results == {}

    queue.storage.Item.update(status=Status.ERROR, lasttry_dtime=old).where(item_model.id == ids[1]).execute()
    assert queue.purge("error", older_than=dt.timedelta(days=7), dry_run=True) == 1
    assert queue.purge(["done", "error"], older_than=dt.timedelta(days=7)) == 1
    assert queue.purge("done") == 1
    with pytest.raises(ItemNotFound):
        queue.get(ids[1])
    with pytest.raises(ConfigurationError, match="refusing to purge pending"):
        queue.purge("pending")
    assert queue.counts()[Status.PENDING] == 2


def test_hostile_filter_values_are_parameters_not_sql(queue):
    queue.enqueue("a", 1)
    hostile = "a' OR '1'='1"
    assert queue.list(type=hostile) == []
    assert queue.retry(status="error", type=hostile) == 0
    assert queue.purge("done", type="x'; DROP TABLE queuecore_item; --") == 0
    assert queue.counts()[Status.PENDING] == 1


def test_payload_is_stored_as_plain_json(sqlite_url, tmp_path):
    queue = Queue(sqlite_url)
    item = queue.enqueue("t", {"k": "v"})
    raw = sqlite3.connect(str(tmp_path / "queue.db")).execute(
        "SELECT payload FROM queuecore_item WHERE id = ?", (item.id,)
    ).fetchone()[0]
    assert json.loads(raw) == {"k": "v"}

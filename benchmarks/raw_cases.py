"""Raw floors: plain sqlite3 / psycopg doing queuecore's work with no framework.

"The fastest honest implementation of the same semantics": the same table
shape, a claim of 500 due items with the lease condition (one statement), a
no-op call per item, JSON-decoded payload/results, results {"noop": true}, and
a claim-token-fenced executemany write-back in one transaction.

The helpers here (schema, enqueue, drain) are reused by queuecore_cases to
prepare large tables, so keep their signatures stable.
"""

from __future__ import annotations

import json
import sqlite3
import time

from harness import cached_sqlite, case, noop, run_processes, timedelta, ts, utcnow

BATCH = 500
LEASE = timedelta(seconds=300)

# ------------------------------------------------------------------ SQLite

SQLITE_DDL = [
    """CREATE TABLE IF NOT EXISTS item (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        type TEXT NOT NULL,
        payload TEXT NOT NULL,
        status INTEGER NOT NULL DEFAULT 0,
        trials INTEGER NOT NULL DEFAULT 0,
        results TEXT NOT NULL DEFAULT '{}',
        errors TEXT NOT NULL DEFAULT '{}',
        priority INTEGER NOT NULL DEFAULT 0,
        run_after TEXT NOT NULL,
        lease_owner TEXT,
        lease_expires TEXT,
        claim_token INTEGER NOT NULL DEFAULT 0,
        creation_dtime TEXT NOT NULL,
        lasttry_dtime TEXT)""",
    "CREATE INDEX IF NOT EXISTS item_due ON item (priority DESC, run_after, id) WHERE status < 3",
]

SQLITE_INSERT = (
    "INSERT INTO item (type, payload, status, trials, results, errors, priority, run_after,"
    " claim_token, creation_dtime) VALUES (?, ?, 0, 0, '{}', '{}', ?, ?, 0, ?)"
)

# In-progress items get run_after = lease_expires, so "status < 3 AND run_after <= now"
# is the whole claim condition (due pending/need_retry, or an expired lease) and one
# partial index serves it.
SQLITE_CLAIM = (
    "UPDATE item SET status = 1, lease_owner = ?, lease_expires = ?, run_after = ?,"
    " claim_token = claim_token + 1"
    " WHERE id IN (SELECT id FROM item WHERE status < 3 AND run_after <= ?"
    " ORDER BY priority DESC, run_after, id LIMIT ?)"
    " RETURNING id, payload, results, claim_token"
)

SQLITE_DONE = (
    "UPDATE item SET status = 3, results = ?, errors = '{}', lasttry_dtime = ?,"
    " lease_owner = NULL, lease_expires = NULL WHERE id = ? AND claim_token = ?"
)


def sqlite_connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def sqlite_create(path: str) -> sqlite3.Connection:
    conn = sqlite_connect(path)
    for stmt in SQLITE_DDL:
        conn.execute(stmt)
    return conn


def sqlite_enqueue(conn, n: int, start: int = 0, type_: str = "noop") -> float:
    """Insert n items in one transaction with executemany; return seconds taken."""
    t0 = time.perf_counter()
    now = ts(utcnow())
    dumps = json.dumps
    rows = [(type_, dumps({"i": i}), 0, now, now) for i in range(start, start + n)]
    conn.execute("BEGIN")
    conn.executemany(SQLITE_INSERT, rows)
    conn.execute("COMMIT")
    return time.perf_counter() - t0


def sqlite_drain(conn, owner: str = "raw", batch: int = BATCH, limit: int | None = None) -> int:
    """Claim/process/write back until nothing is due (or `limit` items done)."""
    loads, dumps = json.loads, json.dumps
    done = 0
    while limit is None or done < limit:
        now = utcnow()
        now_s, exp_s = ts(now), ts(now + LEASE)
        conn.execute("BEGIN IMMEDIATE")
        rows = conn.execute(SQLITE_CLAIM, (owner, exp_s, exp_s, now_s, batch)).fetchall()
        conn.execute("COMMIT")
        if not rows:
            break
        out = []
        for id_, payload, results, token in rows:
            item = loads(payload)
            res = loads(results)
            if noop(item, res):
                res["noop"] = True
            out.append((dumps(res), now_s, id_, token))
        conn.execute("BEGIN")
        conn.executemany(SQLITE_DONE, out)
        conn.execute("COMMIT")
        done += len(rows)
    return done


def sqlite_count(conn, status: int = 3) -> int:
    return conn.execute("SELECT count(*) FROM item WHERE status = ?", (status,)).fetchone()[0]


def _sqlite_worker(ready_q, start_ev, result_q, path, owner):
    try:
        conn = sqlite_connect(path)
        ready_q.put(owner)
        start_ev.wait()
        result_q.put(sqlite_drain(conn, owner))
    except Exception as exc:  # noqa: BLE001
        result_q.put(f"error: {type(exc).__name__}: {exc}")


CPU_UNITS = {"drain_cpu": "us/item (CPU)"}


@case("sqlite.raw", backend="sqlite", group="floor", timeout=300,
      units=CPU_UNITS, floors={"drain_cpu": None})
def sqlite_raw(ctx):
    """enqueue_many (executemany, one transaction) and drain with 1 connection.

    drain_cpu: the process's CPU time per drained item, which a busy shared
    machine disturbs far less than wall-clock throughput."""
    path = ctx.path("raw.db")
    conn = sqlite_create(path)
    enq = sqlite_enqueue(conn, ctx.n)
    t0, c0 = time.perf_counter(), time.process_time()
    done = sqlite_drain(conn)
    drain, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert done == ctx.n == sqlite_count(conn), (done, sqlite_count(conn))
    return {"enqueue_many": ctx.n / enq, "drain": ctx.n / drain, "drain_cpu": cpu / ctx.n * 1e6}


@case("sqlite.raw.4proc", backend="sqlite", group="floor", timeout=300,
      floors={"drain_4proc": "sqlite.raw:drain"})
def sqlite_raw_4proc(ctx):
    """4 processes, each its own connection, on one file."""
    path = ctx.path("raw.db")
    conn = sqlite_create(path)
    sqlite_enqueue(conn, ctx.n)
    elapsed, counts = run_processes(_sqlite_worker, [(path, f"w{i}") for i in range(4)])
    assert sum(counts) == ctx.n == sqlite_count(conn), (counts, sqlite_count(conn))
    return {"drain_4proc": ctx.n / elapsed}


# ------------------------------------------------------------------ PostgreSQL

PG_DDL = [
    """CREATE TABLE IF NOT EXISTS item (
        id BIGSERIAL PRIMARY KEY,
        type VARCHAR(200) NOT NULL,
        payload JSONB NOT NULL,
        status INTEGER NOT NULL DEFAULT 0,
        trials INTEGER NOT NULL DEFAULT 0,
        results JSONB NOT NULL DEFAULT '{}',
        errors JSONB NOT NULL DEFAULT '{}',
        priority INTEGER NOT NULL DEFAULT 0,
        run_after TIMESTAMP NOT NULL,
        lease_owner VARCHAR(255),
        lease_expires TIMESTAMP,
        claim_token INTEGER NOT NULL DEFAULT 0,
        creation_dtime TIMESTAMP NOT NULL,
        lasttry_dtime TIMESTAMP)""",
    "CREATE INDEX IF NOT EXISTS item_due ON item (priority DESC, run_after, id) WHERE status < 3",
]

PG_INSERT = (
    "INSERT INTO item (type, payload, status, trials, results, errors, priority, run_after,"
    " claim_token, creation_dtime) VALUES (%s, %s, 0, 0, '{}', '{}', %s, %s, 0, %s)"
)

PG_CLAIM = (
    "UPDATE item SET status = 1, lease_owner = %s, lease_expires = %s, run_after = %s,"
    " claim_token = claim_token + 1"
    " WHERE id IN (SELECT id FROM item WHERE status < 3 AND run_after <= %s"
    " ORDER BY priority DESC, run_after, id LIMIT %s FOR UPDATE SKIP LOCKED)"
    " RETURNING id, payload, results, claim_token"
)

PG_DONE = (
    "UPDATE item SET status = 3, results = %s, errors = '{}', lasttry_dtime = %s,"
    " lease_owner = NULL, lease_expires = NULL WHERE id = %s AND claim_token = %s"
)


def pg_connect(url: str):
    import psycopg

    return psycopg.connect(url)


def pg_create(url: str):
    conn = pg_connect(url)
    for stmt in PG_DDL:
        conn.execute(stmt)
    conn.commit()
    return conn


def pg_enqueue(conn, n: int, start: int = 0, type_: str = "noop") -> float:
    from psycopg.types.json import Jsonb

    t0 = time.perf_counter()
    now = utcnow()
    rows = [(type_, Jsonb({"i": i}), 0, now, now) for i in range(start, start + n)]
    with conn.cursor() as cur:
        cur.executemany(PG_INSERT, rows)
    conn.commit()
    return time.perf_counter() - t0


def pg_drain(conn, owner: str = "raw", batch: int = BATCH, limit: int | None = None) -> int:
    from psycopg.types.json import Jsonb

    done = 0
    while limit is None or done < limit:
        now = utcnow()
        exp = now + LEASE
        with conn.cursor() as cur:
            rows = cur.execute(PG_CLAIM, (owner, exp, exp, now, batch)).fetchall()
        conn.commit()
        if not rows:
            break
        out = []
        for id_, payload, results, token in rows:  # jsonb arrives decoded
            if noop(payload, results):
                results["noop"] = True
            out.append((Jsonb(results), now, id_, token))
        with conn.cursor() as cur:
            cur.executemany(PG_DONE, out)
        conn.commit()
        done += len(rows)
    return done


def pg_count(conn, status: int = 3) -> int:
    n = conn.execute("SELECT count(*) FROM item WHERE status = %s", (status,)).fetchone()[0]
    conn.commit()
    return n


def _pg_worker(ready_q, start_ev, result_q, url, owner, drain):
    """One drain process: connect, report ready, wait for the start, drain."""
    try:
        conn = pg_connect(url)
        ready_q.put(owner)
        start_ev.wait()
        result_q.put(drain(conn, owner))
    except Exception as exc:  # noqa: BLE001
        result_q.put(f"error: {type(exc).__name__}: {exc}")


def _pg_1proc(ctx, drain) -> dict:
    """N items drained by one process with ``drain``: rate and client CPU per item."""
    url = ctx.fresh_pg()
    conn = pg_create(url)
    pg_enqueue(conn, ctx.n)
    t0, c0 = time.perf_counter(), time.process_time()
    done = drain(conn)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert done == ctx.n == pg_count(conn), (done, pg_count(conn))
    return {"drain": ctx.n / elapsed, "drain_cpu": cpu / ctx.n * 1e6}


def _pg_4proc(ctx, drain) -> dict:
    """N items drained by 4 processes with ``drain``, started together."""
    url = ctx.fresh_pg()
    conn = pg_create(url)
    pg_enqueue(conn, ctx.n)
    conn.close()
    elapsed, counts = run_processes(_pg_worker, [(url, f"w{i}", drain) for i in range(4)])
    conn = pg_connect(url)
    assert sum(counts) == ctx.n == pg_count(conn), (counts, pg_count(conn))
    return {"drain_4proc": ctx.n / elapsed}


@case("pg.raw", backend="postgresql", group="floor", timeout=300,
      units=CPU_UNITS, floors={"drain_cpu": None})
def pg_raw(ctx):
    """drain_cpu: this client process's CPU time per item (the server's is not counted)."""
    url = ctx.fresh_pg()
    conn = pg_create(url)
    enq = pg_enqueue(conn, ctx.n)
    t0, c0 = time.perf_counter(), time.process_time()
    done = pg_drain(conn)
    drain, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert done == ctx.n == pg_count(conn), (done, pg_count(conn))
    return {"enqueue_many": ctx.n / enq, "drain": ctx.n / drain, "drain_cpu": cpu / ctx.n * 1e6}


@case("pg.raw.4proc", backend="postgresql", group="floor", timeout=300,
      floors={"drain_4proc": "pg.raw:drain"})
def pg_raw_4proc(ctx):
    return _pg_4proc(ctx, pg_drain)


# ------------------------------------------------------------------ single enqueue floors


@case("sqlite.raw.single", backend="sqlite", group="floor", timeout=300, max_n=5000,
      floors={"enqueue_single": None})
def sqlite_raw_single(ctx):
    """One INSERT per transaction (what an application's single enqueue costs at least)."""
    conn = sqlite_create(ctx.path("raw.db"))
    dumps = json.dumps
    t0 = time.perf_counter()
    for i in range(ctx.n):
        now = ts(utcnow())
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(SQLITE_INSERT, ("noop", dumps({"i": i}), 0, now, now))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    assert sqlite_count(conn, 0) == ctx.n
    return {"enqueue_single": ctx.n / elapsed}


@case("pg.raw.single", backend="postgresql", group="floor", timeout=300, max_n=5000,
      floors={"enqueue_single": None})
def pg_raw_single(ctx):
    from psycopg.types.json import Jsonb

    conn = pg_create(ctx.fresh_pg())
    t0 = time.perf_counter()
    for i in range(ctx.n):
        now = utcnow()
        conn.execute(PG_INSERT, ("noop", Jsonb({"i": i}), 0, now, now))
        conn.commit()
    elapsed = time.perf_counter() - t0
    assert pg_count(conn, 0) == ctx.n
    return {"enqueue_single": ctx.n / elapsed}


# ------------------------------------------------------------------ scale floors

BIG = 1_000_000


def _build_done(path):
    conn = sqlite_create(path)
    sqlite_enqueue(conn, BIG)
    now = ts(utcnow())
    conn.execute("UPDATE item SET status = 3, results = '{\"noop\": true}', lasttry_dtime = ?", (now,))
    conn.close()


def _build_pending(path):
    conn = sqlite_create(path)
    for start in range(0, BIG, 100_000):
        sqlite_enqueue(conn, 100_000, start)
    conn.close()


@case("sqlite.raw.done1m", backend="sqlite", group="floor", quick=False, timeout=600,
      floors={"drain": "sqlite.raw:drain"})
def sqlite_raw_done1m(ctx):
    """1,000,000 done rows, then N pending drained; ratio to the N-only table."""
    conn = sqlite_connect(cached_sqlite(ctx, "raw_done1m", _build_done))
    sqlite_enqueue(conn, ctx.n, start=BIG)
    t0 = time.perf_counter()
    done = sqlite_drain(conn)
    assert done == ctx.n
    return {"drain": ctx.n / (time.perf_counter() - t0)}


@case("sqlite.raw.pending1m", backend="sqlite", group="floor", quick=False, timeout=600,
      floors={"drain": "sqlite.raw:drain"})
def sqlite_raw_pending1m(ctx):
    """1,000,000 pending rows; drain the first N; ratio to the N-only table."""
    conn = sqlite_connect(cached_sqlite(ctx, "raw_pending1m", _build_pending))
    t0 = time.perf_counter()
    done = sqlite_drain(conn, limit=ctx.n)
    assert done == ctx.n
    return {"drain": ctx.n / (time.perf_counter() - t0)}


# ------------------------------------------------------------------ PostgreSQL, one-statement write-back

PG_DONE_UNNEST = (
    "UPDATE item SET status = 3, results = u.res::jsonb, errors = '{}', lasttry_dtime = %s,"
    " lease_owner = NULL, lease_expires = NULL"
    " FROM unnest(%s::bigint[], %s::int[], %s::text[]) AS u(id, tok, res)"
    " WHERE item.id = u.id AND item.claim_token = u.tok"
)


def pg_drain_unnest(conn, owner: str = "raw", batch: int = BATCH) -> int:
    """As pg_drain, but the batch's write-back is one UPDATE ... FROM unnest(arrays)."""
    dumps = json.dumps
    done = 0
    while True:
        now = utcnow()
        exp = now + LEASE
        with conn.cursor() as cur:
            rows = cur.execute(PG_CLAIM, (owner, exp, exp, now, batch)).fetchall()
        conn.commit()
        if not rows:
            break
        ids, toks, res = [], [], []
        for id_, payload, results, token in rows:
            if noop(payload, results):
                results["noop"] = True
            ids.append(id_)
            toks.append(token)
            res.append(dumps(results))
        conn.execute(PG_DONE_UNNEST, (now, ids, toks, res))
        conn.commit()
        done += len(rows)
    return done


def _pg_floor_variant(name: str, drain, note: str) -> None:
    """Register ``name`` (one process, beside pg.raw) and ``name.4proc`` (beside pg.raw.4proc) for ``drain``."""
    case(name, backend="postgresql", group="floor", timeout=300, units={"drain_cpu": "us/item (CPU)"},
         floors={"drain_cpu": "pg.raw:drain_cpu"}, note=note)(lambda ctx: _pg_1proc(ctx, drain))
    case(name + ".4proc", backend="postgresql", group="floor", timeout=300,
         floors={"drain_4proc": "pg.raw.4proc:drain_4proc"})(lambda ctx: _pg_4proc(ctx, drain))


_pg_floor_variant("pg.raw.unnest", pg_drain_unnest,
                  "write-back as one UPDATE ... FROM unnest(ids, tokens, results) per batch")


# ------------------------------------------------------------------ PostgreSQL, queuecore's own SQL shape

# The claim finds the chosen ids through the primary key (= ANY(ARRAY(...)));
# IN (subquery) plans a hash join over a scan of the table. The write-back is
# one JSON document: psycopg dumps Python lists into array literals in Python.
PG_CLAIM_ANY = PG_CLAIM.replace(" WHERE id IN (", " WHERE id = ANY(ARRAY(").replace(
    " SKIP LOCKED)", " SKIP LOCKED))")

PG_DONE_JSON = (
    "UPDATE item SET status = 3, results = u.res, errors = '{}', lasttry_dtime = %s,"
    " lease_owner = NULL, lease_expires = NULL"
    " FROM jsonb_to_recordset(%s::jsonb) AS u(id bigint, tok int, res jsonb)"
    " WHERE item.id = u.id AND item.claim_token = u.tok"
)


def pg_drain_json(conn, owner: str = "raw", batch: int = BATCH) -> int:
    """As pg_drain_unnest, with the = ANY claim (autocommitted) and a JSON write-back."""
    dumps = json.dumps
    conn.autocommit = True
    done = 0
    while True:
        now = utcnow()
        exp = now + LEASE
        rows = conn.execute(PG_CLAIM_ANY, (owner, exp, exp, now, batch)).fetchall()
        if not rows:
            break
        out = []
        for id_, payload, results, token in rows:
            if noop(payload, results):
                results["noop"] = True
            out.append({"id": id_, "tok": token, "res": results})
        conn.execute(PG_DONE_JSON, (now, dumps(out)))
        done += len(rows)
    return done


_pg_floor_variant("pg.raw.json", pg_drain_json,
                  "claim by = ANY(ARRAY(...)), write-back as one jsonb_to_recordset document")

"""Peers doing the same no-op job on N items, each in its own database/file.

Each peer is used through its documented public API, as read from its
installed source (huey 3.5, persist-queue 1.1, procrastinate 3.10, pgqueuer
1.6). Every case checks that all N items were processed before reporting.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta

from harness import case

# ------------------------------------------------------------------ Huey (SqliteHuey)


def _huey_run(ctx, workers: int, sleep: float, n: int, sync_normal: bool = False):
    from huey import SqliteHuey
    from huey.storage import SqliteStorage

    storage_kwargs = {}
    if sync_normal:
        class NormalSyncStorage(SqliteStorage):
            """Huey's SqliteStorage with synchronous=NORMAL, like queuecore's default."""

            def _create_connection(self):
                conn = super()._create_connection()
                conn.execute("pragma synchronous=1")
                return conn

        huey_cls = type("NormalSyncHuey", (SqliteHuey,), {"storage_class": NormalSyncStorage})
    else:
        huey_cls = SqliteHuey
    huey = huey_cls("bench", filename=ctx.path("huey.db"), results=False, **storage_kwargs)

    lock = threading.Lock()
    done_ev = threading.Event()
    count = [0]

    @huey.task()
    def job(i):
        if sleep:
            time.sleep(sleep)
        with lock:
            count[0] += 1
            if count[0] == n:
                done_ev.set()

    t0 = time.perf_counter()
    for i in range(n):
        job(i)
    enq = time.perf_counter() - t0
    assert huey.pending_count() == n, huey.pending_count()

    consumer = huey.create_consumer(workers=workers, worker_type="thread", periodic=False,
                                    check_worker_health=False, initial_delay=0.01)
    t0 = time.perf_counter()
    consumer.start()
    ok = done_ev.wait(timeout=3600)
    drain = time.perf_counter() - t0
    consumer.stop(graceful=True)
    assert ok and count[0] == n, count[0]
    return n / enq, n / drain


@case("huey.sqlite", backend="sqlite", group="peer", timeout=300, quick=False,
      note="SqliteHuey defaults (WAL, synchronous=FULL), consumer 1 thread worker")
def huey_sqlite(ctx):
    enq, drain = _huey_run(ctx, workers=1, sleep=0, n=ctx.n)
    return {"enqueue": enq, "drain": drain}


@case("huey.sqlite.syncnormal", backend="sqlite", group="peer", timeout=300,
      note="SqliteHuey with synchronous=NORMAL (queuecore's durability), 1 worker")
def huey_sqlite_normal(ctx):
    enq, drain = _huey_run(ctx, workers=1, sleep=0, n=ctx.n, sync_normal=True)
    return {"enqueue": enq, "drain": drain}


IO_ITEMS = 2000
IO_SLEEP = 0.020


@case("huey.sqlite.io", backend="sqlite", group="peer", quick=False, timeout=300, max_n=IO_ITEMS,
      floors={"drain_sleep20ms_w10": None, "drain_sleep20ms_w50": None},
      note="task sleeps 20 ms, 2,000 items, 10 and 50 thread workers")
def huey_sqlite_io(ctx):
    out = {}
    for w in (10, 50):
        ctx_w = type(ctx)(**{**ctx.__dict__, "workdir": ctx.path(f"w{w}")})
        import os

        os.makedirs(ctx_w.workdir)
        _, drain = _huey_run(ctx_w, workers=w, sleep=IO_SLEEP, n=ctx.n)
        out[f"drain_sleep20ms_w{w}"] = drain
    return out


# ------------------------------------------------------------------ persist-queue


@case("persistqueue.ack", backend="sqlite", group="peer", timeout=300, max_n=5000, repeat=1,
      quick=False,
      note="SQLiteAckQueue, json serializer, put loop then get+ack loop; N capped at 5,000 "
           "because its get slows down with the table (no index serves it): ~300/s at 6,000 rows")
def persistqueue_ack(ctx):
    from persistqueue import SQLiteAckQueue
    from persistqueue.exceptions import Empty
    from persistqueue.serializers import json as pq_json

    q = SQLiteAckQueue(ctx.path("pq"), auto_commit=True, multithreading=False,
                       serializer=pq_json)
    t0 = time.perf_counter()
    for i in range(ctx.n):
        q.put({"i": i})
    enq = time.perf_counter() - t0
    done = 0
    t0 = time.perf_counter()
    while True:
        try:
            item = q.get(block=False)
        except Empty:
            break
        done += 1
        q.ack(item)
    drain = time.perf_counter() - t0
    assert done == ctx.n and q.acked_count() == ctx.n, (done, q.acked_count())
    return {"enqueue": ctx.n / enq, "drain": ctx.n / drain}


# ------------------------------------------------------------------ procrastinate


async def _procrastinate(url: str, n: int, concurrency: int):
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="noop")
    async def noop(i):
        return None

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        t0 = time.perf_counter()
        for start in range(0, n, 1000):
            await noop.batch_defer_async(*({"i": i} for i in range(start, min(n, start + 1000))))
        enq = time.perf_counter() - t0
        t0 = time.perf_counter()
        await app.run_worker_async(wait=False, concurrency=concurrency,
                                   install_signal_handlers=False, delete_jobs="never")
        drain = time.perf_counter() - t0
        async with app.connector.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'")
            ok = (await cur.fetchone())[0]
        assert ok == n, (ok, n)
    return n / enq, n / drain


@case("procrastinate", backend="postgresql", group="peer", quick=False, timeout=300,
      max_n=3000, repeat=1,
      note="async no-op task, worker(wait=False, concurrency=1), batch_defer")
def procrastinate_c1(ctx):
    enq, drain = asyncio.run(_procrastinate(ctx.fresh_pg(), ctx.n, 1))
    return {"enqueue": enq, "drain": drain}


@case("procrastinate.c10", backend="postgresql", group="peer", quick=False, timeout=300,
      max_n=3000, repeat=1,
      note="same, concurrency=10")
def procrastinate_c10(ctx):
    enq, drain = asyncio.run(_procrastinate(ctx.fresh_pg(), ctx.n, 10))
    return {"enqueue": enq, "drain": drain}


# ------------------------------------------------------------------ pgqueuer


async def _pgq_connect(url: str, driver: str):
    if driver == "asyncpg":
        import asyncpg
        from pgqueuer.db import AsyncpgDriver

        conn = await asyncpg.connect(url)
        return conn, AsyncpgDriver(conn)
    import psycopg
    from pgqueuer.db import PsycopgDriver

    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    return conn, PsycopgDriver(conn)


async def _pgq_setup(url: str, n: int, driver: str) -> float:
    from pgqueuer.queries import Queries

    conn, drv = await _pgq_connect(url, driver)
    q = Queries(drv)
    await q.install()
    t0 = time.perf_counter()
    for start in range(0, n, 5000):
        m = min(n, start + 5000) - start
        await q.enqueue(["noop"] * m, [b"{}"] * m, [0] * m)
    enq = time.perf_counter() - t0
    await conn.close()
    return enq


async def _pgq_drain(url: str, batch_size: int, driver: str):
    """Run a QueueManager in drain mode; return (jobs run, wall time the queue table emptied).

    pgqueuer moves a finished job from its queue table to its log table (buffered), so
    the drain is over when the queue table is empty. A watcher on its own connection
    polls for that every 10 ms and then stops the manager: pgqueuer's own drain-mode
    shutdown takes ~4 s more (buffer/heartbeat timeouts), which is not throughput.
    """
    import psycopg
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    conn, drv = await _pgq_connect(url, driver)
    queries = Queries(drv)
    table = queries.qbe.settings.queue_table
    qm = QueueManager(queries)
    count = [0]
    emptied = [None]

    @qm.entrypoint("noop")
    async def noop(job):
        count[0] += 1

    async def watch():
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as wc:
            while True:
                cur = await wc.execute(f"SELECT count(*) FROM {table}")
                if (await cur.fetchone())[0] == 0:
                    emptied[0] = time.time()
                    qm.shutdown.set()
                    return
                await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    await qm.run(batch_size=batch_size, mode=QueueExecutionMode.drain,
                 dequeue_timeout=timedelta(seconds=0.5))
    await watcher
    await conn.close()
    return count[0], emptied[0]


def _pgq_worker(ready_q, start_ev, result_q, url, batch_size, driver):
    try:
        ready_q.put(1)
        start_ev.wait()
        result_q.put(asyncio.run(_pgq_drain(url, batch_size, driver)))
    except Exception as exc:  # noqa: BLE001
        result_q.put(f"error: {type(exc).__name__}: {exc}")


def _pgq_case(ctx, batch_size: int, procs: int, driver: str):
    from harness import run_processes

    url = ctx.fresh_pg()
    enq = asyncio.run(_pgq_setup(url, ctx.n, driver))
    t0 = time.time()
    if procs == 1:
        results = [asyncio.run(_pgq_drain(url, batch_size, driver))]
    else:
        _, results, t0 = run_processes(_pgq_worker, [(url, batch_size, driver)] * procs,
                                       return_start=True)
    counts = [c for c, _ in results]
    assert sum(counts) == ctx.n, (counts, ctx.n)
    drain = max(t for _, t in results) - t0
    return {"enqueue": ctx.n / enq, "drain" if procs == 1 else "drain_4proc": ctx.n / drain}


for _drv in ("psycopg", "asyncpg"):
    for _bs in (10, 100, 500):
        def _mk(bs=_bs, drv=_drv):
            @case(f"pgqueuer.{drv}.b{bs}", backend="postgresql", group="peer",
                  quick=False, timeout=300,
                  note=f"QueueManager.run(batch_size={bs}, mode=drain), {drv} driver, async no-op")
            def _c(ctx):
                return _pgq_case(ctx, bs, 1, drv)
        _mk()
    def _mk4(drv=_drv):
        @case(f"pgqueuer.{drv}.b100.4proc", backend="postgresql", group="peer", quick=False,
              timeout=300, floors={"drain_4proc": "pg.raw.4proc:drain_4proc"},
              note=f"4 worker processes, batch_size=100, {drv} driver")
        def _c(ctx):
            return _pgq_case(ctx, 100, 4, drv)
    _mk4()

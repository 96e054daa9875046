"""queuecore's own cases, each beside its raw floor, and the targets of issue 7.

Everything goes through the public API (Queue, Runner, hookimpl); multi-process
drains, RSS and latency run benchmarks/qc_worker.py as separate processes.
Large tables (1,000,000 rows) are filled with plain executemany into
queuecore's own table (created by queuecore) and cached for later repetitions
of the same run.
"""

from __future__ import annotations

import json
import os
import select
import statistics
import subprocess
import sys
import time

from harness import cached_sqlite, case, target, ts, utcnow

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "qc_worker.py")
BIG = 1_000_000

try:
    import queuecore  # noqa: F401
except ImportError:  # phase 1 / queuecore not installed: register nothing
    queuecore = None


def _queue(url):
    from queuecore import Queue

    return Queue(url)


def _runner(q, k=1, sleep=0.0, concurrency=1):
    from queuecore import Runner

    sys.path.insert(0, HERE)
    from qc_worker import make_plugins

    return Runner(q, plugins=make_plugins(k, sleep), concurrency=concurrency, lease_seconds=300)


def _sqlite_url(ctx, name="qc.db"):
    return "sqlite:///" + ctx.path(name)


def _items(n, start=0):
    return [("noop", {"i": i}) for i in range(start, start + n)]


def _done_count(q):
    from queuecore import Status

    return q.counts()[Status.DONE]


def _drain(q, k=1, sleep=0.0, concurrency=1, batch=500, limit=None):
    """Drain with one in-process runner; returns (items done, seconds)."""
    r = _runner(q, k, sleep, concurrency)
    q.counts()  # connect outside the timing
    t0, c0 = time.perf_counter(), time.process_time()
    if limit is None:
        total = r.run(burst=True, batch_size=batch)
        done = total.done
    else:
        done = 0
        while done < limit:
            s = r.process_batch(min(batch, limit - done))
            if not s.claimed:
                break
            done += s.done
    _LAST_CPU[0] = time.process_time() - c0
    return done, time.perf_counter() - t0


_LAST_CPU = [0.0]  # CPU seconds of the last _drain


def _cpu_per_item(n):
    return _LAST_CPU[0] / n * 1e6


# ------------------------------------------------------------------ workers in processes


def _spawn(url, *args):
    return subprocess.Popen([sys.executable, WORKER, url, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE)


def _multi_drain(url, procs, *args):
    """Start `procs` runner processes, release them together; returns (seconds, [reports])."""
    ps = [_spawn(url, "--wait-go", *args) for _ in range(procs)]
    for p in ps:
        line = p.stdout.readline()
        if line.strip() != "READY":
            err = p.stderr.read()
            raise RuntimeError(f"runner process did not start: {line!r} {err[-300:]}")
    start = time.time()
    for p in ps:
        p.stdin.write("go\n")
        p.stdin.flush()
    reports = []
    for p in ps:
        out, err = p.communicate(timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"runner process exit {p.returncode}: {err.strip()[-300:]}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return max(r["end"] for r in reports) - start, reports


# ------------------------------------------------------------------ big tables


def _fill_done_sqlite(path, n):
    """n done rows in queuecore's table (plain executemany: setup, not measured)."""
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    now = ts(utcnow())
    sql = ("INSERT INTO queuecore_item (type, payload, status, trials, results, errors, priority,"
           " run_after, claim_token, creation_dtime, lasttry_dtime)"
           " VALUES ('noop', ?, 3, 0, '{\"noop0\": true}', '{}', 0, ?, 1, ?, ?)")
    conn.execute("BEGIN")
    for start in range(0, n, 100_000):
        conn.executemany(sql, ((f'{{"i": {i}}}', now, now, now)
                               for i in range(start, min(n, start + 100_000))))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _cached_sqlite(ctx, key, build):
    return "sqlite:///" + cached_sqlite(ctx, key, build)


# ------------------------------------------------------------------ the same work on either backend


def _enqueue_many_then_drain(url, n):
    """enqueue_many (one call, one transaction), then 1 runner drains, batch 500."""
    q = _queue(url)
    q.init()
    t0 = time.perf_counter()
    ids = q.enqueue_many(_items(n))
    enq = time.perf_counter() - t0
    assert len(ids) == n
    done, secs = _drain(q)
    assert done == n == _done_count(q), (done, _done_count(q))
    return {"enqueue_many": n / enq, "drain": n / secs, "drain_cpu": _cpu_per_item(n)}


def _enqueue_one_by_one(url, n):
    q = _queue(url)
    q.init()
    t0 = time.perf_counter()
    for i in range(n):
        q.enqueue("noop", {"i": i})
    return {"enqueue_single": n / (time.perf_counter() - t0)}


def _drain_with_4_processes(url, n):
    q = _queue(url)
    q.enqueue_many(_items(n))
    q.close()
    secs, reports = _multi_drain(url, 4)
    assert sum(r["done"] for r in reports) == n == _done_count(q)
    return {"drain_4proc": n / secs}


# ------------------------------------------------------------------ SQLite cases

if queuecore is not None:

    CPU_UNITS = {"drain_cpu": "us/item (CPU)"}

    @case("qc.sqlite", backend="sqlite", group="queuecore", timeout=300,
          units=CPU_UNITS, floors={"drain_cpu": "sqlite.raw:drain_cpu"})
    def qc_sqlite(ctx):
        """enqueue_many (one call, one transaction), then 1 runner drains, batch 500."""
        return _enqueue_many_then_drain(_sqlite_url(ctx), ctx.n)

    @case("qc.sqlite.single", backend="sqlite", group="queuecore", timeout=300, max_n=5000,
          floors={"enqueue_single": "sqlite.raw.single:enqueue_single"})
    def qc_sqlite_single(ctx):
        return _enqueue_one_by_one(_sqlite_url(ctx), ctx.n)

    @case("qc.sqlite.4proc", backend="sqlite", group="queuecore", timeout=300,
          floors={"drain_4proc": "sqlite.raw.4proc:drain_4proc"})
    def qc_sqlite_4proc(ctx):
        return _drain_with_4_processes(_sqlite_url(ctx), ctx.n)

    @case("qc.sqlite.plugins10", backend="sqlite", group="queuecore", timeout=300,
          floors={"drain": "qc.sqlite:drain"})
    def qc_sqlite_plugins10(ctx):
        """10 no-op plugins; the ratio is to the 1-plugin drain (qc.sqlite)."""
        q = _queue(_sqlite_url(ctx))
        q.enqueue_many(_items(ctx.n))
        done, secs = _drain(q, k=10)
        assert done == ctx.n
        return {"drain": ctx.n / secs}

    @case("qc.sqlite.done1m", backend="sqlite", group="queuecore", quick=False, timeout=600,
          floors={"drain": "sqlite.raw.done1m:drain"})
    def qc_sqlite_done1m(ctx):
        """1,000,000 done rows, then N pending are drained; ratio to the N-only table."""
        def build(path):
            q = _queue("sqlite:///" + path)
            q.init()
            q.close()
            _fill_done_sqlite(path, BIG)
        url = _cached_sqlite(ctx, "done1m", build)
        q = _queue(url)
        q.enqueue_many(_items(ctx.n))
        done, secs = _drain(q)
        assert done == ctx.n
        return {"drain": ctx.n / secs}

    @case("qc.sqlite.pending1m", backend="sqlite", group="queuecore", quick=False, timeout=600,
          floors={"drain": "sqlite.raw.pending1m:drain"})
    def qc_sqlite_pending1m(ctx):
        """1,000,000 pending rows; drain the first N; ratio to the N-only table."""
        def build(path):
            q = _queue("sqlite:///" + path)
            for start in range(0, BIG, 100_000):
                q.enqueue_many(_items(100_000, start))
            q.close()
        url = _cached_sqlite(ctx, "pending1m", build)
        q = _queue(url)
        done, secs = _drain(q, limit=ctx.n)
        assert done == ctx.n
        return {"drain": ctx.n / secs}

    @case("qc.sqlite.rss", backend="sqlite", group="queuecore", timeout=600, repeat=1,
          units={"rss_n": "MiB", "rss_10n": "MiB", "drain_10n": "items/s"},
          floors={"rss_n": None, "rss_10n": "qc.sqlite.rss:rss_n", "drain_10n": "qc.sqlite:drain"})
    def qc_sqlite_rss(ctx):
        """Peak RSS (VmHWM) of a runner process draining N and 10*N items."""
        out = {}
        for label, n in (("n", ctx.n), ("10n", 10 * ctx.n)):
            url = _sqlite_url(ctx, f"rss_{label}.db")
            q = _queue(url)
            for start in range(0, n, 100_000):
                q.enqueue_many(_items(min(100_000, n - start), start))
            q.close()
            secs, (rep,) = _multi_drain(url, 1)
            assert rep["done"] == n, rep
            out[f"rss_{label}"] = rep["rss_peak_mib"]
            if label == "10n":
                out["drain_10n"] = n / secs
        return out

    @case("qc.sqlite.io", backend="sqlite", group="queuecore", quick=False, timeout=600,
          repeat=1, max_n=2000,
          floors={"drain_sleep20ms_c1": None,
                  "drain_sleep20ms_c10": "huey.sqlite.io:drain_sleep20ms_w10",
                  "drain_sleep20ms_c50": "huey.sqlite.io:drain_sleep20ms_w50"},
          note="plugin sleeps 20 ms, 2,000 items, Runner(concurrency=1/10/50) vs Huey threads")
    def qc_sqlite_io(ctx):
        out = {}
        for c in (1, 10, 50):
            q = _queue(_sqlite_url(ctx, f"io{c}.db"))
            q.enqueue_many(_items(ctx.n))
            done, secs = _drain(q, sleep=0.020, concurrency=c)
            assert done == ctx.n
            out[f"drain_sleep20ms_c{c}"] = ctx.n / secs
        return out

    # -------------------------------------------------------------- PostgreSQL cases

    @case("qc.pg", backend="postgresql", group="queuecore", timeout=300,
          units=CPU_UNITS, floors={"drain_cpu": "pg.raw:drain_cpu"})
    def qc_pg(ctx):
        return _enqueue_many_then_drain(ctx.fresh_pg(), ctx.n)

    @case("qc.pg.single", backend="postgresql", group="queuecore", timeout=300, max_n=5000,
          floors={"enqueue_single": "pg.raw.single:enqueue_single"})
    def qc_pg_single(ctx):
        return _enqueue_one_by_one(ctx.fresh_pg(), ctx.n)

    @case("qc.pg.4proc", backend="postgresql", group="queuecore", timeout=300,
          floors={"drain_4proc": "pg.raw.4proc:drain_4proc"})
    def qc_pg_4proc(ctx):
        return _drain_with_4_processes(ctx.fresh_pg(), ctx.n)

    @case("qc.pg.latency", backend="postgresql", group="queuecore", timeout=300, repeat=1,
          units={"latency_p50": "ms", "latency_p99": "ms"},
          floors={"latency_p50": None, "latency_p99": None},
          note="idle runner (LISTEN/NOTIFY): enqueue() call -> plugin call")
    def qc_pg_latency(ctx):
        import random

        url = ctx.fresh_pg()
        q = _queue(url)
        q.init()
        samples = 20 if ctx.quick else 200
        p = _spawn(url, "--mode", "latency")
        try:
            line = p.stdout.readline()
            if line.strip() != "LISTENING":
                raise RuntimeError(f"latency runner did not start: {line!r} {p.stderr.read()[-300:]}")
            time.sleep(0.5)  # let it claim nothing and go idle on LISTEN
            lat = []
            for i in range(samples):
                time.sleep(0.02 + random.random() * 0.03)
                t_enq = time.time()
                item = q.enqueue("probe", {"i": i})
                deadline = time.time() + 10
                while True:
                    ready, _, _ = select.select([p.stdout], [], [], max(0.0, deadline - time.time()))
                    if not ready:
                        raise RuntimeError(f"no plugin call within 10 s for item {item.id}")
                    parts = p.stdout.readline().split()
                    if parts and parts[0] == "CALL" and int(parts[1]) == item.id:
                        lat.append((float(parts[2]) - t_enq) * 1000)
                        break
        finally:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        lat.sort()
        return {"latency_p50": statistics.median(lat),
                "latency_p99": lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]}

    # -------------------------------------------------------------- targets (issue 7)

    target("SQLite drain, 1 runner, no-op plugin vs raw floor", "qc.sqlite:drain", "sqlite.raw:drain", min_ratio=0.8)
    target("SQLite drain CPU per item: raw floor / queuecore (the 0.8 target on CPU time)",
           "sqlite.raw:drain_cpu", "qc.sqlite:drain_cpu", min_ratio=0.8)
    target("SQLite drain vs Huey SqliteHuey (1 worker)", "qc.sqlite:drain", "huey.sqlite:drain", min_ratio=10)
    target("SQLite enqueue_many vs raw executemany", "qc.sqlite:enqueue_many", "sqlite.raw:enqueue_many", min_ratio=0.7)
    target("PostgreSQL drain, 4 runners vs raw 4-worker floor", "qc.pg.4proc:drain_4proc", "pg.raw.4proc:drain_4proc", min_ratio=0.5)
    target("PostgreSQL drain, 4 runners vs pgqueuer best", "qc.pg.4proc:drain_4proc",
           [f"pgqueuer.{d}.b{b}:drain" for d in ("psycopg", "asyncpg") for b in (10, 100, 500)]
           + [f"pgqueuer.{d}.b100.4proc:drain_4proc" for d in ("psycopg", "asyncpg")], min_ratio=3)
    target("Scale: 1M done rows vs N-item table", "qc.sqlite.done1m:drain", "qc.sqlite:drain", min_ratio=0.8)
    target("Scale: 1M pending vs N-item table", "qc.sqlite.pending1m:drain", "qc.sqlite:drain", min_ratio=0.8)
    target("10 no-op plugins vs 1 (cost <= 2x)", "qc.sqlite.plugins10:drain", "qc.sqlite:drain", min_ratio=0.5)
    target("Runner peak RSS, 10N vs N items (within 10%)", "qc.sqlite.rss:rss_10n", "qc.sqlite.rss:rss_n", max_ratio=1.10)

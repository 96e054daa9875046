"""Benchmark harness: the case registry, the shared helpers, and the child-process runner.

A *case* is a function ``fn(ctx) -> {metric_label: value}`` registered with
:func:`case`.  ``bench.py`` runs every repetition of every case in its own
process group (``python bench.py --child NAME ...``) under a timeout, so a peer
that hangs or crashes turns into a ``failed: <reason>`` row instead of
stopping the run.

Each metric row is printed with its ratio to a *floor*: another case's metric
measured in the same run (by default the raw database doing the same work on
the same backend).  Floors are named ``"case_name:metric_label"``.

Adding cases (phase 2 / queuecore): create a module in this folder, decorate
functions with ``@case(...)`` and list the module in ``CASE_MODULES`` below.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Callable

# Modules whose import registers cases, in run order (floors first).
CASE_MODULES = ["raw_cases", "peer_cases", "queuecore_cases"]

DEFAULT_PG_ADMIN_URL = os.environ.get(
    "BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"
)

# Default floor of each metric, by backend and by the metric's kind.
DEFAULT_FLOORS = {
    ("sqlite", "enqueue"): "sqlite.raw:enqueue_many",
    ("sqlite", "drain"): "sqlite.raw:drain",
    ("postgresql", "enqueue"): "pg.raw:enqueue_many",
    ("postgresql", "drain"): "pg.raw:drain",
}


class Skip(Exception):
    """Raised by a case that cannot run here (missing package, no server)."""


@dataclasses.dataclass
class Case:
    name: str
    fn: Callable
    backend: str  # "sqlite" | "postgresql" | "mysql"
    group: str  # "floor" | "peer" | "queuecore"
    quick: bool = True  # run in --quick mode
    timeout: float = 300.0  # seconds, per repetition (full mode)
    floors: dict = dataclasses.field(default_factory=dict)  # metric -> "case:metric" or None
    units: dict = dataclasses.field(default_factory=dict)  # metric -> unit (default items/s)
    params: dict = dataclasses.field(default_factory=dict)  # passed to fn as ctx.params
    repeat: int | None = None  # override R (e.g. 1 for very slow cases)
    note: str = ""
    max_n: int | None = None  # cap on N for very slow cases (the table shows the N used)

    def floor_of(self, metric: str) -> str | None:
        if metric in self.floors:
            return self.floors[metric]
        kind = "enqueue" if metric.startswith("enqueue") else "drain"
        ref = DEFAULT_FLOORS.get((self.backend, kind))
        if ref is None or ref.split(":")[0] == self.name and ref.split(":")[1] == metric:
            return None
        return ref

    def unit_of(self, metric: str) -> str:
        return self.units.get(metric, "items/s")


CASES: dict[str, Case] = {}


@dataclasses.dataclass
class Target:
    """A goal checked at the end of a run: value(num) / value(den) >= min_ratio (or <= max_ratio).

    ``num`` is "case:metric"; ``den`` is one "case:metric" or a list of them (their
    maximum is used: "at least 3x the best configuration of a peer").
    """

    text: str
    num: str
    den: str | list
    min_ratio: float | None = None
    max_ratio: float | None = None


TARGETS: list[Target] = []


def target(text, num, den, *, min_ratio=None, max_ratio=None):
    TARGETS.append(Target(text, num, den, min_ratio, max_ratio))


def case(name, *, backend, group, quick=True, timeout=300.0, floors=None, units=None,
         params=None, repeat=None, note="", max_n=None):
    """Register ``fn(ctx) -> dict[str, float]`` as benchmark case ``name``."""

    def deco(fn):
        if name in CASES:
            raise RuntimeError(f"duplicate benchmark case {name!r}")
        CASES[name] = Case(name, fn, backend, group, quick, timeout, dict(floors or {}),
                           dict(units or {}), dict(params or {}), repeat, note, max_n)
        return fn

    return deco


def load_cases():
    import importlib

    for mod in CASE_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
    return CASES


@dataclasses.dataclass
class Ctx:
    """What a case gets: item count, scratch folder, database helpers."""

    n: int
    quick: bool
    workdir: str  # an empty folder owned by this case
    case_name: str
    params: dict
    pg_admin_url: str = DEFAULT_PG_ADMIN_URL

    def path(self, name: str) -> str:
        return os.path.join(self.workdir, name)

    def fresh_pg(self, dbname: str | None = None) -> str:
        """Drop and create a PostgreSQL database; return its URL."""
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover
            raise Skip("psycopg not installed") from exc
        dbname = dbname or "qc_bench_" + "".join(
            c if c.isalnum() else "_" for c in self.case_name.lower()
        )
        try:
            admin = psycopg.connect(self.pg_admin_url, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            raise Skip(f"PostgreSQL not reachable at {self.pg_admin_url}") from exc
        with admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{dbname}"')
        base = self.pg_admin_url.rsplit("/", 1)[0]
        return f"{base}/{dbname}"


# ---------------------------------------------------------------- helpers for cases


def utcnow() -> datetime:
    """Naive UTC now (how queuecore stores times)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def ts(dt: datetime) -> str:
    """peewee's text form of a naive datetime (what a SQLite DateTimeField holds)."""
    return dt.isoformat(" ")


def noop(item, results):
    """The no-op unit of work every case does per item."""
    return True


def run_processes(target, args_list, timeout=None, return_start=False):
    """Start one process per args tuple, wait until each says ready, then time them.

    ``target(ready_q, start_ev, result_q, *args)`` must: do its setup, put
    anything in ready_q, wait for start_ev, work, put its result in result_q.
    Returns (elapsed seconds, [results]), or with return_start=True
    (elapsed, [results], time.time() at the start signal).
    """
    ctx = multiprocessing.get_context("fork")
    ready_q, result_q = ctx.Queue(), ctx.Queue()
    start_ev = ctx.Event()
    procs = [ctx.Process(target=target, args=(ready_q, start_ev, result_q, *a))
             for a in args_list]
    for p in procs:
        p.start()
    for _ in procs:
        ready_q.get(timeout=60)
    t0 = time.perf_counter()
    start_wall = time.time()
    start_ev.set()
    results = [result_q.get(timeout=timeout) for _ in procs]
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join(10)
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"worker process exit codes {bad}")
    errors = [r for r in results if isinstance(r, str) and r.startswith("error:")]
    if errors:
        raise RuntimeError(errors[0])
    return (elapsed, results, start_wall) if return_start else (elapsed, results)


def cached_sqlite(ctx, key: str, build) -> str:
    """A SQLite file built once per run by ``build(path)`` (e.g. a 1,000,000-row table),
    copied into the case's workdir for each repetition; returns the copy's path."""
    cache = os.path.join(os.path.dirname(ctx.workdir), "_cache")
    os.makedirs(cache, exist_ok=True)
    src = os.path.join(cache, key + ".db")
    if not os.path.exists(src):
        tmp = src + ".tmp"
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(tmp + suffix):
                os.remove(tmp + suffix)
        build(tmp)
        import sqlite3

        conn = sqlite3.connect(tmp)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        os.replace(tmp, src)
    dst = ctx.path(key + ".db")
    shutil.copyfile(src, dst)
    # The copy is hundreds of MB of dirty page cache: flush it now, or the
    # drain's first WAL checkpoint (which fsyncs the file) waits for all of it.
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())
    return dst


def peak_rss_mib(pid: int | None = None) -> float:
    """Peak RSS (VmHWM) of a process, in MiB (Linux)."""
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


# ---------------------------------------------------------------- child side


def child_main(name: str, n: int, quick: bool, workdir: str) -> int:
    """Run one repetition of one case; print ``RESULT {json}`` as the last line."""
    cases = load_cases()
    c = cases[name]
    if os.path.exists(workdir):
        shutil.rmtree(workdir)
    os.makedirs(workdir)
    if c.max_n:
        n = min(n, c.max_n)
    ctx = Ctx(n=n, quick=quick, workdir=workdir, case_name=name, params=c.params)
    try:
        metrics = c.fn(ctx)
        out = {"ok": True, "metrics": metrics, "n": ctx.n}
    except Skip as exc:
        out = {"ok": False, "skip": True, "reason": str(exc)}
    except ImportError as exc:
        out = {"ok": False, "skip": True, "reason": f"not installed: {exc.name or exc}"}
    except Exception as exc:  # noqa: BLE001 - reported in the table
        import traceback

        traceback.print_exc(file=sys.stderr)
        out = {"ok": False, "reason": f"{type(exc).__name__}: {exc}"[:200]}
    sys.stdout.flush()
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def median(xs):
    return statistics.median(xs)


__all__ = [
    "CASES", "TARGETS", "Case", "Ctx", "Skip", "Target", "case", "target", "load_cases", "utcnow", "ts", "noop",
    "run_processes", "peak_rss_mib", "child_main", "median", "timedelta",
]

"""Fault tests: real runner processes killed, stopped, frozen and cut off from
their database, on real SQLite files and (with QUEUECORE_TEST_POSTGRES_URL)
a real PostgreSQL. The runner process is tests/fault_runner.py; it logs one
line per completed plugin call so repeated calls can be counted.

The figures each test prints (run with ``-s``) are the ones docs/guarantees.md
reports; with QUEUECORE_FIGURES_FILE set they are also appended there as JSON.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from queuecore import Queue, Status
from queuecore.storage import utcnow

HERE = Path(__file__).resolve().parent
FAULT_RUNNER = HERE / "fault_runner.py"
PG_ENV = "QUEUECORE_TEST_POSTGRES_URL"
PLUGINS = ("alpha", "beta", "gamma")


# -- helpers ------------------------------------------------------------------


def report(test: str, **figures) -> None:
    """Print a test's figures, and append them to $QUEUECORE_FIGURES_FILE if set."""
    print(f"\nFIGURES {test}: " + json.dumps(figures))
    path = os.environ.get("QUEUECORE_FIGURES_FILE")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"test": test, **figures}) + "\n")


@dataclass
class Proc:
    popen: subprocess.Popen
    stderr_path: Path
    opts: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


class Fleet:
    """Runner processes started by one test, all stopped at its end whatever happens."""

    def __init__(self, tmp: Path, db: str, log: Path) -> None:
        self.tmp, self.db, self.log = tmp, db, log
        self.procs: list[Proc] = []

    def start(self, **opts) -> Proc:
        argv = [sys.executable, str(FAULT_RUNNER), "--db", self.db, "--log", str(self.log)]
        for key, value in opts.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif value is not False and value is not None:
                argv += [flag, str(value)]
        err = self.tmp / f"runner-{len(self.procs)}.err"
        stdin = subprocess.PIPE if opts.get("wait_stdin") else subprocess.DEVNULL
        popen = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=err.open("wb"), text=True)
        proc = Proc(popen, err, opts)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.popen.kill()
                except ProcessLookupError:
                    pass
            proc.popen.wait(timeout=10)


@pytest.fixture
def fleet_factory(tmp_path):
    fleets = []

    def make(db: str) -> Fleet:
        fleet = Fleet(tmp_path, db, tmp_path / "calls.log")
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop_all()


def summary_of(proc: Proc, timeout: float = 15) -> dict:
    out, _ = proc.popen.communicate(timeout=timeout)
    assert proc.popen.returncode == 0, f"runner exited {proc.popen.returncode}: {proc.stderr()[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


def read_log(log: Path) -> tuple[list[tuple[str, int, int, bool]], list[tuple[str, int]]]:
    """(calls as (plugin, item id, pid, answer), self-kills as (point, pid)) in log order."""
    calls, kills = [], []
    if not log.exists():
        return calls, kills
    for line in log.read_text().splitlines():
        parts = line.split()
        if parts[0] == "call":
            calls.append((parts[1], int(parts[2]), int(parts[3]), parts[4] == "True"))
        elif parts[0] == "kill":
            kills.append((parts[1], int(parts[2])))
    return calls, kills


def started_pids(log: Path) -> set[int]:
    return {int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("start ")}


def repeated_true_calls(calls, allowed_pids: set[int]) -> tuple[int, list]:
    """Count plugin calls repeated after the plugin had returned True for the item.

    Each such repeat is allowed only when the earlier True came from a runner
    that was killed before writing it back: returns (count, the repeats that
    no kill explains).
    """
    trues = collections.defaultdict(list)
    for plugin, item_id, pid, answer in calls:
        if answer:
            trues[(plugin, item_id)].append(pid)
    repeats, unexplained = 0, []
    for key, pids in trues.items():
        repeats += len(pids) - 1
        for pid in pids[:-1]:
            if pid not in allowed_pids:
                unexplained.append((key, pids))
    return repeats, unexplained


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def row(q: Queue, item_id: int):
    return q.get(item_id)


# -- databases ----------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    Queue(url).init()
    return url


def _pg_admin():
    psycopg = pytest.importorskip("psycopg")
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"set {PG_ENV} to an admin URL of a PostgreSQL server to run this test")
    return psycopg, url


@pytest.fixture
def pg_url():
    """A fresh database on the PostgreSQL server named by QUEUECORE_TEST_POSTGRES_URL, dropped afterwards."""
    psycopg, admin_url = _pg_admin()
    name = f"qc_faults_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = admin_url.rpartition("/")
    url = f"{base}/{name}"
    Queue(url).init()
    yield url
    _pg_ensure_up(admin_url)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def _pg_exec(sql: str, params=()) -> list:
    psycopg, admin_url = _pg_admin()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def _pg_ensure_up(admin_url: str, timeout: float = 60) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(admin_url, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.fixture(params=["sqlite", "postgres"])
def any_url(request):
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


def _db_name(url: str) -> str:
    return url.rpartition("/")[2]


# -- SIGKILL at random points -------------------------------------------------


SIZES = {
    # backend: (items, kills, runners, backlog kept while the kills go on)
    "sqlite": (2000, 50, 3, 300),
    "postgres": (800, 25, 3, 300),
}


@pytest.mark.slow
def test_sigkill_at_random_points_loses_nothing(any_url, fleet_factory, tmp_path):
    """Runners are SIGKILLed over and over, from outside at random moments and
    from inside at chosen points (claim uncommitted, between plugins, after a
    plugin's call, write-back uncommitted) while items are enqueued.
    Every item ends done with every plugin True; each repeated plugin call is
    one a killed runner made and never wrote back."""
    backend = "sqlite" if any_url.startswith("sqlite") else "postgres"
    n_items, target_kills, n_runners, backlog = SIZES[backend]
    q = Queue(any_url)
    fleet = fleet_factory(any_url)
    rng = random.Random(20261127)
    chaos = dict(p_claim=0.04, p_write=0.04, p_between=0.0015, p_after_call=0.0015)
    base = dict(batch=20, lease=2.0, sleep_ms=3, fail_first=7, plugins=",".join(PLUGINS))

    spares: dict[bool, list[Proc]] = {True: [], False: []}

    def start(with_chaos: bool) -> Proc:
        # Python and queuecore take a while to import on a busy machine: keep
        # warm spares waiting on stdin, so a killed runner is replaced at once.
        pool = spares[with_chaos]
        while len(pool) < 2:
            pool.append(fleet.start(seed=rng.randrange(1, 2**31), wait_stdin=True, **base, **(chaos if with_chaos else {})))
        proc = pool.pop(0)
        proc.popen.stdin.write("go\n")
        proc.popen.stdin.flush()
        return proc

    enqueued = 0

    def top_up() -> None:
        # Keep a modest backlog, so the kills land on runners in the middle of batches.
        nonlocal enqueued
        counts = q.counts()
        waiting = counts[Status.PENDING] + counts[Status.NEED_RETRY]
        # ... and spread the items over the kills, so the last ones come near the end.
        quota = n_items * (len(killed) + 1) // target_kills
        if enqueued < n_items and (waiting < backlog or enqueued < quota):
            k = min(max(backlog - waiting, quota - enqueued, 1), n_items - enqueued)
            ids = q.enqueue_many([("fault", {"n": enqueued + i}) for i in range(k)])
            enqueued += len(ids)

    killed: set[int] = set()
    top_up()
    live = [start(True) for _ in range(n_runners)]
    external = held_at_kill = idle_polls = 0
    started = time.monotonic()
    while len(killed) < target_kills:
        assert time.monotonic() - started < 120, f"only {len(killed)} kills in 120 s"
        time.sleep(rng.uniform(0.05, 0.2))
        top_up()
        # Runners that killed themselves at a kill point.
        for proc in list(live):
            if proc.popen.poll() is not None:
                assert proc.popen.returncode == -signal.SIGKILL, proc.stderr()[-3000:]
                killed.add(proc.pid)
                live.remove(proc)
                live.append(start(len(killed) < target_kills))
        # Kill mid-batch: a runner that holds items right now (an idle one only
        # once every item is enqueued and none is held, so the test ends).
        holding_pids = _holding_pids(q)
        holders = [proc for proc in live if proc.pid in holding_pids]
        if not holders and enqueued < n_items:
            idle_polls += 1
            continue
        victim = rng.choice(holders or live)
        victim.popen.kill()
        victim.popen.wait()
        killed.add(victim.pid)
        external += 1
        held_at_kill += bool(holders)
        live.remove(victim)
        live.append(start(len(killed) < target_kills))
    kill_phase = time.monotonic() - started
    enqueued_at_end_of_kills = enqueued
    while enqueued < n_items:
        top_up()
        time.sleep(0.05)

    def all_done():
        for proc in list(live):
            if proc.popen.poll() is not None:  # a chaos runner died at a kill point
                assert proc.popen.returncode == -signal.SIGKILL, proc.stderr()[-3000:]
                killed.add(proc.pid)
                live.remove(proc)
                live.append(start(False))
        return q.counts()[Status.DONE] == n_items

    wait_for(all_done, 120, f"all {n_items} items done (counts: {q.counts()})", interval=0.2)
    elapsed = time.monotonic() - started
    # SIGTERM only runners that are running (a default handler still applies while one starts).
    wait_for(lambda: {p.pid for p in live} <= started_pids(fleet.log), 30, "the runners to start")
    time.sleep(0.3)
    for proc in live:
        proc.popen.send_signal(signal.SIGTERM)
    for proc in live:
        try:
            proc.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"runner {proc.pid} did not stop on SIGTERM")
        if proc.popen.returncode == -signal.SIGKILL:
            killed.add(proc.pid)  # a chaos runner hit a kill point while stopping
        else:
            assert proc.popen.returncode == 0, proc.stderr()[-3000:]

    counts = q.counts()
    assert counts[Status.DONE] == n_items, counts
    items = q.list(limit=n_items + 10)
    assert len(items) == n_items
    for item in items:
        assert item.results == {p: True for p in PLUGINS}, item
    for proc in fleet.procs:
        assert "database is locked" not in proc.stderr()
        assert "Traceback" not in proc.stderr(), proc.stderr()[-3000:]

    calls, self_kills = read_log(fleet.log)
    repeats, unexplained = repeated_true_calls(calls, killed)
    assert not unexplained, f"plugin calls repeated with no kill to explain them: {unexplained[:10]}"
    failed_first = sum(1 for p, _i, _pid, a in calls if not a)
    report(
        f"sigkill[{backend}]",
        items=n_items,
        plugins=len(PLUGINS),
        kills=len(killed),
        external_kills=external,
        external_kills_holding_items=held_at_kill,
        self_kills=dict(collections.Counter(point for point, _ in self_kills)),
        items_lost=n_items - counts[Status.DONE],
        plugin_calls=len(calls),
        planned_failures=failed_first,
        repeated_calls=repeats,
        repeated_calls_unexplained=len(unexplained),
        seconds=round(elapsed, 1),
        kill_phase_seconds=round(kill_phase, 1),
        idle_polls=idle_polls,
        enqueued_during_kills=enqueued_at_end_of_kills,
    )


def _holding_pids(q: Queue) -> set[int]:
    """Pids of the runners holding items now (a runner's name is host:pid:random)."""
    items = q.list(status=Status.IN_PROGRESS, limit=10_000)
    return {int(item.lease_owner.split(":")[-2]) for item in items if item.lease_owner}


# -- SIGTERM / SIGINT ---------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_finishes_call_in_hand_and_releases_the_rest(signum, sqlite_url, fleet_factory):
    q = Queue(sqlite_url)
    ids = q.enqueue_many([("t", {"i": i}) for i in range(30)])
    fleet = fleet_factory(sqlite_url)
    proc = fleet.start(plugins="alpha,beta", sleep_ms=150, batch=30, lease=60)
    wait_for(lambda: len(read_log(fleet.log)[0]) >= 3, 20, "three plugin calls")
    proc.popen.send_signal(signum)
    started = time.monotonic()
    summary = summary_of(proc)  # exit status 0 asserted there
    stop_seconds = time.monotonic() - started
    assert stop_seconds < 5

    calls, _ = read_log(fleet.log)
    last_plugin, last_item, _, _ = calls[-1]
    # The call in hand when the signal came was finished and written back.
    assert q.get(last_item).results.get(last_plugin) is True
    called_items = {item_id for _, item_id, _, _ in calls}
    for item in map(q.get, ids):
        assert item.status in (Status.DONE, Status.PENDING), item
        assert item.lease_owner is None
        if item.status == Status.PENDING:
            # Released: due now, and the interrupted try did not count.
            assert item.trials == 0
            assert item.run_after <= utcnow()
            if item.id not in called_items:
                assert item.results == {}
    assert q.counts()[Status.IN_PROGRESS] == 0
    done_before = q.counts()[Status.DONE]
    assert summary["released"] >= 30 - done_before - 1

    # A new runner finishes the rest; no plugin is called twice for an item.
    summary_of(fleet.start(plugins="alpha,beta", batch=30, burst=True))
    assert q.counts()[Status.DONE] == 30
    calls, _ = read_log(fleet.log)
    repeats, _ = repeated_true_calls(calls, set())
    assert repeats == 0
    assert all(q.get(i).trials == 0 for i in ids)
    report(
        f"{signal.Signals(signum).name.lower()}",
        done_before_stop=done_before,
        released=summary["released"],
        stop_seconds=round(stop_seconds, 2),
        repeated_calls=repeats,
    )


# -- leases -------------------------------------------------------------------


@pytest.mark.slow
def test_long_plugin_keeps_its_lease(sqlite_url, fleet_factory, tmp_path):
    """A plugin call four times longer than the lease: the lease is renewed and
    a second runner polling the same queue never takes the item."""
    q = Queue(sqlite_url)
    (item_id,) = q.enqueue_many([("slow", {})])
    hold = tmp_path / "hold"
    hold.touch()
    fleet = fleet_factory(sqlite_url)
    holder = fleet.start(plugins="alpha", lease=1.0, hold_file=hold, burst=True)
    wait_for(lambda: q.get(item_id).status == Status.IN_PROGRESS, 10, "the item to be claimed")
    first_expiry = q.get(item_id).lease_expires
    other = fleet.start(plugins="alpha", lease=1.0)
    expiries = set()
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        item = q.get(item_id)
        assert item.status == Status.IN_PROGRESS
        assert f":{holder.pid}:" in item.lease_owner
        expiries.add(item.lease_expires)
        time.sleep(0.1)
    hold.unlink()
    summary_of(holder)
    other.popen.send_signal(signal.SIGTERM)
    other_summary = summary_of(other)

    assert max(expiries) > first_expiry  # renewed
    assert len(expiries) >= 3
    assert other_summary["claimed"] == 0
    item = q.get(item_id)
    assert item.status == Status.DONE and item.trials == 0
    calls, _ = read_log(fleet.log)
    assert calls == [("alpha", item_id, holder.pid, True)]
    report("long_plugin_lease", lease_seconds=1.0, held_seconds=4.0, renewals_seen=len(expiries) - 1, second_runner_claims=0)


@pytest.mark.slow
def test_stale_runner_cannot_overwrite_newer_outcome(sqlite_url, fleet_factory, tmp_path):
    """Runner A is frozen (SIGSTOP) mid-call until its lease expires; runner B
    takes the item over and finishes it. When A resumes, its outcome (a
    failure) is fenced out by the claim token: the item stays done."""
    q = Queue(sqlite_url)
    (item_id,) = q.enqueue_many([("contested", {})])
    hold = tmp_path / "hold"
    hold.touch()
    fleet = fleet_factory(sqlite_url)
    stale = fleet.start(plugins="alpha", lease=1.0, hold_file=hold, answer="false", burst=True)
    wait_for(lambda: q.get(item_id).status == Status.IN_PROGRESS, 10, "the item to be claimed")
    os.kill(stale.pid, signal.SIGSTOP)
    try:
        time.sleep(1.5)  # A's lease runs out; its heartbeat is frozen with it
        summary_b = summary_of(fleet.start(plugins="alpha", lease=1.0, burst=True))
        assert summary_b["done"] == 1
        hold.unlink()
    finally:
        os.kill(stale.pid, signal.SIGCONT)
    summary_a = summary_of(stale)
    assert summary_a["lost"] == 1

    item = q.get(item_id)
    assert item.status == Status.DONE
    assert item.results == {"alpha": True}
    assert "alpha" not in item.errors
    assert item.lease_owner is None
    calls, _ = read_log(fleet.log)
    assert [(p, a) for p, _, _, a in calls] == [("alpha", True), ("alpha", False)]
    report("stale_runner_fenced", stale_outcomes_dropped=summary_a["lost"], final_status="done")


# -- SQLite contention --------------------------------------------------------

LOCK_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("UPDATE queuecore_schema SET value = value")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""

ENQUEUER = """
import sys
from queuecore import Queue
q = Queue(sys.argv[1])
tag, n = sys.argv[2], int(sys.argv[3])
for start in range(0, n, 10):
    if start % 20:
        q.enqueue_many([("t", {"tag": tag, "i": i}) for i in range(start, start + 10)])
    else:
        for i in range(start, start + 10):
            q.enqueue("t", {"tag": tag, "i": i})
"""


@pytest.mark.slow
def test_sqlite_write_lock_held_elsewhere_runner_waits(sqlite_url, fleet_factory, tmp_path):
    """Another process holds the write lock for 3 s: a runner and an enqueuer
    started meanwhile wait for it and carry on; no "database is locked"."""
    path = sqlite_url.split("///", 1)[1]
    q = Queue(sqlite_url)
    q.enqueue_many([("t", {"i": i}) for i in range(50)])
    lock_seconds = 3.0
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, path, str(lock_seconds)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        locked_at = time.monotonic()
        fleet = fleet_factory(sqlite_url)
        runner = fleet.start(plugins="alpha,beta", burst=True)
        enq_err = tmp_path / "enqueuer.err"
        enqueuer = subprocess.Popen([sys.executable, "-c", ENQUEUER, sqlite_url, "x", "20"], stderr=enq_err.open("wb"))
        summary = summary_of(runner, timeout=30)
        waited = time.monotonic() - locked_at
        assert enqueuer.wait(timeout=30) == 0, enq_err.read_text()
    finally:
        holder.kill()
        holder.wait()
    assert waited >= lock_seconds - 0.5
    assert "locked" not in runner.stderr()
    assert summary["done"] >= 50
    summary_of(fleet.start(plugins="alpha,beta", burst=True))
    assert q.counts()[Status.DONE] == 70
    report("sqlite_lock_held", lock_seconds=lock_seconds, runner_waited_seconds=round(waited, 1), database_is_locked_errors=0)


@pytest.mark.slow
def test_sqlite_many_runners_and_enqueuers_at_once(sqlite_url, fleet_factory, tmp_path):
    """Three runners and three enqueuers on one file at the same time: every
    item done, each plugin called exactly once per item, nothing locked."""
    q = Queue(sqlite_url)
    fleet = fleet_factory(sqlite_url)
    runners = [fleet.start(plugins="alpha,beta", batch=25, lease=30) for _ in range(3)]
    per_enqueuer = 400
    errs = [tmp_path / f"enq{i}.err" for i in range(3)]
    enqueuers = [
        subprocess.Popen([sys.executable, "-c", ENQUEUER, sqlite_url, f"e{i}", str(per_enqueuer)], stderr=errs[i].open("wb"))
        for i in range(3)
    ]
    for i, proc in enumerate(enqueuers):
        assert proc.wait(timeout=60) == 0, errs[i].read_text()
    total = 3 * per_enqueuer
    wait_for(lambda: q.counts()[Status.DONE] == total, 60, f"{total} items done ({q.counts()})", interval=0.1)
    for proc in runners:
        proc.popen.send_signal(signal.SIGTERM)
    claimed = sum(summary_of(proc)["claimed"] for proc in runners)
    for proc in runners:
        assert "locked" not in proc.stderr()
    calls, _ = read_log(fleet.log)
    per_key = collections.Counter((p, i) for p, i, _, _ in calls)
    assert len(per_key) == 2 * total
    assert set(per_key.values()) == {1}
    assert claimed == total
    payloads = {(it.payload["tag"], it.payload["i"]) for it in q.list(limit=total + 1)}
    assert len(payloads) == total
    report("sqlite_many_processes", runners=3, enqueuers=3, items=total, plugin_calls=len(calls), repeated_calls=0)


# -- database outage ----------------------------------------------------------


@pytest.mark.slow
def test_postgres_connections_cut_and_database_refusing(pg_url, fleet_factory):
    """The runners' connections are killed (pg_terminate_backend) again and
    again, and once the database refuses new connections for 3 s: the
    runners reconnect and the queue completes, nothing lost or repeated."""
    name = _db_name(pg_url)
    q = Queue(pg_url)
    n = 800
    q.enqueue_many([("t", {"i": i}) for i in range(n)])
    q.close()
    fleet = fleet_factory(pg_url)
    runners = [fleet.start(plugins="alpha,beta", batch=20, lease=10, sleep_ms=2) for _ in range(2)]
    terminate = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
    cuts = 0
    time.sleep(0.8)
    for _ in range(4):
        cuts += _pg_exec(terminate, (name,))[0][0]
        time.sleep(0.4)
    _pg_exec(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
    try:
        cuts += _pg_exec(terminate, (name,))[0][0]
        time.sleep(3.0)
    finally:
        _pg_exec(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
    for _ in range(3):
        time.sleep(0.4)
        cuts += _pg_exec(terminate, (name,))[0][0]
    q = Queue(pg_url)
    wait_for(lambda: q.counts()[Status.DONE] == n, 90, f"{n} items done", interval=0.2)
    q.close()
    for proc in runners:
        proc.popen.send_signal(signal.SIGTERM)
    for proc in runners:
        summary_of(proc)
        assert "Traceback" not in proc.stderr(), proc.stderr()[-3000:]
    calls, _ = read_log(fleet.log)
    repeats, unexplained = repeated_true_calls(calls, set())
    assert {(p, i) for p, i, _, _ in calls} == {(p, it.id) for p in ("alpha", "beta") for it in Queue(pg_url).list(limit=n)}
    report("postgres_outage", items=n, connections_killed=cuts, refusal_seconds=3.0, items_lost=0, repeated_calls=repeats)
    assert repeats == 0, unexplained


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("QUEUECORE_TEST_PG_RESTART"),
    reason="set QUEUECORE_TEST_PG_RESTART=1 (and QUEUECORE_TEST_POSTGRES_URL) to restart the local PostgreSQL mid-run",
)
def test_postgres_restart_mid_run(pg_url, fleet_factory):
    """The PostgreSQL server itself is restarted mid-run (pg_ctlcluster, as root):
    the runner reconnects and the queue completes."""
    q = Queue(pg_url)
    n = 400
    q.enqueue_many([("t", {"i": i}) for i in range(n)])
    q.close()
    fleet = fleet_factory(pg_url)
    runner = fleet.start(plugins="alpha,beta", batch=20, lease=30, sleep_ms=5)
    time.sleep(1.0)
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    started = time.monotonic()
    try:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True, timeout=60
        )
    finally:
        _pg_ensure_up(os.environ[PG_ENV])
    restart_seconds = time.monotonic() - started
    q = Queue(pg_url)
    wait_for(lambda: q.counts()[Status.DONE] == n, 90, f"{n} items done", interval=0.2)
    q.close()
    runner.popen.send_signal(signal.SIGTERM)
    summary_of(runner)
    calls, _ = read_log(fleet.log)
    repeats, unexplained = repeated_true_calls(calls, set())
    report("postgres_restart", items=n, restart_seconds=round(restart_seconds, 1), items_lost=0, repeated_calls=repeats)
    assert repeats == 0, unexplained

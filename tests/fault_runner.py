"""A runner process for the fault tests (tests/test_faults.py); not a test module.

It runs ``queuecore.Runner`` with recording plugins. Every completed plugin
call appends one line ``call <plugin> <item id> <pid> <answer>`` to the log
file, opened with O_APPEND so lines from several processes never interleave
and a repeated call can be counted. On request it kills itself with SIGKILL
at chosen points of a batch, writing ``kill <point> <pid>`` first:

- ``claim``: inside the claim transaction, after the UPDATE, before COMMIT;
- ``write``: inside the write-back transaction, before COMMIT;
- ``between``: after one plugin answered an item, before the next is called;
- ``after_call``: after a plugin did its work and logged it, before it returns.

At exit (burst mode, or SIGTERM) it prints the run's totals as JSON on stdout.

    python tests/fault_runner.py --db sqlite:///q.db --log calls.log [options]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from contextlib import contextmanager

from queuecore import Queue, Runner, hookimpl

LOG_FD = -1


def record(line: str) -> None:
    os.write(LOG_FD, (line + "\n").encode())


def die(point: str) -> None:
    record(f"kill {point} {os.getpid()}")
    os.kill(os.getpid(), signal.SIGKILL)


class Recorder:
    """A plugin that sleeps, answers, and logs each completed call."""

    def __init__(self, name: str, args: argparse.Namespace, rng: random.Random) -> None:
        self.name = name
        self.args = args
        self.rng = rng
        self.first = self.last = False

    @hookimpl
    def process_item(self, item, results):
        args = self.args
        if not self.first and self.rng.random() < args.p_between:
            die("between")
        if args.sleep_ms:
            time.sleep(args.sleep_ms / 1000)
        if args.hold_file and os.path.exists(args.hold_file):
            # Park here until the test removes the file (a plugin longer than the lease).
            while os.path.exists(args.hold_file):
                time.sleep(0.02)
        answer = args.answer
        if args.fail_first and self.last and item.id % args.fail_first == 0 and item.trials == 0:
            answer = False  # one retry for some items, so the retry path runs under kills too
        record(f"call {self.name} {item.id} {os.getpid()} {answer}")
        if self.rng.random() < args.p_after_call:
            die("after_call")
        return answer


def install_kill_points(runner: Runner, args: argparse.Namespace, rng: random.Random) -> None:
    storage = runner.storage
    real_transaction = storage.transaction
    doomed: list[str] = []

    @contextmanager
    def transaction():
        with real_transaction() as txn:
            yield txn
            if doomed:
                die(doomed.pop())  # the statements ran; COMMIT never does

    storage.transaction = transaction

    real_claim, real_write_back = storage.claim, storage.write_back

    def claim(*a, **kw):
        if rng.random() < args.p_claim:
            doomed.append("claim")
        return real_claim(*a, **kw)

    def write_back(*a, **kw):
        if rng.random() < args.p_write:
            doomed.append("write")
        return real_write_back(*a, **kw)

    storage.claim, storage.write_back = claim, write_back


def main(argv: list[str] | None = None) -> int:
    global LOG_FD
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--plugins", default="alpha,beta,gamma")
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--max-trials", type=int, default=100)
    parser.add_argument("--retry-delay", type=float, default=0.0)
    parser.add_argument("--burst", action="store_true")
    parser.add_argument("--sleep-ms", type=float, default=0.0)
    parser.add_argument("--answer", default="true", choices=["true", "false"])
    parser.add_argument("--fail-first", type=int, default=0, help="last plugin fails the first try of ids divisible by N")
    parser.add_argument("--hold-file", default="")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wait-stdin", action="store_true", help="start work only when a line arrives on stdin")
    parser.add_argument("--p-claim", type=float, default=0.0)
    parser.add_argument("--p-write", type=float, default=0.0)
    parser.add_argument("--p-between", type=float, default=0.0)
    parser.add_argument("--p-after-call", type=float, default=0.0)
    args = parser.parse_args(argv)
    args.answer = args.answer == "true"

    LOG_FD = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    rng = random.Random(args.seed or None)
    names = [n for n in args.plugins.split(",") if n]
    plugins = {name: Recorder(name, args, rng) for name in names}
    runner = Runner(
        Queue(args.db),
        plugins=plugins,
        max_trials=args.max_trials,
        retry_delay=args.retry_delay,
        lease_seconds=args.lease,
    )
    order = runner.plugin_names  # pluggy's call order (last registered first)
    for name, plugin in plugins.items():
        plugin.first, plugin.last = name == order[0], name == order[-1]
    install_kill_points(runner, args, rng)
    if args.wait_stdin:
        sys.stdin.readline()  # a warm spare: imported and ready, started when the test says so
    record(f"start {os.getpid()} {runner.name}")
    total = runner.run(burst=args.burst, batch_size=args.batch)
    print(json.dumps({"pid": os.getpid(), "name": runner.name, **vars(total)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

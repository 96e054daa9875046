#!/usr/bin/env python3
"""One queuecore runner process for the benchmarks, with explicit no-op plugins.

    python qc_worker.py URL [--plugins K] [--sleep S] [--concurrency C] [--batch B]
                            [--wait-go] [--mode drain|serve|latency]

drain:   Runner.run(burst=True); prints one JSON line: done, elapsed, start/end wall
         times, peak RSS (VmHWM, MiB) before and after the drain.
latency: Runner.run() until SIGTERM; prints "CALL <item id> <time.time()>" per call.
--wait-go: print "READY" once built, then wait for a line on stdin before starting,
         so several processes start together and setup is not timed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from queuecore import Queue, Runner, hookimpl


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


class Noop:
    @hookimpl
    def process_item(self, item, results):
        return True


class Sleep:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    @hookimpl
    def process_item(self, item, results):
        time.sleep(self.seconds)
        return True


class Report:
    """Latency probe: says when it was called, for which item."""

    @hookimpl
    def process_item(self, item, results):
        sys.stdout.write(f"CALL {item.id} {time.time():.6f}\n")
        sys.stdout.flush()
        return True


def make_plugins(k: int, sleep: float) -> dict:
    if sleep:
        return {f"sleep{i}": Sleep(sleep) for i in range(k)}
    return {f"noop{i}": Noop() for i in range(k)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--plugins", type=int, default=1)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--wait-go", action="store_true")
    p.add_argument("--mode", choices=("drain", "latency"), default="drain")
    a = p.parse_args(argv)

    q = Queue(a.url)
    plugins = {"probe": Report()} if a.mode == "latency" else make_plugins(a.plugins, a.sleep)
    runner = Runner(q, plugins=plugins, concurrency=a.concurrency, lease_seconds=300)
    q.counts()  # connect and make sure the schema is there before timing
    rss_before = peak_rss_mib()
    if a.wait_go:
        print("READY", flush=True)
        sys.stdin.readline()
    if a.mode == "latency":
        print("LISTENING", flush=True)
        runner.run(burst=False, batch_size=a.batch)
        return 0
    start = time.time()
    t0 = time.perf_counter()
    total = runner.run(burst=True, batch_size=a.batch)
    elapsed = time.perf_counter() - t0
    print(json.dumps({
        "done": total.done, "claimed": total.claimed, "elapsed": elapsed,
        "start": start, "end": time.time(),
        "rss_before_mib": rss_before, "rss_peak_mib": peak_rss_mib(),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

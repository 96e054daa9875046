#!/usr/bin/env python3
"""cProfile one queuecore hot path, to see what stands between it and the raw floor.

    python benchmarks/profile_qc.py drain [--n 20000] [--url sqlite:///...] [--plugins 1]
    python benchmarks/profile_qc.py enqueue_many [--n 20000]

Prints the top functions by own time and by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from queuecore import Queue, Runner  # noqa: E402

from qc_worker import make_plugins  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("drain", "enqueue_many", "enqueue"))
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--url", help="default: a fresh SQLite file")
    p.add_argument("--plugins", type=int, default=1)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", help="save the raw profile here")
    a = p.parse_args(argv)
    url = a.url or "sqlite:///" + os.path.join(tempfile.mkdtemp(prefix="qcprof"), "q.db")
    q = Queue(url)
    q.init()
    items = [("noop", {"i": i}) for i in range(a.n)]
    prof = cProfile.Profile()
    if a.what == "drain":
        q.enqueue_many(items)
        r = Runner(q, plugins=make_plugins(a.plugins, 0.0))
        q.counts()
        t0 = time.perf_counter()
        prof.enable()
        r.run(burst=True, batch_size=500)
        prof.disable()
    elif a.what == "enqueue_many":
        t0 = time.perf_counter()
        prof.enable()
        q.enqueue_many(items)
        prof.disable()
    else:
        t0 = time.perf_counter()
        prof.enable()
        for t, pl in items:
            q.enqueue(t, pl)
        prof.disable()
    el = time.perf_counter() - t0
    print(f"{a.what}: {a.n} items in {el:.3f}s under the profiler ({a.n / el:,.0f}/s)")
    if a.out:
        prof.dump_stats(a.out)
    st = pstats.Stats(prof)
    st.sort_stats("tottime").print_stats(a.top)
    st.sort_stats("cumulative").print_stats(a.top)


if __name__ == "__main__":
    main()

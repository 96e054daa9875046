#!/usr/bin/env python3
"""queuecore benchmarks: queuecore beside the raw database floor and its peers, one run.

    python benchmarks/bench.py                  # full run, N=20000, median of 3
    python benchmarks/bench.py --quick          # smoke run (CI): N=500, 1 repetition
    python benchmarks/bench.py --only sqlite    # cases whose name contains "sqlite"
    python benchmarks/bench.py --list           # the registered cases

Each repetition of each case runs in its own process group under a timeout;
a case that fails prints "failed: <reason>" in its row, one that cannot run
here (package not installed, no PostgreSQL) prints "skipped: <reason>".
Every figure is printed with its ratio to a floor measured in the same run.
Exit status: 1 if a floor or a queuecore case failed, else 0.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import harness  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny N, 1 repetition, skip slow cases")
    p.add_argument("--n", type=int, default=None, help="items per case (default 20000; 500 with --quick)")
    p.add_argument("-r", "--repeat", type=int, default=None, help="repetitions (default 3; 1 with --quick)")
    p.add_argument("--only", action="append", default=[],
                   help="run cases whose name contains this (or matches this glob); repeatable")
    p.add_argument("--skip", action="append", default=[], help="skip cases matching this; repeatable")
    p.add_argument("--no-floors", action="store_true", help="with --only: do not add the floors the selection needs")
    p.add_argument("--workdir", default=os.environ.get("BENCH_WORKDIR", "/tmp/queuecore-bench"),
                   help="scratch folder for SQLite files (default /tmp/queuecore-bench)")
    p.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every case's timeout")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="show each child's stderr")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def matches(name, pats):
    return any(pat in name or fnmatch.fnmatch(name, pat) for pat in pats)


def select(cases, args):
    chosen = [c for c in cases.values() if (not args.quick or c.quick)]
    if args.only:
        wanted = [c for c in chosen if matches(c.name, args.only)]
        if not args.no_floors:
            need = set()
            for c in wanted:
                for m in list(c.floors.values()) + [harness.DEFAULT_FLOORS.get((c.backend, k)) for k in ("enqueue", "drain")]:
                    if m:
                        need.add(m.split(":")[0])
            wanted_names = {c.name for c in wanted} | need
            wanted = [c for c in chosen if c.name in wanted_names]
        chosen = wanted
    if args.skip:
        chosen = [c for c in chosen if not matches(c.name, args.skip)]
    return chosen


def run_child(c, n, quick, workdir, timeout, verbose):
    """One repetition of case c in a fresh process group. Returns the child's result dict."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", c.name, "--n", str(n),
           "--workdir", workdir] + (["--quick"] if quick else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=HERE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the child's own group: it and its workers
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        return {"ok": False, "reason": f"timeout after {timeout:.0f}s"}
    if verbose and err.strip():
        sys.stderr.write(f"--- {c.name} stderr ---\n{err}\n")
    for line in reversed(out.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (err.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    return {"ok": False, "reason": f"crashed: {tail}"[:200]}


def fmt_value(v, unit):
    if v is None:
        return "-"
    if unit == "items/s":
        return f"{v:,.0f}"
    return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"


def machine_info():
    import sqlite3

    info = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg_at_start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }
    try:
        import psycopg

        with psycopg.connect(harness.DEFAULT_PG_ADMIN_URL, connect_timeout=3) as conn:
            info["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
    except Exception:  # noqa: BLE001
        info["postgresql"] = "not reachable"
    from importlib import metadata

    for dist in ("queuecore", "peewee", "pluggy", "psycopg", "huey", "persist-queue",
                 "procrastinate", "pgqueuer"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return info


def _print_grid(head, body, markdown=False, right=()):
    """Rows of text cells as a Markdown table, or aligned columns (``right``: right-aligned column indexes)."""
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join("---" for _ in head) + "|")
        for b in body:
            print("| " + " | ".join(b) + " |")
        return
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) if i in right else c.ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    print(line(head))
    print("  ".join("-" * w for w in widths))
    for b in body:
        print(line(b))


def print_table(rows, markdown=False):
    head = ["case", "metric", "backend", "N", "value", "unit", "vs floor", "floor"]
    body = [[r["case"], r["metric"], r["backend"], str(r.get("n") or "-"), r["value_s"], r["unit"],
             r["ratio_s"], r["floor"] or "-"] for r in rows]
    _print_grid(head, body, markdown, right={3, 4, 6})


def _value(results, ref):
    c, m = ref.split(":")
    res = results.get(c)
    if not res or not res.get("ok"):
        return None
    return res["metrics"].get(m)


def check_targets(results):
    out = []
    for t in harness.TARGETS:
        num = _value(results, t.num)
        dens = t.den if isinstance(t.den, list) else [t.den]
        den_vals = [(d, _value(results, d)) for d in dens]
        den_vals = [(d, v) for d, v in den_vals if v]
        if num is None or not den_vals:
            continue  # not measured in this run
        den_ref, den = max(den_vals, key=lambda x: x[1])
        ratio = num / den
        if t.min_ratio is not None:
            ok = ratio >= t.min_ratio
            goal = f">= {t.min_ratio:g}x"
            miss = "" if ok else f"missed by {(1 - ratio / t.min_ratio) * 100:.1f}%"
        else:
            ok = ratio <= t.max_ratio
            goal = f"<= {t.max_ratio:g}x"
            miss = "" if ok else f"missed by {(ratio / t.max_ratio - 1) * 100:.1f}%"
        out.append({"target": t.text, "num": t.num, "den": den_ref, "ratio": ratio, "goal": goal,
                    "met": ok, "verdict": "met" if ok else miss})
    return out


def print_targets(rows, markdown=False):
    head = ["target", "measured", "goal", "verdict", "ratio of"]
    body = [[r["target"], f"{r['ratio']:.2f}x", r["goal"], r["verdict"], f"{r['num']} / {r['den']}"]
            for r in rows]
    _print_grid(head, body, markdown)


def main(argv=None):
    args = parse_args(argv)
    n = args.n or (500 if args.quick else 20000)
    if args.child:
        return harness.child_main(args.child, n, args.quick, os.path.join(args.workdir, args.child))
    cases = harness.load_cases()
    if args.list:
        for c in cases.values():
            print(f"{c.name:32} {c.backend:11} {c.group:9} {'quick' if c.quick else '     '} {c.note}")
        return 0
    repeat = args.repeat or (1 if args.quick else 3)
    chosen = select(cases, args)
    info = machine_info()
    print(f"# queuecore benchmarks  N={n}  R={repeat}{'  (quick)' if args.quick else ''}")
    print("# " + "  ".join(f"{k}={v}" for k, v in info.items()))
    os.makedirs(args.workdir, exist_ok=True)
    # Cases may cache prepared databases (e.g. 1M rows) under _cache for their
    # later repetitions; never across runs (the schema may have changed).
    shutil.rmtree(os.path.join(args.workdir, "_cache"), ignore_errors=True)

    results = {}  # case -> {"ok":..., "metrics": {m: median}, "reason":...}
    failed_core = False
    t_all = time.perf_counter()
    # Repetitions are interleaved (rep 1 of every case, then rep 2, ...) so that a
    # change in the machine's load during the run spreads over every case instead
    # of landing on whichever cases happen to run in the busy minutes.
    samples = {c.name: {} for c in chosen}
    outcome = {c.name: None for c in chosen}
    used_n = {c.name: n for c in chosen}
    spent = {c.name: 0.0 for c in chosen}
    for rep in range(repeat):
        for c in chosen:
            reps = 1 if args.quick else (c.repeat or repeat)
            if rep >= reps or outcome[c.name] is not None:
                continue
            timeout = (min(c.timeout, 60) if args.quick else c.timeout) * args.timeout_scale
            t0 = time.perf_counter()
            res = run_child(c, n, args.quick, args.workdir, timeout, args.verbose)
            spent[c.name] += time.perf_counter() - t0
            if not res.get("ok"):
                outcome[c.name] = res
            else:
                for m, v in res["metrics"].items():
                    samples[c.name].setdefault(m, []).append(v)
                used_n[c.name] = res.get("n", n)
            status = "ok" if res.get("ok") else ("skipped" if res.get("skip") else "FAILED")
            print(f"#   rep {rep + 1} {c.name}: {status} in {time.perf_counter() - t0:.1f}s"
                  + ("" if res.get("ok") else f" ({res['reason']})"), file=sys.stderr, flush=True)
    for c in chosen:
        if outcome[c.name] is None:
            outcome[c.name] = {"ok": True, "n": used_n[c.name], "samples": samples[c.name],
                               "metrics": {m: harness.median(v) for m, v in samples[c.name].items()}}
        results[c.name] = outcome[c.name]
        if not outcome[c.name]["ok"] and not outcome[c.name].get("skip") and c.group in ("floor", "queuecore"):
            failed_core = True

    rows = []
    for c in chosen:
        res = results[c.name]
        if not res["ok"]:
            word = "skipped" if res.get("skip") else "failed"
            rows.append({"case": c.name, "metric": "-", "backend": c.backend,
                         "value": None, "value_s": f"{word}: {res['reason']}", "unit": "",
                         "ratio": None, "ratio_s": "-", "floor": None})
            continue
        for m, v in res["metrics"].items():
            unit = c.unit_of(m)
            floor = c.floor_of(m)
            ratio = None
            if floor:
                fc, fm = floor.split(":")
                fres = results.get(fc)
                if fres and fres["ok"] and fres["metrics"].get(fm):
                    ratio = v / fres["metrics"][fm]
            rows.append({"case": c.name, "metric": m, "backend": c.backend, "n": res.get("n"), "value": v,
                         "value_s": fmt_value(v, unit), "unit": unit, "ratio": ratio,
                         "ratio_s": "-" if ratio is None else f"{ratio:.2f}x", "floor": floor})
    print()
    print_table(rows, markdown=args.markdown)
    print(f"# loadavg at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
          " (a shared machine: other jobs' load shows in the wall-clock figures)")
    info["loadavg_at_end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    target_rows = check_targets(results)
    if target_rows:
        print()
        print_targets(target_rows, markdown=args.markdown)
    print(f"\n# total {time.perf_counter() - t_all:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": n, "repeat": repeat, "quick": args.quick, "machine": info,
                       "rows": rows, "targets": target_rows, "results": results}, f, indent=1)
    return 1 if failed_core else 0


if __name__ == "__main__":
    sys.exit(main())

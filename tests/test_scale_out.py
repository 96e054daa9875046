"""Many runners on one queue: `queuecore run --burst` processes side by side, on every backend.

The plugin is a real installed distribution (a dist-info folder on
PYTHONPATH) that appends one line per call to a log with O_APPEND, so a call
made twice shows up twice.
"""

from __future__ import annotations

import collections
import subprocess
import sys

import pytest

from queuecore import Queue, Status

N_ITEMS = 20_000
N_RUNNERS = 4

RECORDER = """
import os
from queuecore import hookimpl

LOG = os.open(os.environ["RECORDER_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

@hookimpl
def process_item(item):
    os.write(LOG, b"%d %d\\n" % (item.id, os.getpid()))
    return True
"""


@pytest.fixture
def recorder_env(plugin_dir, tmp_path):
    plugin_dir.install("queuecore-recorder", {"recorder": "qc_recorder"}, {"qc_recorder": RECORDER})
    return plugin_dir.env(QUEUECORE_PLUGINS="recorder", RECORDER_LOG=str(tmp_path / "calls.log"))


@pytest.mark.slow
def test_four_runner_processes_do_each_item_exactly_once(db_url, recorder_env, tmp_path):
    queue = Queue(db_url)
    ids = queue.enqueue_many([("t", {"n": i}) for i in range(N_ITEMS)])
    command = [sys.executable, "-m", "queuecore.cli", "--db", db_url, "run", "--burst", "--batch-size", "200"]
    runners = [
        subprocess.Popen(command, env=recorder_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(N_RUNNERS)
    ]
    outputs = [r.communicate(timeout=300) for r in runners]
    for runner, (_out, err) in zip(runners, outputs):
        assert runner.returncode == 0, err[-2000:]

    assert queue.counts()[Status.DONE] == N_ITEMS
    lines = (tmp_path / "calls.log").read_text().split()
    calls = collections.Counter(int(item_id) for item_id in lines[0::2])
    assert set(calls) == set(ids)  # none lost
    assert max(calls.values()) == 1  # none done twice
    workers = set(lines[1::2])
    assert len(workers) >= 2, "the work was not shared between runners"

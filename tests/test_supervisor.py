"""The supervisor on its own, with small Python children instead of runners."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from queuecore import supervisor
from queuecore.supervisor import Supervisor

# A child that appends its pid to a file (once its handlers are in place), then works until SIGTERM/SIGINT and
# exits 0, like a runner; with $EXIT set it exits at once with that code.
CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(1))
    with open(sys.argv[1], "a") as f:
        f.write(f"{os.getpid()}\\n")
    if os.environ.get("EXIT"):
        sys.exit(int(os.environ["EXIT"]))
    while not stop:
        time.sleep(0.02)
    with open(sys.argv[1] + ".stopped", "a") as f:
        f.write(f"{os.getpid()}\\n")
    """
)


def _pids(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _wait_for(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _in_background(sup: Supervisor) -> tuple[threading.Thread, list[int]]:
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(sup.run()))
    thread.start()
    return thread, codes


def test_stop_forwards_and_waits_for_every_child(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    sup = Supervisor([sys.executable, "-c", CHILD, str(pids)], 3)
    thread, codes = _in_background(sup)
    _wait_for(lambda: len(_pids(pids)) == 3)
    sup.stop(signal.SIGTERM)
    thread.join(15)
    assert codes == [0]
    assert sorted(_pids(Path(f"{pids}.stopped"))) == sorted(_pids(pids))  # each stopped by its own handler


def test_a_child_that_dies_is_restarted(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    sup = Supervisor([sys.executable, "-c", CHILD, str(pids)], 2)
    thread, codes = _in_background(sup)
    try:
        _wait_for(lambda: len(_pids(pids)) == 2)
        victim = _pids(pids)[0]
        os.kill(victim, signal.SIGKILL)
        _wait_for(lambda: len(_pids(pids)) == 3)
        assert sup.restarts == 1
        assert victim not in sup.pids() and len(sup.pids()) == 2
    finally:
        sup.stop()
        thread.join(15)
    assert codes == [0]


def test_burst_children_that_finish_are_not_restarted(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    sup = Supervisor([sys.executable, "-c", CHILD, str(pids)], 2, env={**os.environ, "EXIT": "0"}, burst=True)
    assert sup.run() == 0
    assert len(_pids(pids)) == 2 and sup.restarts == 0


def test_a_child_that_keeps_dying_at_start_makes_the_supervisor_give_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor, "MAX_QUICK_DEATHS", 3)
    monkeypatch.setattr(supervisor, "RESTART_DELAY_MIN", 0.01)
    pids = tmp_path / "pids"
    sup = Supervisor([sys.executable, "-c", CHILD, str(pids)], 1, env={**os.environ, "EXIT": "3"})
    assert sup.run() == 1
    assert len(_pids(pids)) == 3 and sup.restarts == 2


def test_signals_to_the_supervisor_are_forwarded(tmp_path: Path) -> None:
    # run() in the main thread installs handlers; a timer sends the signal.
    pids = tmp_path / "pids"
    sup = Supervisor([sys.executable, "-c", CHILD, str(pids)], 2)
    previous = signal.getsignal(signal.SIGTERM)

    def send_when_started() -> None:
        _wait_for(lambda: len(_pids(pids)) == 2)
        os.kill(os.getpid(), signal.SIGTERM)

    timer = threading.Thread(target=send_when_started)
    timer.start()
    assert sup.run() == 0
    timer.join()
    assert len(_pids(Path(f"{pids}.stopped"))) == 2
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored


def test_processes_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Supervisor(["true"], 0)

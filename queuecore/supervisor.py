"""Several runner processes under one supervisor (``queuecore run --processes N``).

The supervisor starts N copies of a command (a one-process ``queuecore
run``), restarts one that dies unexpectedly, and on SIGTERM/SIGINT forwards
the signal to every child and waits for them all to stop gracefully.

Restarts back off when a child keeps dying soon after it starts (a broken
plugin, a database that refuses connections), and the supervisor gives up,
stopping the others, after :data:`MAX_QUICK_DEATHS` such deaths in a row.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: A child that dies within this many seconds of starting died "quickly".
QUICK_DEATH_SECONDS = 5.0
#: Give up after this many quick deaths of one slot in a row.
MAX_QUICK_DEATHS = 5
#: Restart delay after quick deaths: doubles from the first figure up to the second.
RESTART_DELAY_MIN, RESTART_DELAY_MAX = 0.5, 30.0

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class _Child:
    slot: int
    process: subprocess.Popen[Any]
    started: float


class Supervisor:
    """Keeps ``processes`` copies of ``command`` running.

    :param command: the child's argv.
    :param processes: how many children.
    :param env: the children's environment (default: this process's).
    :param burst: children that exit 0 are finished, not restarted; the
        supervisor returns once every child has finished.
    :param poll_interval: seconds between checks on the children.
    """

    def __init__(
        self,
        command: Sequence[str],
        processes: int,
        *,
        env: Mapping[str, str] | None = None,
        burst: bool = False,
        poll_interval: float = 0.1,
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, not {processes!r}")
        self.command = list(command)
        self.processes = processes
        self.env = dict(env) if env is not None else None
        self.burst = burst
        self.poll_interval = poll_interval
        self.restarts = 0
        self._children: dict[int, _Child] = {}
        self._restart_at: dict[int, float] = {}
        self._quick_deaths: dict[int, int] = {}
        self._signals: list[int] = []
        self._stopping = False
        self._wake = threading.Event()

    # -- control ------------------------------------------------------------

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask every child to stop gracefully (signal- and thread-safe)."""
        self._signals.append(signum)
        self._wake.set()

    def pids(self) -> list[int]:
        """The pids of the running children, by slot."""
        return [child.process.pid for _, child in sorted(self._children.items())]

    def run(self) -> int:
        """Supervise until every child has stopped; returns 0 after a graceful
        stop (or, with ``burst``, when all finished), 1 after giving up."""
        restore = self._install_signal_handlers()
        failed = False
        try:
            for slot in range(self.processes):
                self._spawn(slot)
            while self._children or self._restart_at:
                self._forward_signals()
                for slot, child in list(self._children.items()):
                    code = child.process.poll()
                    if code is not None:
                        del self._children[slot]
                        if not self._on_exit(child, code):
                            failed = True
                            self._begin_stop(signal.SIGTERM)
                now = time.monotonic()
                for slot, when in list(self._restart_at.items()):
                    if self._stopping:
                        self._restart_at.clear()
                    elif now >= when:
                        del self._restart_at[slot]
                        self.restarts += 1
                        self._spawn(slot)
                if self._children or self._restart_at:
                    self._wake.wait(self.poll_interval)
                    self._wake.clear()
        finally:
            # Never leave children behind, even if the supervisor itself fails.
            for child in self._children.values():
                _signal(child.process, signal.SIGTERM)
            for child in self._children.values():
                child.process.wait()
            restore()
        return 1 if failed else 0

    # -- children -----------------------------------------------------------

    def _spawn(self, slot: int) -> None:
        process = subprocess.Popen(
            self.command,
            env=self.env,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent(os.getpid()) if sys.platform.startswith("linux") else None,
        )
        self._children[slot] = _Child(slot, process, time.monotonic())
        log.info("runner %d started (pid %d)", slot + 1, process.pid)

    def _on_exit(self, child: _Child, code: int) -> bool:
        """Decide what a child's exit means; False when the supervisor should give up."""
        what = f"runner {child.slot + 1} (pid {child.process.pid})"
        if self._stopping:
            log.info("%s stopped (%s)", what, _describe(code))
            return True
        if self.burst and code == 0:
            log.info("%s finished: nothing left due", what)
            return True
        lived = time.monotonic() - child.started
        if lived < QUICK_DEATH_SECONDS:
            deaths = self._quick_deaths.get(child.slot, 0) + 1
            self._quick_deaths[child.slot] = deaths
            if deaths >= MAX_QUICK_DEATHS:
                log.error(
                    "%s %s, the %dth time in a row within %.0f s of starting: giving up, stopping all",
                    what, _describe(code), deaths, QUICK_DEATH_SECONDS,
                )
                return False
            delay = min(RESTART_DELAY_MIN * 2 ** (deaths - 1), RESTART_DELAY_MAX)
        else:
            self._quick_deaths[child.slot] = 0
            delay = 0.0
        log.warning("%s %s unexpectedly; restarting it in %.1f s", what, _describe(code), delay)
        self._restart_at[child.slot] = time.monotonic() + delay
        return True

    # -- signals ------------------------------------------------------------

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {sig: signal.signal(sig, lambda signum, frame: self.stop(signum)) for sig in FORWARDED_SIGNALS}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    def _forward_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            log.info("received %s: stopping %d runner(s) gracefully", signal.Signals(signum).name, len(self._children))
            self._begin_stop(signum)

    def _begin_stop(self, signum: int) -> None:
        # A repeated signal is forwarded again: harmless to a runner already stopping.
        self._stopping = True
        self._restart_at.clear()
        for child in self._children.values():
            _signal(child.process, signum)


def _signal(process: subprocess.Popen[Any], signum: int) -> None:
    if process.poll() is None:
        try:
            process.send_signal(signum)
        except ProcessLookupError:
            pass


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A preexec_fn asking Linux to SIGTERM the child if the supervisor dies
    (even by SIGKILL), so no runner is left orphaned."""

    def preexec() -> None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
        except Exception:
            return
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec

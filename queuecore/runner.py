"""The runner: claim a batch, call each plugin in turn, merge answers, write back.

Also renews the leases of the items it holds while a batch runs long, and
stops gracefully on SIGTERM/SIGINT.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import functools
import json
import logging
import os
import random
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .errors import ConfigurationError, PermanentError, PluginLoadError, Retry
from .items import Item
from .models import Status
from .plugins import RESERVED_NAME, PluginSet, build_plugin_set
from .queue import Queue
from .storage import CONNECTION_ERRORS, ClaimedRow, ConvertOnce, Outcome, decode_claimed_json, utcnow

log = logging.getLogger(__name__)

#: Longest wait between retries, whatever the trial count.
DEFAULT_MAX_RETRY_DELAY = 3600.0
#: Outcomes are written back at least this often (seconds) during a long batch,
#: which bounds how much work a killed runner makes plugins repeat.
FLUSH_INTERVAL = 1.0
#: Idle polling backs off from the first to the second figure (seconds).
IDLE_POLL_MIN, IDLE_POLL_MAX = 0.05, 1.0
#: Reconnecting after a lost database backs off up to this many seconds.
RECONNECT_MAX_DELAY = 30.0
MAX_ERROR_TEXT = 2000
#: Seconds a batch may reuse one reading of the wall clock for its outcomes.
CLOCK_RESOLUTION = 0.005

# Outcomes carry plain ints: the database drivers bind them without looking
# up an adapter for the IntEnum subclass.
_PENDING, _NEED_RETRY, _DONE, _ERROR = (int(s) for s in (Status.PENDING, Status.NEED_RETRY, Status.DONE, Status.ERROR))

# A plugin call: (item, results view) -> answer; adapts to the arguments the
# implementation declares.
PluginCall = Callable[[Item, Mapping[str, bool]], Any]


@dataclass
class BatchSummary:
    """What one batch did."""

    claimed: int = 0
    done: int = 0
    retried: int = 0
    failed: int = 0
    released: int = 0
    lost: int = 0  # outcomes dropped by fencing: another runner owns the item now

    def add(self, other: BatchSummary) -> None:
        self.claimed += other.claimed
        self.done += other.done
        self.retried += other.retried
        self.failed += other.failed
        self.released += other.released
        self.lost += other.lost


@dataclass
class PluginFailure:
    """One plugin failing one item, as reported to ``on_failure``."""

    item_id: int
    item_type: str
    plugin: str
    error: str


class Runner:
    """Processes due items with the plugins.

    :param queue: the :class:`Queue` to work on.
    :param plugins: name -> plugin object (or module) with ``@hookimpl``
        functions; when given, no entry points are loaded. Default: the
        ``queuecore`` entry-point group, filtered by ``QUEUECORE_PLUGINS``.
    :param max_trials: tries before an item goes to ``error``.
    :param retry_delay: seconds before the first retry; doubles each try
        (capped at ``max_retry_delay``) with jitter that never shortens it
        below half. 0 makes retries due at once.
    :param lease_seconds: how long a claim is held before another runner may
        take the item over; renewed while the batch runs.
    :param concurrency: threads that process a batch's items (for I/O-bound plugins).
    :param on_failure: called with a :class:`PluginFailure` for each plugin failure.
    """

    def __init__(
        self,
        queue: Queue,
        plugins: Mapping[str, object] | None = None,
        *,
        max_trials: int = 10,
        retry_delay: float = 5.0,
        max_retry_delay: float = DEFAULT_MAX_RETRY_DELAY,
        lease_seconds: float = 300.0,
        concurrency: int = 1,
        name: str | None = None,
        on_failure: Callable[[PluginFailure], None] | None = None,
    ) -> None:
        _check_number("max_trials", max_trials, minimum=1, integer=True)
        _check_number("retry_delay", retry_delay, minimum=0)
        _check_number("max_retry_delay", max_retry_delay, minimum=0)
        _check_number("lease_seconds", lease_seconds, minimum=0.1)
        _check_number("concurrency", concurrency, minimum=1, integer=True)
        self.queue = queue
        self.storage = queue.storage
        self.max_trials = max_trials
        self.retry_delay = float(retry_delay)
        self.max_retry_delay = float(max_retry_delay)
        self.lease_seconds = float(lease_seconds)
        self.concurrency = concurrency
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.on_failure = on_failure
        self.plugin_set: PluginSet = build_plugin_set(plugins)
        self._calls = _plugin_calls(self.plugin_set)
        self._plugin_names = [name for name, _ in self._calls]
        self._all_done = {name: True for name in self._plugin_names}
        self._all_done_json = _dumps_results(self._all_done)
        self._stop = threading.Event()
        self._held: dict[int, int] = {}  # item id -> claim token, for lease renewal
        self._stats: dict[str, list] = {}  # plugin -> [successes, failures, seconds] since the last write-back
        self._stats_lock = threading.Lock()
        self._held_lock = threading.Lock()
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_stop = threading.Event()

    # -- control ------------------------------------------------------------

    def stop(self) -> None:
        """Ask the runner to stop after the plugin call in hand (thread- and signal-safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def plugin_names(self) -> tuple[str, ...]:
        """The plugins' names, in the order each item is handed to them."""
        return tuple(self._plugin_names)

    def run(
        self,
        burst: bool = False,
        batch_size: int = 500,
        on_batch: Callable[[BatchSummary], None] | None = None,
    ) -> BatchSummary:
        """Process batches until stopped (SIGTERM/SIGINT or :meth:`stop`), or,
        with ``burst``, until nothing is due. Returns the totals; ``on_batch``
        gets each batch's summary (for progress displays)."""
        _check_number("batch_size", batch_size, minimum=1, integer=True)
        total = BatchSummary()
        restore = self._install_signal_handlers()
        waiter = self.storage.make_waiter()
        idle = IDLE_POLL_MIN
        reconnect_delay = 0.5
        try:
            while not self._stop.is_set():
                try:
                    summary = self.process_batch(batch_size)
                except CONNECTION_ERRORS as exc:
                    log.warning(
                        "database unavailable (%s: %s); retrying in %.1f s",
                        type(exc).__name__, str(exc).strip()[:200], reconnect_delay,
                    )
                    self.storage.reset_connection()
                    self._stop.wait(reconnect_delay)
                    reconnect_delay = min(reconnect_delay * 2, RECONNECT_MAX_DELAY)
                    continue
                reconnect_delay = 0.5
                total.add(summary)
                if on_batch is not None and summary.claimed:
                    on_batch(summary)
                if summary.claimed:
                    idle = IDLE_POLL_MIN
                    continue
                if burst:
                    break
                if not waiter.wait(idle, self._stop):
                    idle = min(idle * 2, IDLE_POLL_MAX)
        finally:
            waiter.close()
            self._stop_heartbeat()
            restore()
        return total

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {}

        def on_signal(signum: int, frame: Any) -> None:
            log.info("received %s: finishing the call in hand, then stopping", signal.Signals(signum).name)
            self._stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    # -- one batch ----------------------------------------------------------

    def process_batch(self, batch_size: int = 500) -> BatchSummary:
        """Claim up to ``batch_size`` due items, process them, write back; returns what happened."""
        self.storage.ensure_schema()
        now = utcnow()
        rows = self.storage.claim(self.name, now, now + _seconds(self.lease_seconds), batch_size, self.max_trials)
        summary = BatchSummary(claimed=len(rows))
        if not rows:
            return summary
        with self._held_lock:
            self._held = {row[0]: row[9] for row in rows}
        self._start_heartbeat()
        pending: list[Outcome] = []
        items: list[tuple[Item, int]] = []
        # A batch's rows mostly share a few creation times (enqueue_many
        # stamps its items with one): each distinct text is parsed once.
        times = ConvertOnce(self.storage.parse_time)
        for row in rows:
            item, problem = self._decode(row, times)
            if problem is not None:
                pending.append(problem)
                _count(summary, problem[0])
            else:
                items.append((item, row[9]))
        try:
            if self.concurrency == 1:
                self._process_serially(items, pending, summary)
            else:
                self._process_threaded(items, pending, summary)
        finally:
            self._flush(pending, summary)
            with self._held_lock:
                self._held = {}
        return summary

    def _process_serially(self, items: list[tuple[Item, int]], pending: list[Outcome], summary: BatchSummary) -> None:
        last_flush = last_tick = time.monotonic()
        now = utcnow()
        for index, (item, token) in enumerate(items):
            if self._stop.is_set():
                self._release_unstarted(items[index:], pending, summary)
                return
            outcome = self._process_item(item, token, self._stats, now)
            pending.append(outcome)
            _count(summary, outcome[0])
            tick = time.monotonic()
            # A wall-clock reading costs more than a fast plugin call: refresh it
            # only when time has visibly moved.
            if tick - last_tick > CLOCK_RESOLUTION:
                now = utcnow()
                last_tick = tick
                if tick - last_flush > FLUSH_INTERVAL:
                    self._flush(pending, summary)
                    last_flush = tick

    def _process_threaded(self, items: list[tuple[Item, int]], pending: list[Outcome], summary: BatchSummary) -> None:
        lock = threading.Lock()
        started: set[int] = set()

        def work(item: Item, token: int) -> None:
            if self._stop.is_set():
                return
            with lock:
                started.add(item.id)
            stats: dict[str, list] = {}
            outcome = self._process_item(item, token, stats)
            with lock:
                pending.append(outcome)
                _count(summary, outcome[0])
            with self._stats_lock:
                _merge_stats(self._stats, stats)

        with concurrent.futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="queuecore") as pool:
            futures = [pool.submit(work, item, token) for item, token in items]
            waiting = set(futures)
            while waiting:
                _done, waiting = concurrent.futures.wait(waiting, timeout=FLUSH_INTERVAL)
                with lock:
                    batch = list(pending)
                    pending.clear()
                self._flush(batch, summary)
        with lock:
            unstarted = [(item, token) for item, token in items if item.id not in started]
        self._release_unstarted(unstarted, pending, summary)

    def _release_unstarted(self, items: list[tuple[Item, int]], pending: list[Outcome], summary: BatchSummary) -> None:
        now = utcnow()
        for item, token in items:
            pending.append(
                (_PENDING, item.trials, _dumps(item.results), _dumps(item.errors), now, item.lasttry_dtime, item.id, token)
            )
            summary.released += 1

    def _flush(self, pending: list[Outcome], summary: BatchSummary) -> None:
        """Write back and clear ``pending``; retries through a lost connection so no outcome is dropped."""
        if not pending:
            return
        outcomes = list(pending)
        pending.clear()
        with self._stats_lock:
            stats = [(name, c[0], c[1], c[2]) for name, c in self._stats.items()]
            self._stats.clear()
        delay = 0.5
        deadline = time.monotonic() + self.lease_seconds
        while True:
            try:
                written = self.storage.write_back(outcomes, stats)
                break
            except CONNECTION_ERRORS as exc:
                if time.monotonic() > deadline:
                    # The leases have run out: other runners will redo these items.
                    log.error("could not write back %d outcomes (%s); giving them up to lease expiry", len(outcomes), exc)
                    raise
                log.warning("write-back failed (%s: %s); retrying in %.1f s", type(exc).__name__, str(exc).strip()[:200], delay)
                self.storage.reset_connection()
                time.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
        if written < len(outcomes):
            summary.lost += len(outcomes) - written
            log.warning(
                "%d of %d outcomes not written: their leases expired and another runner took them over",
                len(outcomes) - written, len(outcomes),
            )
        with self._held_lock:
            for outcome in outcomes:
                self._held.pop(outcome[6], None)

    # -- one item -----------------------------------------------------------

    def _decode(self, row: ClaimedRow, times: Mapping[Any, dt.datetime | None]) -> tuple[Item | None, Outcome | None]:
        """The claimed row as an Item, or an ``error`` outcome when it cannot be processed.

        ``times`` maps the database's time values to datetimes.
        """
        item_id, type_, payload, trials, results, errors, priority, created, lasttry, token = row
        load = decode_claimed_json
        try:
            results = load(results)
            errors = load(errors)
            if results.__class__ is not dict or errors.__class__ is not dict:
                raise ValueError("results and errors must be JSON objects")
        except (ValueError, RecursionError):
            results, errors = {}, {}
            errors[RESERVED_NAME] = "results/errors columns hold invalid JSON; they were reset"
            # The note on the item goes once a try succeeds; the log keeps it.
            log.warning("item %d: %s, so every plugin is called again", item_id, errors[RESERVED_NAME])
        try:
            payload = load(payload)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than Python can decode
            errors[RESERVED_NAME] = f"payload is not valid JSON ({exc}); it cannot be processed"
            log.error("item %d: %s", item_id, errors[RESERVED_NAME])
            now = utcnow()
            return None, (_ERROR, trials + 1, _dumps(results), _dumps(errors), now, now, item_id, token)
        if trials >= self.max_trials:
            # Only a claim after an expired lease raises trials here: the
            # runners that held this item died or stalled with it, max_trials times.
            errors[RESERVED_NAME] = (
                f"gave up after {trials} tries: the last runner holding it lost its lease "
                "(it died or stalled on this item)"
            )
            log.error("item %d: %s", item_id, errors[RESERVED_NAME])
            now = utcnow()
            return None, (_ERROR, trials, _dumps(results), _dumps(errors), now, now, item_id, token)
        # Positional: this runs for every claimed item. The order is Item's fields'.
        item = Item(
            item_id,
            type_,
            payload,
            Status.IN_PROGRESS,
            trials,
            results,
            errors,
            priority,
            times[created],
            times[lasttry],
            None,  # run_after
            None,  # lease_owner
            None,  # lease_expires
            token,
        )
        return item, None

    def _process_item(
        self, item: Item, token: int, stats: dict[str, list], now: dt.datetime | None = None
    ) -> Outcome:
        """Call each plugin that has not yet succeeded on ``item``; the outcome to write back.

        ``stats`` (plugin -> [successes, failures, seconds]) is added to;
        ``now`` is the caller's recent reading of the clock, if it has one.
        """
        results: dict[str, bool] = item.results  # type: ignore[assignment]
        errors: dict[str, str] = item.errors  # type: ignore[assignment]
        view = MappingProxyType(results)
        item.results = view
        item.errors = MappingProxyType(errors)  # only a plugin's return value is persisted
        accepted = failed = interrupted = permanent = False
        wait_at_least = 0.0
        for name, call in self._calls:
            if results.get(name) is True:
                accepted = True
                continue
            if self._stop.is_set():
                interrupted = True
                break
            error = None
            started = time.perf_counter()
            try:
                answer = call(item, view)
            except PermanentError as exc:
                permanent = True
                error = _error_text(exc, "PermanentError")
            except Retry as exc:
                error = _error_text(exc, "Retry")
                wait_at_least = max(wait_at_least, exc.after or 0.0)
            except BaseException as exc:  # noqa: BLE001 - a plugin must not take the runner down
                error = _error_text(exc)
                if isinstance(exc, KeyboardInterrupt):
                    self._stop.set()
            else:
                if answer is None:
                    continue
                if answer is not True:
                    error = "returned False" if answer is False else (
                        f"plugin {name!r} returned {_safe_repr(answer):.200} (expected True, False or None)"
                    )
            counters = stats.get(name)
            if counters is None:
                counters = stats[name] = [0, 0, 0.0]
            counters[2] += time.perf_counter() - started
            accepted = True
            if error is None:
                counters[0] += 1
                results[name] = True
                errors.pop(name, None)
            else:
                counters[1] += 1
                failed = True
                results[name] = False
                errors[name] = error
                self._report(item, name, error)

        if now is None:
            now = utcnow()
        trials = item.trials
        if interrupted:
            # Stopped before every plugin had its say: keep the answers, no try counted.
            return (_PENDING, trials, _dumps_results(results), _dumps(errors), now, item.lasttry_dtime, item.id, token)
        if not accepted:
            failed = True
            errors[RESERVED_NAME] = (
                f"no plugin accepted type {item.type!r} (plugins: {', '.join(self._plugin_names) or 'none'})"
            )
            self._report(item, RESERVED_NAME, errors[RESERVED_NAME])
        else:
            errors.pop(RESERVED_NAME, None)
        if not failed:
            # The usual outcome, every plugin done, has one JSON text per runner.
            text = self._all_done_json if results == self._all_done else _dumps_results(results)
            return (_DONE, trials, text, _dumps(errors), now, now, item.id, token)
        trials += 1
        if permanent or trials >= self.max_trials:
            if not permanent:
                gave_up = f"gave up after {trials} tries (max_trials={self.max_trials})"
                reason = errors.get(RESERVED_NAME)
                errors[RESERVED_NAME] = f"{reason}; {gave_up}" if reason else gave_up
            return (_ERROR, trials, _dumps_results(results), _dumps(errors), now, now, item.id, token)
        delay = max(self.backoff(trials), wait_at_least)
        return (_NEED_RETRY, trials, _dumps_results(results), _dumps(errors), now + _seconds(delay), now, item.id, token)

    def backoff(self, trials: int) -> float:
        """Seconds before the next try after ``trials`` failed ones: exponential,
        capped, with jitter in [half, full] so retries of a batch spread out."""
        if self.retry_delay <= 0:
            return 0.0
        delay = min(self.retry_delay * 2 ** min(trials - 1, 62), self.max_retry_delay)
        return delay * random.uniform(0.5, 1.0)

    def _report(self, item: Item, plugin: str, error: str) -> None:
        log.warning("item %d (%s): plugin %s failed: %s", item.id, item.type, plugin, error)
        if self.on_failure is not None:
            self.on_failure(PluginFailure(item.id, item.type, plugin, error))

    # -- leases -------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        if self._heartbeat is not None and self._heartbeat.is_alive():
            return
        self._heartbeat_stop.clear()
        self._heartbeat = threading.Thread(target=self._renew_loop, name="queuecore-lease", daemon=True)
        self._heartbeat.start()

    def _stop_heartbeat(self) -> None:
        self._heartbeat_stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
            self._heartbeat = None

    def _renew_loop(self) -> None:
        interval = max(self.lease_seconds / 3, 0.05)
        try:
            while not self._heartbeat_stop.wait(interval):
                with self._held_lock:
                    held = list(self._held.items())
                if not held:
                    continue
                try:
                    renewed = self.storage.renew_leases(held, utcnow() + _seconds(self.lease_seconds))
                    log.debug("renewed %d of %d leases", renewed, len(held))
                except CONNECTION_ERRORS as exc:
                    log.warning("lease renewal failed (%s); will try again", exc)
                    self.storage.reset_connection()
        finally:
            self.storage.reset_connection()

    def close(self) -> None:
        self._stop_heartbeat()


def _plugin_calls(plugin_set: PluginSet) -> list[tuple[str, PluginCall]]:
    """Each plugin's process_item in pluggy's call order, adapted to the arguments it declares."""
    pm = plugin_set.pm
    calls = []
    # get_hookimpls() lists implementations in reverse call order.
    for impl in reversed(pm.hook.process_item.get_hookimpls()):
        name = pm.get_name(impl.plugin)
        if impl.hookwrapper or impl.wrapper:
            raise PluginLoadError(f"plugin {name!r}: process_item cannot be a wrapper; return True/False/None")
        calls.append((name, _adapt(impl.function, tuple(impl.argnames))))
    return calls


def _adapt(function: Callable[..., Any], argnames: tuple[str, ...]) -> PluginCall:
    if argnames == ("item", "results"):
        return function
    if argnames == ("item",):
        return lambda item, results: function(item)
    if argnames == ("results",):
        return lambda item, results: function(results)
    if argnames == ():
        return lambda item, results: function()
    return lambda item, results: function(results, item)  # ("results", "item")


def _merge_stats(into: dict[str, list], stats: dict[str, list]) -> None:
    for name, (ok, bad, seconds) in stats.items():
        counters = into.setdefault(name, [0, 0, 0.0])
        counters[0] += ok
        counters[1] += bad
        counters[2] += seconds


def _count(summary: BatchSummary, status: int) -> None:
    if status == _DONE:
        summary.done += 1
    elif status == _NEED_RETRY:
        summary.retried += 1
    elif status == _ERROR:
        summary.failed += 1
    elif status == _PENDING:
        summary.released += 1


def _error_text(exc: BaseException, kind: str | None = None) -> str:
    try:
        message = str(exc)
    except BaseException:  # noqa: BLE001 - a plugin's exception may fail to print itself
        message = f"<unprintable {type(exc).__name__}>"
    text = f"{kind or type(exc).__name__}: {message}" if message else (kind or type(exc).__name__)
    return _storable(text[:MAX_ERROR_TEXT])


def _storable(text: str) -> str:
    """``text`` with what a database refuses written out as escapes: NUL
    (PostgreSQL's jsonb) and lone surrogates (not UTF-8, so no driver sends them)."""
    text = text.replace("\x00", "\\x00")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except BaseException:  # noqa: BLE001 - a plugin's return value may fail to print itself
        return f"<unprintable {type(value).__name__}>"


def _dumps(value: Any) -> str:
    return _encode_json(value) if value else "{}"


def _dumps_results(results: dict[str, bool]) -> str:
    """JSON of a results map, without the general encoder for the usual name -> bool map."""
    parts = []
    for name, value in results.items():
        if value.__class__ is not bool:
            return _dumps(results)
        parts.append(_encoded_name(name) + (":true" if value else ":false"))
    return "{" + ",".join(parts) + "}"


_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_encoded_name = functools.lru_cache(maxsize=4096)(_encode_json)


def _seconds(value: float) -> dt.timedelta:
    return dt.timedelta(seconds=value)


def _check_number(name: str, value: Any, minimum: float, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value >= minimum:
        kind = "an int" if integer else "a number"
        raise ConfigurationError(f"{name} must be {kind} >= {minimum}, not {value!r}")

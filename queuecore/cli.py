"""The ``queuecore`` command: thin over the library (parse, call, print).

Exit codes: 0 success; 1 the command could not be carried out (database
unusable, unknown item id, a plugin that fails to load); 2 the command line
or the data fed to it is wrong (unknown option, bad value, malformed JSON).
Every error is one ``Error: ...`` line on stderr, never a traceback.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TextIO

import click
import peewee

from .errors import ConfigurationError, InvalidItemError, ItemNotFound, PluginLoadError, QueuecoreError
from .items import Item
from .models import QueueItem, Status
from .plugins import ENTRY_POINT_GROUP, PLUGINS_ENV_VAR, RESERVED_NAME, PluginSet
from .queue import Queue, parse_status
from .storage import DEFAULT_URL, URL_ENV_VAR, redact_url

log = logging.getLogger("queuecore.cli")

#: Commands that need every selected plugin: they fail when one does not load.
#: The others warn once and carry on, so a broken plugin cannot lock an
#: operator out of status, retry or purge.
PLUGIN_STRICT_COMMANDS = ("run", "plugins")

#: How a child runner is started by ``run --processes N`` (same interpreter).
CHILD_COMMAND = (sys.executable, "-c", "import queuecore.cli as c; c.main()")

_STATUS_NAMES = [s.name.lower() for s in Status]
_DATA_ERRORS = (peewee.DatabaseError, peewee.InterfaceError)


# -------------------------------------------------------------------------
# Errors
# -------------------------------------------------------------------------


class CliError(click.ClickException):
    """One ``Error: ...`` line on stderr and exit ``exit_code`` (1, or 2 for bad input)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(" ".join(message.split()))
        self.exit_code = exit_code


def _scrub(text: str, url: str | None) -> str:
    """``text`` with the password of ``url`` blotted out, wherever a driver echoed it."""
    if url:
        try:
            password = urllib.parse.urlsplit(url).password
        except ValueError:
            password = None
        for secret in {password, urllib.parse.unquote(password or "")} - {None, ""}:
            text = text.replace(secret, "***")  # type: ignore[arg-type]
    return text


@contextlib.contextmanager
def _errors(url: str | None, bad_input: bool = False) -> Iterator[None]:
    """Turn the library's and the database's errors into one-line CLI errors.

    ``bad_input``: rejected items (:class:`InvalidItemError`) are the user's
    data being wrong, so they exit 2.
    """
    try:
        yield
    except InvalidItemError as exc:
        raise CliError(_scrub(str(exc), url), 2 if bad_input else 1) from None
    except QueuecoreError as exc:
        raise CliError(_scrub(str(exc), url)) from None
    except _DATA_ERRORS as exc:
        where = redact_url(url) if url else "the database"
        detail = str(exc).strip() or type(exc).__name__
        raise CliError(_scrub(f"database {where}: {detail}", url)) from None


# -------------------------------------------------------------------------
# Plugins: loaded once per invocation, for their commands and for `run`
# -------------------------------------------------------------------------


@dataclass
class LoadedPlugins:
    """The entry-point plugins this invocation loaded, and what went wrong loading the others."""

    plugin_set: PluginSet
    errors: list[str] = field(default_factory=list)
    commands: dict[str, click.Command] = field(default_factory=dict)

    def objects(self) -> dict[str, object]:
        """name -> plugin object, in load order (what :class:`Runner` takes)."""
        return {name: self.plugin_set.pm.get_plugin(name) for name in self.plugin_set.names()}


def load_plugins() -> LoadedPlugins:
    """Load the selected ``queuecore`` entry points one by one, keeping the good ones.

    A plugin that fails to import (or to register, or to add its commands) is
    recorded in ``errors`` with its name and distribution; the others load.
    """
    plugin_set = PluginSet()
    loaded = LoadedPlugins(plugin_set)
    selection = os.environ.get(PLUGINS_ENV_VAR)
    if selection is None:
        names = sorted({ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})
    else:
        names = [n.strip() for n in selection.split(",") if n.strip()]
    for name in names:
        try:
            plugin_set.load_entry_points(selection=name)
        except PluginLoadError as exc:
            loaded.errors.append(str(exc))
    try:
        plugin_set.check()
    except PluginLoadError as exc:
        loaded.errors.append(str(exc))
    # Plugins add their commands to a scratch group: the root group is shared
    # by every invocation in a process (tests), plugin selections are not.
    scratch = click.Group("queuecore")
    pm = plugin_set.pm
    distributions = {info.name: info.distribution for info in plugin_set.describe()}
    for impl in reversed(pm.hook.register_commands.get_hookimpls()):
        name = pm.get_name(impl.plugin)
        try:
            impl.function(**{arg: scratch for arg in impl.argnames})
        except Exception as exc:  # a plugin's bug must not take the CLI down
            dist = distributions.get(name)
            where = f" (distribution {dist})" if dist else ""
            loaded.errors.append(f"plugin {name!r}{where}: register_commands failed: {type(exc).__name__}: {exc}")
    loaded.commands = dict(scratch.commands)
    return loaded


def _plugins(ctx: click.Context) -> LoadedPlugins:
    meta = ctx.find_root().meta
    if "queuecore.plugins" not in meta:
        meta["queuecore.plugins"] = load_plugins()
    return meta["queuecore.plugins"]


class QueuecoreGroup(click.Group):
    """The root group: built-in commands, then the plugins' commands; one-line usage errors."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_plugins(ctx).commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        # Built-in commands win over a plugin's command of the same name.
        return super().get_command(ctx, cmd_name) or _plugins(ctx).commands.get(cmd_name)

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        with _one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        with _one_line_usage_errors():
            return super().invoke(ctx)


@contextlib.contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    # Click prints a usage line and a hint above a usage error; dropping the
    # context keeps it to the one ``Error: ...`` line (exit code still 2).
    try:
        yield
    except click.UsageError as exc:
        if not isinstance(exc, click.exceptions.NoArgsIsHelpError):
            exc.ctx = None
        raise


# -------------------------------------------------------------------------
# The root group and its state
# -------------------------------------------------------------------------


@dataclass
class CliState:
    """``click.get_current_context().obj``: what every command (and plugin command) shares."""

    url: str
    verbose: int = 0
    plugins: LoadedPlugins | None = None
    _queue: Queue | None = field(default=None, repr=False)

    def queue(self, create: bool = False) -> Queue:
        """The queue at ``url``. Unless ``create``, it must already exist: a
        mistyped ``--db`` fails instead of making an empty database."""
        if self._queue is None:
            with _errors(self.url):
                try:
                    queue = Queue(self.url)
                except ConfigurationError as exc:
                    raise CliError(f"cannot open database: {_scrub(str(exc), self.url)}") from None
                if not create:
                    _require_existing(queue, self.url)
            self._queue = queue
        return self._queue

    def close(self) -> None:
        if self._queue is not None:
            with contextlib.suppress(Exception):
                self._queue.close()
            self._queue = None


def _require_existing(queue: Queue, url: str) -> None:
    storage = queue.storage
    if storage.backend == "sqlite":
        path = storage.db.database
        if path != ":memory:" and not os.path.exists(path):
            raise CliError(
                f"no queue database at {os.path.abspath(path)}: create it with 'queuecore init' "
                f"(or check --db / ${URL_ENV_VAR})"
            )
    if not storage.db.table_exists(QueueItem._meta.table_name):
        raise CliError(f"database {redact_url(url)} holds no queue: create it with 'queuecore init'")


pass_state = click.make_pass_decorator(CliState)


@click.group(
    "queuecore",
    cls=QueuecoreGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--db",
    "url",
    metavar="URL",
    envvar=URL_ENV_VAR,
    show_envvar=True,
    default=DEFAULT_URL,
    show_default=True,
    help="Database URL: sqlite:///path.db, postgresql://user:pass@host/db or mysql://user:pass@host/db.",
)
@click.option("-v", "--verbose", count=True, help="More log output: -v for info, -vv for debug.")
@click.version_option(package_name="queuecore", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, url: str, verbose: int) -> None:
    """Operate a queuecore queue: enqueue items, run the plugins on them,
    inspect, retry and purge.

    Plugins (the `queuecore` entry points, filtered by QUEUECORE_PLUGINS)
    load at start and may add commands of their own.
    """
    if ctx.invoked_subcommand == "run":
        # Before the plugins load, which may take a while: see _StopDuringStartUp.
        ctx.meta["queuecore.start_up"] = ctx.with_resource(_StopDuringStartUp())
    plugins = _plugins(ctx)
    state = CliState(url=url or DEFAULT_URL, verbose=verbose, plugins=plugins)
    ctx.obj = state
    ctx.call_on_close(state.close)
    _configure_logging(ctx, verbose)
    if plugins.errors and ctx.invoked_subcommand not in PLUGIN_STRICT_COMMANDS:
        for message in plugins.errors:
            click.echo(f"Warning: {message}; its commands are not available", err=True)


# -------------------------------------------------------------------------
# Logging and progress
# -------------------------------------------------------------------------


class _Progress:
    """The one-line progress display of ``run`` on a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.started = time.monotonic()
        self.done = self.retried = self.failed = self.released = 0
        self.shown = False
        self._last_draw = 0.0

    def update(self, summary: Any) -> None:
        self.done += summary.done
        self.retried += summary.retried
        self.failed += summary.failed
        self.released += summary.released
        if time.monotonic() - self._last_draw >= 0.2:
            self.draw()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        handled = self.done + self.retried + self.failed
        return (
            f"done {self.done:,}  retried {self.retried:,}  failed {self.failed:,}  "
            f"{handled / elapsed:,.1f} items/s  {_human_duration(elapsed)}"
        )

    def draw(self) -> None:
        self._last_draw = time.monotonic()
        self.stream.write("\r" + self.line() + "\x1b[K")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.shown = False

    def finish(self) -> None:
        self.draw()
        self.stream.write("\n")
        self.stream.flush()
        self.shown = False


class _LogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes log lines to stderr, clearing the progress line first when there is one."""

    progress: _Progress | None = None

    def emit(self, record: logging.LogRecord) -> None:
        progress = self.progress
        if progress is not None and progress.shown:
            progress.clear()
            super().emit(record)
            progress.draw()
        else:
            super().emit(record)


def _configure_logging(ctx: click.Context, verbose: int) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = _LogHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger = logging.getLogger("queuecore")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    ctx.meta["queuecore.log_handler"] = handler

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(previous)

    ctx.call_on_close(restore)


# -------------------------------------------------------------------------
# Output helpers
# -------------------------------------------------------------------------


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False))


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Sequence[int] = ()) -> None:
    """Print ``rows`` under ``headers`` in aligned columns; ``right`` = indexes of numeric columns."""
    text_rows = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def fmt(cells: Sequence[str]) -> str:
        parts = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)]
        return "  ".join(parts).rstrip()

    click.echo(fmt(headers))
    for row in text_rows:
        click.echo(fmt(row))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    text = str(value)
    return " ".join(text.split())  # one line per row, whatever the data holds


def _human_time(value: dt.datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _human_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _plural(n: int, word: str = "item") -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


# -------------------------------------------------------------------------
# Parameter types
# -------------------------------------------------------------------------


class StatusType(click.ParamType):
    """A status by lowercase name (or code); ``choices`` narrows the accepted ones."""

    name = "status"

    def __init__(self, choices: Sequence[Status] | None = None) -> None:
        self.choices = list(choices) if choices is not None else list(Status)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "[" + "|".join(s.name.lower() for s in self.choices) + "]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Status:
        if isinstance(value, Status):
            return value
        names = ", ".join(s.name.lower() for s in self.choices)
        try:
            status = parse_status(value)
        except ConfigurationError:
            self.fail(f"unknown status {value!r}: choose from {names}", param, ctx)
        if status not in self.choices:
            self.fail(f"{status.name.lower()!r} is not allowed here: choose from {names}", param, ctx)
        return status


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class DurationType(click.ParamType):
    """A duration with a unit: 90s, 30m, 12h, 7d, 2w."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dt.timedelta:
        if isinstance(value, dt.timedelta):
            return value
        match = _DURATION.match(str(value))
        if not match:
            self.fail(f"{value!r} is not a duration: use a number and a unit, like 90s, 30m, 12h, 7d or 2w", param, ctx)
        return dt.timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()])


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str, what: str) -> Any:
    """``text`` decoded as strict JSON (no NaN/Infinity), or a CliError (exit 2) naming ``what``."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise CliError(f"{what} is nested too deeply", 2) from None
    except ValueError as exc:
        raise CliError(f"{what} is not valid JSON: {exc}", 2) from None


# -------------------------------------------------------------------------
# init
# -------------------------------------------------------------------------


@cli.command()
@pass_state
def init(state: CliState) -> None:
    """Create or upgrade the queue's tables (safe to run again)."""
    queue = state.queue(create=True)
    with _errors(state.url):
        version = queue.init()
    click.echo(f"queue ready in {redact_url(state.url)} (schema version {version})")


# -------------------------------------------------------------------------
# enqueue
# -------------------------------------------------------------------------


@cli.command()
@click.argument("type_", metavar="TYPE", required=False)
@click.argument("payload", required=False)
@click.option("--priority", type=click.IntRange(-(2**31), 2**31 - 1), default=0, show_default=True,
              help="Higher goes first.")
@click.option("--delay", type=click.FloatRange(min=0), default=0, show_default=True, metavar="SECONDS",
              help="Hold the item(s) back this long.")
@click.option("--file", "file_", type=click.File("r", encoding="utf-8"), metavar="ITEMS.JSONL",
              help='Enqueue one item per line, {"type": ..., "payload": ..., "priority": ...}, '
                   "all in one transaction ('-' reads stdin).")
@click.option("--json", "as_json", is_flag=True, help='Print {"id": N} (with --file: {"ids": [...]}).')
@pass_state
def enqueue(
    state: CliState, type_: str | None, payload: str | None, priority: int, delay: float,
    file_: TextIO | None, as_json: bool,
) -> None:
    """Add an item of TYPE with a JSON PAYLOAD ('-' or absent: read it from stdin).

    Prints the new item's id.
    """
    if file_ is not None:
        if type_ is not None or payload is not None:
            raise CliError("give either TYPE [PAYLOAD] or --file, not both", 2)
        rows = _read_jsonl(file_, priority)
        queue = state.queue(create=True)
        with _errors(state.url, bad_input=True):
            ids = queue.enqueue_many(rows, delay=delay)
        if as_json:
            _echo_json({"ids": ids})
        elif ids and ids == list(range(ids[0], ids[0] + len(ids))):
            click.echo(f"enqueued {_plural(len(ids))} (ids {ids[0]}-{ids[-1]})")
        else:
            click.echo(f"enqueued {_plural(len(ids))}")
        return
    if type_ is None:
        raise CliError("missing argument TYPE (or give --file)", 2)
    if payload is None or payload == "-":
        stdin = sys.stdin
        if payload is None and stdin.isatty():
            raise CliError("missing PAYLOAD: give it as JSON, or '-' to read it from stdin", 2)
        text = stdin.read()
        if not text.strip():
            raise CliError("stdin is empty: expected the JSON payload", 2)
        value = parse_json(text, "the payload on stdin")
    else:
        value = parse_json(payload, "PAYLOAD")
    queue = state.queue(create=True)
    with _errors(state.url, bad_input=True):
        item = queue.enqueue(type_, value, priority=priority, delay=delay)
    if as_json:
        _echo_json({"id": item.id})
    else:
        click.echo(item.id)


_LINE_KEYS = {"type", "payload", "priority"}


def _read_jsonl(stream: TextIO, default_priority: int) -> list[tuple[str, Any, int]]:
    """Every item of a JSON-lines file, or a CliError (exit 2) naming the first bad line."""
    name = getattr(stream, "name", "<stdin>")
    rows = []
    try:
        lines = list(stream)
    except UnicodeDecodeError as exc:
        raise CliError(f"{name} is not UTF-8 text: {exc.reason} at byte {exc.start}", 2) from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{name} line {number}"
        entry = parse_json(line, where)
        if not isinstance(entry, dict):
            raise CliError(f'{where}: expected an object like {{"type": ..., "payload": ...}}', 2)
        unknown = sorted(set(entry) - _LINE_KEYS)
        if unknown:
            raise CliError(f"{where}: unknown key(s) {', '.join(unknown)} (expected type, payload, priority)", 2)
        if "type" not in entry:
            raise CliError(f"{where}: missing \"type\"", 2)
        prio = entry.get("priority", default_priority)
        if isinstance(prio, bool) or not isinstance(prio, int):
            raise CliError(f"{where}: priority must be an integer, not {prio!r}", 2)
        rows.append((entry["type"], entry.get("payload"), prio))
    if not rows:
        raise CliError(f"{name} holds no items", 2)
    return rows


# -------------------------------------------------------------------------
# run
# -------------------------------------------------------------------------


class _StopDuringStartUp:
    """For ``run``, from before the plugins load: keeps a SIGTERM/SIGINT that
    arrives while they load and the database opens, instead of dying of it.
    Nothing is claimed yet, so the run ends at once with exit 0. Once the
    runner exists the signal stops it; while it runs, its own handlers are in
    place."""

    def __init__(self) -> None:
        self.requested = False
        self._target: Any = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopDuringStartUp:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def stops(self, target: Any) -> None:
        """From now on a signal calls ``target.stop()`` (a Runner or a
        Supervisor, which stops at once if asked before it starts); so does
        one that came earlier."""
        self._target = target
        if self.requested:
            target.stop()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.requested = True
        if self._target is not None:
            self._target.stop()


@cli.command()
@click.option("--burst", is_flag=True, help="Exit once nothing is due instead of waiting for more.")
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True,
              help="Items claimed at a time.")
@click.option("--lease", type=click.FloatRange(min=1), default=300, show_default=True, metavar="SECONDS",
              help="How long a claim holds an item before another runner may take it over (renewed while working).")
@click.option("--max-trials", type=click.IntRange(min=1), default=10, show_default=True,
              help="Tries before an item goes to error.")
@click.option("--retry-delay", type=click.FloatRange(min=0), default=5, show_default=True, metavar="SECONDS",
              help="Wait before the first retry; doubles each try, capped at an hour.")
@click.option("--concurrency", type=click.IntRange(min=1), default=1, show_default=True,
              help="Threads per runner process (for I/O-bound plugins).")
@click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runner processes under one supervisor that restarts any that dies.")
@click.option("--progress/--no-progress", default=None,
              help="Show a progress line on stderr (default: when stderr is a terminal).")
@pass_state
def run(
    state: CliState, burst: bool, batch_size: int, lease: float, max_trials: int, retry_delay: float,
    concurrency: int, processes: int, progress: bool | None,
) -> None:
    """Process due items with the installed plugins until stopped.

    SIGTERM or SIGINT (Ctrl-C) stops gracefully: the plugin call in hand
    finishes and is saved, unstarted items go back to pending, exit 0.
    """
    start_up: _StopDuringStartUp = click.get_current_context().find_root().meta["queuecore.start_up"]
    plugins = _require_plugins(state)
    queue = state.queue(create=True)
    with _errors(state.url):
        queue.init()
    if start_up.requested:
        log.info("stop requested while starting; nothing was claimed")
        return
    if processes > 1:
        state.close()  # the supervisor itself does not use the database
        _supervise(state, start_up, processes, burst=burst, batch_size=batch_size, lease=lease,
                   max_trials=max_trials, retry_delay=retry_delay, concurrency=concurrency)
        return

    from .runner import Runner

    with _errors(state.url):
        runner = Runner(
            queue, plugins.objects(), max_trials=max_trials, retry_delay=retry_delay,
            lease_seconds=lease, concurrency=concurrency,
        )
    start_up.stops(runner)
    stderr = sys.stderr
    show = stderr.isatty() if progress is None else progress
    display = _Progress(stderr) if show else None
    handler: _LogHandler | None = click.get_current_context().find_root().meta.get("queuecore.log_handler")
    if handler is not None:
        handler.progress = display
    log.info("runner %s started on %s with plugins: %s", runner.name, redact_url(state.url),
             ", ".join(plugins.plugin_set.names()))
    started = time.monotonic()
    try:
        with _errors(state.url):
            total = runner.run(burst=burst, batch_size=batch_size,
                               on_batch=display.update if display is not None else None)
    finally:
        runner.close()
        if display is not None:
            display.finish()
        if handler is not None:
            handler.progress = None
    log.info(
        "runner %s stopped after %s: %d done, %d retried, %d failed, %d released",
        runner.name, _human_duration(time.monotonic() - started),
        total.done, total.retried, total.failed, total.released,
    )


def _require_plugins(state: CliState) -> LoadedPlugins:
    plugins = state.plugins or load_plugins()
    if plugins.errors:
        for message in plugins.errors[:-1]:
            click.echo(f"Error: {message}", err=True)
        raise CliError(plugins.errors[-1])
    if not plugins.plugin_set.names():
        selected = os.environ.get(PLUGINS_ENV_VAR)
        why = f"{PLUGINS_ENV_VAR}={selected!r} selects none" if selected is not None else "none is installed"
        raise CliError(
            f"no plugins to run ({why}): every item would fail with 'no plugin accepted'; "
            "install one (see 'queuecore plugins')"
        )
    return plugins


def _supervise(state: CliState, start_up: _StopDuringStartUp, processes: int, *, burst: bool, batch_size: int,
               lease: float, max_trials: int, retry_delay: float, concurrency: int) -> None:
    from .supervisor import Supervisor

    args = [*CHILD_COMMAND]
    args += ["-v"] * state.verbose
    args += ["run", "--processes", "1", "--no-progress", "--batch-size", str(batch_size), "--lease", repr(lease),
             "--max-trials", str(max_trials), "--retry-delay", repr(retry_delay), "--concurrency", str(concurrency)]
    if burst:
        args.append("--burst")
    # The URL goes through the environment, not argv: `ps` shows argv to everyone.
    env = {**os.environ, URL_ENV_VAR: state.url}
    supervisor = Supervisor(args, processes, env=env, burst=burst)
    start_up.stops(supervisor)
    code = supervisor.run()
    if code:
        raise CliError("runner processes kept failing; stopped all (see the log above)", code)


# -------------------------------------------------------------------------
# status, list, show
# -------------------------------------------------------------------------


def _counts_dict(counts: dict[Status, int]) -> dict[str, int]:
    return {status.name.lower(): counts.get(status, 0) for status in Status}


@cli.command()
@click.option("--by-type", is_flag=True, help="Counts per item type as well.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def status(state: CliState, by_type: bool, as_json: bool) -> None:
    """Counts of items per status, and how long the oldest due item has waited."""
    queue = state.queue()
    with _errors(state.url):
        counts = queue.counts()
        oldest = queue.oldest_due_age()
        per_type = queue.counts_by_type() if by_type else None
    if as_json:
        out: dict[str, Any] = {**_counts_dict(counts), "oldest_due_age_seconds": oldest}
        if per_type is not None:
            out["by_type"] = {typ: _counts_dict(c) for typ, c in per_type.items()}
        _echo_json(out)
        return
    if per_type is not None:
        headers = ["TYPE", *(name.upper() for name in _STATUS_NAMES)]
        rows = [[typ, *(c[s] for s in Status)] for typ, c in per_type.items()]
        rows.append(["(all)", *(counts[s] for s in Status)])
        _table(headers, rows, right=range(1, len(headers)))
    else:
        rows = [[s.name.lower(), counts[s]] for s in Status]
        rows.append(["total", sum(counts.values())])
        _table(["STATUS", "ITEMS"], rows, right=[1])
    click.echo("oldest due item: " + ("none waiting" if oldest is None else f"waiting {_human_duration(oldest)}"))


@cli.command("list")
@click.option("--status", "statuses", type=StatusType(), multiple=True, help="Only this status (repeatable).")
@click.option("--type", "types", multiple=True, metavar="TYPE", help="Only this item type (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of item objects.")
@pass_state
def list_(state: CliState, statuses: tuple[Status, ...], types: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Items, newest first."""
    queue = state.queue()
    with _errors(state.url):
        items = queue.list(status=list(statuses) or None, type=list(types) or None, limit=limit)
    if as_json:
        _echo_json([item.to_dict() for item in items])
        return
    if not items:
        click.echo("no items")
        return
    rows = [
        [item.id, item.type, item.status.name.lower(), item.trials, item.priority,
         _human_time(item.creation_dtime), _human_time(item.lasttry_dtime), _last_error(item)]
        for item in items
    ]
    _table(["ID", "TYPE", "STATUS", "TRIALS", "PRIORITY", "CREATED (UTC)", "LAST TRY (UTC)", "ERROR"], rows,
           right=[0, 3, 4])


def _last_error(item: Item) -> str | None:
    if not item.errors:
        return None
    # A plugin's own error says more than the runner's "gave up after N tries".
    name = min(item.errors, key=lambda n: (n == RESERVED_NAME, n))
    text = item.errors[name]
    more = f" (+{len(item.errors) - 1} more)" if len(item.errors) > 1 else ""
    return _shorten(f"{name}: {text}", 60) + more


@cli.command()
@click.argument("item_id", metavar="ID", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the item object as JSON.")
@pass_state
def show(state: CliState, item_id: int, as_json: bool) -> None:
    """Everything about one item, with each plugin's result and last error."""
    queue = state.queue()
    with _errors(state.url):
        item = queue.get(item_id)
    if as_json:
        _echo_json(item.to_dict())
        return
    fields = [
        ("id", item.id),
        ("type", item.type),
        ("status", item.status.name.lower()),
        ("trials", item.trials),
        ("priority", item.priority),
        ("created", _iso(item.creation_dtime)),
        ("last try", _iso(item.lasttry_dtime)),
        ("run after", _iso(item.run_after)),
    ]
    if item.status == Status.IN_PROGRESS:
        fields.append(("lease", f"{item.lease_owner} until {_iso(item.lease_expires)}"))
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        click.echo(f"{key.ljust(width)}  {_cell(value)}")
    click.echo(f"{'payload'.ljust(width)}  {json.dumps(item.payload, ensure_ascii=False)}")
    names = sorted(set(item.results) | set(item.errors))
    click.echo()
    if not names:
        click.echo("no plugin results yet")
        return
    rows = []
    for name in names:
        result = item.results.get(name)
        rows.append([name, "-" if result is None else "done" if result else "failed", item.errors.get(name)])
    _table(["PLUGIN", "RESULT", "ERROR"], rows)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.replace(tzinfo=dt.timezone.utc).isoformat()


# -------------------------------------------------------------------------
# retry, purge
# -------------------------------------------------------------------------


@cli.command()
@click.argument("ids", metavar="[ID]...", nargs=-1, type=int)
@click.option("--status", "statuses", type=StatusType([Status.PENDING, Status.NEED_RETRY, Status.DONE, Status.ERROR]),
              multiple=True, help="Retry every item with this status (repeatable).")
@click.option("--type", "types", multiple=True, metavar="TYPE", help="Only items of this type (repeatable).")
@click.option("--reset", is_flag=True, help="Also forget which plugins succeeded, so every plugin runs again.")
@click.option("--json", "as_json", is_flag=True, help='Print {"retried": N}.')
@pass_state
def retry(state: CliState, ids: tuple[int, ...], statuses: tuple[Status, ...], types: tuple[str, ...],
          reset: bool, as_json: bool) -> None:
    """Send items back to pending, due now, trials 0.

    Pick them by ID, or by --status (and --type). Plugins that already
    succeeded stay skipped unless --reset. Items in progress are left alone.
    """
    if not ids and not statuses:
        raise CliError("give item IDs, or --status (with --type to narrow it)", 2)
    queue = state.queue()
    with _errors(state.url):
        if ids:
            missing = [i for i in dict.fromkeys(ids) if not _exists(queue, i)]
            if missing:
                raise CliError(f"no item with id {', '.join(map(str, missing))}: nothing retried")
        count = queue.retry(list(ids) or None, status=list(statuses) or None, type=list(types) or None, reset=reset)
    if as_json:
        _echo_json({"retried": count})
    else:
        click.echo(f"{_plural(count)} back to pending" + (" (results reset)" if reset and count else ""))


def _exists(queue: Queue, item_id: int) -> bool:
    try:
        queue.get(item_id)
    except ItemNotFound:
        return False
    return True


@cli.command()
@click.option("--status", "statuses", type=StatusType([Status.DONE, Status.ERROR]), multiple=True, required=True,
              help="Which finished items to delete: done or error (repeatable).")
@click.option("--older-than", type=DurationType(), metavar="DURATION",
              help="Only items last tried longer ago than this: 90s, 30m, 12h, 7d, 2w.")
@click.option("--type", "types", multiple=True, metavar="TYPE", help="Only items of this type (repeatable).")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help='Print {"purged": N, "dry_run": bool}.')
@pass_state
def purge(state: CliState, statuses: tuple[Status, ...], older_than: dt.timedelta | None, types: tuple[str, ...],
          dry_run: bool, as_json: bool) -> None:
    """Delete finished items, in short chunks (no long lock on a big table)."""
    queue = state.queue()
    with _errors(state.url):
        count = queue.purge(list(statuses), older_than=older_than, type=list(types) or None, dry_run=dry_run)
    if as_json:
        _echo_json({"purged": count, "dry_run": dry_run})
    elif dry_run:
        click.echo(f"would purge {_plural(count)} (dry run: nothing deleted)")
    else:
        click.echo(f"purged {_plural(count)}")


# -------------------------------------------------------------------------
# plugins, new-plugin
# -------------------------------------------------------------------------


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {name, distribution, version, hooks}.")
@pass_state
def plugins(state: CliState, as_json: bool) -> None:
    """The loaded plugins (the `queuecore` entry points, filtered by QUEUECORE_PLUGINS)."""
    loaded = state.plugins or load_plugins()
    if loaded.errors:
        for message in loaded.errors[:-1]:
            click.echo(f"Error: {message}", err=True)
        raise CliError(loaded.errors[-1])
    infos = loaded.plugin_set.describe()
    if as_json:
        _echo_json([info.to_dict() for info in infos])
        return
    if not infos:
        selected = os.environ.get(PLUGINS_ENV_VAR)
        click.echo("no plugins loaded" + (f" ({PLUGINS_ENV_VAR}={selected!r})" if selected is not None else ""))
        return
    _table(["NAME", "DISTRIBUTION", "VERSION", "HOOKS"],
           [[i.name, i.distribution, i.version, ", ".join(i.hooks)] for i in infos])


@cli.command("new-plugin")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Where to create the plugin's folder.")
def new_plugin(name: str, directory: Path) -> None:
    """Create a plugin distribution NAME from the template, ready to pip install -e."""
    try:
        from .scaffold import create_plugin
    except ImportError as exc:
        raise CliError(f"new-plugin is not available: {exc}") from None
    try:
        path = create_plugin(name, directory)
    except ValueError as exc:  # a name that cannot be a plugin's
        raise CliError(str(exc), 2) from None
    except (QueuecoreError, OSError) as exc:
        raise CliError(str(exc)) from None
    click.echo(f"created {path}")


def main(argv: Sequence[str] | None = None) -> None:
    """The ``queuecore`` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="queuecore")


if __name__ == "__main__":
    main()

"""The ``queuecore`` command: every command and error case through click's
runner, and ``run`` (signals, exit codes, ``--processes``) as real processes.

Plugins are real entry points: each test writes a module and a
``*.dist-info`` folder into a directory on ``sys.path`` / ``PYTHONPATH``, where
importlib.metadata finds them without installing anything.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner, Result

from queuecore import Queue, Status
from queuecore.cli import CHILD_COMMAND, cli
from queuecore.plugins import PLUGINS_ENV_VAR
from queuecore.storage import URL_ENV_VAR

STATUS_KEYS = ["pending", "in_progress", "need_retry", "done", "error"]
ITEM_KEYS = [
    "id", "type", "payload", "status", "trials", "results", "errors", "priority",
    "creation_dtime", "lasttry_dtime", "run_after", "lease_owner", "lease_expires",
]


# -------------------------------------------------------------------------
# Fixtures and helpers
# -------------------------------------------------------------------------


OK_PLUGIN = """
    from queuecore import hookimpl

    @hookimpl
    def process_item(item):
        if item.type == "boom":
            raise ValueError("boom went the plugin")
        return True
"""

COMMAND_PLUGIN = """
    import click
    from queuecore import hookimpl

    @hookimpl
    def register_commands(cli):
        @cli.command()
        def hello():
            "Say hello from a plugin."
            click.echo("hello from " + click.get_current_context().obj.url)
"""

BROKEN_PLUGIN = """
    import this_module_does_not_exist
"""

# Records every call as "pid item_id" in $QC_TEST_CALLS, sleeping $QC_TEST_SLEEP.
RECORDING_PLUGIN = """
    import os, time
    from queuecore import hookimpl

    @hookimpl
    def process_item(item):
        with open(os.environ["QC_TEST_CALLS"], "a") as f:
            f.write(f"{os.getpid()} {item.id}\\n")
        time.sleep(float(os.environ.get("QC_TEST_SLEEP", "0")))
        return True
"""


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No installed plugin leaks in, and the default database lands in tmp_path.
    monkeypatch.setenv(PLUGINS_ENV_VAR, "")
    monkeypatch.delenv(URL_ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/q.db"


@pytest.fixture
def invoke(url: str) -> Callable[..., Result]:
    def invoke(*args: str, input: str | None = None, db: str | None = url) -> Result:
        argv = (["--db", db] if db is not None else []) + list(args)
        return CliRunner().invoke(cli, argv, input=input)

    return invoke


@pytest.fixture
def queue(url: str) -> Iterator[Queue]:
    q = Queue(url)
    q.init()
    yield q
    q.close()


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def assert_error(result: Result, code: int, *fragments: str) -> None:
    """One ``Error:`` line on stderr, nothing on stdout, the exit code, no traceback."""
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("Warning:")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""


# -------------------------------------------------------------------------
# The group: help, --db, environment
# -------------------------------------------------------------------------


def test_help_lists_every_command(invoke: Callable[..., Result]) -> None:
    out = ok(invoke("--help")).stdout
    for command in ("init", "enqueue", "run", "status", "list", "show", "retry", "purge", "plugins", "new-plugin"):
        assert re.search(rf"^\s+{command}\s", out, re.M), command


def test_version(invoke: Callable[..., Result]) -> None:
    assert ok(invoke("--version")).stdout.startswith("queuecore ")


def test_unknown_command_and_option_are_one_line_usage_errors(invoke: Callable[..., Result]) -> None:
    assert_error(invoke("frobnicate"), 2, "frobnicate")
    assert_error(invoke("status", "--frob"), 2, "--frob")


def test_db_from_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      invoke: Callable[..., Result]) -> None:
    monkeypatch.setenv(URL_ENV_VAR, f"sqlite:///{tmp_path}/env.db")
    ok(invoke("init", db=None))
    assert (tmp_path / "env.db").exists()


def test_default_db_is_queuecore_db_in_the_working_directory(tmp_path: Path, invoke: Callable[..., Result]) -> None:
    ok(invoke("init", db=None))
    assert (tmp_path / "queuecore.db").exists()


def test_db_option_beats_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     invoke: Callable[..., Result]) -> None:
    monkeypatch.setenv(URL_ENV_VAR, f"sqlite:///{tmp_path}/env.db")
    ok(invoke("init", db=f"sqlite:///{tmp_path}/opt.db"))
    assert (tmp_path / "opt.db").exists() and not (tmp_path / "env.db").exists()


# -------------------------------------------------------------------------
# init
# -------------------------------------------------------------------------


def test_init_is_idempotent(url: str, invoke: Callable[..., Result]) -> None:
    first = ok(invoke("init")).stdout
    assert "schema version 1" in first and url in first
    ok(invoke("init"))
    assert Queue(url).counts()[Status.PENDING] == 0


def test_init_in_a_missing_folder_fails_in_one_line(tmp_path: Path, invoke: Callable[..., Result]) -> None:
    assert_error(invoke("init", db=f"sqlite:///{tmp_path}/nope/q.db"), 1, "does not exist")
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("bad", ["not-a-url", "oracle://x/y", "sqlite://"])
def test_bad_database_url(bad: str, invoke: Callable[..., Result]) -> None:
    assert_error(invoke("status", db=bad), 1, "cannot open database")


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
def test_unreachable_server_fails_in_one_line_without_the_password(scheme: str, invoke: Callable[..., Result]) -> None:
    result = invoke("status", db=f"{scheme}://someone:s3cr3tpw@127.0.0.1:1/nowhere")
    assert_error(result, 1, "***@127.0.0.1:1")
    assert "s3cr3tpw" not in result.stderr + result.stdout


def test_a_file_that_is_not_a_database(tmp_path: Path, invoke: Callable[..., Result]) -> None:
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    assert_error(invoke("status", db=f"sqlite:///{tmp_path}/junk.db"), 1, "database")


# -------------------------------------------------------------------------
# enqueue
# -------------------------------------------------------------------------


def test_enqueue_prints_the_id(url: str, invoke: Callable[..., Result]) -> None:
    assert ok(invoke("enqueue", "mail", '{"to": "a@example.org"}')).stdout == "1\n"
    assert ok(invoke("enqueue", "mail", '"x"', "--json")).stdout.strip() == '{"id": 2}'
    item = Queue(url).get(1)
    assert (item.type, item.payload, item.status) == ("mail", {"to": "a@example.org"}, Status.PENDING)


@pytest.mark.parametrize("args", [["hook"], ["hook", "-"]])
def test_enqueue_reads_the_payload_from_stdin(args: list[str], url: str, invoke: Callable[..., Result]) -> None:
    ok(invoke("enqueue", *args, input='{"n": [1, 2]}\n'))
    assert Queue(url).get(1).payload == {"n": [1, 2]}


def test_enqueue_priority_and_delay(url: str, invoke: Callable[..., Result]) -> None:
    ok(invoke("enqueue", "t", "1", "--priority", "7", "--delay", "3600"))
    item = Queue(url).get(1)
    assert item.priority == 7
    assert (item.run_after - item.creation_dtime).total_seconds() == pytest.approx(3600)
    assert json.loads(ok(invoke("status", "--json")).stdout)["oldest_due_age_seconds"] is None


@pytest.mark.parametrize(
    "args, stdin, fragment",
    [
        (["t", "{bad"], None, "PAYLOAD is not valid JSON"),
        (["t", "NaN"], None, "not valid JSON"),
        (["t"], "{oops", "the payload on stdin is not valid JSON"),
        (["t"], "", "stdin is empty"),
        (["", "1"], None, "must not be empty"),
        (["t", "1", "--priority", "x"], None, "--priority"),
        (["t", "1", "--delay", "-1"], None, "--delay"),
        ([], None, "TYPE"),
    ],
)
def test_enqueue_bad_input_is_a_usage_error_and_writes_nothing(
    args: list[str], stdin: str | None, fragment: str, tmp_path: Path, invoke: Callable[..., Result]
) -> None:
    assert_error(invoke("enqueue", *args, input=stdin), 2, fragment)
    assert not (tmp_path / "q.db").exists()


def test_enqueue_file_adds_every_line_in_one_go(tmp_path: Path, url: str, invoke: Callable[..., Result]) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text('{"type": "a", "payload": {"n": 1}}\n\n{"type": "b", "payload": 2, "priority": 5}\n{"type": "c"}\n')
    assert ok(invoke("enqueue", "--file", str(path))).stdout == "enqueued 3 items (ids 1-3)\n"
    assert json.loads(ok(invoke("enqueue", "--file", str(path), "--json")).stdout) == {"ids": [4, 5, 6]}
    items = {i.id: i for i in Queue(url).list(limit=10)}
    assert (items[2].type, items[2].payload, items[2].priority) == ("b", 2, 5)
    assert items[3].payload is None


def test_enqueue_file_from_stdin(url: str, invoke: Callable[..., Result]) -> None:
    ok(invoke("enqueue", "--file", "-", input='{"type": "a", "payload": 1}\n'))
    assert Queue(url).get(1).payload == 1


@pytest.mark.parametrize(
    "content, fragment",
    [
        ('{"type": "a"}\n{broken\n', "line 2"),
        ('{"type": "a"}\n[1, 2]\n', "line 2: expected an object"),
        ('{"type": "a", "paylod": 1}\n', "unknown key(s) paylod"),
        ('{"payload": 1}\n', 'missing "type"'),
        ('{"type": "a", "priority": "high"}\n', "priority must be an integer"),
        ('{"type": "", "payload": 1}\n', "must not be empty"),
        ("\n\n", "holds no items"),
    ],
)
def test_enqueue_file_with_a_bad_line_writes_nothing(
    content: str, fragment: str, tmp_path: Path, url: str, invoke: Callable[..., Result], queue: Queue
) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text(content)
    assert_error(invoke("enqueue", "--file", str(path)), 2, fragment)
    assert sum(queue.counts().values()) == 0


def test_enqueue_file_errors(tmp_path: Path, invoke: Callable[..., Result]) -> None:
    assert_error(invoke("enqueue", "--file", str(tmp_path / "missing.jsonl")), 2, "missing.jsonl")
    (tmp_path / "x.jsonl").write_text('{"type": "a"}\n')
    assert_error(invoke("enqueue", "t", "--file", str(tmp_path / "x.jsonl")), 2, "not both")


# -------------------------------------------------------------------------
# status
# -------------------------------------------------------------------------


def _fill(queue: Queue) -> None:
    """Two pending mail items, one done hook item, one error hook item (with a plugin error)."""
    queue.enqueue("mail", {"n": 1})
    queue.enqueue("mail", {"n": 2})
    done = queue.enqueue("hook", {"n": 3})
    failed = queue.enqueue("hook", {"n": 4})
    storage = queue.storage
    storage.Item.update(status=Status.DONE, results={"web": True}, lasttry_dtime=done.creation_dtime).where(
        storage.Item.id == done.id).execute()
    storage.Item.update(
        status=Status.ERROR, trials=3, results={"web": False}, errors={"web": "ValueError: nope"},
        lasttry_dtime=failed.creation_dtime,
    ).where(storage.Item.id == failed.id).execute()


def test_status_table_and_json(queue: Queue, invoke: Callable[..., Result]) -> None:
    _fill(queue)
    out = ok(invoke("status")).stdout
    assert re.search(r"^pending\s+2$", out, re.M) and re.search(r"^error\s+1$", out, re.M)
    assert re.search(r"^total\s+4$", out, re.M)
    assert "oldest due item: waiting" in out
    data = json.loads(ok(invoke("status", "--json")).stdout)
    assert list(data) == [*STATUS_KEYS, "oldest_due_age_seconds"]
    assert [data[k] for k in STATUS_KEYS] == [2, 0, 0, 1, 1]
    assert isinstance(data["oldest_due_age_seconds"], float) and data["oldest_due_age_seconds"] >= 0


def test_status_by_type(queue: Queue, invoke: Callable[..., Result]) -> None:
    _fill(queue)
    out = ok(invoke("status", "--by-type")).stdout
    header, hook, mail, total = out.splitlines()[:4]
    assert header.split() == ["TYPE", "PENDING", "IN_PROGRESS", "NEED_RETRY", "DONE", "ERROR"]
    assert hook.split() == ["hook", "0", "0", "0", "1", "1"]
    assert mail.split() == ["mail", "2", "0", "0", "0", "0"]
    assert total.split() == ["(all)", "2", "0", "0", "1", "1"]
    data = json.loads(ok(invoke("status", "--by-type", "--json")).stdout)
    assert data["by_type"] == {
        "hook": dict(zip(STATUS_KEYS, [0, 0, 0, 1, 1])),
        "mail": dict(zip(STATUS_KEYS, [2, 0, 0, 0, 0])),
    }


def test_status_of_an_empty_queue(queue: Queue, invoke: Callable[..., Result]) -> None:
    data = json.loads(ok(invoke("status", "--json")).stdout)
    assert data == {**dict.fromkeys(STATUS_KEYS, 0), "oldest_due_age_seconds": None}
    assert "none waiting" in ok(invoke("status")).stdout


@pytest.mark.parametrize("command", [["status"], ["list"], ["show", "1"], ["retry", "1"], ["purge", "--status", "done"]])
def test_read_and_operate_commands_do_not_create_a_database(
    command: list[str], tmp_path: Path, invoke: Callable[..., Result]
) -> None:
    assert_error(invoke(*command), 1, "no queue database", "queuecore init")
    assert not (tmp_path / "q.db").exists()


def test_a_database_without_the_tables_is_not_initialised_silently(tmp_path: Path, invoke: Callable[..., Result]) -> None:
    import sqlite3

    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE t (x)").connection.close()
    assert_error(invoke("status", db=f"sqlite:///{tmp_path}/other.db"), 1, "holds no queue")


# -------------------------------------------------------------------------
# list, show
# -------------------------------------------------------------------------


def test_list_newest_first_with_filters(queue: Queue, invoke: Callable[..., Result]) -> None:
    _fill(queue)
    lines = ok(invoke("list")).stdout.splitlines()
    assert lines[0].split()[:5] == ["ID", "TYPE", "STATUS", "TRIALS", "PRIORITY"]
    assert [line.split()[0] for line in lines[1:]] == ["4", "3", "2", "1"]
    assert "web: ValueError: nope" in lines[1]
    assert [l.split()[0] for l in ok(invoke("list", "--status", "pending")).stdout.splitlines()[1:]] == ["2", "1"]
    out = ok(invoke("list", "--status", "done", "--status", "error", "--type", "hook", "--limit", "1")).stdout
    assert [l.split()[0] for l in out.splitlines()[1:]] == ["4"]
    assert ok(invoke("list", "--type", "nothing")).stdout == "no items\n"


def test_list_json_is_a_list_of_item_objects(queue: Queue, invoke: Callable[..., Result]) -> None:
    _fill(queue)
    data = json.loads(ok(invoke("list", "--json", "--limit", "2")).stdout)
    assert [d["id"] for d in data] == [4, 3]
    assert all(list(d) == ITEM_KEYS for d in data)
    assert data[0]["status"] == "error" and data[0]["errors"] == {"web": "ValueError: nope"}
    assert data[0]["creation_dtime"].endswith("+00:00")
    assert json.loads(ok(invoke("list", "--json", "--type", "none")).stdout) == []


@pytest.mark.parametrize("args, fragment", [
    (["--status", "bogus"], "unknown status 'bogus'"),
    (["--limit", "0"], "--limit"),
    (["--limit", "many"], "--limit"),
])
def test_list_bad_options(args: list[str], fragment: str, queue: Queue, invoke: Callable[..., Result]) -> None:
    assert_error(invoke("list", *args), 2, fragment)


def test_show_human_and_json(queue: Queue, invoke: Callable[..., Result]) -> None:
    _fill(queue)
    out = ok(invoke("show", "4")).stdout
    assert re.search(r"^status\s+error$", out, re.M)
    assert re.search(r"^trials\s+3$", out, re.M)
    assert re.search(r'^payload\s+\{"n": 4\}$', out, re.M)
    assert re.search(r"^web\s+failed\s+ValueError: nope$", out, re.M)
    data = json.loads(ok(invoke("show", "4", "--json")).stdout)
    assert data == queue.get(4).to_dict()
    assert list(data) == ITEM_KEYS
    assert "no plugin results yet" in ok(invoke("show", "1")).stdout


def test_show_unknown_or_malformed_id(queue: Queue, invoke: Callable[..., Result]) -> None:
    assert_error(invoke("show", "99"), 1, "no item with id 99")
    assert_error(invoke("show", "abc"), 2, "'abc' is not a valid integer")


# -------------------------------------------------------------------------
# retry, purge
# -------------------------------------------------------------------------


def test_retry_by_id_keeps_plugin_results(queue: Queue, invoke: Callable[..., Result]) -> None:
    _fill(queue)
    assert ok(invoke("retry", "4")).stdout == "1 item back to pending\n"
    item = queue.get(4)
    assert (item.status, item.trials, item.results) == (Status.PENDING, 0, {"web": False})


def test_retry_by_status_and_type_with_reset(queue: Queue, invoke: Callable[..., Result]) -> None:
    _fill(queue)
    assert json.loads(ok(invoke("retry", "--status", "error", "--type", "mail", "--json")).stdout) == {"retried": 0}
    assert ok(invoke("retry", "--status", "error", "--status", "done", "--type", "hook", "--reset")).stdout == (
        "2 items back to pending (results reset)\n"
    )
    assert queue.get(3).results == {} and queue.get(4).errors == {}
    assert queue.counts()[Status.PENDING] == 4


def test_retry_errors(queue: Queue, invoke: Callable[..., Result]) -> None:
    _fill(queue)
    assert_error(invoke("retry", "4", "99", "98"), 1, "no item with id 99, 98", "nothing retried")
    assert queue.get(4).status == Status.ERROR  # nothing written
    assert_error(invoke("retry"), 2, "give item IDs, or --status")
    assert_error(invoke("retry", "--type", "hook"), 2, "--status")
    assert_error(invoke("retry", "--status", "in_progress"), 2, "not allowed here")
    assert_error(invoke("retry", "--status", "eror"), 2, "unknown status 'eror'")


def test_purge_dry_run_then_for_real(queue: Queue, invoke: Callable[..., Result]) -> None:
    _fill(queue)
    assert ok(invoke("purge", "--status", "done", "--dry-run")).stdout == "would purge 1 item (dry run: nothing deleted)\n"
    assert sum(queue.counts().values()) == 4
    assert json.loads(ok(invoke("purge", "--status", "done", "--status", "error", "--type", "hook", "--json")).stdout) == {
        "purged": 2, "dry_run": False,
    }
    assert sum(queue.counts().values()) == 2


def test_purge_older_than(queue: Queue, invoke: Callable[..., Result]) -> None:
    _fill(queue)
    assert ok(invoke("purge", "--status", "done", "--older-than", "7d")).stdout == "purged 0 items\n"
    time.sleep(0.05)
    assert ok(invoke("purge", "--status", "error", "--older-than", "0.01s")).stdout == "purged 1 item\n"


@pytest.mark.parametrize("args, fragment", [
    ([], "Missing option '--status'"),
    (["--status", "pending"], "not allowed here: choose from done, error"),
    (["--status", "done", "--older-than", "7"], "'7' is not a duration"),
    (["--status", "done", "--older-than", "7 days"], "is not a duration"),
])
def test_purge_bad_options_are_usage_errors(args: list[str], fragment: str, queue: Queue,
                                            invoke: Callable[..., Result]) -> None:
    _fill(queue)
    assert_error(invoke("purge", *args), 2, fragment)
    assert sum(queue.counts().values()) == 4


# -------------------------------------------------------------------------
# plugins and their commands
# -------------------------------------------------------------------------


def test_plugins_lists_the_selected_plugins(plugin_dir, monkeypatch: pytest.MonkeyPatch,
                                            invoke: Callable[..., Result]) -> None:
    plugin_dir.add("okay", OK_PLUGIN, version="1.2")
    plugin_dir.add("greeter", COMMAND_PLUGIN, distribution="queuecore-greeter-dist")
    monkeypatch.setenv(PLUGINS_ENV_VAR, "okay,greeter")
    data = json.loads(ok(invoke("plugins", "--json")).stdout)
    assert data == [
        {"name": "greeter", "distribution": "queuecore-greeter-dist", "version": "0.1", "hooks": ["register_commands"]},
        {"name": "okay", "distribution": "queuecore-okay", "version": "1.2", "hooks": ["process_item"]},
    ]
    lines = ok(invoke("plugins")).stdout.splitlines()
    assert lines[0].split() == ["NAME", "DISTRIBUTION", "VERSION", "HOOKS"]
    assert lines[2].split() == ["okay", "queuecore-okay", "1.2", "process_item"]
    monkeypatch.setenv(PLUGINS_ENV_VAR, "okay")
    assert [p["name"] for p in json.loads(ok(invoke("plugins", "--json")).stdout)] == ["okay"]


def test_plugins_empty_selection(invoke: Callable[..., Result]) -> None:
    assert json.loads(ok(invoke("plugins", "--json")).stdout) == []
    assert "no plugins loaded (QUEUECORE_PLUGINS='')" in ok(invoke("plugins")).stdout


def test_every_installed_plugin_loads_without_a_selection(plugin_dir, monkeypatch: pytest.MonkeyPatch,
                                                          invoke: Callable[..., Result]) -> None:
    plugin_dir.add("okay", OK_PLUGIN)
    monkeypatch.delenv(PLUGINS_ENV_VAR)
    names = [p["name"] for p in json.loads(ok(invoke("plugins", "--json")).stdout)]
    assert "okay" in names


def test_a_selected_plugin_that_is_not_installed(monkeypatch: pytest.MonkeyPatch, invoke: Callable[..., Result]) -> None:
    monkeypatch.setenv(PLUGINS_ENV_VAR, "nosuchplugin")
    assert_error(invoke("plugins"), 1, "nosuchplugin", "not installed")


def test_plugin_commands_get_the_database_url(plugin_dir, monkeypatch: pytest.MonkeyPatch, url: str,
                                              invoke: Callable[..., Result]) -> None:
    plugin_dir.add("greeter", COMMAND_PLUGIN)
    monkeypatch.setenv(PLUGINS_ENV_VAR, "greeter")
    assert ok(invoke("hello")).stdout == f"hello from {url}\n"
    assert re.search(r"^\s+hello\s+Say hello from a plugin", ok(invoke("--help")).stdout, re.M)
    # Not selected: not there.
    monkeypatch.setenv(PLUGINS_ENV_VAR, "")
    assert_error(invoke("hello"), 2, "No such command 'hello'")


def test_a_broken_plugin_fails_run_and_plugins_in_one_line(plugin_dir, monkeypatch: pytest.MonkeyPatch,
                                                           queue: Queue, invoke: Callable[..., Result]) -> None:
    plugin_dir.add("okay", OK_PLUGIN)
    plugin_dir.add("broken", BROKEN_PLUGIN, distribution="queuecore-broken")
    monkeypatch.setenv(PLUGINS_ENV_VAR, "okay,broken")
    queue.enqueue("t", 1)
    for command in (["plugins"], ["run", "--burst"]):
        assert_error(invoke(*command), 1, "plugin 'broken' (distribution queuecore-broken) failed to load",
                     "ModuleNotFoundError")
    assert queue.get(1).status == Status.PENDING  # the runner never started


def test_a_broken_plugin_leaves_other_commands_usable_with_one_warning(
    plugin_dir, monkeypatch: pytest.MonkeyPatch, queue: Queue, invoke: Callable[..., Result]
) -> None:
    plugin_dir.add("greeter", COMMAND_PLUGIN)
    plugin_dir.add("broken", BROKEN_PLUGIN)
    monkeypatch.setenv(PLUGINS_ENV_VAR, "broken,greeter")
    result = ok(invoke("status", "--json"))
    assert json.loads(result.stdout)["pending"] == 0
    warnings = result.stderr.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("Warning: plugin 'broken'"), result.stderr
    assert "Traceback" not in result.stderr
    # The good plugin's command still works.
    assert ok(invoke("hello")).stdout.startswith("hello from ")


def test_a_plugin_whose_register_commands_raises(plugin_dir, monkeypatch: pytest.MonkeyPatch,
                                                 queue: Queue, invoke: Callable[..., Result]) -> None:
    plugin_dir.add("clumsy", """
        from queuecore import hookimpl

        @hookimpl
        def register_commands(cli):
            raise RuntimeError("oops")
    """)
    monkeypatch.setenv(PLUGINS_ENV_VAR, "clumsy")
    result = ok(invoke("status"))
    assert "Warning: plugin 'clumsy' (distribution queuecore-clumsy): register_commands failed: RuntimeError: oops" in result.stderr
    assert_error(invoke("plugins"), 1, "register_commands failed")


# -------------------------------------------------------------------------
# run, in process
# -------------------------------------------------------------------------


def test_run_burst_processes_everything_and_logs_each_failure(
    plugin_dir, monkeypatch: pytest.MonkeyPatch, queue: Queue, invoke: Callable[..., Result]
) -> None:
    plugin_dir.add("okay", OK_PLUGIN)
    monkeypatch.setenv(PLUGINS_ENV_VAR, "okay")
    for _ in range(3):
        queue.enqueue("fine", {})
    bad = queue.enqueue("boom", {})
    result = ok(invoke("run", "--burst", "--retry-delay", "60"))
    assert result.stdout == ""
    failures = [line for line in result.stderr.splitlines() if "failed" in line]
    assert len(failures) == 1
    assert re.search(rf"WARNING queuecore\.runner: item {bad.id} \(boom\): plugin okay failed: ValueError: boom went the plugin$",
                     failures[0]), failures
    counts = queue.counts()
    assert (counts[Status.DONE], counts[Status.NEED_RETRY]) == (3, 1)


def test_run_verbose_and_progress(plugin_dir, monkeypatch: pytest.MonkeyPatch, queue: Queue,
                                  invoke: Callable[..., Result]) -> None:
    plugin_dir.add("okay", OK_PLUGIN)
    monkeypatch.setenv(PLUGINS_ENV_VAR, "okay")
    queue.enqueue_many([("fine", i) for i in range(5)])
    result = ok(invoke("-v", "run", "--burst", "--progress", "--batch-size", "2"))
    assert "done 5  retried 0  failed 0" in result.stderr
    assert "INFO queuecore.cli: runner" in result.stderr and "5 done" in result.stderr
    # No progress unless asked (stderr is not a terminal here).
    queue.enqueue("fine", 1)
    assert "items/s" not in ok(invoke("run", "--burst")).stderr


def test_run_max_trials_sends_failures_to_error(plugin_dir, monkeypatch: pytest.MonkeyPatch, queue: Queue,
                                                invoke: Callable[..., Result]) -> None:
    plugin_dir.add("okay", OK_PLUGIN)
    monkeypatch.setenv(PLUGINS_ENV_VAR, "okay")
    queue.enqueue("boom", {})
    ok(invoke("run", "--burst", "--max-trials", "2", "--retry-delay", "0"))
    item = queue.get(1)
    assert (item.status, item.trials) == (Status.ERROR, 2)


def test_run_without_plugins_refuses_to_start(queue: Queue, invoke: Callable[..., Result]) -> None:
    queue.enqueue("t", 1)
    assert_error(invoke("run", "--burst"), 1, "no plugins to run", "QUEUECORE_PLUGINS=''")
    assert queue.get(1).trials == 0


@pytest.mark.parametrize("args, fragment", [
    (["--batch-size", "0"], "--batch-size"),
    (["--lease", "0"], "--lease"),
    (["--max-trials", "0"], "--max-trials"),
    (["--retry-delay", "-1"], "--retry-delay"),
    (["--concurrency", "0"], "--concurrency"),
    (["--processes", "0"], "--processes"),
])
def test_run_bad_options(args: list[str], fragment: str, invoke: Callable[..., Result]) -> None:
    assert_error(invoke("run", *args), 2, fragment)


def test_run_creates_the_database(plugin_dir, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                  invoke: Callable[..., Result]) -> None:
    plugin_dir.add("okay", OK_PLUGIN)
    monkeypatch.setenv(PLUGINS_ENV_VAR, "okay")
    ok(invoke("run", "--burst", "--concurrency", "4"))
    assert (tmp_path / "q.db").exists()


# -------------------------------------------------------------------------
# new-plugin (the template itself is queuecore.scaffold's, tested there)
# -------------------------------------------------------------------------


def test_new_plugin_calls_the_scaffold(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                       invoke: Callable[..., Result]) -> None:
    calls = []

    def create_plugin(name: str, directory: Path) -> Path:
        calls.append((name, directory))
        if name == "Bad Name":
            raise ValueError("'Bad Name' is not a valid plugin name")
        if name == "exists":
            raise FileExistsError(f"{directory / 'queuecore-exists'} already exists")
        return directory / f"queuecore-{name}"

    monkeypatch.setitem(sys.modules, "queuecore.scaffold", SimpleNamespace(create_plugin=create_plugin))
    assert ok(invoke("new-plugin", "thing", "--dir", str(tmp_path))).stdout == f"created {tmp_path}/queuecore-thing\n"
    assert calls == [("thing", tmp_path)]
    ok(invoke("new-plugin", "other"))
    assert calls[-1] == ("other", Path("."))
    assert_error(invoke("new-plugin", "Bad Name"), 2, "not a valid plugin name")
    assert_error(invoke("new-plugin", "exists"), 1, "already exists")


def test_new_plugin_without_the_scaffold(monkeypatch: pytest.MonkeyPatch, invoke: Callable[..., Result]) -> None:
    monkeypatch.setitem(sys.modules, "queuecore.scaffold", None)
    assert_error(invoke("new-plugin", "thing"), 1, "new-plugin is not available")


# -------------------------------------------------------------------------
# run as a real process: signals, exit codes, --processes
# -------------------------------------------------------------------------


def _process_env(plugin_dir, url: str, calls: Path, sleep: float, plugins: str = "rec") -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(plugin_dir.root), os.environ.get("PYTHONPATH", "")]),
        PLUGINS_ENV_VAR: plugins,
        URL_ENV_VAR: url,
        "QC_TEST_CALLS": str(calls),
        "QC_TEST_SLEEP": str(sleep),
    }


def _wait_for(condition: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _calls(path: Path) -> list[tuple[int, int]]:
    if not path.exists():
        return []
    return [tuple(map(int, line.split())) for line in path.read_text().splitlines() if line.strip()]  # type: ignore[misc]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_run_gracefully(signum: int, plugin_dir, tmp_path: Path, url: str,
                                       queue: Queue) -> None:
    plugin_dir.add("rec", RECORDING_PLUGIN)
    queue.enqueue_many([("t", i) for i in range(10)])
    calls = tmp_path / "calls.txt"
    process = subprocess.Popen([*CHILD_COMMAND, "run", "--batch-size", "10"],
                               env=_process_env(plugin_dir, url, calls, sleep=0.5),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: _calls(calls), what="the first plugin call")
        process.send_signal(signum)
        out, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert "Traceback" not in err and out == ""
    counts = queue.counts()
    called = len(_calls(calls))
    assert counts[Status.DONE] == called >= 1
    assert counts[Status.PENDING] == 10 - called
    assert counts[Status.IN_PROGRESS] == 0
    for item in queue.list(status=Status.PENDING):
        assert item.trials == 0 and item.lease_owner is None


SLOW_IMPORT_PLUGIN = """
    import os, time
    from queuecore import hookimpl

    # Importing takes a while (say, a heavy dependency): signal the test, then wait.
    open(os.environ["QC_TEST_CALLS"] + ".importing", "w").close()
    time.sleep(3)

    @hookimpl
    def process_item(item):
        with open(os.environ["QC_TEST_CALLS"], "a") as f:
            f.write(f"{os.getpid()} {item.id}\\n")
        return True
"""


@pytest.mark.slow
@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_signal_during_start_up_ends_run_cleanly(processes: str, plugin_dir, tmp_path: Path, url: str,
                                                    queue: Queue) -> None:
    plugin_dir.add("rec", SLOW_IMPORT_PLUGIN)
    queue.enqueue_many([("t", i) for i in range(5)])
    calls = tmp_path / "calls.txt"
    process = subprocess.Popen([*CHILD_COMMAND, "run", "--processes", processes],
                               env=_process_env(plugin_dir, url, calls, sleep=0),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: Path(f"{calls}.importing").exists(), what="the plugin import")
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    finally:
        process.kill()
    # Not killed by the signal (-15): it ends as a graceful stop does, and claims nothing.
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert _calls(calls) == []
    assert queue.counts()[Status.PENDING] == 5


@pytest.mark.slow
def test_processes_drain_the_queue_in_burst_mode(plugin_dir, tmp_path: Path, url: str,
                                                 queue: Queue) -> None:
    plugin_dir.add("rec", RECORDING_PLUGIN)
    queue.enqueue_many([("t", i) for i in range(60)])
    calls = tmp_path / "calls.txt"
    result = subprocess.run([*CHILD_COMMAND, "run", "--burst", "--processes", "2", "--batch-size", "5"],
                            env=_process_env(plugin_dir, url, calls, sleep=0.05),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert queue.counts()[Status.DONE] == 60
    recorded = _calls(calls)
    assert sorted(item for _, item in recorded) == list(range(1, 61))  # each item exactly once
    assert len({pid for pid, _ in recorded}) == 2  # both runners worked


@pytest.mark.slow
def test_supervisor_restarts_a_killed_runner_and_stops_all_on_sigterm(
    plugin_dir, tmp_path: Path, url: str, queue: Queue
) -> None:
    plugin_dir.add("rec", RECORDING_PLUGIN)
    queue.enqueue_many([("t", i) for i in range(40)])
    calls = tmp_path / "calls.txt"
    log_path = tmp_path / "supervisor.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [*CHILD_COMMAND, "-v", "run", "--processes", "2", "--batch-size", "2", "--lease", "1"],
            env=_process_env(plugin_dir, url, calls, sleep=0.05), stdout=subprocess.DEVNULL, stderr=log_file,
        )

    def started() -> list[int]:
        return [int(p) for p in re.findall(r"runner \d started \(pid (\d+)\)", log_path.read_text())]

    try:
        first = _wait_for(lambda: len(started()) == 2 and started(), what="two runners")
        _wait_for(lambda: {pid for pid, _ in _calls(calls)} >= {first[0]}, what="runner 1 at work")
        os.kill(first[0], signal.SIGKILL)
        _wait_for(lambda: len(started()) == 3, what="the killed runner's replacement")
        replacement = started()[2]
        assert replacement not in first
        # The killed runner's items come back once their 1 s lease runs out.
        _wait_for(lambda: queue.counts()[Status.DONE] == 40, what="the queue to drain")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        process.kill()
    log_text = log_path.read_text()
    assert "was killed by SIGKILL unexpectedly; restarting" in log_text
    assert "Traceback" not in log_text
    for pid in (first[1], replacement):  # every runner has stopped
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert {item for _, item in _calls(calls)} == set(range(1, 41))


def test_new_plugin_with_the_real_scaffold(tmp_path: Path, invoke: Callable[..., Result]) -> None:
    pytest.importorskip("queuecore.scaffold")
    result = ok(invoke("new-plugin", "slack", "--dir", str(tmp_path)))
    assert result.stdout == f"created {tmp_path / 'queuecore-slack'}\n"
    assert (tmp_path / "queuecore-slack" / "pyproject.toml").exists()
    assert_error(invoke("new-plugin", "slack", "--dir", str(tmp_path)), 1, "already exists")
    assert_error(invoke("new-plugin", "Not A Name", "--dir", str(tmp_path)), 2, "cannot be a plugin name")


def test_every_command_and_option_is_in_the_reference() -> None:
    text = (Path(__file__).parent.parent / "docs" / "reference" / "cli.md").read_text()
    headings = set(re.findall(r"^## (\S+)$", text, re.M))
    for name, command in cli.commands.items():
        assert name in headings, f"docs/reference/cli.md has no '## {name}' section"
        section = text.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("-") and opt not in ("-h", "--help"):
                    assert opt in section, f"{opt} of '{name}' is not documented in its section"
    for param in cli.params:
        for opt in param.opts:
            assert f"`{opt}" in text, f"global option {opt} is not documented"


def test_the_commands_on_every_backend(db_url: str, plugin_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    plugin_dir.add("okay", OK_PLUGIN)
    monkeypatch.setenv(PLUGINS_ENV_VAR, "okay")

    def run(*args: str, input: str | None = None) -> str:
        return ok(CliRunner().invoke(cli, ["--db", db_url, *args], input=input)).stdout

    run("init")
    lines = "".join(json.dumps({"type": t, "payload": {"n": i}}) + "\n" for i, t in enumerate(["a", "a", "a", "boom"]))
    ids = json.loads(run("enqueue", "--file", "-", "--json", input=lines))["ids"]
    run("run", "--burst", "--max-trials", "1", "--concurrency", "2")
    status = json.loads(run("status", "--json"))
    assert (status["done"], status["error"], status["oldest_due_age_seconds"]) == (3, 1, None)
    (failed,) = json.loads(run("list", "--status", "error", "--json"))
    assert failed["id"] == ids[3] and failed["errors"]["okay"] == "ValueError: boom went the plugin"
    assert json.loads(run("show", str(ids[3]), "--json"))["status"] == "error"
    assert run("retry", "--status", "error", "--reset") == "1 item back to pending (results reset)\n"
    assert run("purge", "--status", "done") == "purged 3 items\n"
    assert json.loads(run("status", "--json"))["pending"] == 1

"""Security: JSON only (nothing unpickled or evaluated), parameterised SQL,
plugins only from installed entry points, secrets kept out of output."""

from __future__ import annotations

import logging
import pickle
import re
import sqlite3
import textwrap
import threading
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

import queuecore
from queuecore import Queue, Runner, Status, hookimpl
from queuecore.cli import cli
from queuecore.storage import redact_url

PACKAGE = Path(queuecore.__file__).resolve().parent


@pytest.fixture
def q(tmp_path) -> Queue:
    queue = Queue(f"sqlite:///{tmp_path / 'queue.db'}")
    queue.init()
    return queue


class Seen:
    def __init__(self) -> None:
        self.payloads: list = []

    @hookimpl
    def process_item(self, item):
        self.payloads.append(item.payload)
        return True


# -- payloads cannot run code -------------------------------------------------


class _Boom:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_crafted_payloads_cannot_run_code(q, tmp_path):
    sentinel = tmp_path / "pwned"
    crafted = {
        "jsonpickle": {"py/reduce": [{"py/function": "builtins.open"}, {"py/tuple": [str(sentinel), "w"]}]},
        "yaml-tag": f"!!python/object/apply:builtins.open ['{sentinel}', 'w']",
        "eval-string": f"__import__('builtins').open('{sentinel}', 'w')",
        "dunder-keys": {"__class__": "os.system", "__reduce__": ["open", [str(sentinel), "w"]]},
    }
    ids = {name: q.enqueue("t", payload).id for name, payload in crafted.items()}
    # A pickle (and a base64/latin-1 text of one) written straight into the column.
    pickled = pickle.dumps(_Boom(str(sentinel)))
    assert b"open" in pickled
    raw_ids = q.enqueue_many([("t", None), ("t", None)])
    path = q.url.split("///", 1)[1]
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE queuecore_item SET payload = ? WHERE id = ?", (pickled, raw_ids[0]))
        conn.execute("UPDATE queuecore_item SET payload = ? WHERE id = ?", (pickled.decode("latin-1"), raw_ids[1]))

    seen = Seen()
    Runner(q, plugins={"seen": seen}, max_trials=1).run(burst=True)
    # Every way the data is read back: the runner, get, list, the CLI.
    for item in q.list(limit=100):
        q.get(item.id)
    for args in (["list", "--json"], ["show", str(raw_ids[0])], ["show", "--json", str(ids["jsonpickle"])]):
        CliRunner().invoke(cli, ["--db", q.url, *args])
    assert not sentinel.exists()
    # Crafted JSON reaches plugins as plain data, byte for byte.
    assert sorted(map(repr, seen.payloads)) == sorted(map(repr, crafted.values()))
    for item_id in raw_ids:
        item = q.get(item_id)
        assert item.status == Status.ERROR and "not valid JSON" in item.errors["queuecore"]


def test_the_package_never_unpickles_or_evaluates():
    """No module of the core imports a deserialiser that can run code, or calls eval/exec."""
    forbidden = re.compile(
        r"\b(import pickle|from pickle|cPickle|import marshal|import shelve|jsonpickle|yaml\.load|"
        r"yaml\.unsafe_load|dill|cloudpickle)\b|(?<![\w.])(eval|exec|compile)\("
    )
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if forbidden.search(code):
                hits.append(f"{path.name}:{number}: {line.strip()}")
    assert hits == []


# -- SQL injection ------------------------------------------------------------

HOSTILE = [
    "x' OR '1'='1",
    "'; DROP TABLE queuecore_item; --",
    '" OR 1=1 --',
    "t' UNION SELECT id, type, payload FROM queuecore_item --",
    "%s%s%s",
    "?",
    "\\'; DELETE FROM queuecore_item; --",
    "t) OR (1=1",
]


def _sql_injection_checks(q: Queue, url: str) -> None:
    ids = q.enqueue_many([("t", {"i": i}) for i in range(5)])
    q.enqueue_many([(value, {"hostile": True}) for value in HOSTILE])  # stored verbatim as types
    before = q.counts()
    for value in HOSTILE:
        found = q.list(type=value, limit=100)
        assert [item.type for item in found] == [value]
        assert q.list(type=[value, "nope"], limit=100)[0].type == value
        assert q.retry(status=Status.PENDING, type=value) == 1
        assert q.purge(Status.DONE, type=value) == 0
        assert q.purge(Status.ERROR, type=value, dry_run=True) == 0
        for args in (["list", "--type", value, "--json"], ["retry", "--status", "error", "--type", value],
                     ["purge", "--status", "done", "--type", value], ["list", "--status", value]):
            result = CliRunner().invoke(cli, ["--db", url, *args])
            assert "Traceback" not in result.output
    assert q.counts() == before
    assert [q.get(i).payload for i in ids] == [{"i": i} for i in range(5)]


def test_hostile_filter_values_cannot_inject_sql_sqlite(q):
    _sql_injection_checks(q, q.url)


def test_hostile_filter_values_cannot_inject_sql_postgres(postgres_url):
    q = Queue(postgres_url)
    _sql_injection_checks(q, postgres_url)
    q.close()


# -- which code loads as a plugin ---------------------------------------------


PLUGIN_SOURCE = """
    import pathlib
    pathlib.Path({marker!r}).write_text("imported")
    from queuecore import hookimpl

    @hookimpl
    def process_item(item):
        return True
"""


def test_only_selected_installed_entry_points_load(q, tmp_path, monkeypatch, plugin_dir):
    site = plugin_dir.root
    suffix = uuid.uuid4().hex[:6]
    wanted, unwanted, loose = (f"qc_sec_{n}_{suffix}" for n in ("wanted", "unwanted", "loose"))
    markers = {m: tmp_path / f"{m}.imported" for m in (wanted, unwanted, loose)}
    plugin_dir.install(
        "queuecore-secplugins", {"wanted": wanted, "unwanted": unwanted},
        {m: PLUGIN_SOURCE.format(marker=str(markers[m])) for m in (wanted, unwanted)},
    )
    # A module named like a plugin, importable, but not an entry point: never loaded.
    (site / f"queuecore_{loose}.py").write_text(textwrap.dedent(PLUGIN_SOURCE.format(marker=str(markers[loose]))))

    monkeypatch.setenv("QUEUECORE_PLUGINS", "wanted")
    runner = Runner(q)
    assert runner.plugin_set.names() == ["wanted"]
    assert markers[wanted].exists()
    assert not markers[unwanted].exists() and not markers[loose].exists()

    monkeypatch.setenv("QUEUECORE_PLUGINS", "")
    assert Runner(q).plugin_set.names() == []
    monkeypatch.setenv("QUEUECORE_PLUGINS", f"queuecore_{loose}")
    with pytest.raises(queuecore.PluginLoadError, match="not installed"):
        Runner(q)
    assert not markers[loose].exists()


# -- secrets ------------------------------------------------------------------

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app:{SECRET}@127.0.0.1:1/queue",
        f"postgresql://app:{SECRET.replace('-', '%40')}@127.0.0.1:1/queue",
        f"postgresql://app:{SECRET}@127.0.0.1:notaport/queue",
        f"mysql://app:{SECRET}@127.0.0.1:1/queue",
    ],
    ids=["refused", "percent-encoded", "bad-port", "mysql"],
)
def test_database_password_never_in_errors_logs_or_output(url, caplog):
    plain = SECRET.replace("-", "@")
    secrets = {SECRET, plain, SECRET.replace("-", "%40")}
    texts = [redact_url(url)]
    try:
        queue = Queue(url)
        texts.append(repr(queue))
        try:
            queue.counts()
        except Exception as exc:
            texts.append(str(exc))
        runner = Runner(queue, plugins={})
        with caplog.at_level(logging.DEBUG):
            timer = threading.Timer(1.2, runner.stop)
            timer.start()
            runner.run()
            timer.join()
        texts.append(caplog.text)
    except Exception as exc:  # a bad URL fails at Queue()
        texts.append(str(exc))
    for args in (["status"], ["list"], ["show", "1"], ["run", "--burst"], ["-vv", "status"]):
        result = CliRunner().invoke(cli, ["--db", url, *args], env={"QUEUECORE_PLUGINS": ""})
        texts.append(result.output)
        assert "Traceback" not in result.output
    joined = "\n".join(texts)
    for secret in secrets:
        assert secret not in joined


def test_password_in_url_query_is_redacted():
    url = f"postgresql://app@db.example/queue?sslmode=require&password={SECRET}"
    assert SECRET not in redact_url(url)

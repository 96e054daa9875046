"""Hostile and bad input: each case ends in a clear error or a failure recorded
on the item; nothing is lost and the runner goes on. docs/guarantees.md has
the table of these cases, each naming its test here.
"""

from __future__ import annotations

import json
import sqlite3
import sys

import pytest
from click.testing import CliRunner

from queuecore import InvalidItemError, PluginLoadError, Queue, Runner, Status, hookimpl
from queuecore.cli import cli


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'queue.db'}"


@pytest.fixture
def q(url) -> Queue:
    queue = Queue(url)
    queue.init()
    return queue


def total(q: Queue) -> int:
    return sum(q.counts().values())


class Done:
    """A plugin that is done with everything and remembers what it saw."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    @hookimpl
    def process_item(self, item):
        self.seen.append(item.id)
        return True


def cli_run(url: str, *args: str, input: str | None = None):
    return CliRunner().invoke(cli, ["--db", url, *args], input=input)


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    text = result.output
    assert "Traceback" not in text
    assert len(text.strip().splitlines()) <= 2, text
    for fragment in fragments:
        assert fragment in text, text


# -- enqueue: payloads ---------------------------------------------------------


def test_payload_over_the_size_limit_is_rejected(q):
    big = "x" * (1024 * 1024)
    with pytest.raises(InvalidItemError, match="limit is 1048576"):
        q.enqueue("t", big)
    small = Queue(q.url, max_payload_bytes=100)
    with pytest.raises(InvalidItemError, match="limit is 100"):
        small.enqueue("t", "y" * 100)
    small.enqueue("t", "y" * 98)  # 100 bytes with its quotes: at the limit is fine
    # Multi-byte text counts as UTF-8 bytes, not characters.
    with pytest.raises(InvalidItemError):
        small.enqueue("t", "é" * 50)
    assert total(q) == 1


def test_deeply_nested_payload_is_rejected(q):
    deep: object = 0
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(InvalidItemError, match="nested too deeply"):
        q.enqueue("t", deep)
    nested: object = {}
    for _ in range(200):  # ordinary nesting still works
        nested = {"a": nested}
    item = q.enqueue("t", nested)
    assert q.get(item.id).payload == nested
    assert total(q) == 1


@pytest.mark.parametrize(
    "payload",
    ["\ud800", {"k": "bad \udcff surrogate"}, {"\ud83d": 1}, b"bytes", bytearray(b"x"), {1, 2}, object(), {(1, 2): "x"}],
    ids=["lone-surrogate", "surrogate-in-dict", "surrogate-key", "bytes", "bytearray", "set", "object", "tuple-key"],
)
def test_payload_that_is_not_json_or_not_unicode_is_rejected(q, payload):
    with pytest.raises(InvalidItemError):
        q.enqueue("t", payload)
    assert total(q) == 0


@pytest.mark.parametrize("payload", ["a\x00b", {"k": ["\x00"]}, {"nul\x00key": 1}], ids=["string", "nested", "key"])
def test_payload_with_a_nul_character_is_rejected_on_every_backend(queue, payload):
    with pytest.raises(InvalidItemError, match="NUL character"):
        queue.enqueue("t", payload)
    assert total(queue) == 0
    # Escaped backslashes before "u0000" are ordinary text, not a NUL.
    for text in ("\\u0000", "\\\\u0000", "x\\u0000y"):
        assert queue.get(queue.enqueue("t", {"s": text}).id).payload == {"s": text}


def test_circular_payload_is_rejected_as_circular(q):
    loop: list = []
    loop.append(loop)
    looped = {"a": {"b": None}}
    looped["a"]["b"] = looped
    for payload in (loop, looped):
        with pytest.raises(InvalidItemError, match="Circular reference"):
            q.enqueue("t", payload)
    assert total(q) == 0


def test_payloads_are_stored_as_the_json_module_writes_them(q):
    payloads = [{"b": [1, 2.5, None, True, "ü\"\\"], "a": {}}, "text", 7, [], {1: "int key"}, {"big": 10**30}]
    ids = q.enqueue_many([("t", payload) for payload in payloads])
    for item_id, payload in zip(ids, payloads):
        assert q.get(item_id).payload == json.loads(json.dumps(payload))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_nan_and_infinity_are_rejected(q, value):
    for payload in (value, {"x": [1, value]}):
        with pytest.raises(InvalidItemError, match="not valid JSON"):
            q.enqueue("t", payload)
    assert total(q) == 0


@pytest.mark.parametrize(
    "type_",
    ["", "   ", "a\x00b", "new\nline", "tab\there", "\x1b[31mred", "bell\x07", "del\x7f", "x" * 201, "a\ud800", "\u2028sep",
     None, 42, b"bytes"],
    ids=["empty", "blank", "nul", "newline", "tab", "ansi-escape", "bell", "del", "too-long", "surrogate", "line-sep",
         "none", "int", "bytes"],
)
def test_bad_type_names_are_rejected(q, type_):
    with pytest.raises((InvalidItemError, TypeError)):
        q.enqueue(type_, {})
    with pytest.raises((InvalidItemError, TypeError)):
        q.enqueue_many([("ok", {}), (type_, {})])
    assert total(q) == 0  # enqueue_many is all or nothing


# -- rows corrupted in the database ------------------------------------------


def _corrupt_sqlite(q: Queue, column: str, item_id: int, value) -> None:
    path = q.url.split("///", 1)[1]
    with sqlite3.connect(path) as conn:
        conn.execute(f"UPDATE queuecore_item SET {column} = ? WHERE id = ?", (value, item_id))


DEEP_JSON = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    "garbage",
    ["{not json", "", b"\xff\xfe\x00not utf-8", "[1, 2", DEEP_JSON, "NaN]"],
    ids=["bad-json", "empty", "not-utf8-blob", "truncated", "nested-100000-deep", "junk"],
)
def test_row_with_corrupted_payload_goes_to_error_and_others_proceed(q, garbage):
    ids = q.enqueue_many([("t", {"i": i}) for i in range(5)])
    _corrupt_sqlite(q, "payload", ids[2], garbage)
    plugin = Done()
    runner = Runner(q, plugins={"p": plugin}, max_trials=3)
    summary = runner.run(burst=True)
    assert summary.claimed == 5
    assert plugin.seen == [i for i in ids if i != ids[2]]
    assert q.counts()[Status.DONE] == 4
    if garbage != DEEP_JSON:
        bad = q.get(ids[2])
        assert bad.status == Status.ERROR
        assert "payload" in bad.errors["queuecore"]
    else:  # reading that row back hits Python's recursion limit again: a clear error
        assert q.counts()[Status.ERROR] == 1
        with pytest.raises(InvalidItemError, match="nested too deeply"):
            q.get(ids[2])
        with pytest.raises(InvalidItemError, match="nested too deeply"):
            q.list()
        assert_one_line_error(cli_run(q.url, "show", str(ids[2])), "nested too deeply")
    assert runner.run(burst=True).claimed == 0  # it stays in error; no runner crash loop


def test_row_with_corrupted_results_is_reset_and_processed(q, caplog):
    ids = q.enqueue_many([("t", {}), ("t", {})])
    _corrupt_sqlite(q, "results", ids[0], "[1, 2")
    _corrupt_sqlite(q, "errors", ids[1], "[]")
    with caplog.at_level("WARNING", logger="queuecore.runner"):
        Runner(q, plugins={"p": Done()}).run(burst=True)
    assert q.counts()[Status.DONE] == 2
    assert all(q.get(i).results == {"p": True} for i in ids)
    # Done items carry no note of the reset; the log says which items were reset.
    reset = [r.getMessage() for r in caplog.records if "were reset" in r.getMessage()]
    assert sorted(reset) == sorted(
        f"item {i}: results/errors columns hold invalid JSON; they were reset, so every plugin is called again"
        for i in ids
    )


def test_deeply_nested_row_on_postgres_does_not_break_the_claim(postgres_url):
    """A jsonb payload nested 5,000 deep (PostgreSQL stores it; Python cannot
    decode it) fails its own item, not the whole claim of every runner."""
    import psycopg

    q = Queue(postgres_url)
    ids = q.enqueue_many([("t", {"i": i}) for i in range(3)])
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE queuecore_item SET payload = (repeat('[', 5000) || repeat(']', 5000))::jsonb WHERE id = %s",
            (ids[1],),
        )
    plugin = Done()
    summary = Runner(q, plugins={"p": plugin}).run(burst=True)
    assert summary.claimed == 3 and summary.done == 2 and summary.failed == 1
    assert plugin.seen == [ids[0], ids[2]]
    assert q.counts()[Status.ERROR] == 1
    with pytest.raises(InvalidItemError, match="nested too deeply"):
        q.get(ids[1])
    q.close()


# -- plugins that misbehave ---------------------------------------------------


class BadRepr:
    def __repr__(self):
        raise RuntimeError("repr bomb")


class BadStr(Exception):
    def __str__(self):
        raise RuntimeError("str bomb")


class CustomBase(BaseException):
    pass


GARBAGE = {
    "string": "yes",
    "one": 1,
    "zero": 0,
    "empty-list": [],
    "dict": {"ok": True},
    "huge-string": "z" * 1_000_000,
    "unprintable": BadRepr(),
}


@pytest.mark.parametrize("key", list(GARBAGE))
def test_plugin_returning_garbage_is_a_recorded_failure(q, key):
    ids = q.enqueue_many([("t", {"i": i}) for i in range(3)])

    class Garbage:
        @hookimpl
        def process_item(self, item):
            return GARBAGE[key] if item.id == ids[1] else True

    other = Done()
    Runner(q, plugins={"garbage": Garbage(), "other": other}, max_trials=1).run(burst=True)
    bad = q.get(ids[1])
    assert bad.status == Status.ERROR
    assert bad.errors["garbage"].startswith("plugin 'garbage' returned")
    assert len(bad.errors["garbage"]) < 400
    assert bad.results == {"garbage": False, "other": True}  # the other plugin still ran
    assert q.counts()[Status.DONE] == 2


def _raise_bad_str():
    raise BadStr("x")


RAISERS = {
    "sys.exit": (lambda: sys.exit(3), "SystemExit: 3"),
    "SystemExit-none": (lambda: sys.exit(), "SystemExit"),
    "GeneratorExit": (lambda: (_ for _ in ()).throw(GeneratorExit("gen")), "GeneratorExit: gen"),
    "custom-BaseException": (lambda: (_ for _ in ()).throw(CustomBase("base")), "CustomBase: base"),
    "unprintable-exception": (_raise_bad_str, "BadStr: <unprintable BadStr>"),
    "RecursionError": (lambda: (_ for _ in ()).throw(RecursionError("deep")), "RecursionError: deep"),
    "MemoryError": (lambda: (_ for _ in ()).throw(MemoryError("oom")), "MemoryError: oom"),
}


@pytest.mark.parametrize("key", list(RAISERS))
def test_plugin_raising_base_exceptions_is_a_recorded_failure(q, key):
    raise_it, expected = RAISERS[key]
    ids = q.enqueue_many([("t", {"i": i}) for i in range(3)])

    class Raiser:
        @hookimpl
        def process_item(self, item):
            if item.id == ids[0]:
                raise_it()
            return True

    Runner(q, plugins={"raiser": Raiser()}, max_trials=1).run(burst=True)
    bad = q.get(ids[0])
    assert bad.status == Status.ERROR
    assert bad.errors["raiser"] == expected
    assert q.counts()[Status.DONE] == 2


def test_exception_text_no_database_can_store_is_recorded_escaped(queue):
    # NUL (refused by PostgreSQL's jsonb) and a lone surrogate (not UTF-8) in a
    # plugin's exception used to fail the write-back and stop the runner.
    messages = {"nul": "a\x00b", "surrogate": "lone \ud800 half", "both": "\x00\udfff ünï"}
    ids = dict(zip(messages, queue.enqueue_many([("t", {"m": key}) for key in messages] + [("t", {"m": "fine"})])))

    class Raiser:
        @hookimpl
        def process_item(self, item):
            if item.payload["m"] in messages:
                raise ValueError(messages[item.payload["m"]])
            return True

    summary = Runner(queue, plugins={"raiser": Raiser()}, max_trials=1).run(burst=True)
    assert (summary.failed, summary.done) == (3, 1)
    assert queue.get(ids["nul"]).errors["raiser"] == "ValueError: a\\x00b"
    assert queue.get(ids["surrogate"]).errors["raiser"] == "ValueError: lone \\ud800 half"
    assert queue.get(ids["both"]).errors["raiser"] == "ValueError: \\x00\\udfff ünï"


def test_plugin_raising_keyboard_interrupt_stops_the_runner_cleanly(q):
    ids = q.enqueue_many([("t", {"i": i}) for i in range(4)])

    class CtrlC:
        @hookimpl
        def process_item(self, item):
            if item.id == ids[1]:
                raise KeyboardInterrupt
            return True

    summary = Runner(q, plugins={"ctrlc": CtrlC()}).run(burst=True)
    assert summary.done == 1
    assert q.counts()[Status.IN_PROGRESS] == 0
    interrupted = q.get(ids[1])
    # The plugin's own call failed (a try); the rest of the batch is released untried.
    assert interrupted.status == Status.NEED_RETRY and interrupted.errors["ctrlc"] == "KeyboardInterrupt"
    for item_id in ids[2:]:
        item = q.get(item_id)
        assert item.status == Status.PENDING and item.trials == 0  # released, no try counted
    Runner(q, plugins={"ctrlc": Done()}, retry_delay=0).run(burst=True)
    assert q.counts()[Status.DONE] == 3


def test_plugin_cannot_persist_anything_but_its_answer(q):
    (item_id,) = q.enqueue_many([("t", {"keep": 1})])

    class Meddler:
        @hookimpl
        def process_item(self, item, results):
            item.payload["keep"] = 2
            for target in (results, item.errors):
                try:
                    target["forged"] = True
                except TypeError:
                    pass
            return True

    Runner(q, plugins={"meddler": Meddler()}).run(burst=True)
    item = q.get(item_id)
    assert item.payload == {"keep": 1}
    assert item.results == {"meddler": True}
    assert item.errors == {}


@pytest.mark.parametrize(
    "source",
    ["import not_a_module_anywhere\n", "raise SystemExit('no')\n", "1/0\n", "def broken(:\n"],
    ids=["ImportError", "SystemExit", "ZeroDivisionError", "SyntaxError"],
)
def test_plugin_that_fails_to_import_is_a_clear_error(q, plugin_dir, monkeypatch, source):
    plugin_dir.add("brokenthing", source, distribution="queuecore-brokenthing")
    monkeypatch.setenv("QUEUECORE_PLUGINS", "brokenthing")
    with pytest.raises(PluginLoadError) as info:
        Runner(q)
    message = str(info.value)
    assert "'brokenthing'" in message and "queuecore-brokenthing" in message
    assert "\n" not in message
    # The way out: leave it out.
    monkeypatch.setenv("QUEUECORE_PLUGINS", "")
    Runner(q)
    # The CLI refuses to run without it, in one line.
    monkeypatch.setenv("QUEUECORE_PLUGINS", "brokenthing")
    assert_one_line_error(cli_run(q.url, "run", "--burst"), "brokenthing")


# -- the command line ----------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    ["{bad", "{'single': 1}", "NaN", "[Infinity]", "-Infinity", "", "[1,]", "\x00", "[" * 100_000],
    ids=["bad-json", "single-quotes", "nan", "infinity", "-infinity", "empty", "trailing-comma", "nul", "deep"],
)
def test_cli_enqueue_malformed_json_is_one_line_error(q, payload):
    result = cli_run(q.url, "enqueue", "t", "--", payload)
    assert_one_line_error(result, "JSON" if payload != "[" * 100_000 else "nested")
    assert result.exit_code == 2
    assert total(q) == 0


@pytest.mark.parametrize(
    "type_, payload, fragment",
    [("a\x1b[2Jb", "{}", "control character"), ("x" * 201, "{}", "limit"), ("", "{}", "empty"),
     ("t", json.dumps("x" * (1024 * 1024)), "limit")],
    ids=["control-character", "too-long-type", "empty-type", "huge-payload"],
)
def test_cli_enqueue_bad_items_are_one_line_errors(q, type_, payload, fragment):
    result = cli_run(q.url, "enqueue", type_, payload)
    assert_one_line_error(result, fragment)
    assert total(q) == 0


def test_cli_enqueue_file_with_a_bad_line_writes_nothing(q, tmp_path):
    lines = tmp_path / "items.jsonl"
    lines.write_text('{"type": "t", "payload": {}}\n{"type": "t", "payload": NaN}\n')
    assert_one_line_error(cli_run(q.url, "enqueue", "--file", str(lines)))
    lines.write_bytes(b'{"type": "t", "payload": "\xff\xfe"}\n')
    assert_one_line_error(cli_run(q.url, "enqueue", "--file", str(lines)))
    assert total(q) == 0


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["show", "999999"], "999999"),
        (["show", "abc"], "abc"),
        (["show", "--", "-1"], "-1"),
        (["show", "99999999999999999999999"], "99999999999999999999999"),
        (["retry", "999999"], "999999"),
        (["list", "--status", "bogus"], "bogus"),
        (["list", "--status", "done' OR 1=1 --"], "done' OR 1=1"),
        (["retry", "--status", "in_progress"], "in_progress"),
        (["purge", "--status", "pending"], "pending"),
        (["purge", "--status", "done", "--older-than", "forever"], "forever"),
        (["list", "--limit", "0"], "0"),
    ],
    ids=["unknown-id", "non-integer-id", "negative-id", "huge-id", "retry-unknown-id", "unknown-status",
         "hostile-status", "retry-in-progress", "purge-pending", "bad-duration", "zero-limit"],
)
def test_cli_unknown_ids_and_statuses_are_one_line_errors(q, args, fragment):
    q.enqueue("t", {})
    result = cli_run(q.url, *args)
    assert_one_line_error(result, fragment)
    assert q.counts()[Status.PENDING] == 1


@pytest.mark.parametrize("bad_id", [2**63, -(2**63) - 1, 2**70, True, "1", 1.0])
def test_out_of_range_and_non_integer_ids_are_clear_errors(q, bad_id):
    q.enqueue("t", {})
    for call in (lambda: q.get(bad_id), lambda: q.retry([bad_id]), lambda: q.list(before_id=bad_id)):
        with pytest.raises(InvalidItemError):
            call()

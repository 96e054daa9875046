import json
import threading

import pytest
import queuecore_jsonl

from queuecore import Status


@pytest.fixture
def harness(queuecore_harness, monkeypatch):
    monkeypatch.delenv("QUEUECORE_JSONL_PATH", raising=False)
    monkeypatch.delenv("QUEUECORE_JSONL_TYPES", raising=False)
    queuecore_harness.register("jsonl", queuecore_jsonl)
    return queuecore_harness


def read_lines(path):
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def test_appends_item_to_payload_path(harness, tmp_path):
    out = tmp_path / "out.jsonl"
    [item] = harness.run_items(("jsonl", {"path": str(out), "event": "signup", "name": "Zoë"}))
    assert item.status is Status.DONE
    assert item.results == {"jsonl": True}
    [line] = read_lines(out)
    assert line["id"] == item.id
    assert line["type"] == "jsonl"
    assert line["payload"]["name"] == "Zoë"
    assert line["created"].endswith("Z")


def test_env_var_names_the_file(harness, tmp_path, monkeypatch):
    out = tmp_path / "env.jsonl"
    monkeypatch.setenv("QUEUECORE_JSONL_PATH", str(out))
    items = harness.run_items(("jsonl", [1, 2]), ("jsonl", "text"), ("jsonl", None))
    assert [i.status for i in items] == [Status.DONE] * 3
    assert [line["payload"] for line in read_lines(out)] == [[1, 2], "text", None]


def test_other_types_are_not_ours(harness):
    [item] = harness.run_items(("webhook", {"url": "http://x"}))
    assert item.results == {}
    assert "no plugin accepted" in item.errors["queuecore"]


def test_extra_types_are_recorded(harness, tmp_path, monkeypatch):
    out = tmp_path / "audit.jsonl"
    monkeypatch.setenv("QUEUECORE_JSONL_PATH", str(out))
    monkeypatch.setenv("QUEUECORE_JSONL_TYPES", "webhook, mail")
    [item] = harness.run_items(("mail", {"path": "/ignored/for/other/types", "to": "a@b"}))
    assert item.status is Status.DONE
    assert read_lines(out)[0]["type"] == "mail"


def test_no_path_fails_then_succeeds_once_configured(harness, tmp_path, monkeypatch):
    item = harness.enqueue("jsonl", {"x": 1})
    [item] = harness.run_items(item)
    assert item.status is Status.NEED_RETRY
    assert "QUEUECORE_JSONL_PATH" in item.errors["jsonl"]
    monkeypatch.setenv("QUEUECORE_JSONL_PATH", str(tmp_path / "late.jsonl"))
    [item] = harness.run_items(item)
    assert item.status is Status.DONE
    assert item.trials == 1
    assert "jsonl" not in item.errors


def test_missing_directory_is_retried(harness, tmp_path):
    [item] = harness.run_items(("jsonl", {"path": str(tmp_path / "nope" / "out.jsonl")}))
    assert item.status is Status.NEED_RETRY
    assert "directory does not exist" in item.errors["jsonl"]


def test_bad_path_in_payload_is_permanent(harness):
    [item] = harness.run_items(("jsonl", {"path": 42}))
    assert item.status is Status.ERROR
    assert item.errors["jsonl"].startswith("PermanentError: payload 'path' must be")


def test_concurrent_appends_keep_lines_whole(harness, tmp_path):
    out = tmp_path / "many.jsonl"
    big = "x" * 10_000
    items = [("jsonl", {"path": str(out), "n": n, "pad": big}) for n in range(40)]
    done = harness.run_items(*items, concurrency=8)
    assert all(i.status is Status.DONE for i in done)
    assert sorted(line["payload"]["n"] for line in read_lines(out)) == list(range(40))


def test_installed_entry_point(queuecore_harness, tmp_path):
    plugin = queuecore_harness.register_entry_point("jsonl")
    assert plugin is queuecore_jsonl
    [item] = queuecore_harness.run_items(("jsonl", {"path": str(tmp_path / "ep.jsonl")}))
    assert item.status is Status.DONE

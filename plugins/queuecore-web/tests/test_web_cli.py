"""`queuecore web`: added through register_commands; options, defaults and errors."""

from __future__ import annotations

import importlib.metadata
import types

import click
import pytest
from click.testing import CliRunner

import queuecore_web
from queuecore_web import cli as web_cli


def _root(url: str | None):
    """A root group like the core's: its context object carries ``.url``."""

    @click.group()
    @click.pass_context
    def root(ctx):
        ctx.obj = types.SimpleNamespace(url=url)

    queuecore_web.register_commands(root)
    return root


@pytest.fixture
def served(monkeypatch):
    calls = []
    monkeypatch.setattr(web_cli, "serve", lambda app, host, port: calls.append((app, host, port)))
    monkeypatch.delenv("QUEUECORE_WEB_AUTH", raising=False)
    return calls


def test_entry_point_names_the_module():
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group="queuecore")}
    assert eps["web"].value == "queuecore_web"
    assert eps["web"].load() is queuecore_web


def test_importing_the_plugin_does_not_load_the_web_stack():
    """The runner loads every queuecore plugin: this one must stay cheap to import."""
    import subprocess
    import sys

    code = "import sys, queuecore_web; print(any(m.startswith(('starlette', 'uvicorn', 'jinja2')) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_defaults_bind_loopback(tmp_path, served):
    result = CliRunner().invoke(_root(f"sqlite:///{tmp_path / 'q.db'}"), ["web"])
    assert result.exit_code == 0, result.output
    (app, host, port), = served
    assert (host, port) == ("127.0.0.1", 8080)
    dash = app.state.dashboard
    assert dash.read_only is False
    assert "127.0.0.1:8080" in result.output and "warning" not in result.output
    assert (tmp_path / "q.db").exists()  # the schema was created


def test_options(tmp_path, served):
    result = CliRunner().invoke(
        _root(f"sqlite:///{tmp_path / 'q.db'}"),
        ["web", "--host", "0.0.0.0", "--port", "9999", "--read-only", "--auth", "ops:pw", "--failure-scan", "50"],
    )
    assert result.exit_code == 0, result.output
    (app, host, port), = served
    assert (host, port) == ("0.0.0.0", 9999)
    assert app.state.dashboard.read_only is True and app.state.dashboard.failure_scan == 50
    assert "(read-only)" in result.output and "(basic auth)" in result.output
    assert "warning" not in result.output


def test_auth_from_the_environment(tmp_path, served, monkeypatch):
    monkeypatch.setenv("QUEUECORE_WEB_AUTH", "ops:from-env")
    result = CliRunner().invoke(_root(f"sqlite:///{tmp_path / 'q.db'}"), ["web"])
    assert result.exit_code == 0, result.output
    assert "(basic auth)" in result.output


def test_wide_bind_without_auth_warns(tmp_path, served):
    result = CliRunner().invoke(_root(f"sqlite:///{tmp_path / 'q.db'}"), ["web", "--host", "0.0.0.0"])
    assert result.exit_code == 0
    assert "warning: serving on 0.0.0.0 without --auth" in result.output


def test_url_from_the_environment_when_root_has_none(tmp_path, served, monkeypatch):
    monkeypatch.setenv("QUEUECORE_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    result = CliRunner().invoke(_root(None), ["web"])
    assert result.exit_code == 0, result.output
    assert "env.db" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--auth", "nopassword"], "user:password"),
        (["--auth", ":pw"], "user:password"),
        (["--port", "70000"], "70000"),
    ],
)
def test_usage_errors(tmp_path, served, args, message):
    result = CliRunner().invoke(_root(f"sqlite:///{tmp_path / 'q.db'}"), ["web", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not served


@pytest.mark.parametrize("url", ["sqlite:////no/such/folder/q.db", "nonsense://x", "notaurl"])
def test_bad_database_is_one_line(served, url):
    result = CliRunner().invoke(_root(url), ["web"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert not served


def test_serve_runs_uvicorn_until_stopped(tmp_path):
    """The real thing: `web` in a subprocess answers HTTP on the port it was given."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"sqlite:///{tmp_path / 'q.db'}"
    code = (
        "import click, types, queuecore_web\n"
        "@click.group()\n@click.pass_context\n"
        f"def root(ctx): ctx.obj = types.SimpleNamespace(url={url!r})\n"
        "queuecore_web.register_commands(root)\nroot()\n"
    )
    env = {**os.environ, "QUEUECORE_WEB_AUTH": "a:b"}
    proc = subprocess.Popen([sys.executable, "-c", code, "web", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/overview", auth=("a", "b"), timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(proc.communicate(timeout=5)) from None
                time.sleep(0.1)
        assert r.status_code == 200 and r.json()["total"] == 0
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 401
    finally:
        proc.terminate()
        proc.wait(10)


def test_through_the_core_cli(tmp_path, served, monkeypatch):
    """`queuecore --db URL web` as an operator types it: the core loads the plugin and hands over --db."""
    core_cli = pytest.importorskip("queuecore.cli")
    monkeypatch.delenv("QUEUECORE_PLUGINS", raising=False)
    url = f"sqlite:///{tmp_path / 'core.db'}"
    result = CliRunner().invoke(core_cli.cli, ["--db", url, "web", "--read-only", "--port", "8181"])
    if result.exit_code == 2 and "No such command" in result.output:
        pytest.skip("this core's CLI does not load plugin commands yet")
    assert result.exit_code == 0, result.output
    (app, host, port), = served
    assert (host, port) == ("127.0.0.1", 8181)
    assert app.state.dashboard.queue.url == url
    assert app.state.dashboard.read_only is True

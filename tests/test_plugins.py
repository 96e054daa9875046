"""Plugin loading: entry points, QUEUECORE_PLUGINS, and the errors that name the culprit.

Each test installs real distributions for the import system to find: a
``*.dist-info`` folder with an ``entry_points.txt`` and a module, on sys.path.
"""

from __future__ import annotations


import pytest

from queuecore import PluginLoadError, Queue, Runner, Status
from queuecore.plugins import PluginSet

GOOD_PLUGIN = """
from queuecore import hookimpl

@hookimpl
def process_item(item):
    return True
"""


@pytest.fixture
def site(plugin_dir, monkeypatch):
    """Install a distribution with one entry point, as (dist, entry name, module, source)."""
    monkeypatch.delenv("QUEUECORE_PLUGINS", raising=False)

    def install(dist: str, entry_name: str, module: str, source: str, version: str = "1.2.3") -> None:
        plugin_dir.install(dist, {entry_name: module}, {module: source}, version)

    return install


def test_entry_points_load_under_their_names(site, tmp_path):
    site("queuecore-alpha", "alpha", "qc_alpha_mod", GOOD_PLUGIN)
    site("queuecore-beta", "beta", "qc_beta_mod", GOOD_PLUGIN, version="0.9")
    queue = Queue(f"sqlite:///{tmp_path}/q.db")
    item = queue.enqueue("t", 1)
    runner = Runner(queue)
    assert {"alpha", "beta"} <= set(runner.plugin_set.names())
    runner.run(burst=True)
    got = queue.get(item.id)
    assert got.status is Status.DONE
    assert got.results["alpha"] is True and got.results["beta"] is True
    info = {p.name: p for p in runner.plugin_set.describe()}
    assert (info["beta"].distribution, info["beta"].version, info["beta"].hooks) == (
        "queuecore-beta",
        "0.9",
        ("process_item",),
    )


def test_a_plugin_that_fails_to_import_names_itself_and_its_distribution(site):
    site("queuecore-broken", "broken", "qc_broken_mod", "import no_such_module_anywhere\n")
    with pytest.raises(PluginLoadError) as caught:
        PluginSet().load_entry_points()
    message = str(caught.value)
    assert "'broken'" in message and "queuecore-broken" in message
    assert "ModuleNotFoundError" in message and "QUEUECORE_PLUGINS" in message


def test_a_plugin_calling_sys_exit_at_import_is_a_load_error(site):
    site("queuecore-exits", "exits", "qc_exits_mod", "import sys\nsys.exit(3)\n")
    with pytest.raises(PluginLoadError, match="'exits'.*SystemExit"):
        PluginSet().load_entry_points()


def test_the_runner_does_not_start_without_a_broken_plugin(site, tmp_path):
    site("queuecore-broken", "broken", "qc_broken_mod2", "raise RuntimeError('no config')\n")
    queue = Queue(f"sqlite:///{tmp_path}/q.db")
    queue.enqueue("t", 1)
    with pytest.raises(PluginLoadError, match="no config"):
        Runner(queue)
    assert queue.counts()[Status.PENDING] == 1


def test_queuecore_plugins_selects_entry_points(site, monkeypatch):
    site("queuecore-one", "one", "qc_one_mod", GOOD_PLUGIN)
    site("queuecore-two", "two", "qc_two_mod", "raise ImportError('two is broken')\n")
    monkeypatch.setenv("QUEUECORE_PLUGINS", "one")
    plugins = PluginSet()
    plugins.load_entry_points()
    assert plugins.names() == ["one"]  # "two" was never imported

    monkeypatch.setenv("QUEUECORE_PLUGINS", "")
    none = PluginSet()
    none.load_entry_points()
    assert none.names() == []

    monkeypatch.setenv("QUEUECORE_PLUGINS", "one, missing")
    with pytest.raises(PluginLoadError, match="not installed: missing"):
        PluginSet().load_entry_points()


def test_a_misspelled_hook_name_fails_at_start(site, tmp_path, monkeypatch):
    site(
        "queuecore-typo",
        "typo",
        "qc_typo_mod",
        "from queuecore import hookimpl\n\n@hookimpl\ndef proces_item(item):\n    return True\n",
    )
    monkeypatch.setenv("QUEUECORE_PLUGINS", "typo")
    with pytest.raises(PluginLoadError, match="typo.*proces_item"):
        Runner(Queue(f"sqlite:///{tmp_path}/q.db"))


def test_a_misspelled_argument_fails_at_registration(tmp_path):
    from queuecore import hookimpl

    class Bad:
        @hookimpl
        def process_item(self, itme):
            return True

    with pytest.raises(PluginLoadError, match="'bad'.*itme"):
        Runner(Queue(f"sqlite:///{tmp_path}/q.db"), plugins={"bad": Bad()})


def test_explicit_plugins_load_no_entry_points(site, tmp_path):
    site("queuecore-broken", "broken", "qc_broken_mod3", "raise RuntimeError('must not load')\n")
    runner = Runner(Queue(f"sqlite:///{tmp_path}/q.db"), plugins={})
    assert runner.plugin_set.names() == []


def test_the_runners_own_name_is_reserved(tmp_path):
    with pytest.raises(PluginLoadError, match="reserved"):
        Runner(Queue(f"sqlite:///{tmp_path}/q.db"), plugins={"queuecore": object()})


def test_wrappers_cannot_implement_process_item(tmp_path):
    from queuecore import hookimpl

    class Wrapper:
        @hookimpl(wrapper=True)
        def process_item(self, item):
            return (yield)

    with pytest.raises(PluginLoadError, match="wrapper"):
        Runner(Queue(f"sqlite:///{tmp_path}/q.db"), plugins={"w": Wrapper()})

"""queuecore.scaffold: `queuecore new-plugin` writes an installable plugin that passes its tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from queuecore.errors import ConfigurationError
from queuecore.scaffold import create_plugin, plugin_names

ROOT = Path(__file__).resolve().parents[1]

pytest_plugins = ["pytester"]


def test_writes_a_complete_distribution(tmp_path):
    root = create_plugin("slack", tmp_path)
    assert root == tmp_path / "queuecore-slack"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == [
        ".gitignore",
        "README.md",
        "pyproject.toml",
        "queuecore_slack/__init__.py",
        "tests/test_queuecore_slack.py",
    ]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["name"] == "queuecore-slack"
    assert project["entry-points"]["queuecore"] == {"slack": "queuecore_slack"}
    assert project["dependencies"][0].startswith("queuecore")
    assert "pytest>=8" in project["optional-dependencies"]["test"]
    source = (root / "queuecore_slack" / "__init__.py").read_text()
    compile(source, "__init__.py", "exec")
    assert "@hookimpl\ndef process_item(item: Item) -> bool | None:" in source
    assert 'ITEM_TYPE = "slack"' in source
    assert "queuecore_harness" in (root / "tests" / "test_queuecore_slack.py").read_text()
    assert "pip install queuecore-slack" in (root / "README.md").read_text()


@pytest.mark.parametrize(
    "given, name, dist, package",
    [
        ("slack", "slack", "queuecore-slack", "queuecore_slack"),
        ("s3-archive", "s3-archive", "queuecore-s3-archive", "queuecore_s3_archive"),
        ("queuecore-sms", "sms", "queuecore-sms", "queuecore_sms"),
        ("  matrix ", "matrix", "queuecore-matrix", "queuecore_matrix"),
    ],
)
def test_names(given, name, dist, package):
    assert plugin_names(given) == {"name": name, "dist": dist, "package": package}


@pytest.mark.parametrize("bad", ["", "Slack", "1password", "a b", "a--b", "-x", "x-", "../evil", "queuecore", "café"])
def test_bad_names_are_refused(bad, tmp_path):
    with pytest.raises(ConfigurationError, match="cannot be a plugin name"):
        create_plugin(bad, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_never_overwrites(tmp_path):
    (tmp_path / "queuecore-slack").mkdir()
    (tmp_path / "queuecore-slack" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        create_plugin("slack", tmp_path)
    assert [p.name for p in (tmp_path / "queuecore-slack").iterdir()] == ["keep.txt"]


def test_creates_missing_directories(tmp_path):
    assert create_plugin("deep", tmp_path / "a" / "b").is_dir()


def test_generated_tests_pass_from_the_source_tree(tmp_path, pytester):
    root = create_plugin("hello-world", tmp_path)
    pytester.syspathinsert(root)
    # The entry-point test needs the distribution installed: the venv test does that.
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-k", "not entry_point", str(root / "tests"))
    result.assert_outcomes(passed=3, deselected=1)


def test_new_plugin_command(tmp_path):
    click_testing = pytest.importorskip("click.testing")
    from queuecore import cli

    if "new-plugin" not in cli.cli.commands:
        pytest.skip("the CLI has no new-plugin command")
    runner = click_testing.CliRunner()
    result = runner.invoke(cli.cli, ["new-plugin", "sms", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "queuecore-sms" / "queuecore_sms" / "__init__.py").is_file()
    assert str(tmp_path / "queuecore-sms") in result.output
    again = runner.invoke(cli.cli, ["new-plugin", "sms", "--dir", str(tmp_path)])
    assert again.exit_code == 1 and "already exists" in again.output
    bad = runner.invoke(cli.cli, ["new-plugin", "Bad Name", "--dir", str(tmp_path)])
    assert bad.exit_code == 2 and "cannot be a plugin name" in bad.output


NETWORK_FAILURES = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable",
                    "No matching distribution found for setuptools")


@pytest.mark.slow
def test_generated_plugin_installs_into_a_fresh_venv_and_passes(tmp_path):
    """The whole author's path: generate, pip install with the core into an
    empty virtual environment, find it through its entry point, run its tests."""
    root = create_plugin("greeter", tmp_path / "src")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # The outer pip installs into the new environment (pip --python), which
    # spares bootstrapping pip there. Build isolation fetches setuptools from
    # the package index (or pip's cache): the core's build needs a newer one
    # than Python bundles.
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--disable-pip-version-check",
         str(ROOT), f"{root}[test]"],
        capture_output=True, text=True, timeout=600,
    )
    if install.returncode != 0 and any(s in install.stderr for s in NETWORK_FAILURES):
        pytest.skip(f"no package index reachable to build the core: {install.stderr.strip().splitlines()[-1]}")
    assert install.returncode == 0, install.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUEUECORE_", "PYTHON"))}
    tests = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "4 passed" in tests.stdout
    # Installed from a wheel, not run from the source folder.
    where = subprocess.run([str(python), "-c", "import queuecore_greeter; print(queuecore_greeter.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert str(venv) in where.stdout
    cli = venv / "bin" / "queuecore"
    listed = subprocess.run([str(cli), "plugins", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True)
    if listed.returncode == 0 and listed.stdout.strip().startswith("["):
        assert {"name": "greeter", "distribution": "queuecore-greeter"}.items() <= json.loads(listed.stdout)[0].items()

"""Writing a new plugin distribution from a template (``queuecore new-plugin``)."""

from __future__ import annotations

import keyword
import re
import string
from pathlib import Path

from .errors import ConfigurationError
from .plugins import RESERVED_NAME

__all__ = ["create_plugin", "plugin_names"]

# A name that works as entry-point name, item type, distribution suffix and,
# with "-" as "_", a Python package suffix.
_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")


def plugin_names(name: str) -> dict[str, str]:
    """The names derived from a plugin's name: ``name`` (entry point and item
    type), ``dist`` (``queuecore-<name>``) and ``package`` (``queuecore_<name>``).

    Raises :class:`ConfigurationError` (a ``ValueError``) for a name that cannot be one.
    """
    raw = name
    name = name.strip()
    for prefix in ("queuecore-", "queuecore_"):
        if name.lower().startswith(prefix):
            name = name[len(prefix):]
    if not _NAME.match(name):
        raise ConfigurationError(
            f"{raw!r} cannot be a plugin name: use lowercase letters, digits and single hyphens, "
            "starting with a letter (e.g. 'slack' or 's3-archive')"
        )
    if name == RESERVED_NAME:
        raise ConfigurationError(f"{raw!r} cannot be a plugin name: it is reserved for the runner's own errors")
    package = "queuecore_" + name.replace("-", "_")
    if keyword.iskeyword(package):  # cannot happen with the prefix, but cheap to be sure
        raise ConfigurationError(f"{raw!r} cannot be a plugin name")
    return {"name": name, "dist": "queuecore-" + name.replace("_", "-"), "package": package}


def create_plugin(name: str, directory: Path) -> Path:
    """Write a complete, installable plugin distribution for ``name`` in ``directory``.

    Creates ``directory/queuecore-<name>/`` with ``pyproject.toml`` (the
    ``queuecore`` entry point and a ``test`` extra), ``README.md``, the package
    ``queuecore_<name>/`` with a documented ``process_item`` for items of type
    ``<name>``, and ``tests/`` with a passing test that uses
    :mod:`queuecore.testing`. Returns the new folder.

    :raises ConfigurationError: ``name`` cannot be a plugin name (a ``ValueError``).
    :raises FileExistsError: the folder already exists; nothing is overwritten.
    """
    names = plugin_names(name)
    directory = Path(directory)
    root = directory / names["dist"]
    if root.exists():
        raise FileExistsError(f"{root} already exists; choose another name or --dir")
    values = {**names, "core_version": _core_requirement()}
    files = {
        "pyproject.toml": _PYPROJECT,
        "README.md": _README,
        ".gitignore": _GITIGNORE,
        f"{names['package']}/__init__.py": _PACKAGE,
        f"tests/test_{names['package']}.py": _TEST,
    }
    root.mkdir(parents=True)
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(string.Template(template).substitute(values), encoding="utf-8")
    return root


def _core_requirement() -> str:
    try:
        from importlib.metadata import version

        major, minor = version("queuecore").split(".")[:2]
        return f"queuecore>={major}.{minor}"
    except Exception:  # running from a source tree without metadata
        return "queuecore"


_PYPROJECT = '''\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "queuecore plugin: processes items of type '$name'"
readme = "README.md"
requires-python = ">=3.10"
# Add the libraries your plugin imports here: an undeclared one works on your
# machine and fails for everyone who pip installs the plugin.
dependencies = ["$core_version"]

[project.optional-dependencies]
test = ["pytest>=8"]

# This is how queuecore finds the plugin: the name on the left is its key in
# an item's results, and what QUEUECORE_PLUGINS selects.
[project.entry-points.queuecore]
$name = "$package"

[tool.setuptools]
packages = ["$package"]
'''

_PACKAGE = '''\
"""$dist: a queuecore plugin for items of type ``$name``.

Enqueue work for it with::

    from queuecore import Queue
    Queue().enqueue("$name", {"message": "hello"})
"""

from __future__ import annotations

import logging

from queuecore import Item, PermanentError, hookimpl

__version__ = "0.1.0"

log = logging.getLogger(__name__)

ITEM_TYPE = "$name"


@hookimpl
def process_item(item: Item) -> bool | None:
    """Do this plugin's work on one item.

    The runner calls this for every item it claims, whatever its type, until
    this plugin has returned True for it.

    :param item: the item: ``item.id``, ``item.type``, ``item.payload`` (decoded
        JSON), ``item.trials`` (earlier failed tries). Add a ``results``
        parameter to also see the other plugins' answers.
    :returns: ``True`` when done with the item; ``False`` to be called again
        after a backoff; ``None`` when the item is not this plugin's business.

    Raise an exception to fail this try with its message recorded on the
    item (it is retried); raise :class:`queuecore.PermanentError` when retrying
    cannot help, and :class:`queuecore.Retry` with ``after=seconds`` to be
    retried no sooner than that. A call may be repeated if the runner dies
    before recording the outcome: make the work safe to do twice, for
    example by de-duplicating on ``item.id``.
    """
    if item.type != ITEM_TYPE:
        return None
    payload = item.payload
    if not isinstance(payload, dict) or not isinstance(payload.get("message"), str):
        raise PermanentError("the payload must be an object with a 'message' string")
    # Replace this with the real work: call an API, write a file, send a message.
    log.info("item %d: %s", item.id, payload["message"])
    return True
'''

_TEST = '''\
"""Tests for $dist, using the fixtures of queuecore.testing."""

from queuecore import Status

import $package


def test_processes_its_items(queuecore_harness):
    queuecore_harness.register("$name", $package)
    [item] = queuecore_harness.run_items(("$name", {"message": "hello"}))
    assert item.status is Status.DONE
    assert item.results == {"$name": True}


def test_bad_payload_is_a_permanent_error(queuecore_harness):
    queuecore_harness.register("$name", $package)
    [item] = queuecore_harness.run_items(("$name", {"nothing": "here"}))
    assert item.status is Status.ERROR
    assert "'message'" in item.errors["$name"]


def test_leaves_other_types_alone(queuecore_harness):
    queuecore_harness.register("$name", $package)
    [item] = queuecore_harness.run_items(("something-else", {}))
    assert "$name" not in item.results


def test_entry_point_is_installed(queuecore_harness):
    # Fails until the distribution is installed (pip install -e .): this is
    # how queuecore will find the plugin.
    assert queuecore_harness.register_entry_point("$name") is $package
'''

_README = '''\
# $dist

A [queuecore](https://pypi.org/project/queuecore/) plugin that processes items
of type `$name`.

## Install

```console
$$ pip install $dist
$$ queuecore plugins          # lists "$name"
```

## Use

```python
from queuecore import Queue

Queue().enqueue("$name", {"message": "hello"})
```

| payload | meaning |
|---|---|
| `message` (string) | what to process |

## Develop

```console
$$ pip install -e '.[test]'
$$ pytest
```

The tests use the fixtures of `queuecore.testing` (installed with queuecore).
'''

_GITIGNORE = '''\
__pycache__/
*.egg-info/
build/
dist/
.pytest_cache/
'''

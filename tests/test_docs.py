"""The reference docs keep step with the code: every hookspec has a section
in docs/reference/hooks.md with its exact signature."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from queuecore import hookspecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS_PAGE = ROOT / "docs" / "reference" / "hooks.md"


def spec_signatures() -> dict[str, str]:
    """hook name -> "def name(args) -> returns", from the hookspecs module's source."""
    tree = ast.parse(Path(hookspecs.__file__).read_text("utf-8"))
    signatures = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any(ast.unparse(d) == "hookspec" or ast.unparse(d).startswith("hookspec(") for d in node.decorator_list):
            returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
            signatures[node.name] = f"def {node.name}({ast.unparse(node.args)}){returns}"
    return signatures


def documented_signatures() -> dict[str, str]:
    """hook name -> the signature in the first python block under its ``###`` heading."""
    text = HOOKS_PAGE.read_text("utf-8")
    sections = re.split(r"^### +", text, flags=re.M)[1:]
    found = {}
    for section in sections:
        heading, _, body = section.partition("\n")
        name = heading.strip().strip("`")
        block = re.search(r"```python\n(.*?)```", body, flags=re.S)
        found[name] = _normalise(block.group(1)) if block else ""
    return found


def _normalise(code: str) -> str:
    # A signature may be wrapped over lines; compare it as one line.
    first = code.split("\n\n")[0]
    return " ".join(first.split()).replace("( ", "(").replace(", )", ")").rstrip(":")


def test_the_hookspecs_are_found():
    specs = spec_signatures()
    assert "process_item" in specs
    # Every function pluggy knows as a spec is seen by the source parser too.
    pluggy_specs = {name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "queuecore_spec")}
    assert pluggy_specs == set(specs)


@pytest.mark.parametrize("name", sorted(spec_signatures()))
def test_every_hook_is_documented_with_its_signature(name):
    documented = documented_signatures()
    assert name in documented, f"docs/reference/hooks.md has no '### {name}' section"
    assert documented[name] == spec_signatures()[name], (
        f"the signature of {name} in docs/reference/hooks.md differs from queuecore/hookspecs.py"
    )


def test_no_section_for_a_hook_that_does_not_exist():
    stale = set(documented_signatures()) - set(spec_signatures())
    assert not stale, f"docs/reference/hooks.md documents hooks that are not in hookspecs.py: {sorted(stale)}"


TUTORIAL = ROOT / "docs" / "tutorial-plugin.md"


def _block_after(text: str, marker: str) -> str:
    start = text.index(marker)
    return re.compile(r"```python\n(.*?)```", re.S).search(text, start).group(1)


def test_the_tutorials_plugin_passes_the_tutorials_tests(tmp_path):
    """The code a reader pastes in docs/tutorial-plugin.md works as the page says."""
    import os
    import subprocess
    import sys

    from queuecore.scaffold import create_plugin

    text = TUTORIAL.read_text("utf-8")
    root = create_plugin("jsonl", tmp_path)
    (root / "queuecore_jsonl" / "__init__.py").write_text(_block_after(text, "Replace `queuecore_jsonl/__init__.py` with:"))
    (root / "tests" / "test_queuecore_jsonl.py").write_text(_block_after(text, "Replace `tests/test_queuecore_jsonl.py` with:"))
    # A subprocess with the tutorial's package first on the path: the shipped
    # queuecore-jsonl may be installed under the same name. The entry-point
    # test needs an install; tests/test_scaffold.py covers that path.
    env = {**os.environ, "PYTHONPATH": str(root)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not entry_point", "tests"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout

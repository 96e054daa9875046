"""The docs say what the code does: every metric in the reference, every route in the how-to."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from queuecore_web import create_app, metrics

from queuecore import Queue

ROOT = Path(__file__).resolve().parents[3]
METRICS_DOC = ROOT / "docs" / "reference" / "metrics.md"
HOWTO = ROOT / "docs" / "howto-dashboard.md"

pytestmark = pytest.mark.skipif(not METRICS_DOC.exists(), reason="docs/ is not beside this plugin (installed alone)")


def test_metrics_reference_lists_every_metric():
    text = METRICS_DOC.read_text()
    rows = {m[0]: m for m in re.findall(r"^\| `(\w+)` \| (\w+) \| ([^|]*)\|", text, re.M)}
    assert set(rows) == {name for name, *_ in metrics.METRICS}
    for name, kind, labels, _ in metrics.METRICS:
        _, doc_kind, doc_labels = rows[name]
        assert doc_kind == kind, name
        assert re.findall(r"`(\w+)`", doc_labels) == list(labels), name


def test_howto_documents_every_route():
    text = HOWTO.read_text()
    app = create_app(Queue("sqlite:///:memory:"))
    paths = [r.path for r in app.routes if r.path.startswith("/api/") or r.path == "/metrics"]
    for path in paths:
        shown = re.sub(r"\{(\w+):\w+\}", r"{\1}", path)
        assert re.search(rf"`{re.escape(shown)}[`?]", text), path
    screenshot = re.search(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert screenshot and (HOWTO.parent / screenshot[1]).exists()

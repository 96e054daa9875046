"""The dashboard in a real browser: headless Chromium (Debian's package) driven by Playwright.

Skips only when there is no Chromium binary (set QUEUECORE_CHROMIUM to use
another path); `.ci/web-setup` installs it. Playwright's own browser
downloads are never used.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from queuecore import Status

CHROMIUM = os.environ.get("QUEUECORE_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"no Chromium at {CHROMIUM}: run .ci/web-setup (apt-get install chromium) for the browser tests",
)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.problems = []
    page.on("console", lambda m: page.problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.problems.append(str(e)))
    page.on("requestfailed", lambda r: page.problems.append(f"failed: {r.url}"))
    yield page
    context.close()


@pytest.fixture
def artifacts(request) -> Path:
    folder = Path(os.environ.get("QUEUECORE_TEST_ARTIFACTS", request.config.rootpath / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_dashboard_in_chromium(web, page, artifacts):
    p = web.populated
    q = p.queue
    external = []
    page.on("request", lambda r: external.append(r.url) if not r.url.startswith(web.base) else None)

    # Overview: the counts, the chart drawn by the vendored uPlot.
    page.goto(web.base + "/")
    page.wait_for_selector("#throughput[data-ready='1'] canvas", timeout=15000)
    for status, n in p.expected_counts().items():
        assert page.inner_text(f'[data-count="{status}"]') == str(n), status
    assert page.locator("#by-type tbody tr").count() == 3
    page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)

    # Failures: the group of timed-out mails, and the items behind it.
    page.click("nav >> text=Failures")
    row = page.locator("tr.failure-group", has_text="TimeoutError: smtp timed out")
    assert row.locator("td.plugin").inner_text() == "mailer"
    assert row.locator("td.count").inner_text() == str(len(p.slow))
    row.locator("td.error a").click()
    page.wait_for_selector("#group-items")
    ids = sorted(int(t) for t in page.locator("#group-items tbody tr td:first-child").all_inner_texts())
    assert ids == sorted(p.slow)

    # One item: retry it from its page; the queue has it pending again.
    item_id = p.bounced[0]
    page.goto(f"{web.base}/items/{item_id}")
    assert page.inner_text("#item-status") == "error"
    assert "550 mailbox unavailable" in page.inner_text("#item-plugins")
    page.click("#retry")
    page.wait_for_selector("#flash")
    assert page.inner_text("#flash") == "Sent 1 item back to pending."
    assert page.inner_text("#item-status") == "pending"
    assert q.get(item_id).status == Status.PENDING
    assert q.get(p.bounced[1]).status == Status.ERROR

    # A whole group at once.
    page.goto(web.base + "/failures")
    page.locator("tr.failure-group", has_text="TimeoutError").locator("button.retry-group").click()
    page.wait_for_selector("#flash")
    assert {q.get(i).status for i in p.slow} == {Status.PENDING}

    # Purge asks first; cancelling deletes nothing, accepting deletes.
    page.goto(web.base + "/")
    page.select_option("#purge-form select[name=older_than]", "all")
    page.once("dialog", lambda d: d.dismiss())
    page.click("#purge-form button")
    assert q.counts()[Status.DONE] == len(p.done)
    page.once("dialog", lambda d: d.accept())
    page.click("#purge-form button")
    page.wait_for_selector("#flash")
    assert page.inner_text("#flash") == f"Purged {len(p.done)} items."
    assert q.counts()[Status.DONE] == 0
    assert page.inner_text('[data-count="done"]') == "0"

    assert not page.problems, page.problems
    assert not external, external


def test_script_payload_does_not_run(web, page):
    p = web.populated
    for path in (f"/items/{p.xss}", "/items", "/"):
        page.goto(web.base + path)
        assert page.evaluate("window.__xss") is None, path
    page.goto(f"{web.base}/items/{p.xss}")
    assert p.xss_text in page.inner_text("#payload")
    assert page.inner_text("#item-type") == p.xss_text
    assert page.locator("#payload b").count() == 0
    assert not page.problems, page.problems


def test_read_only_dashboard_has_no_buttons(serve, page):
    web = serve(read_only=True)
    page.goto(web.base + "/failures")
    assert page.locator("#read-only").is_visible()
    assert page.locator("button").count() == 0
    page.goto(f"{web.base}/items/{web.populated.bounced[0]}")
    assert page.locator("#retry").count() == 0


def test_counts_refresh_without_reload(serve, page):
    """The overview polls /api/overview; a change in the queue shows up without a reload."""
    web = serve(refresh_seconds=0.5)
    page.goto(web.base + "/")
    page.wait_for_selector("#throughput[data-ready='1']")
    web.populated.queue.enqueue("late", {"n": 1})
    expected = str(len(web.populated.pending) + 1)
    page.wait_for_function(
        "n => document.querySelector('[data-count=\"pending\"]').textContent === n", arg=expected, timeout=15000
    )
    assert re.fullmatch(r"\d+s|\d+m \d+s", page.inner_text("#oldest-due"))

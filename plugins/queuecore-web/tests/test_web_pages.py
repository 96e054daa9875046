"""Every page and every read-only /api endpoint, over real HTTP on a loopback port."""

from __future__ import annotations

import html
import re

import pytest

HTML = {"accept": "text/html"}


def _text(body: str) -> str:
    """The page's text, roughly as a reader sees it."""
    return html.unescape(re.sub(r"<[^>]+>", " ", body))


def test_overview_shows_counts_per_status_and_type(web):
    r = web.client.get("/", headers=HTML)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    for status, n in web.populated.expected_counts().items():
        assert re.search(rf'data-count="{status}">{n}<', r.text), status
    assert 'id="by-type"' in r.text
    assert "/items?type=mail" in r.text and "/items?type=doc" in r.text
    assert 'id="oldest-due"' in r.text and 'id="throughput"' in r.text
    # per-plugin counters from the runners' write-backs
    assert re.search(r"<td>mailer</td><td class=\"num\">3</td><td class=\"num\">5</td>", r.text)


def test_pages_load_only_local_assets(web):
    r = web.client.get("/", headers=HTML)
    sources = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert sources
    assert not [s for s in sources if s.startswith(("http:", "https:", "//"))]
    for asset in ("/static/vendor/uPlot.iife.min.js", "/static/vendor/uPlot.min.css", "/static/dashboard.js",
                  "/static/dashboard.css"):
        got = web.client.get(asset)
        assert got.status_code == 200, asset
        assert len(got.content) > 500


def test_security_headers_on_every_response(web):
    for path in ("/", "/api/overview", "/metrics", "/static/dashboard.js", "/items/999999"):
        r = web.client.get(path)
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"


def test_failures_page_groups_by_plugin_and_error(web):
    p = web.populated
    r = web.client.get("/failures", headers=HTML)
    assert r.status_code == 200
    text = _text(r.text)
    assert "TimeoutError: smtp timed out" in text
    assert "PermanentError: 550 mailbox unavailable" in text
    assert "returned False" in text
    rows = re.findall(r'<tr class="failure-group" data-key="([0-9a-f]+)">(.*?)</tr>', r.text, re.S)
    by_error = {_text(re.search(r'class="error">(.*?)</td>', row, re.S)[1]).strip(): (key, row) for key, row in rows}
    key, row = by_error["TimeoutError: smtp timed out"]
    assert re.search(rf'class="num count">{len(p.slow)}<', row)
    assert 'class="plugin">mailer<' in row
    # the runner's own "gave up" note does not make a group of its own
    assert "gave up" not in text


def test_failure_group_page_lists_its_items(web):
    p = web.populated
    groups = web.client.get("/api/failures").json()["groups"]
    group = next(g for g in groups if g["error"] == "PermanentError: 550 mailbox unavailable")
    r = web.client.get(f"/failures/{group['key']}", headers=HTML)
    assert r.status_code == 200
    linked = sorted(int(i) for i in re.findall(r'<a href="/items/(\d+)">', r.text))
    assert linked == sorted(p.bounced)
    assert "PermanentError: 550 mailbox unavailable" in r.text


def test_unknown_failure_group_is_404(web):
    assert web.client.get("/failures/0123456789abcdef", headers=HTML).status_code == 404
    r = web.client.get("/api/failures/0123456789abcdef")
    assert r.status_code == 404 and "error" in r.json()


def test_items_page_filters_and_pages(web):
    p = web.populated
    r = web.client.get("/items?status=need_retry", headers=HTML)
    assert r.status_code == 200
    ids = [int(i) for i in re.findall(r'<a href="/items/(\d+)">', r.text)]
    assert ids == sorted(p.slow + p.broken, reverse=True)
    r = web.client.get("/items?type=doc&limit=2", headers=HTML)
    ids = [int(i) for i in re.findall(r'<a href="/items/(\d+)">', r.text)]
    assert len(ids) == 2
    older = re.search(r'id="next-page" href="([^"]+)"', r.text)[1]
    assert "before_id=" in older
    r2 = web.client.get(html.unescape(older), headers=HTML)
    more = [int(i) for i in re.findall(r'<a href="/items/(\d+)">', r2.text)]
    assert more and max(more) < min(ids)


def test_item_page_shows_everything(web):
    p = web.populated
    item_id = p.slow[0]
    r = web.client.get(f"/items/{item_id}", headers=HTML)
    assert r.status_code == 200
    assert 'id="item-status">need_retry<' in r.text
    assert 'id="item-trials">1<' in r.text
    assert "TimeoutError: smtp timed out" in r.text
    assert "s0@slow.test" in r.text
    # pretty JSON: one key a line, indented
    assert re.search(r'\{\n  &#34;to&#34;: &#34;s0@slow.test&#34;\n\}', r.text)
    assert "last try" in r.text and "created" in r.text
    done = web.client.get(f"/items/{p.done[0]}", headers=HTML).text
    assert '<span class="ok">done</span>' in done


def test_in_progress_item_has_no_retry_button(web):
    r = web.client.get(f"/items/{web.populated.in_progress[0]}", headers=HTML)
    assert 'id="item-status">in_progress<' in r.text
    assert 'id="retry"' not in r.text
    assert "test-runner" in r.text


def test_script_payload_is_shown_as_text(web):
    """A payload (and a type) holding a script tag is escaped everywhere it shows."""
    p = web.populated
    XSS = p.xss_text
    pages = [f"/items/{p.xss}", "/items", "/"]
    for path in pages:
        body = web.client.get(path, headers=HTML).text
        assert XSS not in body, path
        assert "<script>window" not in body, path
        assert "</pre><b>" not in body, path
    body = web.client.get(f"/items/{p.xss}", headers=HTML).text
    assert html.escape(XSS, quote=True) in body or "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in body
    assert "&lt;/pre&gt;&lt;b&gt;bold&lt;/b&gt;" in body
    # in JSON it is data, served as JSON
    r = web.client.get(f"/api/items/{p.xss}")
    assert r.headers["content-type"] == "application/json"
    assert r.json()["payload"]["html"] == XSS


def test_unknown_item_is_404(web):
    r = web.client.get("/items/987654", headers=HTML)
    assert r.status_code == 404
    assert "no item with id 987654" in r.text
    r = web.client.get("/api/items/987654")
    assert r.status_code == 404 and r.json() == {"error": "no item with id 987654"}
    assert web.client.get("/items/abc", headers=HTML).status_code == 404


@pytest.mark.parametrize(
    "path",
    ["/items?status=bogus", "/api/items?status=bogus", "/api/items?limit=0", "/api/items?limit=x",
     "/api/throughput?hours=0", "/api/throughput?hours=25", "/api/failures?scan=0"],
)
def test_bad_parameters_are_400(web, path):
    r = web.client.get(path)
    assert r.status_code == 400, r.text
    assert r.json()["error"]


def test_api_overview(web):
    data = web.client.get("/api/overview").json()
    assert data["counts"] == web.populated.expected_counts()
    assert data["total"] == sum(web.populated.expected_counts().values())
    assert data["by_type"]["mail"]["error"] == 2
    assert data["by_type"]["doc"]["need_retry"] == 1
    assert data["oldest_due_age"] >= 0
    assert data["read_only"] is False
    plugins = {s["plugin"]: s for s in data["plugins"]}
    assert plugins["mailer"]["successes"] == 3 and plugins["mailer"]["failures"] == 5
    assert plugins["indexer"]["seconds"] >= 0


def test_api_throughput(web):
    data = web.client.get("/api/throughput?hours=2").json()
    assert data["bucket_seconds"] == 60
    assert len(data["minutes"]) == len(data["done"]) == len(data["error"]) == 120
    assert sum(data["done"]) == len(web.populated.done)
    assert sum(data["error"]) == len(web.populated.bounced)
    assert data["minutes"][-1].endswith("+00:00")


def test_api_failures_and_group(web):
    p = web.populated
    data = web.client.get("/api/failures").json()
    assert data["scanned"] == len(p.slow) + len(p.broken) + len(p.bounced)
    assert data["truncated"] is False
    groups = {(g["plugin"], g["error"]): g for g in data["groups"]}
    assert groups[("mailer", "TimeoutError: smtp timed out")]["by_status"] == {"need_retry": 3, "error": 0}
    assert groups[("indexer", "returned False")]["types"] == {"doc": 1}
    g = groups[("mailer", "PermanentError: 550 mailbox unavailable")]
    detail = web.client.get(f"/api/failures/{g['key']}").json()
    assert sorted(i["id"] for i in detail["items"]) == sorted(p.bounced)
    assert {i["status"] for i in detail["items"]} == {"error"}


def test_api_failures_scan_bounds_the_window(web):
    data = web.client.get("/api/failures?scan=2").json()
    assert data["scanned"] == 2 and data["truncated"] is True
    assert sum(g["count"] for g in data["groups"]) == 2


def test_api_items_and_item(web):
    p = web.populated
    data = web.client.get("/api/items?status=error").json()
    assert sorted(i["id"] for i in data["items"]) == sorted(p.bounced)
    assert data["next_before_id"] is None
    page = web.client.get("/api/items?limit=3").json()
    assert len(page["items"]) == 3 and page["next_before_id"] == page["items"][-1]["id"]
    rest = web.client.get(f"/api/items?limit=500&before_id={page['next_before_id']}").json()
    assert all(i["id"] < page["next_before_id"] for i in rest["items"])
    item = web.client.get(f"/api/items/{p.bounced[0]}").json()
    assert item["status"] == "error"
    assert item["errors"]["mailer"] == "PermanentError: 550 mailbox unavailable"
    assert set(item) >= {"id", "type", "payload", "status", "trials", "results", "errors", "priority",
                         "creation_dtime", "lasttry_dtime", "run_after"}


def test_api_csrf_hands_out_a_token(web):
    r = web.client.get("/api/csrf")
    data = r.json()
    assert re.fullmatch(r"[0-9a-f]{64}", data["token"])
    assert data["header"] == "x-csrf-token"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


def test_database_down_is_503(tmp_path, serve, web):
    web.populated.queue.database.init(str(tmp_path / "missing" / "gone.db"))
    r = web.client.get("/api/overview")
    assert r.status_code == 503
    assert "database is unavailable" in r.json()["error"]
    r = web.client.get("/", headers=HTML)
    assert r.status_code == 503 and "database is unavailable" in r.text

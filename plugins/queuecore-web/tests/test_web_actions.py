"""Retry and purge, their CSRF protection, read-only mode and basic auth."""

from __future__ import annotations

import base64
import datetime as dt

import httpx
import pytest

from queuecore import Status

HTML = {"accept": "text/html"}


def _group_key(web, error: str) -> str:
    return next(g["key"] for g in web.client.get("/api/failures").json()["groups"] if g["error"] == error)


# -- the actions ----------------------------------------------------------------


def test_retry_one_item_from_its_page(web):
    q = web.populated.queue
    item_id = web.populated.bounced[0]
    r = web.post_form(f"/items/{item_id}/retry")
    assert r.status_code == 303
    assert r.headers["location"] == f"/items/{item_id}?done=retried&n=1"
    item = q.get(item_id)
    assert item.status == Status.PENDING and item.trials == 0
    # without reset the plugin's last result and error stay
    assert item.errors["mailer"].startswith("PermanentError")
    page = web.client.get(r.headers["location"], headers=HTML).text
    assert "Sent 1 item back to pending." in page
    # the other bounced item is untouched
    assert q.get(web.populated.bounced[1]).status == Status.ERROR


def test_retry_with_reset_clears_results(web):
    q = web.populated.queue
    item_id = web.populated.done[0]
    assert web.post_form(f"/items/{item_id}/retry", {"reset": "1"}).status_code == 303
    item = q.get(item_id)
    assert item.status == Status.PENDING and item.results == {} and item.errors == {}


def test_retry_in_progress_item_does_nothing(web):
    q = web.populated.queue
    item_id = web.populated.in_progress[0]
    r = web.post_form(f"/items/{item_id}/retry")
    assert r.headers["location"].endswith("n=0")
    assert q.get(item_id).status == Status.IN_PROGRESS


def test_retry_unknown_item_is_404(web):
    assert web.post_form("/items/424242/retry").status_code == 404
    token = web.csrf()
    r = web.client.post("/api/items/424242/retry", headers={"x-csrf-token": token})
    assert r.status_code == 404


def test_retry_a_failure_group(web):
    p = web.populated
    key = _group_key(web, "TimeoutError: smtp timed out")
    r = web.post_form(f"/failures/{key}/retry")
    assert r.status_code == 303 and r.headers["location"] == "/failures?done=retried&n=3"
    statuses = {p.queue.get(i).status for i in p.slow}
    assert statuses == {Status.PENDING}
    # other groups stay failed
    assert {p.queue.get(i).status for i in p.bounced} == {Status.ERROR}
    assert p.queue.get(p.broken[0]).status == Status.NEED_RETRY
    # the group is gone now
    assert web.client.get(f"/failures/{key}", headers=HTML).status_code == 404


def test_retry_group_leaves_items_that_finished_meanwhile(web):
    p = web.populated
    key = _group_key(web, "PermanentError: 550 mailbox unavailable")
    Item = p.queue.storage.Item
    # Finish one between the page's view and the click: its key still lists it at click time
    # only if it is still failed, so mark it done and expect one retry, not two.
    Item.update(status=int(Status.DONE)).where(Item.id == p.bounced[0]).execute()
    r = web.client.post(f"/api/failures/{key}/retry", headers={"x-csrf-token": web.csrf()})
    assert r.json() == {"retried": 1}
    assert p.queue.get(p.bounced[0]).status == Status.DONE
    assert p.queue.get(p.bounced[1]).status == Status.PENDING


def test_purge_finished_items(web):
    p = web.populated
    r = web.post_form("/purge", {"status": "done", "older_than": "all"})
    assert r.status_code == 303 and r.headers["location"] == f"/?done=purged&n={len(p.done)}"
    assert p.queue.counts()[Status.DONE] == 0
    assert p.queue.counts()[Status.ERROR] == len(p.bounced)
    assert f"Purged {len(p.done)} items." in web.client.get(r.headers["location"], headers=HTML).text


def test_purge_respects_age(web):
    p = web.populated
    Item = p.queue.storage.Item
    old = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(days=10)
    Item.update(lasttry_dtime=p.queue.storage._time(old)).where(Item.id == p.done[0]).execute()
    token = web.csrf()
    r = web.client.post("/api/purge", json={"status": "done", "older_than": "7d"}, headers={"x-csrf-token": token})
    assert r.json() == {"purged": 1}
    assert p.queue.counts()[Status.DONE] == len(p.done) - 1


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"status": "pending", "older_than": "all"}, "only done or error"),
        ({"status": "nope", "older_than": "all"}, "unknown status"),
        ({"status": "done", "older_than": "soon"}, "older_than must be"),
        ({"status": "done"}, "older_than is required"),
    ],
)
def test_purge_refuses_bad_requests(web, fields, message):
    r = web.client.post("/api/purge", json=fields, headers={"x-csrf-token": web.csrf()})
    assert r.status_code == 400
    assert message in r.json()["error"]
    assert web.populated.queue.counts()[Status.DONE] == len(web.populated.done)


def test_api_retry_with_form_encoding_and_reset(web):
    p = web.populated
    r = web.client.post(f"/api/items/{p.broken[0]}/retry", data={"csrf_token": web.csrf(), "reset": "true"})
    assert r.json() == {"retried": 1}
    assert p.queue.get(p.broken[0]).results == {}


# -- CSRF -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/items/{id}/retry", "/api/items/{id}/retry", "/purge", "/api/purge"])
def test_actions_need_a_valid_csrf_token(web, path):
    p = web.populated
    path = path.format(id=p.bounced[0])
    fields = {"status": "done", "older_than": "all"}
    web.csrf()  # the client now holds a cookie
    assert web.client.post(path, data=fields).status_code == 403
    assert web.client.post(path, data={**fields, "csrf_token": "0" * 64}).status_code == 403
    # a token made for another cookie does not pass either
    with httpx.Client(base_url=web.base) as other:
        stolen = other.get("/api/csrf").json()["token"]
    assert web.client.post(path, data={**fields, "csrf_token": stolen}).status_code == 403
    # no cookie at all
    fresh = httpx.Client(base_url=web.base)
    with fresh:
        r = fresh.post(path, data={**fields, "csrf_token": web.csrf()})
        assert r.status_code == 403
    assert p.queue.get(p.bounced[0]).status == Status.ERROR
    assert p.queue.counts()[Status.DONE] == len(p.done)


def test_cross_origin_post_is_refused(web):
    p = web.populated
    r = web.post_form(f"/items/{p.bounced[0]}/retry", headers={"origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-origin" in r.text
    assert p.queue.get(p.bounced[0]).status == Status.ERROR
    same = web.post_form(f"/items/{p.bounced[0]}/retry", headers={"origin": web.base})
    assert same.status_code == 303


@pytest.mark.parametrize("path", ["/", "/items/1", "/items/1/retry", "/purge", "/api/overview", "/metrics"])
def test_get_only_and_post_only_routes(web, path):
    if path.endswith(("retry", "purge")):
        assert web.client.get(path).status_code == 405
    else:
        assert web.client.post(path, data={"csrf_token": web.csrf()}).status_code == 405


def test_unsupported_body_is_415(web):
    r = web.client.post("/api/purge", content=b"x", headers={"content-type": "text/plain", "x-csrf-token": web.csrf()})
    assert r.status_code == 415


# -- read-only ---------------------------------------------------------------------


def test_read_only_hides_and_refuses_actions(serve):
    web = serve(read_only=True)
    p = web.populated
    overview = web.client.get("/", headers=HTML).text
    assert 'id="read-only"' in overview and "/purge" not in overview
    assert "Retry" not in web.client.get("/failures", headers=HTML).text
    assert 'id="retry"' not in web.client.get(f"/items/{p.bounced[0]}", headers=HTML).text
    key = _group_key(web, "TimeoutError: smtp timed out")
    token = web.csrf()
    for path in (f"/items/{p.bounced[0]}/retry", f"/api/items/{p.bounced[0]}/retry", f"/failures/{key}/retry",
                 f"/api/failures/{key}/retry", "/purge", "/api/purge"):
        r = web.client.post(path, data={"csrf_token": token, "status": "done", "older_than": "all"})
        assert r.status_code == 403, path
        assert "read-only" in r.text
    assert web.client.get("/api/overview").json()["read_only"] is True
    assert p.queue.counts() == {Status[k.upper()]: v for k, v in p.expected_counts().items()}
    # reading still works
    assert web.client.get("/metrics").status_code == 200


# -- basic auth ------------------------------------------------------------------------


def test_auth_is_required_everywhere(serve):
    web = serve(auth="admin:s3cret:with:colons")
    for path in ("/", "/failures", "/items", "/items/1", "/api/overview", "/api/items", "/metrics",
                 "/static/dashboard.js"):
        r = web.client.get(path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"].startswith("Basic ")
    assert web.client.post("/purge").status_code == 401
    assert web.client.get("/", auth=("admin", "wrong")).status_code == 401
    assert web.client.get("/", auth=("root", "s3cret:with:colons")).status_code == 401
    garbage = {"authorization": "Basic !!!notbase64"}
    assert web.client.get("/", headers=garbage).status_code == 401
    assert web.client.get("/", auth=("admin", "s3cret:with:colons")).status_code == 200
    token = "Basic " + base64.b64encode(b"admin:s3cret:with:colons").decode()
    assert web.client.get("/metrics", headers={"authorization": token}).status_code == 200


def test_auth_and_actions_together(serve):
    web = serve(auth="ops:pw")
    web.client.auth = ("ops", "pw")
    p = web.populated
    assert web.post_form(f"/items/{p.bounced[0]}/retry").status_code == 303
    assert p.queue.get(p.bounced[0]).status == Status.PENDING


def test_bad_auth_option():
    import queuecore_web

    from queuecore import Queue

    with pytest.raises(ValueError, match="user:password"):
        queuecore_web.create_app(Queue("sqlite:///:memory:"), auth="nopassword")

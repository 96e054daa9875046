"""The dashboard: a Starlette application over one :class:`queuecore.Queue`.

Pages are rendered on the server (Jinja2, autoescaped: a payload is
untrusted input and is only ever shown as text); a small script served from
the package draws the throughput chart and refreshes the counts from the
``/api`` endpoints. Actions are POST only, carry a CSRF token, and are
refused in read-only mode.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import jinja2
import peewee
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from queuecore import ConfigurationError, InvalidItemError, ItemNotFound, Queue, Status
from queuecore.queue import parse_status
from queuecore.storage import redact_url

from . import metrics, queries
from .security import CSRF_COOKIE, CSRF_FIELD, CSRF_HEADER, Credentials, Csrf, GuardMiddleware

HERE = Path(__file__).parent
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
DEFAULT_HOURS = 3
#: The choices of the purge form; the API takes any "<n>s|m|h|d" or "all".
PURGE_AGES = (("1h", "older than 1 hour"), ("1d", "older than 1 day"), ("7d", "older than 7 days"),
              ("30d", "older than 30 days"), ("all", "all of them"))
FINISHED_STATUSES = (Status.DONE, Status.ERROR)

T = TypeVar("T")


class ReadOnly(HTTPException):
    def __init__(self) -> None:
        super().__init__(403, "the dashboard runs read-only (--read-only): actions are disabled")


class Dashboard:
    """State shared by the handlers: the queue, the options, the template environment."""

    def __init__(
        self,
        queue: Queue,
        *,
        read_only: bool,
        csrf: Csrf,
        failure_scan: int,
    ) -> None:
        self.queue = queue
        self.read_only = read_only
        self.csrf = csrf
        self.failure_scan = failure_scan
        self.label = redact_url(queue.url) if queue.url else type(queue.database).__name__
        # A SQLite database in memory lives only as long as its connection.
        self._close_after = not (
            isinstance(queue.database, peewee.SqliteDatabase) and queue.database.database == ":memory:"
        )
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["ago"] = _ago
        self.env.filters["age"] = _age
        self.env.filters["iso"] = _iso
        self.env.filters["status_name"] = lambda s: Status(s).name.lower()

    # -- database -----------------------------------------------------------

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on a worker thread, on a connection closed afterwards
        (so idle dashboards hold no database connections)."""
        return await run_in_threadpool(self._in_connection, fn, *args, **kwargs)

    def _in_connection(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if not self._close_after:
            return fn(*args, **kwargs)
        with self.queue.database.connection_context():
            return fn(*args, **kwargs)

    # -- rendering ----------------------------------------------------------

    def page(self, request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        cookie = request.cookies.get(CSRF_COOKIE)
        new_cookie = None
        if not cookie:
            cookie = new_cookie = self.csrf.new_cookie()
        html = self.env.get_template(template).render(
            request=request,
            read_only=self.read_only,
            csrf_field=CSRF_FIELD,
            csrf_token=self.csrf.token_for(cookie),
            database=self.label,
            statuses=[s.name.lower() for s in Status],
            flash=_flash(request),
            **context,
        )
        response = HTMLResponse(html, status_code=status_code)
        if new_cookie:
            _set_csrf_cookie(response, request, new_cookie)
        return response

    # -- actions ------------------------------------------------------------

    async def check_action(self, request: Request) -> dict[str, str]:
        """The POSTed form (or JSON) fields, once read-only mode, origin and CSRF token are checked."""
        if self.read_only:
            raise ReadOnly()
        origin = request.headers.get("origin")
        if origin and origin != "null" and urllib.parse.urlsplit(origin).netloc != request.headers.get("host"):
            raise HTTPException(403, "cross-origin request refused")
        fields = await _read_fields(request)
        token = request.headers.get(CSRF_HEADER) or fields.get(CSRF_FIELD)
        if not self.csrf.valid(request.cookies.get(CSRF_COOKIE), token):
            raise HTTPException(403, "missing or invalid CSRF token: reload the page and try again")
        return fields


def create_app(
    queue: Queue,
    *,
    read_only: bool = False,
    auth: str | Credentials | None = None,
    csrf_secret: bytes | None = None,
    failure_scan: int = queries.DEFAULT_SCAN,
    refresh_seconds: float = 10.0,
) -> Starlette:
    """The dashboard for ``queue`` as an ASGI application.

    :param read_only: refuse every action (retry, purge) with 403 and hide their buttons.
    :param auth: ``"user:password"`` (or :class:`Credentials`): every request needs
        these basic-auth credentials, ``/metrics`` included.
    :param csrf_secret: the key CSRF tokens are signed with; random by default,
        so tokens from before a restart are refused (a reload fixes that).
    :param failure_scan: how many of the newest failed items the failure groups are built from.
    :param refresh_seconds: how often the overview refreshes its counts (the chart: every minute).
    """
    credentials = Credentials.parse(auth) if isinstance(auth, str) else auth
    dash = Dashboard(queue, read_only=read_only, csrf=Csrf(csrf_secret), failure_scan=failure_scan)
    registry = metrics.make_registry(queue)

    # -- pages ----------------------------------------------------------------

    async def overview(request: Request) -> Response:
        data = await dash.db(_overview, queue)
        return dash.page(request, "overview.html", nav="overview", purge_ages=PURGE_AGES,
                         refresh_ms=int(refresh_seconds * 1000),
                         hours=_int_param(request, "hours", DEFAULT_HOURS, 1, queries.MAX_HOURS), **data)

    async def failures_page(request: Request) -> Response:
        scan = _int_param(request, "scan", dash.failure_scan, 1, queries.MAX_SCAN)
        found = await dash.db(queries.failures, queue, scan)
        return dash.page(request, "failures.html", nav="failures", failures=found)

    async def failure_group_page(request: Request) -> Response:
        scan = _int_param(request, "scan", dash.failure_scan, 1, queries.MAX_SCAN)
        found = await dash.db(queries.failures, queue, scan)
        group = found.find(request.path_params["key"])
        if group is None:
            raise HTTPException(404, "no such failure group among the newest failed items (it may have been retried)")
        return dash.page(request, "failure_group.html", nav="failures", group=group, failures=found)

    async def items_page(request: Request) -> Response:
        query = _list_query(request)
        items = await dash.db(queue.list, **query)
        return dash.page(request, "items.html", nav="items", items=items, query=query,
                         next_before_id=_next_before_id(items, query["limit"]))

    async def item_page(request: Request) -> Response:
        item = await dash.db(queue.get, request.path_params["item_id"])
        return dash.page(request, "item.html", nav="items", item=item,
                         payload=json.dumps(item.payload, indent=2, ensure_ascii=False, sort_keys=True),
                         plugins=_plugin_rows(item))

    # -- actions from forms: act, then redirect back with a fixed message ---

    async def retry_item_form(request: Request) -> Response:
        fields = await dash.check_action(request)
        item_id = request.path_params["item_id"]
        n = await dash.db(_retry_ids, queue, [item_id], _flag(fields.get("reset")))
        return _back(f"/items/{item_id}", "retried", n)

    async def retry_group_form(request: Request) -> Response:
        fields = await dash.check_action(request)
        n = await dash.db(_retry_group, queue, request.path_params["key"], dash.failure_scan, _flag(fields.get("reset")))
        return _back("/failures", "retried", n)

    async def purge_form(request: Request) -> Response:
        fields = await dash.check_action(request)
        status, older_than = _purge_args(fields)
        n = await dash.db(queue.purge, status, older_than=older_than)
        return _back("/", "purged", n)

    # -- JSON API -------------------------------------------------------------

    async def api_overview(request: Request) -> Response:
        data = await dash.db(_overview, queue)
        return JSONResponse({
            "counts": {s.name.lower(): n for s, n in data["counts"].items()},
            "total": data["total"],
            "by_type": {t: {s.name.lower(): n for s, n in c.items()} for t, c in data["by_type"].items()},
            "oldest_due_age": data["oldest_due_age"],
            "plugins": [_stat_dict(s) for s in data["plugin_stats"]],
            "read_only": dash.read_only,
        })

    async def api_throughput(request: Request) -> Response:
        hours = _int_param(request, "hours", DEFAULT_HOURS, 1, queries.MAX_HOURS)
        data = await dash.db(queries.throughput, queue, hours)
        return JSONResponse(data.to_dict())

    async def api_failures(request: Request) -> Response:
        scan = _int_param(request, "scan", dash.failure_scan, 1, queries.MAX_SCAN)
        found = await dash.db(queries.failures, queue, scan)
        return JSONResponse(found.to_dict())

    async def api_failure_group(request: Request) -> Response:
        scan = _int_param(request, "scan", dash.failure_scan, 1, queries.MAX_SCAN)
        found = await dash.db(queries.failures, queue, scan)
        group = found.find(request.path_params["key"])
        if group is None:
            raise HTTPException(404, "no such failure group among the newest failed items")
        return JSONResponse(group.to_dict(with_items=True))

    async def api_items(request: Request) -> Response:
        query = _list_query(request)
        items = await dash.db(queue.list, **query)
        return JSONResponse({"items": [i.to_dict() for i in items],
                             "next_before_id": _next_before_id(items, query["limit"])})

    async def api_item(request: Request) -> Response:
        item = await dash.db(queue.get, request.path_params["item_id"])
        return JSONResponse(item.to_dict())

    async def api_csrf(request: Request) -> Response:
        cookie = request.cookies.get(CSRF_COOKIE)
        new_cookie = None
        if not cookie:
            cookie = new_cookie = dash.csrf.new_cookie()
        response = JSONResponse({"token": dash.csrf.token_for(cookie), "header": CSRF_HEADER,
                                 "field": CSRF_FIELD, "read_only": dash.read_only})
        if new_cookie:
            _set_csrf_cookie(response, request, new_cookie)
        return response

    async def api_retry_item(request: Request) -> Response:
        fields = await dash.check_action(request)
        n = await dash.db(_retry_ids, queue, [request.path_params["item_id"]], _flag(fields.get("reset")))
        return JSONResponse({"retried": n})

    async def api_retry_group(request: Request) -> Response:
        fields = await dash.check_action(request)
        n = await dash.db(_retry_group, queue, request.path_params["key"], dash.failure_scan, _flag(fields.get("reset")))
        return JSONResponse({"retried": n})

    async def api_purge(request: Request) -> Response:
        fields = await dash.check_action(request)
        status, older_than = _purge_args(fields)
        n = await dash.db(queue.purge, status, older_than=older_than)
        return JSONResponse({"purged": n})

    async def metrics_endpoint(request: Request) -> Response:
        body = await dash.db(metrics.render, registry)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- errors ---------------------------------------------------------------

    def _wants_json(request: Request) -> bool:
        return request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", "")

    def error_response(request: Request, status_code: int, message: str) -> Response:
        if request.url.path == "/metrics":
            return PlainTextResponse(message + "\n", status_code=status_code)
        if _wants_json(request):
            return JSONResponse({"error": message}, status_code=status_code)
        return dash.page(request, "error.html", status_code=status_code, nav="", code=status_code, message=message)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_response(request, exc.status_code, str(exc.detail))

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(request, 404, str(exc))

    async def bad_request(request: Request, exc: Exception) -> Response:
        return error_response(request, 400, str(exc))

    async def database_error(request: Request, exc: Exception) -> Response:
        return error_response(request, 503, f"the database is unavailable: {type(exc).__name__}: {exc}")

    routes = [
        Route("/", overview),
        Route("/failures", failures_page),
        Route("/failures/{key:str}", failure_group_page),
        Route("/failures/{key:str}/retry", retry_group_form, methods=["POST"]),
        Route("/items", items_page),
        Route("/items/{item_id:int}", item_page),
        Route("/items/{item_id:int}/retry", retry_item_form, methods=["POST"]),
        Route("/purge", purge_form, methods=["POST"]),
        Route("/metrics", metrics_endpoint),
        Route("/api/overview", api_overview),
        Route("/api/throughput", api_throughput),
        Route("/api/failures", api_failures),
        Route("/api/failures/{key:str}", api_failure_group),
        Route("/api/failures/{key:str}/retry", api_retry_group, methods=["POST"]),
        Route("/api/items", api_items),
        Route("/api/items/{item_id:int}", api_item),
        Route("/api/items/{item_id:int}/retry", api_retry_item, methods=["POST"]),
        Route("/api/purge", api_purge, methods=["POST"]),
        Route("/api/csrf", api_csrf),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(GuardMiddleware, credentials=credentials)],
        exception_handlers={
            HTTPException: http_error,
            ItemNotFound: not_found,
            ConfigurationError: bad_request,
            InvalidItemError: bad_request,
            peewee.OperationalError: database_error,
            peewee.InterfaceError: database_error,
        },
    )
    app.state.dashboard = dash
    return app


# -- what the handlers run on a worker thread ---------------------------------


def _overview(queue: Queue) -> dict[str, Any]:
    # One GROUP BY (type, status) gives both tables: counting twice costs twice
    # on a big table, and the two would disagree while runners work.
    by_type = queue.counts_by_type()
    counts = {status: sum(c.get(status, 0) for c in by_type.values()) for status in Status}
    return {
        "counts": counts,
        "total": sum(counts.values()),
        "by_type": by_type,
        "oldest_due_age": queue.oldest_due_age(),
        "plugin_stats": sorted(metrics._plugin_stats(queue), key=lambda s: s.plugin),
    }


def _retry_ids(queue: Queue, ids: list[int], reset: bool) -> int:
    queue.get(ids[0])  # an unknown id is a 404, not "0 retried"
    return queue.retry(ids, reset=reset)


def _retry_group(queue: Queue, key: str, scan: int, reset: bool) -> int:
    group = queries.failures(queue, scan).find(key)
    if group is None:
        raise HTTPException(404, "no such failure group among the newest failed items (it may have been retried)")
    # Only items still failed: one that finished meanwhile stays as it is.
    return queue.retry([i.id for i in group.items], status=list(queries.FAILED_STATUSES), reset=reset)


# -- parsing ------------------------------------------------------------------


async def _read_fields(request: Request) -> dict[str, str]:
    """The fields of a urlencoded form or a JSON object body (no multipart: no file uploads here)."""
    body = await request.body()
    if not body:
        return {}
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            data = json.loads(body)
        except ValueError:
            raise HTTPException(400, "the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise HTTPException(400, "the request body must be a JSON object")
        return {str(k): "" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for k, v in data.items()}
    if kind in ("application/x-www-form-urlencoded", ""):
        try:
            pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            raise HTTPException(400, "the form is not UTF-8") from None
        return dict(pairs)
    raise HTTPException(415, f"unsupported content type {kind!r}: send a form or JSON")


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "on", "yes")


def _int_param(request: Request, name: str, default: int, lowest: int, highest: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPException(400, f"{name} must be a whole number, not {raw!r}") from None
    if not lowest <= value <= highest:
        raise HTTPException(400, f"{name} must be between {lowest} and {highest}, not {value}")
    return value


def _list_query(request: Request) -> dict[str, Any]:
    status = request.query_params.get("status") or None
    typ = request.query_params.get("type") or None
    return {
        "status": parse_status(status) if status else None,
        "type": typ,
        "limit": _int_param(request, "limit", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE),
        "before_id": _int_param(request, "before_id", 0, 1, 2**63 - 1) or None,
    }


def _next_before_id(items: list[Any], limit: int) -> int | None:
    return items[-1].id if len(items) == limit else None


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _purge_args(fields: dict[str, str]) -> tuple[Status, dt.timedelta | None]:
    status = parse_status(fields.get("status") or "done")
    if status not in FINISHED_STATUSES:
        raise HTTPException(400, f"only done or error items can be purged, not {status.name.lower()}")
    raw = (fields.get("older_than") or "").strip().lower()
    if raw in ("", "all"):
        if "older_than" not in fields:
            raise HTTPException(400, 'older_than is required: an age such as "7d", or "all"')
        return status, None
    match = _AGE.match(raw)
    if not match:
        raise HTTPException(400, f'older_than must be an age such as "90s", "15m", "2h", "7d", or "all", not {raw!r}')
    return status, dt.timedelta(seconds=float(match[1]) * _UNIT[match[2]])


# -- presentation helpers -----------------------------------------------------


def _plugin_rows(item: Any) -> list[dict[str, Any]]:
    names = sorted(set(item.results) | set(item.errors))
    return [{"name": n, "result": item.results.get(n), "error": item.errors.get(n)} for n in names]


def _stat_dict(stat: Any) -> dict[str, Any]:
    return {"plugin": stat.plugin, "successes": stat.successes, "failures": stat.failures, "seconds": stat.seconds}


def _back(path: str, done: str, n: int) -> RedirectResponse:
    # The message is chosen from a fixed set by the page, never echoed from the URL.
    return RedirectResponse(f"{path}?{urllib.parse.urlencode({'done': done, 'n': n})}", status_code=303)


def _flash(request: Request) -> str | None:
    done = request.query_params.get("done")
    try:
        n = int(request.query_params.get("n", "0"))
    except ValueError:
        return None
    noun = "item" if n == 1 else "items"
    if done == "retried":
        return f"Sent {n} {noun} back to pending." if n else "No item was retried (in progress, or already gone)."
    if done == "purged":
        return f"Purged {n} {noun}."
    return None


def _set_csrf_cookie(response: Response, request: Request, value: str) -> None:
    response.set_cookie(CSRF_COOKIE, value, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")


def _iso(value: dt.datetime | None) -> str:
    if value is None:
        return "—"
    return value.replace(microsecond=0).isoformat(" ") + " UTC"


def _age(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def _ago(value: dt.datetime | None) -> str:
    if value is None:
        return "—"
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    delta = (now - value).total_seconds()
    return f"{_age(delta)} ago" if delta >= 0 else f"in {_age(-delta)}"

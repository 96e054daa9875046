"""Fixtures for the web plugin's tests: a queue with items in every status, and the app over it.

SQLite always; the query tests also run on PostgreSQL and MariaDB/MySQL when
QUEUECORE_TEST_POSTGRES_URL / QUEUECORE_TEST_MYSQL_URL hold an admin URL
(a database of the tests' own is created there and dropped afterwards).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn

from queuecore import PermanentError, Queue, Runner, Status, hookimpl

XSS = "<script>window.__xss = 1</script>"
BACKENDS = {"postgres": "QUEUECORE_TEST_POSTGRES_URL", "mysql": "QUEUECORE_TEST_MYSQL_URL"}
TABLES = ("queuecore_item", "queuecore_schema", "queuecore_plugin_stats")


class Mailer:
    """Sends "mail" items: fine for most, a permanent failure for bounce, a flaky one for slow."""

    @hookimpl
    def process_item(self, item):
        if item.type != "mail":
            return None
        to = item.payload.get("to", "")
        if to.endswith("@bounce.test"):
            raise PermanentError("550 mailbox unavailable")
        if to.endswith("@slow.test"):
            raise TimeoutError("smtp timed out")
        return True


class Indexer:
    """Indexes "doc" items; one marked broken fails with a plain False."""

    @hookimpl
    def process_item(self, item):
        if item.type != "doc":
            return None
        return not item.payload.get("broken", False)


PLUGINS = {"mailer": Mailer(), "indexer": Indexer()}


@dataclass
class Populated:
    """Ids of the items the fixture made, by what became of them."""

    queue: Queue
    done: list[int]
    bounced: list[int]      # error: mailer "PermanentError: 550 mailbox unavailable"
    slow: list[int]         # need_retry: mailer "TimeoutError: smtp timed out"
    broken: list[int]       # need_retry: indexer "returned False"
    in_progress: list[int]
    pending: list[int]
    xss: int                # pending, with a script tag in its payload and type
    xss_text: str = XSS

    def expected_counts(self) -> dict[str, int]:
        return {
            "pending": len(self.pending),
            "in_progress": len(self.in_progress),
            "need_retry": len(self.slow) + len(self.broken),
            "done": len(self.done),
            "error": len(self.bounced),
        }


def populate(queue: Queue) -> Populated:
    """Items in every status, made the way the runner makes them."""
    queue.init()
    done = queue.enqueue_many([("mail", {"to": f"u{i}@example.test"}) for i in range(3)]
                              + [("doc", {"id": i}) for i in range(2)])
    bounced = queue.enqueue_many([("mail", {"to": f"b{i}@bounce.test"}) for i in range(2)])
    slow = queue.enqueue_many([("mail", {"to": f"s{i}@slow.test"}) for i in range(3)])
    broken = queue.enqueue_many([("doc", {"id": 99, "broken": True})])
    runner = Runner(queue, PLUGINS, max_trials=5, retry_delay=3600)
    runner.process_batch(100)
    runner.close()
    (in_progress,) = queue.enqueue_many([("mail", {"to": "busy@example.test"})])
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    claimed = queue.storage.claim("test-runner", now, now + dt.timedelta(hours=1), 1)
    assert [r[0] for r in claimed] == [in_progress]  # ClaimedRow: id first
    pending = queue.enqueue_many([("mail", {"to": "later@example.test"}), ("doc", {"id": 7})])
    xss = queue.enqueue(XSS, {"html": XSS, "note": "</pre><b>bold</b>"}).id
    return Populated(queue, done, bounced, slow, broken, [in_progress], pending + [xss], xss)


@pytest.fixture
def queue(tmp_path) -> Iterator[Queue]:
    q = Queue(f"sqlite:///{tmp_path / 'queue.db'}")
    q.init()
    yield q
    q.close()


@pytest.fixture
def populated(queue) -> Populated:
    return populate(queue)


def _with_database(admin_url: str, name: str) -> str:
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(admin_url)._replace(path="/" + name))


def _admin(backend: str, admin_url: str, sql: str, name: str) -> None:
    if backend == "postgres":
        import psycopg

        with psycopg.connect(admin_url, autocommit=True) as conn:
            if sql.startswith("DROP"):
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            conn.execute(sql)
    else:
        import pymysql

        parts = urllib.parse.urlsplit(admin_url)
        conn = pymysql.connect(host=parts.hostname or "127.0.0.1", port=parts.port or 3306,
                               user=urllib.parse.unquote(parts.username or "root"),
                               password=urllib.parse.unquote(parts.password or ""), autocommit=True)
        try:
            conn.cursor().execute(sql)
        finally:
            conn.close()


@pytest.fixture(scope="session")
def server_databases() -> Iterator[dict[str, str]]:
    """backend -> URL of a database of this session's own, for the backends configured."""
    made: dict[str, tuple[str, str]] = {}
    name = f"qc_web_test_{os.getpid()}"
    for backend, env in BACKENDS.items():
        admin = os.environ.get(env)
        if admin:
            _admin(backend, admin, f"DROP DATABASE IF EXISTS {name}", name)
            _admin(backend, admin, f"CREATE DATABASE {name}", name)
            made[backend] = (admin, _with_database(admin, name))
    yield {b: url for b, (_, url) in made.items()}
    for backend, (admin, _) in made.items():
        _admin(backend, admin, f"DROP DATABASE IF EXISTS {name}", name)


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def any_queue(request, tmp_path, server_databases) -> Iterator[Queue]:
    """A fresh, empty queue on each backend (the server ones skip unless configured)."""
    backend = request.param
    if backend == "sqlite":
        q = Queue(f"sqlite:///{tmp_path / 'queue.db'}")
    else:
        if backend not in server_databases:
            pytest.skip(f"{BACKENDS[backend]} is not set")
        q = Queue(server_databases[backend])
        for table in TABLES:
            q.database.execute_sql(f"DROP TABLE IF EXISTS {table}")
        q.close()
        q = Queue(server_databases[backend])
    q.init()
    yield q
    q.close()


@dataclass
class Web:
    """A served dashboard and an HTTP client (with a cookie jar) pointed at it."""

    base: str
    client: "httpx.Client"  # noqa: F821
    populated: Populated

    def csrf(self) -> str:
        """The CSRF token of this client's cookie, as a page hands it to its forms."""
        import re

        html = self.client.get("/", headers={"accept": "text/html"}).text
        return re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', html)[1]

    def post_form(self, path: str, fields: dict | None = None, token: str | None = None, **kwargs):
        data = dict(fields or {})
        data["csrf_token"] = self.csrf() if token is None else token
        return self.client.post(path, data=data, headers={"accept": "text/html", **kwargs.pop("headers", {})}, **kwargs)


@pytest.fixture
def serve(populated):
    """serve(**create_app options) -> Web, stopped at the end of the test."""
    import httpx

    import queuecore_web

    with contextlib.ExitStack() as stack:

        def start(**options) -> Web:
            app = queuecore_web.create_app(populated.queue, **options)
            base = stack.enter_context(serving(app))
            client = stack.enter_context(httpx.Client(base_url=base, timeout=30))
            return Web(base, client, populated)

        yield start


@pytest.fixture
def web(serve) -> Web:
    return serve()

@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """The base URL (``http://127.0.0.1:PORT``) of ``app`` while the block runs."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this (Linux): without it every keep-alive
    # request waits out the client's delayed ACK (~40 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()

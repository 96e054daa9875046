"""Fixtures shared by the core's tests: a fresh queue on each backend.

SQLite tests always run, on a file in tmp_path. PostgreSQL and MariaDB/MySQL
tests run when these variables hold an admin URL of a server (the tests
create and drop a database of their own on it), and skip otherwise:

    QUEUECORE_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/postgres
    QUEUECORE_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/test
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuecore import Queue

POSTGRES_ENV = "QUEUECORE_TEST_POSTGRES_URL"
MYSQL_ENV = "QUEUECORE_TEST_MYSQL_URL"
BACKENDS = ("sqlite", "postgres", "mysql")
TABLES = ("queuecore_item", "queuecore_schema", "queuecore_plugin_stats")


def _with_database(admin_url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(admin_url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


class ServerDatabase:
    """A database of the test session's own on a real server, emptied per test."""

    def __init__(self, backend: str, admin_url: str) -> None:
        self.backend = backend
        self.admin_url = admin_url
        self.name = f"qc_test_{os.getpid()}"
        self.url = _with_database(admin_url, self.name)
        self._admin(f"DROP DATABASE IF EXISTS {self.name}")
        self._admin(f"CREATE DATABASE {self.name}")

    def _admin(self, sql: str) -> None:
        parts = urllib.parse.urlsplit(self.admin_url)
        if self.backend == "postgres":
            import psycopg

            with psycopg.connect(self.admin_url.replace("postgresql+pool", "postgresql"), autocommit=True) as conn:
                if sql.startswith("DROP DATABASE"):
                    conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                        (self.name,),
                    )
                conn.execute(sql)
        else:
            import pymysql

            conn = pymysql.connect(
                host=parts.hostname or "127.0.0.1",
                port=parts.port or 3306,
                user=urllib.parse.unquote(parts.username or "root"),
                password=urllib.parse.unquote(parts.password or ""),
                autocommit=True,
            )
            try:
                conn.cursor().execute(sql)
            finally:
                conn.close()

    def empty(self) -> None:
        queue = Queue(self.url)
        db = queue.database
        for table in TABLES:
            db.execute_sql(f"DROP TABLE IF EXISTS {table}")
        queue.close()

    def drop(self) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {self.name}")


@pytest.fixture(scope="session")
def server_databases() -> Iterator[dict[str, ServerDatabase | None]]:
    made: dict[str, ServerDatabase | None] = {"postgres": None, "mysql": None}
    for backend, env in (("postgres", POSTGRES_ENV), ("mysql", MYSQL_ENV)):
        if os.environ.get(env):
            made[backend] = ServerDatabase(backend, os.environ[env])
    yield made
    for database in made.values():
        if database is not None:
            database.drop()


def _url_for(backend: str, tmp_path, server_databases) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/queue.db"
    env = POSTGRES_ENV if backend == "postgres" else MYSQL_ENV
    database = server_databases[backend]
    if database is None:
        pytest.skip(f"{backend} tests need {env} set to an admin URL of a server (see tests/conftest.py)")
    database.empty()
    return database.url


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path, server_databases) -> str:
    """A URL of an empty queue database, once per backend."""
    return _url_for(request.param, tmp_path, server_databases)


@pytest.fixture
def postgres_url(tmp_path, server_databases) -> str:
    """An empty PostgreSQL queue database (skips without QUEUECORE_TEST_POSTGRES_URL)."""
    return _url_for("postgres", tmp_path, server_databases)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/queue.db"


@pytest.fixture
def queue(db_url) -> Iterator[Queue]:
    q = Queue(db_url)
    yield q
    q.close()


class PluginDir:
    """A folder of real entry-point plugins on ``sys.path``: modules beside
    ``*.dist-info`` folders, which importlib.metadata finds as installed
    distributions. ``env()`` puts the folder on a subprocess's PYTHONPATH."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.modules: list[str] = []

    def install(
        self, distribution: str, entry_points: dict[str, str], modules: dict[str, str], version: str = "1.0"
    ) -> None:
        """A distribution with these ``queuecore`` entry points (name -> target) and module sources."""
        for module, source in modules.items():
            (self.root / f"{module}.py").write_text(textwrap.dedent(source))
            self.modules.append(module)
        info = self.root / f"{distribution.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
        lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text("[queuecore]\n" + lines)
        importlib.invalidate_caches()

    def add(self, name: str, source: str, distribution: str | None = None, version: str = "0.1") -> str:
        """One plugin ``name`` in a module of its own (returned); distribution ``queuecore-<name>``."""
        module = f"qctest_{name.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
        self.install(distribution or f"queuecore-{name}", {name: module}, {module: source}, version)
        return module

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.root), env.get("PYTHONPATH", "")])
        env.update(extra)
        return env


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch) -> Iterator[PluginDir]:
    """Install plugins for this test only."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    plugins = PluginDir(root)
    yield plugins
    for module in plugins.modules:
        sys.modules.pop(module, None)

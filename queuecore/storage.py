"""Opening a database from a URL, the schema, and every query the queue runs.

Backend differences (SQLite, PostgreSQL, MySQL/MariaDB) live here and nowhere
else. The runner's hot path (claim, write-back, lease renewal, bulk insert) is
hand-written SQL run through the driver's cursor, because peewee's query
building costs more than the statements themselves at these batch sizes;
everything an operator runs (get, list, counts, retry, purge) goes through
the peewee models.
"""

from __future__ import annotations

import datetime as dt
import json
import json.scanner
import logging
import operator
import os
import select
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import peewee
from playhouse import db_url

from .errors import ConfigurationError
from .models import ACTIVE_STATUSES, SCHEMA_VERSION, TRIED_STATUSES, PluginStat, QueueItem, SchemaInfo, Status

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///queuecore.db"
URL_ENV_VAR = "QUEUECORE_DATABASE_URL"
NOTIFY_CHANNEL = "queuecore"

#: How long a SQLite connection waits for another writer before giving up.
SQLITE_BUSY_TIMEOUT_MS = 60_000

# Errors that mean "the database or the connection to it is not there right
# now" as opposed to a bad statement: the runner reconnects and carries on.
CONNECTION_ERRORS = (peewee.OperationalError, peewee.InterfaceError)


def utcnow() -> dt.datetime:
    """Naive UTC now: every time column holds naive UTC."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def redact_url(url: str) -> str:
    """The URL with its password replaced, fit for logs and error messages."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(":" + parts.password + "@", ":***@", 1)
    # Drivers also take the password as a query parameter (?password=...).
    query = "&".join(
        f"{key}=***" if key.lower() in _SECRET_PARAMS else pair
        for pair in parts.query.split("&")
        for key in [pair.split("=", 1)[0]]
    )
    if netloc == parts.netloc and query == parts.query:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


_SECRET_PARAMS = {"password", "passwd", "pass", "sslpassword"}


def open_database(url: str) -> peewee.Database:
    """A peewee database for ``url`` (``sqlite:///path``, ``postgresql://...``, ``mysql://...``).

    Raises :class:`ConfigurationError` (a ``ValueError``) for a URL that names
    no known backend, or a SQLite path whose folder does not exist.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"not a database URL: {url!r} (expected sqlite:///path, postgresql://... or mysql://...)"
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme == "sqlite":
        return _open_sqlite(url)
    if scheme in ("postgres", "postgresql"):
        _require_driver("psycopg", "postgres", url)
        try:
            # Prepared from the first execution: psycopg's default waits for
            # five, so a runner's first claims and write-backs are each planned
            # anew (measured: 4 runners, 20,000 items, 53-62k -> 64-70k items/s).
            return db_url.connect(url, prefer_psycopg3=True, prepare_threshold=0)
        except ValueError as exc:  # bad port and the like
            raise ConfigurationError(f"bad database URL {redact_url(url)}: {exc}") from None
    if scheme == "mysql":
        _require_driver("pymysql", "mysql", url)
        try:
            return db_url.connect(url, charset="utf8mb4")
        except ValueError as exc:
            raise ConfigurationError(f"bad database URL {redact_url(url)}: {exc}") from None
    raise ConfigurationError(
        f"unknown database scheme {scheme!r} in {redact_url(url)}: use sqlite, postgresql or mysql"
    )


def _require_driver(module: str, extra: str, url: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise ConfigurationError(
            f"{redact_url(url)} needs the {module} driver: pip install 'queuecore[{extra}]'"
        ) from None


def _open_sqlite(url: str) -> peewee.SqliteDatabase:
    path = url.split("://", 1)[1]
    if path.startswith("/"):
        path = path[1:]  # sqlite:///rel.db -> rel.db; sqlite:////abs.db -> /abs.db
    path = urllib.parse.unquote(path.split("?", 1)[0])
    if not path:
        raise ConfigurationError(f"no file name in SQLite URL {url!r}")
    if path != ":memory:":
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise ConfigurationError(f"folder {folder!r} of SQLite database {path!r} does not exist")
    return peewee.SqliteDatabase(path, pragmas=SQLITE_PRAGMAS, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)


SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "synchronous": "normal",
    "busy_timeout": SQLITE_BUSY_TIMEOUT_MS,
    "foreign_keys": 1,
}


def backend_of(db: peewee.Database) -> str:
    if isinstance(db, peewee.SqliteDatabase):
        return "sqlite"
    if isinstance(db, peewee.PostgresqlDatabase):
        return "postgres"
    if isinstance(db, peewee.MySQLDatabase):
        return "mysql"
    raise ConfigurationError(f"unsupported peewee database {type(db).__name__}")


#: A claimed row as the database returns it, before decoding: a plain tuple
#: (building an object a row costs more than the rest of the claim's Python),
#: its fields in the order of _CLAIMED_COLUMNS. The runner unpacks it by position.
ClaimedRow = tuple[int, str, Any, int, Any, Any, int, Any, Any, int]

#: One write-back: (status, trials, results, errors, run_after, lasttry_dtime, id, claim_token),
#: results and errors already JSON text, times naive UTC.
Outcome = tuple[int, int, str, str, dt.datetime, dt.datetime | None, int, int]

_CLAIMED_COLUMNS = (
    "id, type, payload, trials, results, errors, priority, creation_dtime, lasttry_dtime, claim_token"
)
# PostgreSQL returns the JSON columns of a claim as text, decoded by the runner
# item by item: psycopg decoding jsonb itself would fail the whole claim on one
# row nested deeper than Python's recursion limit (and crash every runner).
_CLAIMED_COLUMNS_PG = (
    "id, type, payload::text, trials, results::text, errors::text, priority, creation_dtime, lasttry_dtime, claim_token"
)


class Storage:
    """Every query of one queue database."""

    #: The condition of the partial (status, lasttry_dtime) index. SQLite uses
    #: a partial index only for queries that state its condition word for
    #: word, so queries meant for that index add :meth:`tried_only`.
    TRIED_CONDITION = f"status >= {min(TRIED_STATUSES):d}"

    def __init__(self, database: peewee.Database) -> None:
        self.db = database
        self.backend = backend_of(database)
        self.Item, self.Schema, self.PluginStat = _bind_models(database)
        self.table = QueueItem._meta.table_name
        self._param = "?" if self.backend == "sqlite" else "%s"
        self._json_param = "CAST(%s AS jsonb)" if self.backend == "postgres" else self._param
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._build_statements()

    # -- connections --------------------------------------------------------

    def transaction(self):
        """A write transaction; on SQLite it takes the write lock at BEGIN, so
        two writers queue at the busy timeout instead of deadlocking on upgrade."""
        if self.backend == "sqlite":
            return self.db.atomic("IMMEDIATE")
        return self.db.atomic()

    def reset_connection(self) -> None:
        """Drop this thread's connection after an error; the next query reconnects."""
        try:
            if not self.db.is_closed():
                self.db.close()
        except Exception:  # the connection is already broken; nothing to save
            log.debug("closing a broken connection failed", exc_info=True)
            try:
                self.db._state.reset()
            except Exception:
                pass

    # -- schema -------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Create the schema on first use; a current schema is only read, so a
        database user without DDL rights can use a queue someone else created."""
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            if self.db.table_exists(self.Schema._meta.table_name) and self.schema_version() == SCHEMA_VERSION:
                self._schema_ready = True
            else:
                self.create_schema()

    def create_schema(self) -> int:
        """Create or upgrade the tables and indexes; idempotent. Returns the schema version."""
        with self.db.atomic():
            self.db.create_tables([self.Item, self.Schema, self.PluginStat], safe=True)
            self._create_indexes()
            version = self.schema_version()
            if version is None:
                self.Schema.insert(key="version", value=str(SCHEMA_VERSION)).on_conflict_ignore().execute()
            elif version > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"the database's queuecore schema is version {version}, newer than this "
                    f"queuecore understands ({SCHEMA_VERSION}): upgrade queuecore"
                )
            # Later releases migrate from `version` to SCHEMA_VERSION here.
        self._schema_ready = True
        return SCHEMA_VERSION

    def schema_version(self) -> int | None:
        row = self.Schema.get_or_none(self.Schema.key == "version")
        return int(row.value) if row else None

    def _create_indexes(self) -> None:
        # The claim walks its index in its ORDER BY and stops after `limit`
        # due rows, so it neither sorts the backlog nor reads done rows: the
        # partial index holds only claimable statuses.
        name = f"{self.table}_claim"
        # Operators' views (failures, purge, the dashboard's history) read
        # tried items by status and last try; pending items stay out of it.
        tried = f"{self.table}_status_lasttry_dtime"
        if self.backend in ("sqlite", "postgres"):
            # SQLite's rowid is the last column of every index already.
            claim_columns = "priority DESC, run_after" if self.backend == "sqlite" else "priority DESC, run_after, id"
            self.db.execute_sql(
                f"CREATE INDEX IF NOT EXISTS {name} ON {self.table} ({claim_columns}) WHERE status < {Status.DONE:d}"
            )
            self.db.execute_sql(
                f"CREATE INDEX IF NOT EXISTS {tried} ON {self.table} (status, lasttry_dtime) "
                f"WHERE {self.TRIED_CONDITION}"
            )
        else:
            # MySQL has no partial indexes. A generated column that is NULL
            # for finished rows plays the part: the claim's range (IS NOT
            # NULL) skips them, and its order (-priority, run_after, id) is
            # the index's own, so nothing is sorted and FOR UPDATE locks only
            # the rows it takes.
            def exists(table: str, column: str, value: str) -> bool:
                return bool(
                    self.db.execute_sql(
                        f"SELECT COUNT(*) FROM information_schema.{table} "
                        f"WHERE table_schema = DATABASE() AND table_name = %s AND {column} = %s",
                        (self.table, value),
                    ).fetchone()[0]
                )

            if not exists("columns", "column_name", "claim_rank"):
                self.db.execute_sql(
                    f"ALTER TABLE {self.table} ADD COLUMN claim_rank INT "
                    f"AS (CASE WHEN status < {Status.DONE:d} THEN -priority END) STORED"
                )
            if not exists("statistics", "index_name", name):
                self.db.execute_sql(f"CREATE INDEX {name} ON {self.table} (claim_rank, run_after, id)")
            if not exists("statistics", "index_name", tried):
                self.db.execute_sql(f"CREATE INDEX {tried} ON {self.table} (status, lasttry_dtime)")

    def explain_claim(self) -> str:
        """The backend's plan for the claim (on MySQL, for its SELECT of due
        rows), for tests and operators. Nothing is claimed."""
        now = utcnow()
        if self.backend == "mysql":
            sql, params = "EXPLAIN " + self._select_due_sql, (now, 500)
        else:
            prefix = "EXPLAIN QUERY PLAN " if self.backend == "sqlite" else "EXPLAIN "
            t = self._time(now)
            sql, params = prefix + self._claim_sql, (1, "explain", t, t, t, 500)
        cursor = self.db.execute_sql(sql, params)
        return "\n".join(" ".join(str(c) for c in row) for row in cursor.fetchall())

    # -- the hot path -------------------------------------------------------

    def _build_statements(self) -> None:
        p, j, t = self._param, self._json_param, self.table
        if self.backend == "mysql":  # see _create_claim_index
            due = f"claim_rank IS NOT NULL AND run_after <= {p}"
            order = "ORDER BY claim_rank, run_after, id"
        else:
            due = f"status < {Status.DONE:d} AND run_after <= {p}"
            order = "ORDER BY priority DESC, run_after, id"
        self._select_due_sql = f"SELECT id FROM {t} WHERE {due} {order} LIMIT {p}"
        lock = " FOR UPDATE SKIP LOCKED" if self.backend != "sqlite" else ""
        # An item still in progress whose lease ran out was abandoned by a
        # runner that died: that try counts.
        # trials comes first: MySQL evaluates SET left to right with the new
        # values, so it must read status before status is overwritten.
        claim_set = (
            f"trials = trials + CASE WHEN status = {Status.IN_PROGRESS:d} AND trials < {p} THEN 1 ELSE 0 END, "
            f"status = {Status.IN_PROGRESS:d}, lease_owner = {p}, lease_expires = {p}, run_after = {p}, "
            f"claim_token = claim_token + 1"
        )
        if self.backend == "postgres":
            # = ANY(ARRAY(...)) makes the chosen ids one array that the
            # update looks up through the primary key; IN (...) became a hash
            # join over a sequential scan of the whole table (measured: 8.4
            # against 4.5 us an item of server time, 20,000 rows).
            claimed = f"id = ANY(ARRAY({self._select_due_sql}{lock}))"
        else:
            claimed = f"id IN ({self._select_due_sql})"
        self._claim_sql = (
            f"UPDATE {t} SET {claim_set} WHERE {claimed} "
            f"RETURNING {_CLAIMED_COLUMNS_PG if self.backend == 'postgres' else _CLAIMED_COLUMNS}"
        )
        self._mysql_lock_sql = self._select_due_sql + lock
        self._mysql_claim_update_sql = f"UPDATE {t} SET {claim_set} WHERE id IN ({{ids}})"
        self._mysql_claim_select_sql = f"SELECT {_CLAIMED_COLUMNS} FROM {t} WHERE id IN ({{ids}})"
        self._write_back_sql = (
            f"UPDATE {t} SET status = {p}, trials = {p}, results = {j}, errors = {j}, run_after = {p}, "
            f"lasttry_dtime = {p}, lease_owner = NULL, lease_expires = NULL "
            f"WHERE id = {p} AND claim_token = {p}"
        )
        # One statement a batch. Most outcomes of a batch are alike (done, the
        # same results, a few clock readings), so the distinct ones travel once,
        # as a JSON document, and each row names its own by number (k). The
        # ids, tokens and numbers are array literals built here: psycopg
        # dumps Python lists element by element in Python. Measured against
        # one JSON record a row: 5.2 against 8.0 us an item of server CPU.
        self._write_back_pg_sql = (
            f"UPDATE {t} AS t SET status = s.status, trials = s.trials, results = s.results, "
            "errors = s.errors, run_after = s.run_after, lasttry_dtime = s.lasttry, "
            "lease_owner = NULL, lease_expires = NULL "
            "FROM jsonb_to_recordset(%s::jsonb) AS s(k int, status smallint, trials int, "
            "results jsonb, errors jsonb, run_after timestamp, lasttry timestamp), "
            "unnest(%s::bigint[], %s::bigint[], %s::int[]) AS v(id, token, k) "
            "WHERE s.k = v.k AND t.id = v.id AND t.claim_token = v.token"
        )
        self._renew_sql = (
            f"UPDATE {t} SET lease_expires = {p}, run_after = {p} "
            f"WHERE id = {p} AND claim_token = {p} AND status = {Status.IN_PROGRESS:d}"
        )
        stat_values = f"({p}, {p}, {p}, {p})"
        if self.backend == "mysql":
            self._stats_sql = (
                f"INSERT INTO {PluginStat._meta.table_name} (plugin, successes, failures, seconds) VALUES {stat_values} "
                "ON DUPLICATE KEY UPDATE successes = successes + VALUES(successes), "
                "failures = failures + VALUES(failures), seconds = seconds + VALUES(seconds)"
            )
        else:
            s_t = PluginStat._meta.table_name
            self._stats_sql = (
                f"INSERT INTO {s_t} (plugin, successes, failures, seconds) VALUES {stat_values} "
                f"ON CONFLICT (plugin) DO UPDATE SET successes = {s_t}.successes + excluded.successes, "
                f"failures = {s_t}.failures + excluded.failures, seconds = {s_t}.seconds + excluded.seconds"
            )
        self._insert_sql = (
            f"INSERT INTO {t} (type, payload, status, trials, results, errors, priority, run_after, "
            f"claim_token, creation_dtime) VALUES ({p}, {j}, {Status.PENDING:d}, 0, '{{}}', '{{}}', {p}, {p}, 0, {p})"
        )

    def _time(self, value: dt.datetime | None) -> Any:
        # SQLite stores text; a fixed-width format keeps text order = time order.
        if value is None or self.backend != "sqlite":
            return value
        return value.isoformat(" ", "microseconds")

    def _time_formatter(self) -> dict[Any, Any]:
        """:meth:`_time` for many values that share a few clock readings, as a
        dict to index: each value is formatted once, on its first lookup."""
        return ConvertOnce(self._time)

    def parse_time(self, value: Any) -> dt.datetime | None:
        if value is None or isinstance(value, dt.datetime):
            return value
        return dt.datetime.fromisoformat(value)

    def claim(
        self, owner: str, now: dt.datetime, lease_until: dt.datetime, limit: int, max_trials: int | None = None
    ) -> list[ClaimedRow]:
        """Atomically take up to ``limit`` due items, highest priority then oldest first.

        Taking over an item whose lease expired counts as a try, up to ``max_trials``.
        """
        until = self._time(lease_until)
        cap = 2**31 - 1 if max_trials is None else max_trials
        if self.backend == "mysql":
            return self._claim_mysql(owner, now, until, limit, cap)
        params = (cap, owner, until, until, self._time(now), limit)
        if self.backend == "postgres" and not self.db.in_transaction():
            # One statement is atomic on its own (the connection autocommits):
            # BEGIN and COMMIT would be two more round trips a batch.
            rows = self.db.execute_sql(self._claim_sql, params).fetchall()
        else:
            with self.transaction():
                rows = self.db.execute_sql(self._claim_sql, params).fetchall()
        return _in_claim_order(rows)

    def _claim_mysql(self, owner: str, now: dt.datetime, until: Any, limit: int, cap: int) -> list[ClaimedRow]:
        # MySQL has no UPDATE ... RETURNING and refuses LIMIT in an IN
        # subquery: lock the rows, update them, read them, in one transaction.
        with self.transaction():
            ids = [r[0] for r in self.db.execute_sql(self._mysql_lock_sql, (now, limit)).fetchall()]
            if not ids:
                return []
            marks = ", ".join(["%s"] * len(ids))
            self.db.execute_sql(self._mysql_claim_update_sql.format(ids=marks), (cap, owner, until, until, *ids))
            rows = self.db.execute_sql(self._mysql_claim_select_sql.format(ids=marks), ids).fetchall()
        return _in_claim_order(list(rows))

    def write_back(self, outcomes: Sequence[Outcome], stats: Sequence[tuple[str, int, int, float]] = ()) -> int:
        """Store the outcomes of a batch in one transaction, each fenced by its claim token,
        and add ``stats`` rows (plugin, successes, failures, seconds) to the plugin counters.

        Returns how many rows were written; an outcome whose token no longer
        matches (another runner took the item after this one's lease ran out)
        is dropped, so a stale runner never overwrites newer work.
        """
        if not outcomes:
            return 0
        if self.backend == "sqlite":
            text = self._time_formatter()
            outcomes = [(s, tr, r, e, text[ra], text[lt], i, tok) for (s, tr, r, e, ra, lt, i, tok) in outcomes]
        with self.transaction():
            cursor = self.db.cursor()
            if self.backend == "mysql":
                written = self._write_back_mysql(cursor, outcomes)
            elif self.backend == "postgres":
                # One statement for the batch, instead of a round trip a row.
                cursor.execute(self._write_back_pg_sql, _outcomes_for_postgres(outcomes))
                written = cursor.rowcount
            else:
                cursor.executemany(self._write_back_sql, outcomes)
                written = cursor.rowcount
            if stats:
                # Sorted, so concurrent runners lock the counter rows in one order.
                self.db.cursor().executemany(self._stats_sql, sorted(stats))
        return written if written is not None and written >= 0 else len(outcomes)

    def _write_back_mysql(self, cursor: Any, outcomes: Sequence[Outcome]) -> int:
        # PyMySQL's executemany sends an UPDATE a row; one UPDATE joined to
        # the batch's values (a UNION ALL: MariaDB and MySQL spell VALUES
        # tables differently) is one round trip a chunk.
        written = 0
        for start in range(0, len(outcomes), 500):
            chunk = outcomes[start : start + 500]
            first = "SELECT %s AS st, %s AS tr, %s AS rs, %s AS er, %s AS ra, %s AS lt, %s AS id, %s AS tok"
            rows = " UNION ALL ".join([first] + ["SELECT %s, %s, %s, %s, %s, %s, %s, %s"] * (len(chunk) - 1))
            cursor.execute(
                f"UPDATE {self.table} AS t JOIN ({rows}) AS v ON t.id = v.id AND t.claim_token = v.tok "
                "SET t.status = v.st, t.trials = v.tr, t.results = v.rs, t.errors = v.er, t.run_after = v.ra, "
                "t.lasttry_dtime = v.lt, t.lease_owner = NULL, t.lease_expires = NULL",
                [value for outcome in chunk for value in outcome],
            )
            written += cursor.rowcount
        return written

    def renew_leases(self, held: Iterable[tuple[int, int]], until: dt.datetime) -> int:
        """Push back the lease of each (id, claim_token) still held; returns how many were renewed."""
        t = self._time(until)
        params = [(t, t, item_id, token) for item_id, token in held]
        if not params:
            return 0
        with self.transaction():
            cursor = self.db.cursor()
            cursor.executemany(self._renew_sql, params)
            return cursor.rowcount

    def insert(self, rows: Sequence[tuple[str, str, int, dt.datetime]], now: dt.datetime) -> list[int]:
        """Insert (type, payload JSON text, priority, run_after) rows in one transaction; ids in order."""
        text = self._time_formatter()
        created = text[now]
        params = [(typ, payload, prio, text[run_after], created) for typ, payload, prio, run_after in rows]
        with self.transaction():
            cursor = self.db.cursor()
            if self.backend == "sqlite":
                cursor.executemany(self._insert_sql, params)
                # AUTOINCREMENT under the write lock hands out consecutive ids.
                last = self.db.execute_sql("SELECT last_insert_rowid()").fetchone()[0]
                ids = list(range(last - len(params) + 1, last + 1))
            elif self.backend == "postgres":
                ids = self._insert_returning_postgres(cursor, params)
                self.db.execute_sql(f"NOTIFY {NOTIFY_CHANNEL}")
            else:
                ids = self._insert_mysql(cursor, params)
        return ids

    def _insert_returning_postgres(self, cursor: Any, params: list[tuple]) -> list[int]:
        ids: list[int] = []
        for start in range(0, len(params), 1000):
            chunk = params[start : start + 1000]
            values = ", ".join(["(%s, CAST(%s AS jsonb), 0, 0, '{}', '{}', %s, %s, 0, %s)"] * len(chunk))
            cursor.execute(
                f"INSERT INTO {self.table} (type, payload, status, trials, results, errors, priority, "
                f"run_after, claim_token, creation_dtime) VALUES {values} RETURNING id",
                [v for row in chunk for v in row],
            )
            # A multi-row VALUES insert returns its rows in VALUES order.
            ids.extend(r[0] for r in cursor.fetchall())
        return ids

    def _insert_mysql(self, cursor: Any, params: list[tuple]) -> list[int]:
        ids: list[int] = []
        for start in range(0, len(params), 1000):
            chunk = params[start : start + 1000]
            values = ", ".join(["(%s, %s, 0, 0, '{}', '{}', %s, %s, 0, %s)"] * len(chunk))
            cursor.execute(
                f"INSERT INTO {self.table} (type, payload, status, trials, results, errors, priority, "
                f"run_after, claim_token, creation_dtime) VALUES {values}",
                [v for row in chunk for v in row],
            )
            # One multi-row INSERT gets consecutive ids from its first one.
            first = cursor.lastrowid
            ids.extend(range(first, first + len(chunk)))
        return ids

    # -- waiting for work ---------------------------------------------------

    def make_waiter(self) -> Waiter:
        if self.backend == "postgres":
            return PostgresWaiter(self.db)
        return Waiter()

    # -- operator queries (peewee) ------------------------------------------

    def tried_only(self) -> Any:
        """The (status, lasttry_dtime) index's own condition, as a peewee expression."""
        return self.Item.status >= min(TRIED_STATUSES)

    def plugin_stats(self) -> list[PluginStat]:
        return list(self.PluginStat.select().order_by(self.PluginStat.plugin))

    def get_row(self, item_id: int) -> QueueItem | None:
        return self.Item.get_or_none(self.Item.id == item_id)

    def counts(self) -> dict[Status, int]:
        found = dict(
            self.Item.select(self.Item.status, peewee.fn.COUNT(self.Item.id)).group_by(self.Item.status).tuples()
        )
        return {status: found.get(int(status), 0) for status in Status}

    def counts_by_type(self) -> dict[str, dict[Status, int]]:
        query = (
            self.Item.select(self.Item.type, self.Item.status, peewee.fn.COUNT(self.Item.id))
            .group_by(self.Item.type, self.Item.status)
            .tuples()
        )
        by_type: dict[str, dict[Status, int]] = {}
        for typ, status, n in query:
            by_type.setdefault(typ, {s: 0 for s in Status})[Status(status)] = n
        return dict(sorted(by_type.items()))

    def oldest_due(self, now: dt.datetime) -> dt.datetime | None:
        """run_after of the longest-waiting item that is due and not in progress."""
        return (
            self.Item.select(peewee.fn.MIN(self.Item.run_after))
            .where(
                self.Item.status < Status.DONE,  # the claim index's condition
                self.Item.status.in_([Status.PENDING, Status.NEED_RETRY]),
                self.Item.run_after <= now,
            )
            .scalar()
        )

    def has_due(self, now: dt.datetime) -> bool:
        return (
            self.Item.select(self.Item.id)
            .where(self.Item.status < Status.DONE, self.Item.run_after <= now)
            .exists()
        )

    def select_rows(
        self,
        statuses: Sequence[Status] | None = None,
        types: Sequence[str] | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[QueueItem]:
        query = self.Item.select().order_by(self.Item.id.desc()).limit(limit)
        if statuses:
            query = query.where(self.Item.status.in_([int(s) for s in statuses]))
            if all(s in TRIED_STATUSES for s in statuses):
                query = query.where(self.tried_only())
        if types:
            query = query.where(self.Item.type.in_(list(types)))
        if before_id is not None:
            query = query.where(self.Item.id < before_id)
        return list(query)

    def retry(
        self,
        ids: Sequence[int] | None,
        statuses: Sequence[Status] | None,
        types: Sequence[str] | None,
        reset: bool,
        now: dt.datetime,
    ) -> int:
        """Make matching items pending and due now with trials 0; returns how many.

        Items in progress are never touched: their runner still owns them.
        """
        fields: dict[Any, Any] = {
            self.Item.status: Status.PENDING,
            self.Item.trials: 0,
            self.Item.run_after: now,
            self.Item.lease_owner: None,
            self.Item.lease_expires: None,
        }
        if reset:
            # A literal, not a bound dict: MariaDB has no CAST(... AS JSON).
            fields[self.Item.results] = peewee.SQL("'{}'")
            fields[self.Item.errors] = peewee.SQL("'{}'")
        query = self.Item.update(fields).where(self.Item.status != Status.IN_PROGRESS)
        if ids is not None:
            query = query.where(self.Item.id.in_(list(ids)))
        if statuses:
            query = query.where(self.Item.status.in_([int(s) for s in statuses]))
        if types:
            query = query.where(self.Item.type.in_(list(types)))
        with self.transaction():
            count = query.execute()
            if self.backend == "postgres" and count:
                self.db.execute_sql(f"NOTIFY {NOTIFY_CHANNEL}")
        return count

    def purge(
        self,
        statuses: Sequence[Status],
        older_than: dt.datetime | None,
        types: Sequence[str] | None,
        dry_run: bool,
        chunk_size: int = 1000,
    ) -> int:
        """Delete finished items in chunks of ``chunk_size``, each its own short transaction."""
        for status in statuses:
            if status in ACTIVE_STATUSES:
                raise ConfigurationError(f"refusing to purge {status.name.lower()} items: only done or error")
        condition = self.Item.status.in_([int(s) for s in statuses]) & self.tried_only()
        if older_than is not None:
            condition &= peewee.fn.COALESCE(self.Item.lasttry_dtime, self.Item.creation_dtime) < older_than
        if types:
            condition &= self.Item.type.in_(list(types))
        if dry_run:
            return self.Item.select().where(condition).count()
        total = 0
        while True:
            with self.transaction():
                ids = [r[0] for r in self.Item.select(self.Item.id).where(condition).limit(chunk_size).tuples()]
                if not ids:
                    return total
                total += self.Item.delete().where(self.Item.id.in_(ids)).execute()


def _outcomes_for_postgres(outcomes: Sequence[Outcome]) -> tuple[str, str, str, str]:
    """The parameters of the PostgreSQL write-back: the distinct outcomes as a
    JSON array of records numbered from 1, and the ids, claim tokens and
    record numbers as array literals.

    results and errors are JSON texts already (from the runner's encoder), so
    they are spliced in as they are; times are naive UTC, formatted once each.
    """
    numbers: dict[tuple, int] = {}
    keys = []
    for outcome in outcomes:
        shared = outcome[:6]
        number = numbers.get(shared)
        if number is None:
            number = numbers[shared] = len(numbers) + 1
        keys.append(number)
    times = ConvertOnce(_json_time, none="null")
    records = ",".join([
        f'{{"k":{k:d},"status":{status:d},"trials":{trials:d},"results":{results},"errors":{errors},'
        f'"run_after":{times[run_after]},"lasttry":{times[lasttry]}}}'
        for (status, trials, results, errors, run_after, lasttry), k in numbers.items()
    ])
    return (
        f"[{records}]",
        _int_array([outcome[6] for outcome in outcomes]),
        _int_array([outcome[7] for outcome in outcomes]),
        _int_array(keys),
    )


def _int_array(values: list[int]) -> str:
    return "{" + ",".join(map(str, map(int, values))) + "}"


def _json_time(value: dt.datetime) -> str:
    return f'"{value.isoformat()}"'


class ConvertOnce(dict):
    """value -> ``convert(value)``, computed on a value's first lookup (None -> ``none``).

    For the many rows of a batch that share a few times: each is formatted
    or parsed once, and the lookups stay in C.
    """

    def __init__(self, convert: Callable[[Any], Any], none: Any = None) -> None:
        super().__init__({None: none})
        self.convert = convert

    def __missing__(self, value: Any) -> Any:
        converted = self[value] = self.convert(value)
        return converted


def _in_claim_order(rows: list[ClaimedRow]) -> list[ClaimedRow]:
    """Highest priority first, then oldest: RETURNING gives rows in no set order.

    Two stable sorts with C key functions; cheaper than one with a Python key.
    """
    rows.sort(key=_by_id)
    rows.sort(key=_by_priority, reverse=True)  # reverse keeps equal keys in order
    return rows


_by_id = operator.itemgetter(0)
_by_priority = operator.itemgetter(6)
_decoder = json.JSONDecoder()
_decode_json = _decoder.decode
# The scanner under JSONDecoder.decode, without its two whitespace regex passes:
# a quarter of the cost on a claimed row's small documents.
_scan_json = json.scanner.make_scanner(_decoder)


def decode_claimed_json(value: str | bytes) -> Any:
    """A JSON column of a claimed row: every backend's claim returns them as
    text (see _CLAIMED_COLUMNS_PG), decoded here item by item."""
    if value == "{}":  # most results/errors columns: skip the decoder
        return {}
    if value.__class__ is bytes:
        value = value.decode("utf-8")
    try:
        decoded, end = _scan_json(value, 0)
    except StopIteration:
        return _decode_json(value)  # not JSON at its first character: raise the decoder's own error
    if end != len(value):
        return _decode_json(value)  # surrounding whitespace or trailing data: the decoder decides
    return decoded


def _bind_models(database: peewee.Database) -> tuple[Any, ...]:
    """Subclasses of the models bound to ``database``, so several queues on
    several databases can live in one process without rebinding a proxy."""
    bound = []
    for model in (QueueItem, SchemaInfo, PluginStat):
        meta = type("Meta", (), {"table_name": model._meta.table_name, "database": database})
        bound.append(type(model.__name__, (model,), {"Meta": meta, "__module__": __name__}))
    return tuple(bound)


class Waiter:
    """Sleeps between polls of an idle queue; backends with push notices override ``wait``."""

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        """Block for up to ``timeout`` seconds or until ``stop``; True when woken early by news."""
        stop.wait(timeout)
        return False

    def close(self) -> None:
        pass


class PostgresWaiter(Waiter):
    """LISTENs on its own connection so an enqueue (which NOTIFYs) wakes an idle runner at once."""

    def __init__(self, db: peewee.PostgresqlDatabase) -> None:
        self._db = db
        self._conn: Any = None

    def _connect(self) -> Any:
        import psycopg

        params = dict(self._db.connect_params)
        params["dbname"] = self._db.database
        conn = psycopg.connect(autocommit=True, **params)
        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        return conn

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            # Wake at least every 0.5 s to notice a stop request.
            step = min(timeout, 0.5)
            waited = 0.0
            while waited < timeout and not stop.is_set():
                if select.select([self._conn.fileno()], [], [], step)[0]:
                    got = list(self._conn.notifies(timeout=0, stop_after=100))
                    if got:
                        return True
                waited += step
            return False
        except Exception as exc:  # a dead server: fall back to sleeping; the runner reconnects
            log.warning("LISTEN connection lost (%s); polling until it is back", type(exc).__name__)
            self.close()
            stop.wait(timeout)
            return False

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

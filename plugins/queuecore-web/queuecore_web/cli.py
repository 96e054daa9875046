"""``queuecore web``: serve the dashboard and /metrics."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import click

from .queries import DEFAULT_SCAN, MAX_SCAN
from .security import AUTH_ENV_VAR, Credentials

DEFAULT_URL_ENV = "QUEUECORE_DATABASE_URL"
DEFAULT_URL = "sqlite:///queuecore.db"


def _database_url(ctx: click.Context) -> str:
    """The URL the root command chose (``--db``), else the environment's, else the default."""
    obj = ctx.find_root().obj
    url = getattr(obj, "url", None) or (obj.get("url") if isinstance(obj, dict) else None)
    return url or os.environ.get(DEFAULT_URL_ENV) or DEFAULT_URL


def _parse_auth(ctx: click.Context, param: click.Parameter, value: str | None) -> Credentials | None:
    if value is None or value == "":
        return None
    try:
        return Credentials.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback exposes the queue: add --auth.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--read-only", is_flag=True, help="Show everything, allow no retry or purge.")
@click.option("--auth", metavar="USER:PASSWORD", envvar=AUTH_ENV_VAR, callback=_parse_auth,
              help=f"Require HTTP basic auth for every page and /metrics (or set {AUTH_ENV_VAR}).")
@click.option("--failure-scan", default=DEFAULT_SCAN, show_default=True, type=click.IntRange(1, MAX_SCAN),
              help="How many of the newest failed items the failure groups are built from.")
@click.pass_context
def web(ctx: click.Context, host: str, port: int, read_only: bool, auth: Credentials | None, failure_scan: int) -> None:
    """Serve the web dashboard and Prometheus /metrics."""
    from queuecore import Queue, QueuecoreError
    from queuecore.storage import redact_url

    from .app import create_app

    url = _database_url(ctx)
    try:
        queue = Queue(url)
        queue.init()
        queue.close()
    except (QueuecoreError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # the database cannot be reached: one line, not a traceback
        raise click.ClickException(f"cannot open {redact_url(url)}: {type(exc).__name__}: {exc}") from None
    if not _is_loopback(host) and auth is None:
        click.echo(f"warning: serving on {host} without --auth: anyone who can reach it can see the queue"
                   f"{'' if read_only else ' and retry or purge items'}", err=True)
    app = create_app(queue, read_only=read_only, auth=auth, failure_scan=failure_scan)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"queuecore dashboard for {redact_url(url)} on http://{shown}:{port}/"
               f"{' (read-only)' if read_only else ''}{' (basic auth)' if auth else ''}", err=True)
    serve(app, host, port)


def serve(app: Any, host: str, port: int) -> None:
    """Run ``app`` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, server_header=False)

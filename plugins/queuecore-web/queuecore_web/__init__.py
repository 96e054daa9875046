"""queuecore-web: a web dashboard and Prometheus metrics for a queuecore queue.

Installed, it adds ``queuecore web`` to the command line through the
``register_commands`` hook. The runner loads every ``queuecore`` plugin too,
so this module stays light: the web stack is imported only when the command
(or :func:`create_app`) is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from queuecore import hookimpl

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from queuecore import Queue

__all__ = ["create_app", "register_commands"]


def create_app(queue: Queue, **options: Any) -> Starlette:
    """The dashboard as an ASGI application; see :func:`queuecore_web.app.create_app`."""
    from .app import create_app as _create_app

    return _create_app(queue, **options)


@hookimpl
def register_commands(cli: Any) -> None:
    """Add ``queuecore web``."""
    from .cli import web

    cli.add_command(web)

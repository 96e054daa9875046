"""The ``queuecore`` command."""

import click


@click.group()
def cli() -> None:
    """Operate a queuecore queue."""


def main() -> None:
    cli()

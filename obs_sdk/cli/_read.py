"""``obs-sdk query`` and ``obs-sdk tail``: read the trail, newest first."""

from __future__ import annotations

import datetime
import sys
import time
from typing import Any

import click

from obs_sdk.cli import _ledger
from obs_sdk.cli._app import command, state
from obs_sdk.cli._filters import filter_options, filters_of
from obs_sdk.cli._output import FORMATS, print_records

__all__ = ["query", "tail"]

_PAGE = 1000

_FORMAT = click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="table for people, jsonl or csv for programs.",
)


@command()
@filter_options
@click.option("--limit", "-n", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--after", metavar="ID", help="The next page: the records after this one.")
@_FORMAT
def query(limit: int, after: str | None, fmt: str, **params: Any) -> None:
    """Print the newest records matching the filters, one page.

    When there are more, the id to pass as --after for the next page is printed on
    stderr.
    """
    bind = state().engine()
    records = _ledger.newest_first(bind, filters_of(params), after=after, limit=limit)
    print_records(records, fmt, sys.stdout)
    if len(records) == limit:
        click.echo(f"more: next page with --after {records[-1].id}", err=True)


@command()
@filter_options
@click.option("--lines", "-n", default=20, show_default=True, type=click.IntRange(0, 10_000))
@click.option("--follow", "-f", is_flag=True, help="Keep printing records as they arrive.")
@click.option(
    "--interval", default=1.0, show_default=True, type=click.FloatRange(0.05), help="Seconds."
)
@click.option(
    "--late",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0),
    help="With -f: also catch records whose transaction committed up to this many seconds "
    "after they were made.",
)
@_FORMAT
def tail(lines: int, follow: bool, interval: float, late: float, fmt: str, **params: Any) -> None:
    """Print the last records, oldest of them first; with -f, keep following."""
    bind = state().engine()
    filters = filters_of(params)
    records = _ledger.newest_first(bind, filters, after=None, limit=lines) if lines else []
    records.reverse()
    print_records(records, fmt, sys.stdout, lines=True)
    if not follow:
        return
    _follow(bind, filters, records, interval, datetime.timedelta(seconds=late), fmt)


def _follow(
    bind: Any,
    filters: dict[str, Any],
    shown: list[Any],
    interval: float,
    late: datetime.timedelta,
    fmt: str,
) -> None:
    """Poll for records not yet shown, until interrupted.

    Ids are time-ordered, but a transaction that commits late makes its records appear
    below the newest id already shown: each poll re-reads the last *late* of call time
    and prints what it has not printed (the ids shown in that window are kept, no more).
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    newest = max((r.occurred_at for r in shown), default=now)
    # What was there at the start counts as seen, printed or not (-n limits the printing).
    seen = {r.id: r.occurred_at for r in _window(bind, _since(filters, newest - late))}
    try:
        while True:
            time.sleep(interval)
            fresh = [r for r in _window(bind, _since(filters, newest - late)) if r.id not in seen]
            if fresh:
                print_records(fresh, fmt, sys.stdout, header=False, lines=True)
                newest = max(newest, *(r.occurred_at for r in fresh))
            seen.update((r.id, r.occurred_at) for r in fresh)
            horizon = newest - late
            seen = {rid: at for rid, at in seen.items() if at >= horizon}
    except KeyboardInterrupt:
        return


def _since(filters: dict[str, Any], since: datetime.datetime) -> dict[str, Any]:
    """*filters* reading from *since* on (or from the user's --since, if later)."""
    if filters["since"] is not None:
        since = max(since, filters["since"])
    return {**filters, "since": since}


def _window(bind: Any, filters: dict[str, Any]) -> list[Any]:
    """Every record matching *filters*, in id order (pages of 1000)."""
    found: list[Any] = []
    after = None
    while True:
        page = _ledger.oldest_first(bind, filters, after=after, limit=_PAGE)
        found.extend(page)
        if len(page) < _PAGE:
            return found
        after = str(page[-1].id)

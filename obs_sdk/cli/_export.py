"""``obs-sdk export``: every matching record, streamed in id order, resumable.

Constant memory: one page (``--page-size`` records) at a time. Writing to a file keeps a
cursor beside it (``FILE.cursor``: the last id written and the file's size then), updated
after each page; ``--resume`` truncates the file to that size and goes on after that id,
so an interrupted export resumes without a duplicate or a gap. The cursor file is removed
when the export completes.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from obs_sdk.cli import _ledger
from obs_sdk.cli._app import command, fail, state
from obs_sdk.cli._filters import filter_options, filters_of
from obs_sdk.cli._rows import csv_lines, json_line

__all__ = ["Cursor", "export", "pages"]


class Cursor:
    """The ``FILE.cursor`` beside an export: where it stopped."""

    def __init__(self, output: Path) -> None:
        self.path = output.with_name(output.name + ".cursor")

    def read(self) -> tuple[str, int] | None:
        """Return (last id written, file size then), or None when there is no cursor."""
        try:
            saved = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        return str(saved["after"]), int(saved["size"])

    def write(self, after: str, size: int) -> None:
        """Record progress; atomic (a crash leaves the old cursor or the new one)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"after": after, "size": size}))
        os.replace(tmp, self.path)

    def remove(self) -> None:
        """Forget the cursor: the export is complete."""
        self.path.unlink(missing_ok=True)


def pages(
    bind: Any, filters: dict[str, Any], *, after: str | None, size: int
) -> Iterator[list[Any]]:
    """Yield the matching records in id order, one page at a time, after id *after*."""
    while True:
        page = _ledger.oldest_first(bind, filters, after=after, limit=size)
        if page:
            yield page
        if len(page) < size:
            return
        after = str(page[-1].id)


def _render(page: list[Any], fmt: str, header: bool) -> str:
    if fmt == "csv":
        return "".join(csv_lines(page, header=header))
    return "".join(json_line(record) + "\n" for record in page)


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("exporting"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[records]:,} records"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=quiet,
    )


class _Span:
    """Progress as the share of the time span covered so far.

    Ids are time-ordered, and telling the span takes two one-row reads where counting
    the records would scan them all.
    """

    def __init__(self, bind: Any, filters: dict[str, Any]) -> None:
        first = _ledger.oldest_first(bind, filters, after=None, limit=1)
        try:
            last = _ledger.newest_first(bind, filters, after=None, limit=1)
        except _ledger.NotAvailable:
            last = []
        self.start = first[0].occurred_at if first else None
        end = last[0].occurred_at if last else None
        self.total = (end - self.start).total_seconds() if self.start and end else None

    def done(self, record: Any) -> float:
        return (record.occurred_at - self.start).total_seconds() if self.start else 0.0


@command()
@filter_options
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True
)
@click.option(
    "--output",
    "-O",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file (else stdout); a FILE.cursor beside it allows --resume.",
)
@click.option("--resume", is_flag=True, help="Go on from where an interrupted export stopped.")
@click.option("--after", metavar="ID", help="Start after this record id (resume by hand).")
@click.option("--page-size", default=5000, show_default=True, type=click.IntRange(1, 10_000))
@click.option(
    "--with-proofs",
    is_flag=True,
    help="With --organization: a bundle with inclusion proofs and seals that the "
    "customer verifies alone (JSON).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def export(
    fmt: str,
    output: Path | None,
    resume: bool,
    after: str | None,
    page_size: int,
    with_proofs: bool,
    quiet: bool,
    **params: Any,
) -> None:
    """Write every matching record, oldest first, as JSON lines or CSV."""
    filters = filters_of(params)
    if with_proofs:
        _bundle(filters, output)
        return
    if resume and output is None:
        fail("--resume needs --output FILE (the file the interrupted export was writing)")
    bind = state().engine()
    cursor = Cursor(output) if output is not None else None
    header = fmt == "csv"
    if resume and cursor is not None:
        saved = cursor.read()
        if saved is None:
            fail(
                f"nothing to resume: {cursor.path} is missing (the export finished, or "
                "never wrote a page); run it again without --resume"
            )
        after, size = saved
        with open(output, "r+b") as f:  # type: ignore[arg-type]
            f.truncate(size)  # drop what was written after the last recorded page
        header = header and size == 0
    # Bytes, not text: the cursor records a byte offset, and text files' tell() is opaque.
    out: IO[bytes] = (
        open(output, "ab" if resume else "wb")  # noqa: SIM115
        if output is not None
        else sys.stdout.buffer
    )
    written = 0
    try:
        with _progress(quiet) as progress:
            span = _Span(bind, filters)
            task = progress.add_task("export", total=span.total, records=0)
            for page in pages(bind, filters, after=after, size=page_size):
                out.write(_render(page, fmt, header).encode())
                out.flush()
                header = False
                after = str(page[-1].id)
                written += len(page)
                if cursor is not None:
                    cursor.write(after, out.tell())
                progress.update(task, completed=span.done(page[-1]), records=written)
            progress.update(task, completed=span.total or 0)
        if header:  # CSV and nothing matched: still a header
            out.write(_render([], fmt, True).encode())
    except KeyboardInterrupt:
        how = "--resume" if output is not None else f"--after {after}" if after else "again"
        fail(f"interrupted after {written} records; continue with the same command and {how}")
    finally:
        if output is not None:
            out.close()
        else:
            out.flush()
    if cursor is not None:
        cursor.remove()
    click.echo(f"exported {written} records", err=True)


def _bundle(filters: dict[str, Any], output: Path | None) -> None:
    """One organization's bundle: its records with inclusion proofs, and the seals."""
    if not filters["organization"]:
        fail("--with-proofs needs --organization ORG: a bundle holds one organization's trail")
    others = [name for name, value in filters.items() if value and name != "organization"]
    if others:
        fail(
            f"--with-proofs takes --organization only (not {', '.join(others)}): the "
            "bundle is the organization's whole sealed trail"
        )
    write_bundle = _ledger.function("write_bundle")
    engine, organization = state().engine(), filters["organization"]
    if output is None:
        count = write_bundle(sys.stdout, engine, organization=organization)
    else:
        # Written beside the file and renamed when whole: an interrupted export never
        # leaves a cut bundle under the name the customer is sent.
        partial = output.with_name(output.name + ".partial")
        try:
            with open(partial, "w", encoding="utf-8") as out:
                count = write_bundle(out, engine, organization=organization)
            os.replace(partial, output)
        finally:
            partial.unlink(missing_ok=True)
    click.echo(
        f"bundle of {count:,} records of {organization}; "
        "they check it with: obs-sdk verify --bundle FILE --public-key KEY.pub",
        err=True,
    )

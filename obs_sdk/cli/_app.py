"""The ``obs-sdk`` command group: the database option, and errors as one line.

Exit codes follow grep: 0 done (verify: nothing found), 1 verify found something,
2 the command could not run (bad option, database unreachable, tables missing...).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import click
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError

import obs_sdk as obs
from obs_sdk._ledger._tables import DEFAULT_PREFIX, check_schema, tables

__all__ = ["EXIT_ERROR", "EXIT_FOUND", "Failure", "State", "cli", "fail", "state"]

EXIT_FOUND = 1
EXIT_ERROR = 2
F = TypeVar("F", bound=Callable[..., Any])


class Failure(click.ClickException):
    """A command that could not run: one line on stderr saying what to do, exit code 2."""

    exit_code = EXIT_ERROR

    def show(self, file: Any = None) -> None:
        click.echo(f"obs-sdk: {self.format_message()}", err=True)


def fail(message: str) -> NoReturn:
    """Stop the command with *message* (one line, saying what to do)."""
    raise Failure(message)


def _one_line(exc: BaseException) -> str:
    """The first line of *exc*'s message: drivers append SQL and links below it."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class State:
    """What the group's options decided; commands open the database through it."""

    url: str | None
    prefix: str
    debug: bool
    _engine: Engine | None = field(default=None, repr=False)

    def engine(self, *, configure: bool = True) -> Engine:
        """Connect to the database (once); with *configure*, check the tables and configure.

        Configuring (``create_tables=False``, no signal handlers) is how the library's
        functions learn the table prefix; it writes nothing.
        """
        if self._engine is not None:
            return self._engine
        if not self.url:
            fail("no database: pass --database URL or set OBS_DATABASE_URL")
        try:
            tables(self.prefix)
        except obs.ConfigurationError as exc:
            fail(f"--table-prefix: {exc}")
        from obs_sdk._config import _engine_for_url

        where = _safe_url(self.url)
        try:
            engine = _engine_for_url(self.url)
            with engine.connect():
                pass
        except (ArgumentError, NoSuchModuleError, ValueError) as exc:
            fail(
                f"--database {where} is not a database URL ({_one_line(exc)}); "
                "use e.g. sqlite:///obs.db or postgresql+psycopg://user@host/db"
            )
        except DBAPIError as exc:
            fail(
                f"cannot connect to {where}: {_one_line(exc)}; check --database or OBS_DATABASE_URL"
            )
        if configure:
            try:
                check_schema(engine, self.prefix)
            except obs.ConfigurationError as exc:
                if "schema version" in str(exc):
                    fail(_one_line(exc))
                fail(
                    f"no obs_sdk tables (prefix {self.prefix!r}) in {where}: create them "
                    "with: obs-sdk migrate"
                )
            obs.configure(
                database=engine,
                table_prefix=self.prefix,
                create_tables=False,
                handle_signals=False,
            )
        self._engine = engine
        return engine

    def close(self) -> None:
        """Stop what engine() started: configure()'s workers, then the connections."""
        if self._engine is not None:
            obs.shutdown(timeout=5.0)
            self._engine.dispose()
            self._engine = None


def _safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return repr(url)


def state() -> State:
    """The State of the running command."""
    return click.get_current_context().find_object(State)  # type: ignore[return-value]


@contextmanager
def _translated(debug: bool) -> Iterator[None]:
    """Turn what the library raises into one line; --debug keeps the traceback."""
    try:
        yield
    except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
        raise
    except BrokenPipeError:
        # `obs-sdk query | head`: the reader left; that is not an error.
        sys.stderr.close()
        raise click.exceptions.Exit(0) from None
    except Exception as exc:
        if debug:
            raise
        if isinstance(exc, OperationalError):
            raise Failure(
                f"database error: {_one_line(exc)}; check the database and retry"
            ) from None
        if isinstance(exc, obs.ObsError):
            raise Failure(_one_line(exc)) from None
        raise Failure(
            f"unexpected {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for the "
            "traceback, and report it)"
        ) from None


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        with _translated(bool(ctx.params.get("debug"))):
            return super().invoke(ctx)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--database",
    "-d",
    envvar="OBS_DATABASE_URL",
    metavar="URL",
    help="SQLAlchemy URL of the database holding the obs_ tables [env: OBS_DATABASE_URL].",
)
@click.option(
    "--table-prefix",
    envvar="OBS_TABLE_PREFIX",
    default=DEFAULT_PREFIX,
    show_default=True,
    help="The table prefix given to configure() [env: OBS_TABLE_PREFIX].",
)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="obs-sdk", prog_name="obs-sdk")
@click.pass_context
def cli(ctx: click.Context, database: str | None, table_prefix: str, debug: bool) -> None:
    """Read, export, seal and verify the obs_sdk audit trail."""
    ctx.obj = State(database, table_prefix, debug)
    ctx.call_on_close(ctx.obj.close)


def command(**kwargs: Any) -> Callable[[F], F]:
    """``cli.command`` for the submodules (one place to change the defaults)."""
    return cli.command(**kwargs)  # type: ignore[return-value]


@command()
def migrate() -> None:
    """Create the missing obs_ tables (obs.create_tables); safe to run again."""
    s = state()
    obs.create_tables(s.engine(configure=False), s.prefix)
    click.echo(f"obs_ tables (prefix {s.prefix!r}) are ready in {_safe_url(s.url or '')}", err=True)

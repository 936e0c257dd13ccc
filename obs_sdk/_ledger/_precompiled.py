"""Precompiled: a statement compiled once, run with the driver's own parameter list.

On SQLite a metered upload is a handful of small statements, and SQLAlchemy's work per
execution (the compiled-cache key, bind processing by name) was a sixth of its cost
(docs/performance.md). Bind processors still apply (the ledger's UTC timestamps); results
come back as the driver returns them, so only statements returning plain ints and strings
run here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.expression import Executable

__all__ = ["Precompiled"]


class Precompiled:
    """One statement compiled for one dialect with a positional (qmark) driver. Immutable."""

    __slots__ = ("binds", "sql")

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        assert compiled.positiontup is not None, "a positional (qmark) driver"
        self.sql: str = compiled.string
        # Each parameter's processor as SQLAlchemy's own execution applies it: the type's
        # dialect implementation's bind_processor (None: the value goes as it is).
        self.binds = tuple(
            (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in compiled.positiontup
        )

    def run(self, conn: Connection, params: dict[str, Any]) -> Any:
        """Execute with *params* (by name), sent to the driver in the compiled order."""
        values = tuple(
            params[name] if process is None else process(params[name])
            for name, process in self.binds
        )
        return conn.exec_driver_sql(self.sql, values)

"""What the PostgreSQL stores (budget, approval, revocation) ask of the tables they find.

A store opening its schema makes its tables where missing (``CREATE TABLE IF NOT
EXISTS``), so a table of the same name made by something else is left as it is. Each
store checks that the table is its own by its columns, one query here; each turns what
is missing into its own error code and message.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["missing_columns"]


def missing_columns(conn: Any, schema: str, wanted: Iterable[tuple[str, str]]
                    ) -> list[tuple[str, str]]:
    """The ``(table, column)`` pairs of ``wanted`` that ``schema`` lacks, in the order
    given (empty: every table has every column it should). ``conn`` is an open psycopg
    connection; a table or view that does not exist lacks all its columns."""
    wanted = list(wanted)
    tables = sorted({table for table, _ in wanted})
    found = {(row[0], row[1]) for row in conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = ANY(%s)", (schema, tables)).fetchall()}
    return [pair for pair in wanted if pair not in found]

"""Sums that cannot overflow on either backend.

SQLite's ``sum()`` of integers raises "integer overflow" past 2**63 - 1, and the query
with it fails; its ``total()`` adds in floating point and never does. PostgreSQL's
``sum()`` of a bigint column is a ``numeric``, exact at any size. :class:`wide_sum` is
``total()`` on SQLite and ``sum()`` elsewhere; the caller takes ``int()`` of its value
(a float or a Decimal). Runtime figures are below 2**52 each (tracer/caps.py), so a sum
stays exact in a float until it passes 2**53 bytes, more than any machine frees; past
that it is a float, as Prometheus keeps every sample anyway.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

__all__ = ("wide_sum",)


class wide_sum(FunctionElement[Any]):
    """``wide_sum(column)``: the sum of a column, never an overflow."""

    inherit_cache = True


@compiles(wide_sum)
def _sum(element: wide_sum, compiler: SQLCompiler, **kw: Any) -> str:
    return f"sum({compiler.process(element.clauses, **kw)})"


@compiles(wide_sum, "sqlite")
def _total(element: wide_sum, compiler: SQLCompiler, **kw: Any) -> str:
    return f"total({compiler.process(element.clauses, **kw)})"

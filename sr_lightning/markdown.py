"""Cells and tables of the Markdown the project writes (reports, search summaries, TensorBoard text)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def code_cell(text: str) -> str:
    """A table cell holding code: backticks keep ``*`` from turning into emphasis, ``|`` is escaped."""
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`"


def number(value: Any, spec: str = ".4f") -> str:
    """A value as a cell: ``n/a`` for None, finite floats with ``spec``, anything else as ``str``."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return format(value, spec) if math.isfinite(value) else str(value)
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], spec: str = ".4f") -> list[str]:
    """The lines of a Markdown table; cells go through `number` with ``spec``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(number(v, spec) for v in row) + " |" for row in rows]

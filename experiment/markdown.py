"""Table cells and Markdown tables: the one formatter of report.md and the benchmark tables."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence


def fmt(value, digits: int = 3) -> str:
    """A table cell: fixed decimals, 'n/a' for a missing or undefined (NaN) value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}"


def fmt_signed(value, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.{digits}f}"


def fmt_duration(seconds) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def fmt_interval(interval: Mapping | None, digits: int = 3) -> str:
    """'estimate [low, high]' of a bootstrap interval (`evaluation.uncertainty`)."""
    if not interval:
        return "n/a"
    low, high = interval.get("low"), interval.get("high")
    if low is None or high is None:
        return fmt(interval.get("estimate"), digits)
    return f"{fmt(interval['estimate'], digits)} [{fmt(low, 2)}, {fmt(high, 2)}]"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table; every cell is already a string."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)

"""How every command prints lists: a header row, aligned columns, UTC dates a person reads.

No app, no Redis: ``sso login`` uses it too."""

from __future__ import annotations

import time
from collections.abc import Sequence

import click

DATE_FORMAT = "%Y-%m-%d %H:%M"  # UTC; the header says so


def when(epoch: float | int | None) -> str:
    """``2025-06-01 14:03`` (UTC) for an epoch, ``-`` for none."""
    if epoch is None:
        return "-"
    return time.strftime(DATE_FORMAT, time.gmtime(epoch))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Columns as wide as their widest cell; the last one is never padded."""
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        click.echo("  ".join([*padded, row[-1]]).rstrip())

"""Tables that fit the terminal: every cell one line, numbers in one format and never cut,
optional columns left out before any text is cut, and text cut with an ellipsis only then.

rich would wrap a cell that does not fit (``configur/ation``, ``7.3641e-/05``); here the widths
are decided before rich sees the table, so it only draws them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service import cli_common  # its ``out``, looked up when printing: a test may replace it
from service.client_display import number

if TYPE_CHECKING:
    from rich.console import JustifyMethod

BORDER = 3  # per column: two spaces of padding and a rule (rich's default box), plus one at the end


@dataclass(frozen=True)
class Column:
    """A column: ``name`` is its header, ``key`` the row's key (default: the name). ``drop``
    above 0 makes it optional: left out, highest first, while the table would not fit whole.
    Columns whose values are all numbers are right-aligned and never cut; the others are text,
    cut with an ellipsis to fit."""

    name: str
    key: str | None = None
    drop: int = 0


@dataclass(frozen=True, eq=False)  # eq=False: each column is itself, whatever it holds
class _Laid:
    column: Column
    cells: list[str]
    numeric: bool
    natural: int  # the widest of its header and cells


def layout(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column | str], width: int) -> list[tuple[_Laid, int]]:
    """The columns shown and each one's width: optional columns dropped while the table would not
    fit whole, then the text columns sharing what the numbers leave, narrowest first (a short
    one keeps all it needs, the widest is cut)."""
    from rich.cells import cell_len

    laid = []
    for spec in columns:
        column = Column(spec) if isinstance(spec, str) else spec
        values = [row.get(column.key or column.name) for row in rows]
        numeric = all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in values)
        cells = [number(v) for v in values]
        laid.append(_Laid(column, cells, numeric, max(cell_len(text) for text in [column.name, *cells])))
    while _too_wide(laid, width) and any(c.column.drop for c in laid):
        victim = max((c for c in laid if c.column.drop), key=lambda c: c.column.drop)
        laid.remove(victim)
    room = width - BORDER * len(laid) - 1 - sum(c.natural for c in laid if c.numeric)
    widths = {c: c.natural for c in laid if c.numeric}
    text = sorted((c for c in laid if not c.numeric), key=lambda c: c.natural)
    for left, shown in zip(range(len(text), 0, -1), text, strict=True):
        widths[shown] = max(1, min(shown.natural, room // left))
        room -= widths[shown]
    return [(c, widths[c]) for c in laid]


def _too_wide(laid: Sequence[_Laid], width: int) -> bool:
    return sum(c.natural for c in laid) + BORDER * len(laid) + 1 > width


def print_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[Column | str], title: str | None = None, *, header: bool = True
) -> None:
    """Print ``rows`` to stdout as a table that fits its width (see ``layout``); ``header=False``
    for a list of names and values."""
    from rich.table import Table
    from rich.text import Text

    shown = layout(rows, columns, cli_common.out.width)
    caption = None if title is None else Text(title, no_wrap=True, overflow="ellipsis")
    table = Table(title=caption, show_header=header)
    for column, width in shown:
        justify: JustifyMethod = "right" if column.numeric else "left"
        table.add_column(column.column.name, width=width, no_wrap=True, overflow="ellipsis", justify=justify)
    for i in range(len(rows)):
        table.add_row(*(Text(column.cells[i]) for column, _ in shown))
    cli_common.out.print(table)

"""Response bodies the routers render by hand: CSV tables."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import Response


def csv_response(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Response:
    """A ``text/csv`` table: null cells are empty, floats are written exactly (``repr``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return Response(out.getvalue(), media_type="text/csv")

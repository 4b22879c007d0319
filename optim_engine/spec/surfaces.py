"""The 2-D test functions a ``point`` model descends: formulas, standard starts, plot bounds.

Imports no torch: the API serves contour data from here, and the engine evaluates the same
formula on a torch tensor (``value(x, y, torch)``), so the contour and the path agree.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy

Formula = Callable[[Any, Any, Any, float], Any]
"""``(x, y, lib, condition) -> f(x, y)``: elementwise, with ``lib`` (numpy or torch) for cos."""


def _rosenbrock(x: Any, y: Any, lib: Any, condition: float) -> Any:
    return (1.0 - x) ** 2 + 100.0 * (y - x**2) ** 2


def _beale(x: Any, y: Any, lib: Any, condition: float) -> Any:
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def _rastrigin(x: Any, y: Any, lib: Any, condition: float) -> Any:
    a = 10.0
    return 2 * a + x**2 - a * lib.cos(2 * math.pi * x) + y**2 - a * lib.cos(2 * math.pi * y)


def _saddle(x: Any, y: Any, lib: Any, condition: float) -> Any:
    return x**2 - y**2


def _quadratic(x: Any, y: Any, lib: Any, condition: float) -> Any:
    return 0.5 * (x**2 + condition * y**2)


@dataclass(frozen=True)
class Surface:
    """A 2-D function with what a run and a contour plot need to know about it.

    ``condition`` is read by the quadratic only (the curvature ratio between y and x); ``with``
    another one comes from ``surface(name, condition)``.
    """

    name: str
    description: str
    start: tuple[float, float]
    bounds: tuple[tuple[float, float], tuple[float, float]]  # (x range, y range) of a contour plot
    minimum: tuple[float, float] | None  # the global minimum; None when f is unbounded below
    formula: Formula = dataclasses.field(repr=False, compare=False)
    condition: float = 1.0

    def value(self, x: Any, y: Any, lib: Any = numpy) -> Any:
        """f(x, y) for numpy arrays or floats (``lib=numpy``) or torch tensors (``lib=torch``)."""
        return self.formula(x, y, lib, self.condition)


SURFACES: dict[str, Surface] = {
    s.name: s
    for s in (
        Surface(
            "rosenbrock",
            "Rosenbrock's banana valley, a=1, b=100: a curved, flat-bottomed valley to (1, 1).",
            start=(-1.5, 2.0),
            bounds=((-2.0, 2.0), (-1.0, 3.0)),
            minimum=(1.0, 1.0),
            formula=_rosenbrock,
        ),
        Surface(
            "beale",
            "Beale's function: flat plateaus and steep walls around (3, 0.5).",
            start=(1.0, 1.5),
            bounds=((-4.5, 4.5), (-4.5, 4.5)),
            minimum=(3.0, 0.5),
            formula=_beale,
        ),
        Surface(
            "rastrigin",
            "Rastrigin's function, A=10: a bowl covered in local minima, global minimum at (0, 0).",
            start=(-2.0, 3.5),
            bounds=((-5.12, 5.12), (-5.12, 5.12)),
            minimum=(0.0, 0.0),
            formula=_rastrigin,
        ),
        Surface(
            "saddle",
            "x^2 - y^2: a saddle at (0, 0), unbounded below; the start sits just off the ridge.",
            start=(1.0, 0.001),
            bounds=((-2.0, 2.0), (-2.0, 2.0)),
            minimum=None,
            formula=_saddle,
        ),
        Surface(
            "quadratic",
            "0.5 (x^2 + condition y^2): an ill-conditioned bowl; plain SGD diverges for lr > 2/condition.",
            start=(-2.0, 1.0),
            bounds=((-2.5, 2.5), (-1.5, 1.5)),
            minimum=(0.0, 0.0),
            formula=_quadratic,
            condition=10.0,
        ),
    )
}
"""Every 2-D function by name (the quadratic with its default condition, 10)."""


def surface(name: str, condition: float | None = None) -> Surface:
    """The function ``name``; a quadratic with ``condition`` when given (others ignore it).

    Raises:
        KeyError: no function has that name.
    """
    found = SURFACES[name]
    if condition is not None and name == "quadratic":
        return dataclasses.replace(found, condition=condition)
    return found


def grid(name: str, n: int = 100, condition: float | None = None) -> tuple[list[float], list[float], list[list[float]]]:
    """Contour data over the function's bounds: ``xs`` and ``ys`` (``n`` points each) and ``zs``
    with ``zs[i][j] = f(xs[j], ys[i])`` (rows follow y, as matplotlib's ``contour`` expects).

    Raises:
        ValueError: ``n`` is below 2.
    """
    if n < 2:
        raise ValueError(f"grid needs at least 2 points per axis, got {n}")
    found = surface(name, condition)
    (x0, x1), (y0, y1) = found.bounds
    xs, ys = numpy.linspace(x0, x1, n), numpy.linspace(y0, y1, n)
    zs = found.value(*numpy.meshgrid(xs, ys), numpy)
    return xs.tolist(), ys.tolist(), zs.tolist()

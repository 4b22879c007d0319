"""The contract for third-party optimizers (entry-point group ``optimlab.optimizers``).

This module imports neither torch nor the spec, so a plugin package can import it while the
spec is discovering plugins.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class OptimizerPlugin(BaseModel):
    """What a package registers under the ``optimlab.optimizers`` entry-point group.

    The entry point names an ``OptimizerPlugin`` instance, e.g. in ``pyproject.toml``::

        [project.entry-points."optimlab.optimizers"]
        sign_sgd = "my_package.optimlab:plugin"

    Keep the module that defines it free of torch imports (``target`` is a ``"module:Class"``
    string, imported only when a worker builds the optimizer), so the API validates plugin specs
    without loading torch. ``params_model`` is a pydantic model of the constructor's keyword
    arguments besides ``params`` and ``lr``; use ``extra="forbid"``.

    An entry point that fails to load (its module raises, it names something else, its name is
    taken) breaks nothing: ``optim_engine.spec.PLUGIN_ERRORS`` records why, the catalog lists it
    as unavailable with that reason, and a spec naming it is rejected at ``optimizer``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    target: str = Field(description="Import path of the torch.optim.Optimizer subclass, 'module:Class'.")
    params_model: type[BaseModel]
    default_lr: float = 1e-3
    description: str = ""

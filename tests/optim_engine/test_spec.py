"""The job spec: defaults, round trips, and bad input rejected with the field named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from optim_engine import catalog
from optim_engine.spec import OPTIMIZER_VARIANTS, SCHEDULER_VARIANTS, JobSpec, variant_names
from tests.conftest import digits_spec, seed_spec

# Values for the params a scheduler cannot default (torch has no default for them either).
REQUIRED_SCHEDULER_PARAMS: dict[str, dict[str, Any]] = {
    "step_lr": {"step_size": 1},
    "multi_step_lr": {"milestones": [1]},
    "exponential_lr": {"gamma": 0.9},
    "cosine_annealing_warm_restarts": {"T_0": 1},
    "cyclic_lr": {"base_lr": 0.001, "max_lr": 0.01, "step_size_up": 5},
    "one_cycle_lr": {"max_lr": 0.01},
}


def _name(variant: Any) -> str:
    return variant_names(variant)[0]


def test_minimal_spec_is_a_few_lines() -> None:
    spec = JobSpec.model_validate({"optimizer": {"name": "sgd", "lr": 0.01}})
    assert spec.model.name == "linear"
    assert spec.dataset.name == "synthetic_regression"
    assert spec.loss.name == "mse"
    assert spec.optimizer.params.momentum == 0.0
    assert spec.scheduler is None


def test_yaml_spec_from_design_doc() -> None:
    text = """
model:     {name: linear, params: {in_features: 10, out_features: 1}}
dataset:   {name: synthetic_regression, params: {n_samples: 1024, n_features: 10}, val_fraction: 0.2}
loss:      mse
optimizer: {name: sgd, lr: 0.01, params: {momentum: 0.9}}
scheduler: {name: step_lr, params: {step_size: 10, gamma: 0.1}}
epochs: 30
batch_size: 32
seed: 0
device: auto
"""
    spec = JobSpec.from_yaml(text)
    assert spec.optimizer.params.momentum == 0.9
    assert spec.schedulers[0].params.step_size == 10
    assert JobSpec.from_yaml(spec.to_yaml()) == spec


@pytest.mark.parametrize("variant", OPTIMIZER_VARIANTS, ids=_name)
def test_every_optimizer_round_trips_json_and_yaml(variant: Any) -> None:
    spec = JobSpec.model_validate({"optimizer": {"name": _name(variant)}})
    assert JobSpec.from_json(spec.model_dump_json()) == spec
    assert JobSpec.from_yaml(spec.to_yaml()) == spec
    assert spec.spec_hash() == JobSpec.from_json(spec.model_dump_json()).spec_hash()


@pytest.mark.parametrize("variant", SCHEDULER_VARIANTS, ids=_name)
def test_every_scheduler_round_trips(variant: Any) -> None:
    name = _name(variant)
    spec = JobSpec.model_validate(
        {
            "optimizer": {"name": "sgd", "params": {"momentum": 0.9}},
            "scheduler": {"name": name, "params": REQUIRED_SCHEDULER_PARAMS.get(name, {})},
        }
    )
    assert JobSpec.from_json(spec.model_dump_json()) == spec
    assert JobSpec.from_yaml(spec.to_yaml()) == spec


def test_spec_hash_differs_when_anything_differs() -> None:
    a = JobSpec.model_validate(seed_spec({"name": "sgd", "lr": 0.01}))
    b = JobSpec.model_validate(seed_spec({"name": "sgd", "lr": 0.02}))
    assert a.spec_hash() != b.spec_hash()


def _error_locations(exc: ValidationError) -> list[str]:
    return [".".join(str(p) for p in e["loc"]) + ": " + e["msg"] for e in exc.errors()]


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"optimizer": {"name": "adamm"}}, "does not match any of the expected tags"),
        ({"optimizer": {"name": "sgd", "lr": -1.0}}, "optimizer.sgd.lr"),
        ({"optimizer": {"name": "sgd", "lr": 0}}, "optimizer.sgd.lr"),
        ({"optimizer": {"name": "sgd", "params": {"momentum": "0.9"}}}, "optimizer.sgd.params.momentum"),
        ({"optimizer": {"name": "sgd", "params": {"momentun": 0.9}}}, "optimizer.sgd.params.momentun"),
        ({"optimizer": {"name": "sgd", "params": {"nesterov": True}}}, "nesterov requires momentum"),
        ({"optimizer": {"name": "adam", "params": {"betas": [0.9, 1.0]}}}, "optimizer.adam.params.betas.1"),
        ({"optimizer": {"name": "adam", "params": {"amsgrad": "yes"}}}, "optimizer.adam.params.amsgrad"),
        ({"optimizer": {"name": "rprop", "params": {"etas": [1.5, 1.2]}}}, "Invalid eta values"),
        ({"optimizer": {"name": "sparse_adam"}}, "sparse gradients"),
        ({"optimizer": {"name": "muon"}}, "2-D weight matrices"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": -4}, "batch_size"),
        ({"device": "gpu"}, "device"),
        ({"seeds": 3}, "seeds"),
        ({"model": {"name": "transformer"}}, "model"),
        ({"model": {"name": "mlp", "params": {"depth": 2.5}}}, "model.mlp.params.depth"),
        ({"model": {"name": "linear", "params": {"in_features": 3}}}, "model.params.in_features"),
        ({"model": {"name": "cnn"}}, "model: cnn needs an image dataset"),
        ({"loss": "cross_entropy"}, "loss: cross_entropy does not fit a regression dataset"),
        ({"loss": "nll"}, "loss"),
        ({"dataset": {"name": "imagenet"}}, "dataset"),
        ({"dataset": {"name": "npz", "params": {"path": "../../etc/passwd"}}}, "escapes the data root"),
        ({"dataset": {"name": "npz", "params": {"path": "/etc/passwd"}}}, "escapes the data root"),
        ({"dataset": {"name": "csv", "params": {"path": "missing.csv"}}}, "no file 'missing.csv'"),
        ({"dataset": {"name": "mnist"}}, "mnist needs MNIST/raw"),
        ({"scheduler": {"name": "lambda_lr"}}, "Python callable"),
        ({"scheduler": {"name": "step_lr"}}, "scheduler.0.step_lr.params"),
        ({"scheduler": {"name": "step_lr", "params": {"step_size": 0}}}, "step_size"),
        ({"scheduler": [{"name": "linear_lr"}, {"name": "cosine_annealing_lr"}]}, "scheduler[0].epochs"),
        (
            {"scheduler": [{"name": "linear_lr", "epochs": 3}, {"name": "cosine_annealing_lr"}]},
            "leave none of the run's",
        ),
        (
            {"scheduler": [{"name": "linear_lr", "epochs": 1}, {"name": "reduce_lr_on_plateau"}]},
            "reduce_lr_on_plateau cannot be chained",
        ),
        (
            {"scheduler": {"name": "one_cycle_lr", "params": {"max_lr": 0.1}}, "optimizer": {"name": "adagrad"}},
            "cycle_momentum",
        ),
        ({"early_stopping": {"patience": 0}}, "early_stopping.patience"),
        (
            {"dataset": {"name": "synthetic_regression", "val_fraction": 0.0}, "early_stopping": {}},
            "needs a validation set",
        ),
    ],
)
def test_bad_specs_name_the_field(patch: dict[str, Any], expected: str, data_root: Path) -> None:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(seed_spec({"name": "sgd", "lr": 0.01}) | patch)
    assert expected in "\n".join(_error_locations(caught.value)), _error_locations(caught.value)


def test_pytorch_optimizer_variant_rejected_when_extra_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pytorch_optimizer" else real(name, *a)
    )
    with pytest.raises(ValidationError, match="pytorch-optimizer"):
        JobSpec.model_validate({"optimizer": {"name": "lion"}})


def test_file_datasets_validate_shapes(data_root: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(data_root / "blobs.npz", x=rng.standard_normal((40, 5)), y=rng.integers(0, 3, 40))
    spec = JobSpec.model_validate(
        {
            "dataset": {"name": "npz", "params": {"path": "blobs.npz"}},
            "loss": "cross_entropy",
            "optimizer": {"name": "sgd"},
        }
    )
    assert spec.info().n_features == 5
    assert spec.info().n_outputs == 3
    with pytest.raises(ValidationError, match="no array 'labels'"):
        JobSpec.model_validate(
            {
                "dataset": {"name": "npz", "params": {"path": "blobs.npz", "y_key": "labels"}},
                "loss": "cross_entropy",
                "optimizer": {"name": "sgd"},
            }
        )
    (data_root / "bad.csv").write_text("a,b,y\n1,2,0.5\n3,x,1\n")
    with pytest.raises(ValidationError, match="non-numeric"):
        JobSpec.model_validate(
            {
                "dataset": {"name": "csv", "params": {"path": "bad.csv", "task": "regression"}},
                "optimizer": {"name": "sgd"},
            }
        )


def test_validation_context_overrides_data_root(tmp_path: Path) -> None:
    np.savez(tmp_path / "r.npz", x=np.zeros((10, 2)), y=np.zeros(10))
    raw = {"dataset": {"name": "npz", "params": {"path": "r.npz", "task": "regression"}}, "optimizer": {"name": "sgd"}}
    assert JobSpec.model_validate(raw, context={"data_root": tmp_path}).dataset.name == "npz"


def test_catalog_lists_every_entry_with_a_schema() -> None:
    entries = catalog()
    names = {kind: {e["name"] for e in items} for kind, items in entries.items()}
    assert {"linear", "mlp", "cnn", "logistic_regression"} <= names["models"]
    assert {
        "synthetic_regression",
        "digits",
        "iris",
        "wine",
        "breast_cancer",
        "diabetes",
        "npz",
        "csv",
        "mnist",
    } <= names["datasets"]
    assert {"mse", "l1", "smooth_l1", "huber", "cross_entropy", "bce_with_logits"} == names["losses"]
    sgd = next(e for e in entries["optimizers"] if e["name"] == "sgd")
    assert sgd["params_schema"]["properties"]["momentum"]["minimum"] == 0.0
    assert sgd["default_lr"] == 1e-3
    sparse = next(e for e in entries["optimizers"] if e["name"] == "sparse_adam")
    assert sparse["available"] is False
    assert "sparse" in sparse["reason"]
    one_cycle = next(e for e in entries["schedulers"] if e["name"] == "one_cycle_lr")
    assert one_cycle["interval"] == "step"
    json.dumps(entries)  # serves as-is from the API


def test_spec_and_catalog_do_not_import_torch() -> None:
    code = (
        "import sys, optim_engine\n"
        "from optim_engine import JobSpec, catalog\n"
        "JobSpec.model_validate({'optimizer': {'name': 'adam'}, 'model': {'name': 'mlp'}, 'dataset': {'name': 'digits'}, 'loss': 'cross_entropy'})\n"
        "catalog()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'sklearn' not in sys.modules, 'sklearn was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_digits_spec_factory_is_valid() -> None:
    assert JobSpec.model_validate(digits_spec({"name": "adam"})).dataset.name == "digits"

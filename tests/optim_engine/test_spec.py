"""The job spec: defaults, round trips, bad input rejected with the field named, validation that
reads the spec alone, and the host check that reads the rest."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from optim_engine import _data_files, catalog
from optim_engine.packing import can_pack, unpackable
from optim_engine.spec import (
    OPTIMIZER_VARIANTS,
    SCHEDULER_VARIANTS,
    JobSpec,
    dataset_info,
    error_details,
    host_problems,
    variant_names,
)
from optim_engine.spec import host as spec_host
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
    return [".".join(e["loc"]) + ": " + e["msg"] for e in error_details(exc.errors())]


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"optimizer": {"name": "adamm"}}, "optimizer.name: unknown optimizer 'adamm'; did you mean 'adam'?"),
        ({"optimizer": {"name": "sgd", "lr": -1.0}}, "optimizer.lr:"),
        ({"optimizer": {"name": "sgd", "lr": 0}}, "optimizer.lr:"),
        ({"optimizer": {"name": "sgd", "params": {"momentum": "0.9"}}}, "optimizer.params.momentum:"),
        (
            {"optimizer": {"name": "sgd", "params": {"momentun": 0.9}}},
            "optimizer.params.momentun: unknown field 'momentun'; did you mean 'momentum'?",
        ),
        ({"optimizer": {"name": "sgd", "params": {"nesterov": True}}}, "nesterov requires momentum"),
        ({"optimizer": {"name": "adam", "params": {"betas": [0.9, 1.0]}}}, "optimizer.params.betas.1:"),
        ({"optimizer": {"name": "adam", "params": {"amsgrad": "yes"}}}, "optimizer.params.amsgrad:"),
        ({"optimizer": {"name": "rprop", "params": {"etas": [1.5, 1.2]}}}, "Invalid eta values"),
        ({"optimizer": {"name": "sparse_adam"}}, "sparse gradients"),
        ({"optimizer": {"name": "muon"}}, "2-D weight matrices"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": -4}, "batch_size"),
        ({"device": "gpu"}, "device"),
        ({"seeds": 3}, "seeds"),
        ({"model": {"name": "transformer"}}, "model"),
        ({"model": {"name": "mlp", "params": {"depth": 2.5}}}, "model.params.depth:"),
        ({"model": {"name": "linear", "params": {"in_features": 3}}}, "model.params.in_features"),
        ({"model": {"name": "cnn"}}, "model: cnn needs an image dataset"),
        ({"loss": "cross_entropy"}, "loss: cross_entropy does not fit a regression dataset"),
        ({"loss": "nll"}, "loss"),
        ({"dataset": {"name": "imagenet"}}, "dataset"),
        ({"dataset": {"name": "npz", "params": {"path": "../../etc/passwd"}}}, "escapes the data root"),
        ({"dataset": {"name": "npz", "params": {"path": "/etc/passwd"}}}, "escapes the data root"),
        ({"scheduler": {"name": "lambda_lr"}}, "Python callable"),
        ({"scheduler": {"name": "step_lr"}}, "scheduler.0.params:"),
        ({"scheduler": {"name": "step_lr", "params": {"step_size": 0}}}, "step_size"),
        ({"scheduler": [{"name": "linear_lr"}, {"name": "cosine_annealing_lr"}]}, "scheduler.0.epochs"),
        (
            {"scheduler": [{"name": "linear_lr", "epochs": 3}, {"name": "cosine_annealing_lr"}]},
            "leave none of the run's",
        ),
        (
            {"scheduler": [{"name": "linear_lr", "epochs": 1}, {"name": "reduce_lr_on_plateau"}]},
            "scheduler.1: reduce_lr_on_plateau cannot be chained",
        ),
        (
            {"scheduler": {"name": "one_cycle_lr", "params": {"max_lr": 0.1}}, "optimizer": {"name": "adagrad"}},
            "scheduler.0.params.cycle_momentum: adagrad has no momentum or betas",
        ),
        ({"early_stopping": {"patience": 0}}, "early_stopping.patience"),
        (
            {"dataset": {"name": "synthetic_regression", "val_fraction": 0.0}, "early_stopping": {}},
            "early_stopping.monitor: val_loss needs a validation set",
        ),
        ({"loss": "bce_with_logits", "dataset": {"name": "iris"}}, "loss: bce_with_logits needs a binary dataset"),
        ({"model": {"name": "linear", "params": {"out_features": 2}}}, "model.params.out_features: 2 but mse"),
        (
            {"model": {"name": "logistic_regression"}, "loss": "mse"},
            "model: logistic_regression needs a classification dataset",
        ),
        (
            {
                "scheduler": [
                    {"name": "step_lr", "params": {"step_size": 1}, "epochs": 1},
                    {"name": "one_cycle_lr", "params": {"max_lr": 0.1}},
                ]
            },
            "scheduler: every scheduler in a chain must use the same interval",
        ),
        ({"optimizer": {"name": "sparse_adam"}}, "optimizer: optimizer 'sparse_adam' is not supported"),
        (
            {"dataset": {"name": "csv", "params": {"path": "a/../../b.csv"}}},
            "dataset.params.path: path 'a/../../b.csv' escapes",
        ),
    ],
)
def test_bad_specs_name_the_field(patch: dict[str, Any], expected: str, data_root: Path) -> None:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(seed_spec({"name": "sgd", "lr": 0.01}) | patch)
    assert expected in "\n".join(_error_locations(caught.value)), _error_locations(caught.value)


def test_spec_errors_carry_their_location_as_data() -> None:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(seed_spec({"name": "sgd"}, model={"name": "linear", "params": {"in_features": 3}}))
    (error,) = caught.value.errors()
    assert error["type"] == "spec_field"
    assert error["ctx"]["loc"] == ("model", "params", "in_features")
    assert error_details(caught.value.errors()) == [
        {"loc": ["model", "params", "in_features"], "msg": "3 but the dataset has 10 features", "type": "spec_field"}
    ]
    # People reading the exception still see the field.
    assert "model.params.in_features: 3 but the dataset has 10 features" in str(caught.value)


def test_error_details_keeps_the_outer_location_and_pydantic_errors() -> None:
    from pydantic import BaseModel

    class Body(BaseModel):
        spec: JobSpec

    chained = {"name": "linear_lr"}, {"name": "cosine_annealing_lr"}
    with pytest.raises(ValidationError) as caught:
        Body.model_validate({"spec": seed_spec({"name": "sgd"}, scheduler=list(chained))})
    assert error_details(caught.value.errors(), Body) == [
        {
            "loc": ["spec", "scheduler", "0", "epochs"],
            "msg": "every scheduler but the last in a chain needs epochs",
            "type": "spec_field",
        }
    ]
    with pytest.raises(ValidationError) as caught:
        Body.model_validate({"spec": seed_spec({"name": "sgd", "lr": -1.0})})
    (detail,) = error_details(caught.value.errors(), Body)
    assert detail["loc"] == ["spec", "optimizer", "lr"]  # a JSON path: no union tag
    assert detail["type"] == "greater_than"
    with pytest.raises(ValidationError) as caught:
        Body.model_validate({"spec": seed_spec({"name": "muon"})})
    (detail,) = error_details(caught.value.errors(), Body)
    assert detail["loc"] == ["spec", "optimizer"]
    assert detail["msg"].startswith("optimizer 'muon' is not supported: Muon only updates 2-D weight matrices")
    with pytest.raises(ValidationError) as caught:
        Body.model_validate({"spec": seed_spec({"name": "sgd", "params": {"nesterov": True}})})
    (detail,) = error_details(caught.value.errors(), Body)
    assert detail["loc"] == ["spec", "optimizer", "params"]
    assert detail["msg"] == "nesterov requires momentum > 0 and dampening = 0"


def _hide_pytorch_optimizer(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pytorch_optimizer" else real(name, *a)
    )


def test_pytorch_optimizer_spec_validates_without_the_extra_but_the_host_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _hide_pytorch_optimizer(monkeypatch)
    spec = JobSpec.model_validate({"optimizer": {"name": "lion"}})
    assert host_problems(spec) == [
        (("optimizer",), "lion needs the pytorch-optimizer package: pip install 'optimlab[pytorch-optimizer]'")
    ]
    lion = next(e for e in catalog()["optimizers"] if e["name"] == "lion")
    assert lion["available"] is False
    assert host_problems(JobSpec.model_validate({"optimizer": {"name": "adam"}})) == []


def test_validation_reads_no_file_setting_or_installed_package(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("validation consulted the host")

    for module, name in [
        (spec_host, "get_settings"),
        (_data_files, "resolve_data_path"),
        (_data_files, "vision_paths"),
        (_data_files, "load_npz"),
        (_data_files, "load_csv"),
        (importlib.util, "find_spec"),
    ]:
        monkeypatch.setattr(module, name, forbidden)
    specs = [
        {"dataset": {"name": "csv", "params": {"path": "missing.csv"}}, "loss": "cross_entropy"},
        {"dataset": {"name": "npz", "params": {"path": "x.npz", "task": "regression"}}, "early_stopping": {}},
        {"dataset": {"name": "mnist"}, "model": {"name": "cnn"}, "loss": "cross_entropy"},
        {"optimizer": {"name": "lion"}},
    ]
    for raw in specs:
        JobSpec.model_validate({"optimizer": {"name": "sgd"}} | raw)


def _file_spec(name: str, params: dict[str, Any], **overrides: Any) -> JobSpec:
    """A spec on a file dataset: classification with cross-entropy unless overridden."""
    raw = {"dataset": {"name": name, "params": params}, "loss": "cross_entropy", "optimizer": {"name": "sgd"}}
    return JobSpec.model_validate(raw | overrides)


def test_a_missing_file_validates_and_the_host_names_its_path(data_root: Path) -> None:
    spec = _file_spec("csv", {"path": "missing.csv"})
    ((loc, message),) = host_problems(spec)
    assert loc == ("dataset", "params", "path")
    assert message == "no file 'missing.csv' under the data root (OPTIMLAB_DATA_DIR)"
    assert str(data_root.resolve()) not in message, "a 422 never shows the server's file system"
    (data_root / "missing.csv").write_text("a,b,y\n1,2,0\n3,4,1\n5,6,1\n")
    assert host_problems(spec) == []


def test_host_problems_uses_the_given_data_root(tmp_path: Path, data_root: Path) -> None:
    np.savez(tmp_path / "r.npz", x=np.zeros((10, 2)), y=np.zeros(10))
    spec = _file_spec("npz", {"path": "r.npz", "task": "regression"}, loss="mse")
    assert host_problems(spec, tmp_path) == []
    assert [loc for loc, _ in host_problems(spec)] == [("dataset", "params", "path")]  # the settings' root
    assert dataset_info(spec.dataset, tmp_path).n_features == 2


def test_file_datasets_are_read_by_the_host_check(data_root: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(data_root / "blobs.npz", x=rng.standard_normal((40, 5)), y=rng.integers(0, 3, 40))
    spec = _file_spec("npz", {"path": "blobs.npz"})
    assert host_problems(spec) == []
    assert dataset_info(spec.dataset).n_features == 5
    assert dataset_info(spec.dataset).n_outputs == 3
    ((loc, message),) = host_problems(_file_spec("npz", {"path": "blobs.npz", "y_key": "labels"}))
    assert loc == ("dataset", "params", "y_key")
    assert "no array 'labels'" in message
    (data_root / "bad.csv").write_text("a,b,y\n1,2,0.5\n3,x,1\n")
    ((loc, message),) = host_problems(_file_spec("csv", {"path": "bad.csv", "task": "regression"}, loss="mse"))
    assert loc == ("dataset", "params", "path")
    assert "non-numeric" in message
    (data_root / "floats.csv").write_text("a,y\n1,0.5\n3,1.5\n")
    assert host_problems(_file_spec("csv", {"path": "floats.csv", "target": "z"})) == [
        (("dataset", "params", "target"), "floats.csv has no column 'z' (columns: ['a', 'y'])")
    ]
    assert host_problems(_file_spec("csv", {"path": "floats.csv"})) == [
        (("dataset", "params", "task"), "classification targets must be a 1-D array of class indices 0..K-1")
    ]


def test_the_host_check_runs_the_shape_rules_a_file_decides(data_root: Path) -> None:
    np.savez(data_root / "three.npz", x=np.ones((4, 5)), y=np.array([0, 1, 2, 1]))
    linear = {"name": "linear", "params": {"in_features": 3, "out_features": 2}}
    spec = _file_spec("npz", {"path": "three.npz"}, model=linear, early_stopping={})
    assert host_problems(spec) == [
        (("model", "params", "in_features"), "3 but the dataset has 5 features"),
        (("model", "params", "out_features"), "2 but cross_entropy on this dataset needs 3"),
        (("early_stopping", "monitor"), "val_loss needs a validation set (dataset.val_fraction > 0)"),
    ]
    binary = _file_spec("npz", {"path": "three.npz"}, loss="bce_with_logits")
    assert host_problems(binary) == [(("loss",), "bce_with_logits needs a binary dataset, this one has 3 classes")]
    # What the spec alone decides is decided at validation, file or no file.
    with pytest.raises(ValidationError, match="loss: mse does not fit a classification dataset"):
        _file_spec("npz", {"path": "three.npz"}, loss="mse")
    with pytest.raises(ValidationError, match="model: cnn needs an image dataset"):
        _file_spec("npz", {"path": "nowhere.npz"}, model={"name": "cnn"})
    no_validation = {"name": "npz", "params": {"path": "nowhere.npz"}, "val_fraction": 0.0}
    with pytest.raises(ValidationError, match=r"early_stopping\.monitor: val_loss needs a validation set"):
        _file_spec("npz", {}, dataset=no_validation, early_stopping={})


def test_the_host_check_refuses_links_out_of_the_data_root(data_root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.npz"
    np.savez(outside, x=np.zeros((4, 2)), y=np.zeros(4))
    (data_root / "link.npz").symlink_to(outside)
    ((loc, message),) = host_problems(_file_spec("npz", {"path": "link.npz", "task": "regression"}, loss="mse"))
    assert loc == ("dataset", "params", "path")
    assert message == "path 'link.npz' escapes the data root (OPTIMLAB_DATA_DIR)"


def test_vision_files_are_the_hosts_to_provide(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = JobSpec.model_validate(
        {"dataset": {"name": "mnist"}, "model": {"name": "cnn"}, "loss": "cross_entropy", "optimizer": {"name": "sgd"}}
    )
    ((loc, message),) = host_problems(spec)
    assert loc == ("dataset",)
    assert message == "mnist needs MNIST/raw/train-images-idx3-ubyte under the data root (OPTIMLAB_DATA_DIR)"
    monkeypatch.setenv("OPTIMLAB_ALLOW_DOWNLOAD", "true")
    spec_host.get_settings.cache_clear()
    torchvision = importlib.util.find_spec("torchvision") is not None
    assert (host_problems(spec) == []) is torchvision  # downloads need torchvision too


def test_unpackable_gives_locations_and_can_pack_human_reasons() -> None:
    spec = JobSpec.model_validate(
        digits_spec({"name": "nadam"}, model={"name": "mlp", "params": {"dropout": 0.1}}, compile=True)
    )
    assert unpackable(spec) == [
        (("model", "params", "dropout"), "dropout is not packable (trials would need their own masks)"),
        (("optimizer", "name"), "nadam is not packable (packable: sgd, adam, adamw, rmsprop, adagrad)"),
        (("compile",), "a pack is not compiled; set compile to false"),
    ]
    reasons = can_pack([digits_spec({"name": "sgd"}), digits_spec({"name": "sgd"}, model={"name": "cnn"})]).reasons
    assert reasons == [
        "trial 1: model.name: cnn is not packable (packable: linear, logistic_regression, mlp)",
        "trial 1: model differs from trial 0's; a pack's trials share it",
    ]


def test_a_broken_plugin_is_recorded_not_raised(tmp_path: Path) -> None:
    """Entry points that fail to import, name no OptimizerPlugin, or clash with a built-in."""
    (tmp_path / "brokenplugin.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "oddplugin.py").write_text(
        textwrap.dedent(
            """
            from pydantic import BaseModel
            from optim_engine.plugins import OptimizerPlugin

            class P(BaseModel):
                pass

            not_a_plugin = 42
            clash = OptimizerPlugin(name="sgd", target="torch.optim:SGD", params_model=P)
            """
        )
    )
    dist = tmp_path / "brokenplugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[optimlab.optimizers]\nbroken = brokenplugin:plugin\nodd = oddplugin:not_a_plugin\nsgd = oddplugin:clash\n"
    )
    code = textwrap.dedent(
        """
        from pydantic import ValidationError
        from optim_engine import JobSpec, catalog
        from optim_engine.spec import PLUGIN_ERRORS, error_details

        assert set(PLUGIN_ERRORS) == {"broken", "odd", "sgd"}, PLUGIN_ERRORS
        assert "RuntimeError: boom at import" in PLUGIN_ERRORS["broken"]
        assert "not an optim_engine.OptimizerPlugin" in PLUGIN_ERRORS["odd"]
        assert "clashes" in PLUGIN_ERRORS["sgd"]
        entries = {e["name"]: e for e in catalog()["optimizers"]}
        assert entries["broken"]["available"] is False and "boom at import" in entries["broken"]["reason"]
        assert entries["odd"]["available"] is False
        assert entries["sgd"]["available"] is True  # the built-in stays
        assert JobSpec.model_validate({"optimizer": {"name": "sgd"}}).optimizer.name == "sgd"
        try:
            JobSpec.model_validate({"optimizer": {"name": "broken"}})
        except ValidationError as exc:
            (detail,) = error_details(exc.errors())
            assert detail["loc"] == ["optimizer"], detail
            assert "boom at import" in detail["msg"], detail
        else:
            raise AssertionError("a spec naming a broken plugin validated")
        """
    )
    env = {"PYTHONPATH": f"{tmp_path}:{Path.cwd()}", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=Path.cwd())


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
    assert {"mse", "l1", "smooth_l1", "huber", "cross_entropy", "bce_with_logits", "value"} == names["losses"]
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


def test_the_spec_package_stays_small_and_torch_free() -> None:
    import ast

    import optim_engine.spec

    for path in Path(optim_engine.spec.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert len(text.splitlines()) <= 500, f"{path.name} is over 500 lines"
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(m.split(".")[0] == "torch" for m in modules), f"{path.name} imports torch"
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno is not None
                assert node.end_lineno - node.lineno < 60, f"{path.name}: {node.name} is over 60 lines"

"""Model and dataset plugins (``optimlab.models``, ``optimlab.datasets``): the example plugin
extends the spec and the catalog without torch, is validated and host-checked like the
built-ins, builds and trains with them, never packs; broken plugins are listed and refused.

Plugins load once, when the spec is imported, so every check runs in a fresh interpreter whose
path holds the plugin; it prints what it saw as JSON and the assertions are made here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "optimlab_example_plugin"


def example_site(site: Path) -> Path:
    """Make the example plugin visible to ``importlib.metadata`` from ``site`` (a dist-info with
    its entry points; its code stays in ``examples/``), as ``pip install`` would; returns ``site``."""
    site.mkdir(parents=True, exist_ok=True)
    dist = site / "optimlab_example_plugin-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: optimlab-example-plugin\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(
        "[optimlab.models]\nsmall_resnet = optimlab_example_plugin:model\n\n"
        "[optimlab.datasets]\nmy_npz = optimlab_example_plugin:dataset\n"
    )
    return site


def digits_npz(path: Path, images: bool = True) -> Path:
    """scikit-learn's digits as an .npz of x (n, 1, 8, 8) in [0, 1] (or flat rows) and labels y."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x.reshape(-1, 1, 8, 8) if images else x, y=digits.target.astype(np.int64))
    return path


def run_with_plugins(code: str, site: Path, data_root: Path) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter that sees the plugins on ``site``; its last stdout line
    is JSON, returned."""
    env = {
        "PYTHONPATH": f"{site}:{EXAMPLE}:{ROOT}",
        "PATH": "/usr/bin:/bin",
        "OPTIMLAB_DATA_DIR": str(data_root),
    }
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.fixture
def plugin_env(tmp_path: Path) -> tuple[Path, Path]:
    """(site with the example plugin, data root with digits.npz as images and flat.npz as rows)."""
    data = tmp_path / "data"
    digits_npz(data / "digits.npz")
    digits_npz(data / "flat.npz", images=False)
    return example_site(tmp_path / "site"), data


_SPEC_CODE = """
    import json, sys
    from pydantic import ValidationError
    from optim_engine import JobSpec, catalog
    from optim_engine.packing import can_pack, unpackable
    from optim_engine.spec import error_details, estimate, host_problems, dataset_info

    def spec(model, dataset, **extra):
        return {"model": model, "dataset": dataset, "loss": "cross_entropy",
                "optimizer": {"name": "adam"}, "device": "cpu", **extra}

    def locs(raw):
        try:
            JobSpec.model_validate(raw)
        except ValidationError as exc:
            return [[d["loc"], d["msg"]] for d in error_details(exc.errors())]
        return []

    resnet = {"name": "small_resnet", "params": {"width": 8, "blocks": 1}}
    mine = {"name": "my_npz", "params": {"path": "digits.npz"}}
    ok = JobSpec.model_validate(spec(resnet, mine))
    entries = catalog()
    missing = JobSpec.model_validate(spec(resnet, {"name": "my_npz", "params": {"path": "nope.npz"}}))
    flat = JobSpec.model_validate(spec(resnet, {"name": "my_npz", "params": {"path": "flat.npz"}}))
    mlp = JobSpec.model_validate(spec({"name": "mlp", "params": {"in_features": 64}}, mine))
    wrong_in = JobSpec.model_validate(spec({"name": "mlp", "params": {"in_features": 10}}, mine))
    info = dataset_info(ok.dataset)
    print(json.dumps({
        "models": {e["name"]: e for e in entries["models"]},
        "datasets": {e["name"]: e for e in entries["datasets"]},
        "ok_host": host_problems(ok),
        "info": info.model_dump(),
        "parameters": estimate(ok, info).parameters,
        "missing_host": host_problems(missing),
        "flat_host": host_problems(flat),
        "mlp_host": host_problems(mlp),
        "wrong_in_host": host_problems(wrong_in),
        "bad_width": locs(spec({"name": "small_resnet", "params": {"width": 0}}, mine)),
        "unknown_param": locs(spec({"name": "small_resnet", "params": {"depth": 3}}, mine)),
        "no_path": locs(spec(resnet, {"name": "my_npz"})),
        "on_iris": locs(spec(resnet, {"name": "iris"})),
        "cnn_on_plugin_data": locs(spec({"name": "cnn"}, mine)),
        "unpackable": [[list(loc), msg] for loc, msg in unpackable(ok)],
        "can_pack": bool(can_pack([ok, ok.model_copy(update={"seed": 1})])),
        "torch": "torch" in sys.modules,
    }))
"""


def test_the_example_plugin_extends_spec_catalog_and_host_check_without_torch(plugin_env: tuple[Path, Path]) -> None:
    seen = run_with_plugins(_SPEC_CODE, *plugin_env)

    resnet, mine = seen["models"]["small_resnet"], seen["datasets"]["my_npz"]
    assert resnet["available"]
    assert mine["available"]
    assert resnet["requires"] == mine["requires"] == "plugin"
    assert resnet["packable"] is False
    assert resnet["counts_parameters"] is True
    assert resnet["params_schema"]["properties"]["width"]["maximum"] == 256
    assert mine["params_schema"]["required"] == ["path"]
    assert seen["models"]["mlp"]["available"], "the built-ins stay"

    assert seen["ok_host"] == []
    assert seen["info"] == {
        "task": "classification",
        "n_features": 64,
        "n_outputs": 10,
        "n_samples": 1797,
        "image_shape": [1, 8, 8],
    }
    assert seen["parameters"] == 9 * 8 + 8 + 2 * (8 * 8 * 9 + 8) + 8 * 10 + 10  # the plugin's own count

    ((where, message),) = seen["missing_host"]
    assert where == ["dataset", "params", "path"]
    assert "nope.npz" in message
    ((where, message),) = seen["flat_host"]  # needs_image, decided once the file's shape is known
    assert where == ["model"]
    assert "image" in message
    assert seen["mlp_host"] == [], "a plugin dataset trains built-in models whose shapes fit"
    ((where, message),) = seen["wrong_in_host"]
    assert where == ["model", "params", "in_features"]
    assert "64 features" in message

    for case, field in (("bad_width", "width"), ("unknown_param", "depth"), ("no_path", "params")):
        ((loc, _),) = seen[case]
        assert loc[0] in ("model", "dataset"), (case, loc)
        assert loc[-1] == field, (case, loc)
    ((loc, message),) = seen["on_iris"]
    assert loc == ["model"]
    assert "image" in message
    assert seen["cnn_on_plugin_data"] == [], "cnn on a plugin dataset waits for its shape"

    ((loc, message),) = seen["unpackable"]
    assert loc == ["model", "name"]
    assert "small_resnet is not packable" in message
    assert seen["can_pack"] is False
    assert seen["torch"] is False


_TRAIN_CODE = """
    import json
    import torch
    from optim_engine import JobSpec, build_dataset, build_model, train

    def spec(model, dataset, **extra):
        return JobSpec.model_validate({"model": model, "dataset": dataset, "loss": "cross_entropy",
            "optimizer": {"name": "adam", "lr": 0.01}, "epochs": 2, "batch_size": 64, "device": "cpu", **extra})

    resnet = {"name": "small_resnet", "params": {"width": 8, "blocks": 1}}
    mine = {"name": "my_npz", "params": {"path": "digits.npz"}}
    runs = {
        "resnet_on_mine": spec(resnet, mine),
        "resnet_on_digits": spec(resnet, {"name": "digits"}),
        "mlp_on_mine": spec({"name": "mlp", "params": {"width": 32}}, mine),
        "cnn_on_mine": spec({"name": "cnn", "params": {"channels": [4]}}, mine),
    }
    results = {name: train(s) for name, s in runs.items()}
    model = build_model(runs["resnet_on_mine"])
    again = build_model(runs["resnet_on_mine"])
    other_seed = build_model(runs["resnet_on_mine"].model_copy(update={"seed": 1}))
    data = build_dataset(runs["resnet_on_mine"])
    raw_digits = {"name": "digits", "params": {"standardize": False}}
    builtin = build_dataset(spec({"name": "mlp"}, raw_digits))
    weights = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])
    print(json.dumps({
        "outcomes": {n: r.outcome for n, r in results.items()},
        "epochs": {n: [m.epoch for m in r.history] for n, r in results.items()},
        "losses": {n: [m.train_loss for m in r.history] for n, r in results.items()},
        "accuracy": {n: r.history[-1].val_accuracy for n, r in results.items()},
        "numel": sum(p.numel() for p in model.parameters()),
        "same_seed_same_weights": bool(torch.equal(weights(model), weights(again))),
        "other_seed_other_weights": not torch.equal(weights(model), weights(other_seed)),
        "shapes": [list(data.x_train.shape), list(data.x_val.shape), str(data.y_train.dtype)],
        "same_split_as_builtin": bool(torch.allclose(data.x_train * 16, builtin.x_train, atol=1e-5))
            and bool(torch.equal(data.y_val, builtin.y_val)),
    }))
"""


def test_plugin_models_and_datasets_build_and_train_with_the_built_ins(plugin_env: tuple[Path, Path]) -> None:
    seen = run_with_plugins(_TRAIN_CODE, *plugin_env)

    for name, outcome in seen["outcomes"].items():
        assert outcome == "completed", name
        assert seen["epochs"][name] == [1, 2], name
        losses = seen["losses"][name]
        assert losses[1] < losses[0], f"{name} did not learn: {losses}"
    assert seen["accuracy"]["mlp_on_mine"] > 0.5  # digits, an MLP at lr 0.01: well above chance
    assert seen["numel"] == 9 * 8 + 8 + 2 * (8 * 8 * 9 + 8) + 8 * 10 + 10, "the plugin's count is torch's"
    assert seen["same_seed_same_weights"]
    assert seen["other_seed_other_weights"]
    n_val = int(1797 * 0.2)
    assert seen["shapes"] == [[1797 - n_val, 64], [n_val, 64], "torch.int64"]
    assert seen["same_split_as_builtin"], "the same split of the same pixels as the built-in digits"


_BROKEN = {
    "brokenmodels.py": "raise ImportError('needs a library this host lacks')\n",
    "oddplugins.py": """
        from collections.abc import Callable
        from pydantic import BaseModel, ConfigDict
        from optim_engine.plugins import DatasetPlugin, ModelPlugin, OptimizerPlugin

        class P(BaseModel):
            model_config = ConfigDict(extra="forbid")
            size: int = 3

        class NoSchema(BaseModel):  # the catalog could not show it
            model_config = ConfigDict(arbitrary_types_allowed=True)
            hook: Callable[[], None] = print

        def explode(params, root):
            raise KeyError("no such table")

        def garbage(params, root):
            return {"n_samples": 1, "input_shape": [4], "n_outputs": 2}

        wrong_kind = OptimizerPlugin(name="wrong_kind", target="torch.optim:SGD", params_model=P)
        clash = ModelPlugin(name="mlp", target="x:y", params_model=P)
        no_schema = ModelPlugin(name="no_schema", target="x:y", params_model=NoSchema)
        exploding = DatasetPlugin(name="exploding", target="x:y", params_model=P, describe=explode)
        bad_shape = DatasetPlugin(name="bad_shape", target="x:y", params_model=P, describe=garbage)
    """,
}
_BROKEN_ENTRY_POINTS = """\
[optimlab.models]
broken_model = brokenmodels:model
wrong_kind = oddplugins:wrong_kind
mlp = oddplugins:clash
no_schema = oddplugins:no_schema

[optimlab.datasets]
broken_data = brokenmodels:dataset
exploding = oddplugins:exploding
bad_shape = oddplugins:bad_shape
"""

_BROKEN_CODE = """
    import json, sys
    from pydantic import ValidationError
    from optim_engine import JobSpec, catalog
    from optim_engine.spec import error_details, host_problems
    from optim_engine.spec.datasets import DATASET_PLUGIN_ERRORS
    from optim_engine.spec.models import MODEL_PLUGIN_ERRORS

    def locs(raw):
        try:
            JobSpec.model_validate({"optimizer": {"name": "sgd"}, **raw})
        except ValidationError as exc:
            return [[d["loc"], d["msg"]] for d in error_details(exc.errors())]
        return []

    def host(dataset):
        spec = JobSpec.model_validate({"optimizer": {"name": "sgd"}, "model": {"name": "linear"},
            "dataset": {"name": dataset}, "loss": "cross_entropy"})
        return host_problems(spec)

    entries = catalog()
    print(json.dumps({
        "model_errors": MODEL_PLUGIN_ERRORS,
        "dataset_errors": DATASET_PLUGIN_ERRORS,
        "models": {e["name"]: e for e in entries["models"]},
        "datasets": {e["name"]: e for e in entries["datasets"]},
        "broken_model": locs({"model": {"name": "broken_model"}}),
        "broken_data": locs({"dataset": {"name": "broken_data"}}),
        "mlp": locs({"model": {"name": "mlp"}}),
        "exploding": host("exploding"),
        "bad_shape": host("bad_shape"),
        "torch": "torch" in sys.modules,
    }))
"""


def test_broken_model_and_dataset_plugins_are_listed_and_refused(tmp_path: Path) -> None:
    site = tmp_path / "site"
    dist = site / "brokenplugins-0.1.dist-info"
    dist.mkdir(parents=True)
    for name, text in _BROKEN.items():
        (site / name).write_text(textwrap.dedent(text))
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(_BROKEN_ENTRY_POINTS)
    seen = run_with_plugins(_BROKEN_CODE, site, tmp_path)

    assert set(seen["model_errors"]) == {"broken_model", "wrong_kind", "mlp", "no_schema"}
    assert "PydanticInvalidForJsonSchema" in seen["model_errors"]["no_schema"]
    assert "ImportError: needs a library this host lacks" in seen["model_errors"]["broken_model"]
    assert "not an optim_engine.plugins.ModelPlugin" in seen["model_errors"]["wrong_kind"]
    assert "clashes" in seen["model_errors"]["mlp"]
    assert set(seen["dataset_errors"]) == {"broken_data"}

    broken = seen["models"]["broken_model"]
    assert broken["available"] is False
    assert "needs a library this host lacks" in broken["reason"]
    assert seen["datasets"]["broken_data"]["available"] is False
    assert seen["models"]["mlp"]["available"] is True, "a clashing plugin does not hide the built-in"

    ((loc, message),) = seen["broken_model"]
    assert loc == ["model"]
    assert "needs a library this host lacks" in message
    ((loc, message),) = seen["broken_data"]
    assert loc == ["dataset"]
    assert "needs a library this host lacks" in message
    assert seen["mlp"] == []

    # A describe that raises, or returns no valid shape, is the dataset's problem, never a crash.
    ((loc, message),) = seen["exploding"]
    assert loc == ["dataset"]
    assert "KeyError" in message
    assert "no such table" in message
    ((loc, message),) = seen["bad_shape"]
    assert loc == ["dataset"]
    assert "n_samples" in message
    assert seen["torch"] is False

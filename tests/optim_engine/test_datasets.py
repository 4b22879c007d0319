"""Dataset files inspected without loading them (and agreeing with what the worker loads), bad
files and paths as located problems, and a dataset with no validation split in both loops."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from optim_engine import _data_files, train
from optim_engine._datasets import build_dataset
from optim_engine._trials import train_trials
from optim_engine.spec import JobSpec, dataset_info, host_problems
from tests.conftest import seed_spec


def _spec(dataset: dict[str, Any], loss: str = "cross_entropy", **overrides: Any) -> JobSpec:
    raw = {"dataset": dataset, "loss": loss, "optimizer": {"name": "sgd"}, "device": "cpu"}
    return JobSpec.model_validate(raw | overrides)


# --- val_fraction 0 ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dataset",
    [
        {"name": "synthetic_regression", "params": {"n_samples": 64}, "val_fraction": 0.0},
        {"name": "synthetic_regression", "params": {"n_samples": 4}, "val_fraction": 0.2},  # rounds to none
    ],
)
def test_no_validation_set_builds_empty_validation_tensors(dataset: dict[str, Any]) -> None:
    data = build_dataset(_spec(dataset, "mse"))
    assert not data.has_validation
    assert data.x_val.shape == (0, 10)
    assert data.y_val.shape == (0, 1)
    assert data.x_train.shape[0] == dataset["params"]["n_samples"]


def _no_validation(**overrides: Any) -> dict[str, Any]:
    spec = seed_spec({"name": "sgd", "lr": 0.01}, **overrides)
    spec["dataset"]["val_fraction"] = 0.0
    return spec


def test_val_fraction_0_trains_with_no_validation_metrics_in_the_plain_loop() -> None:
    result = train(_no_validation())
    assert result.outcome == "completed"
    assert len(result.history) == 3
    assert all(m.val_loss is None and m.val_accuracy is None for m in result.history)
    assert all(m.train_loss > 0 for m in result.history)


def test_val_fraction_0_trains_with_no_validation_metrics_in_the_packed_loop() -> None:
    classify = {
        "model": {"name": "logistic_regression"},
        "dataset": {"name": "iris", "val_fraction": 0.0},
        "loss": "cross_entropy",
    }
    for specs in ([_no_validation(seed=0), _no_validation(seed=1)], [seed_spec({"name": "sgd"}) | classify] * 2):
        results = train_trials(specs, packed=True)
        assert [r.outcome for r in results] == ["completed", "completed"]
        for result in results:
            assert all(m.val_loss is None and m.val_accuracy is None for m in result.history)


# --- csv ---------------------------------------------------------------------------------------


def test_a_csv_is_inspected_in_chunks_and_agrees_with_the_loaded_arrays(
    data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_data_files, "_CSV_CHUNK_ROWS", 7)  # many chunks, blank ones included
    rng = np.random.default_rng(0)
    rows = zip(rng.standard_normal((50, 2)), rng.integers(0, 4, 50), strict=True)
    lines = [f"{a:.4f},{b:.4f},{label}" for (a, b), label in rows]
    lines[10:10] = [""] * 9  # a chunk of blank lines only
    (data_root / "c.csv").write_text("a,b,label\n" + "\n".join(lines) + "\n")
    shape = _data_files.inspect_csv(data_root / "c.csv", "label", ",", True, 1 << 20)
    loaded = _data_files.load_csv(data_root / "c.csv", "label", ",", True)
    assert shape.x_shape == loaded.x.shape == (50, 2)
    assert shape.y_shape == loaded.y.shape
    assert shape.targets is not None
    assert (shape.targets.low, shape.targets.high) == (loaded.y.min(), loaded.y.max())
    assert shape.targets.integral
    assert dataset_info(_spec({"name": "csv", "params": {"path": "c.csv", "target": "label"}}).dataset).n_outputs == 4


@pytest.mark.parametrize(
    ("text", "param", "message"),
    [
        ("a,y\n1,0\n2,1\n3\n", "path", "changes from 2 to 1 columns on line 4"),
        ("a,y\n1,0\n,1\n", "path", "empty, non-numeric or missing cells on line 3 ("),
        ("a,y\n1,0\ninf,1\n", "path", "non-finite feature cell (nan or inf) on line 3"),
        ("a,y\n", "path", "has no rows"),
        ("a;y\n1;0\n2;1\n", "target", "no column 'y'"),
    ],
)
def test_a_bad_csv_is_a_problem_at_its_param(
    data_root: Path, monkeypatch: pytest.MonkeyPatch, text: str, param: str, message: str
) -> None:
    monkeypatch.setattr(_data_files, "_CSV_CHUNK_ROWS", 1)  # a width change between chunks, not in one
    (data_root / "bad.csv").write_text(text)
    ((loc, found),) = host_problems(_spec({"name": "csv", "params": {"path": "bad.csv", "target": "y"}}))
    assert loc == ("dataset", "params", param)
    assert message in found


def test_a_delimiter_numpy_cannot_split_on_is_a_problem_at_delimiter(data_root: Path) -> None:
    (data_root / "d.csv").write_text("a#y\n1#0\n2#1\n")
    spec = _spec({"name": "csv", "params": {"path": "d.csv", "delimiter": "#"}})  # '#' starts a comment
    ((loc, message),) = host_problems(spec)
    assert loc == ("dataset", "params", "delimiter")
    assert "cannot split d.csv on '#'" in message
    with pytest.raises(ValueError, match="at most 1 character"):
        _spec({"name": "csv", "params": {"path": "d.csv", "delimiter": "::"}})


# --- npz ---------------------------------------------------------------------------------------


def test_an_npz_is_inspected_from_its_headers_without_loading_it(
    data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((300, 4, 2)), rng.integers(0, 7, 300).astype(">i4")  # big-endian labels
    np.savez_compressed(data_root / "d.npz", x=x, y=y)

    def forbidden(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the check loaded an array")

    monkeypatch.setattr(np, "load", forbidden)
    monkeypatch.setattr(_data_files, "_CHUNK_BYTES", 64)  # the labels in many chunks
    info = dataset_info(_spec({"name": "npz", "params": {"path": "d.npz"}}).dataset)
    assert (info.n_samples, info.n_features, info.n_outputs) == (300, 8, int(y.max()) + 1)


def _npz_with_member(path: Path, name: str, payload: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(name, payload)
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.zeros(4, dtype=np.int64))
        archive.writestr("y.npy", buffer.getvalue())


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("payload", "param", "message"),
    [
        (_npy(np.zeros((4, 3)))[:-8], "path", "declares shape (4, 3) of float64 but holds another amount"),
        (_npy(np.array([{}] * 4, dtype=object)), "path", "features and targets must be numeric"),
        (b"not an array at all", "path", "cannot read d.npz as npz"),
    ],
    ids=["truncated", "pickled objects", "not .npy"],
)
def test_a_malformed_npz_member_is_a_problem_at_path(data_root: Path, payload: bytes, param: str, message: str) -> None:
    _npz_with_member(data_root / "d.npz", "x.npy", payload)
    ((loc, found),) = host_problems(_spec({"name": "npz", "params": {"path": "d.npz"}}))
    assert loc == ("dataset", "params", param)
    assert message in found


def test_a_missing_array_and_a_plain_npy_are_problems_not_crashes(data_root: Path) -> None:
    np.savez(data_root / "d.npz", features=np.zeros((4, 2)), y=np.zeros(4))
    ((loc, found),) = host_problems(_spec({"name": "npz", "params": {"path": "d.npz"}}))
    assert loc == ("dataset", "params", "x_key")
    assert "no array 'x' (arrays: ['features', 'y'])" in found
    np.save(data_root / "plain.npy", np.zeros((4, 2)))
    (data_root / "plain.npy").rename(data_root / "plain.npz")
    ((loc, found),) = host_problems(_spec({"name": "npz", "params": {"path": "plain.npz"}}))
    assert loc == ("dataset", "params", "path")
    assert "cannot read plain.npz as npz" in found
    with pytest.raises(_data_files.DataFileError, match=r"single \.npy array, not an \.npz"):
        _data_files.load_npz(data_root / "plain.npz", "x", "y")


# --- paths -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "message"),
    [
        ("a" * 300 + "/d.csv", "File name too long"),
        ("nul\x00byte.csv", "embedded null byte"),
        (".", "is not a file"),
    ],
)
def test_an_unusable_path_is_a_data_file_error(tmp_path: Path, relative: str, message: str) -> None:
    with pytest.raises(_data_files.DataFileError, match=message) as raised:
        _data_files.resolve_data_path(relative, tmp_path)
    assert raised.value.param == "path"
    assert len(str(raised.value)) < 300  # the message does not repeat a huge name

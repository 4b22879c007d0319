"""The training loop: the seed article's numbers, every optimizer and scheduler, and run control."""

from __future__ import annotations

import gzip
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from optim_engine import EpochMetrics, JobSpec, build_dataset, build_model, build_optimizer, build_scheduler, train
from optim_engine.spec import OPTIMIZER_VARIANTS, SCHEDULER_VARIANTS, variant_names
from tests.conftest import digits_spec, seed_spec
from tests.optim_engine.test_spec import REQUIRED_SCHEDULER_PARAMS

SEED_SETUPS = {
    "sgd": {"name": "sgd", "lr": 0.01},
    "sgd_momentum": {"name": "sgd", "lr": 0.01, "params": {"momentum": 0.9}},
    "adam": {"name": "adam", "lr": 0.001},
}
# Settings that keep an optimizer's default from diverging on this problem in two epochs.
# L-BFGS on minibatches at lr 1 can lose on its second epoch what it won on its first (seen with
# scikit-learn 1.9 / numpy 2.4: 1.91 -> 4.59); at lr 0.1 it falls steadily.
OPTIMIZER_OVERRIDES: dict[str, dict[str, Any]] = {"lbfgs": {"lr": 0.1, "params": {"line_search_fn": "strong_wolfe"}}}
STEP_LR = {"name": "step_lr", "params": {"step_size": 10, "gamma": 0.1}}


def _losses(history: list[EpochMetrics]) -> list[tuple[float, float | None]]:
    return [(m.train_loss, m.val_loss) for m in history]


def _hand_written(spec: JobSpec, epochs: int) -> list[float]:
    """The article's loop, written out with plain torch on the engine's data and initial weights."""
    data = build_dataset(spec)
    model = build_model(spec)
    opt_cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[spec.optimizer.name]
    kwargs = {"momentum": spec.optimizer.params.momentum} if spec.optimizer.name == "sgd" else {}
    optimizer = opt_cls(model.parameters(), lr=spec.optimizer.lr, **kwargs)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.1) if spec.scheduler else None
    criterion = torch.nn.MSELoss()
    from optim_engine._seeding import epoch_permutation

    losses = []
    for epoch in range(1, epochs + 1):
        order = epoch_permutation(data.x_train.shape[0], spec.seed, epoch)
        total = 0.0
        for start in range(0, len(order), spec.batch_size):
            idx = order[start : start + spec.batch_size]
            optimizer.zero_grad()
            loss = criterion(model(data.x_train[idx]), data.y_train[idx])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        if scheduler is not None:
            scheduler.step()
        losses.append(total / len(order))
    return losses


@pytest.mark.parametrize("with_step_lr", [False, True], ids=["plain", "step_lr"])
@pytest.mark.parametrize("setup", list(SEED_SETUPS))
def test_seed_article_matches_hand_written_loop(setup: str, with_step_lr: bool) -> None:
    spec = JobSpec.model_validate(seed_spec(SEED_SETUPS[setup], STEP_LR if with_step_lr else None, epochs=12))
    result = train(spec)
    expected = _hand_written(spec, 12)
    assert result.outcome == "completed"
    # The first epoch is bit-for-bit the same computation; later epochs may differ in the last ulp
    # (fused vs for-loop optimizer kernels).
    assert result.history[0].train_loss == pytest.approx(expected[0], rel=1e-6)
    assert [m.train_loss for m in result.history] == pytest.approx(expected, rel=1e-4)
    lrs = [m.lr for m in result.history]
    base = SEED_SETUPS[setup]["lr"]
    assert lrs[9] == pytest.approx(base)
    assert lrs[10] == pytest.approx(base * 0.1 if with_step_lr else base)


def test_sgd_at_lr_10_diverges_instead_of_raising() -> None:
    result = train(seed_spec({"name": "sgd", "lr": 10.0}, epochs=20))
    assert result.outcome == "diverged"
    assert result.diverged_epoch == result.history[-1].epoch
    assert result.epochs_done < 20


def test_divergence_detection_can_be_switched_off() -> None:
    result = train(seed_spec({"name": "sgd", "lr": 10.0}, epochs=3, divergence={"enabled": False}))
    assert result.outcome == "completed"
    assert result.epochs_done == 3


@pytest.mark.parametrize("variant", OPTIMIZER_VARIANTS, ids=lambda v: variant_names(v)[0])
def test_every_optimizer_trains_mlp_on_digits(variant: Any) -> None:
    name = variant_names(variant)[0]
    if variant.extra == "pytorch-optimizer":
        pytest.importorskip("pytorch_optimizer")
    result = train(digits_spec({"name": name, **OPTIMIZER_OVERRIDES.get(name, {})}))
    assert result.outcome == "completed"
    assert result.epochs_done == 2
    assert all(np.isfinite(m.train_loss) and m.val_accuracy is not None for m in result.history)
    assert result.history[-1].train_loss < result.history[0].train_loss * 1.5


@pytest.mark.parametrize("variant", SCHEDULER_VARIANTS, ids=lambda v: variant_names(v)[0])
def test_every_scheduler_trains_mlp_on_digits(variant: Any) -> None:
    name = variant_names(variant)[0]
    scheduler = {"name": name, "params": REQUIRED_SCHEDULER_PARAMS.get(name, {})}
    result = train(digits_spec({"name": "sgd", "lr": 0.05, "params": {"momentum": 0.9}}, scheduler=scheduler, epochs=3))
    assert result.outcome == "completed"
    assert result.epochs_done == 3
    assert all(m.lr > 0 for m in result.history)


def test_one_cycle_steps_per_batch_over_the_whole_run() -> None:
    spec = JobSpec.model_validate(
        digits_spec(
            {"name": "sgd", "lr": 0.05, "params": {"momentum": 0.9}},
            scheduler={"name": "one_cycle_lr", "params": {"max_lr": 0.1}},
            epochs=4,
        )
    )
    result = train(spec)
    # OneCycle starts at max_lr / div_factor and has run exactly total_steps = epochs x steps steps.
    assert result.history[0].lr == pytest.approx(0.1 / 25)
    model = build_model(spec)
    optimizer = build_optimizer(spec, model)
    sched = build_scheduler(spec, optimizer, steps_per_epoch=23)
    assert sched is not None
    assert sched.total_steps == 4 * 23


def test_warmup_then_cosine_chain_matches_torch_sequential_lr() -> None:
    chain = [
        {"name": "linear_lr", "epochs": 3, "params": {"start_factor": 0.1, "total_iters": 3}},
        {"name": "cosine_annealing_lr"},
    ]
    result = train(seed_spec({"name": "sgd", "lr": 0.1}, chain, epochs=10))
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    ref = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.LinearLR(opt, 0.1, total_iters=3),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7),
        ],
        milestones=[3],
    )
    expected = []
    for _ in range(10):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert [m.lr for m in result.history] == pytest.approx(expected)


def test_reduce_lr_on_plateau_cuts_the_lr() -> None:
    spec = seed_spec(
        {"name": "sgd", "lr": 0.5}, {"name": "reduce_lr_on_plateau", "params": {"patience": 0, "factor": 0.5}}, epochs=8
    )
    lrs = [m.lr for m in train(spec).history]
    assert lrs[-1] < lrs[0]


def test_same_spec_gives_bit_identical_metrics() -> None:
    spec = digits_spec(
        {"name": "adam"}, model={"name": "mlp", "params": {"depth": 2, "width": 32, "dropout": 0.2}}, epochs=3
    )
    first, second = train(spec), train(spec)
    assert _losses(first.history) == _losses(second.history)
    assert [m.grad_norm for m in first.history] == [m.grad_norm for m in second.history]


def test_global_rng_state_neither_matters_nor_changes() -> None:
    spec = seed_spec({"name": "sgd", "lr": 0.01})
    torch.manual_seed(1)
    before = torch.get_rng_state()
    a = train(spec)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(2)
    assert _losses(train(spec).history) == _losses(a.history)


def test_seed_changes_the_run() -> None:
    a = train(seed_spec({"name": "sgd", "lr": 0.01}, seed=0))
    b = train(seed_spec({"name": "sgd", "lr": 0.01}, seed=1))
    assert _losses(a.history) != _losses(b.history)


def test_common_random_numbers_across_optimizers() -> None:
    sgd = JobSpec.model_validate(digits_spec({"name": "sgd", "lr": 0.1}, seed=7))
    adam = JobSpec.model_validate(
        digits_spec({"name": "adam"}, scheduler={"name": "step_lr", "params": {"step_size": 1}}, seed=7)
    )
    for a, b in zip(build_model(sgd).state_dict().values(), build_model(adam).state_dict().values(), strict=True):
        assert torch.equal(a, b)
    from optim_engine._seeding import epoch_permutation

    assert torch.equal(epoch_permutation(100, 7, 3), epoch_permutation(100, 7, 3))
    assert not torch.equal(epoch_permutation(100, 7, 3), epoch_permutation(100, 7, 4))
    assert not torch.equal(
        build_model(sgd).state_dict()["0.weight"],
        build_model(digits_spec({"name": "sgd"}, seed=8)).state_dict()["0.weight"],
    )


@pytest.mark.parametrize(
    "optimizer",
    [
        {"name": "adam", "params": {"amsgrad": True}},
        {"name": "sgd", "lr": 0.05, "params": {"momentum": 0.9, "nesterov": True}},
        {"name": "lbfgs", "lr": 0.5, "params": {"max_iter": 3}},
    ],
    ids=["adam", "sgd_nesterov", "lbfgs"],
)
def test_resume_from_checkpoint_equals_uninterrupted_run(optimizer: dict[str, Any], tmp_path: Path) -> None:
    spec = digits_spec(
        optimizer,
        model={"name": "mlp", "params": {"depth": 1, "width": 16, "dropout": 0.1}},
        scheduler=[{"name": "linear_lr", "epochs": 2}, {"name": "cosine_annealing_lr"}],
        epochs=6,
    )
    uninterrupted = train(spec)
    calls = {"n": 0}

    def stop_after_three() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    first = train(spec, should_stop=stop_after_three, checkpoint_dir=tmp_path)
    assert first.outcome == "cancelled"
    assert first.epochs_done == 3
    seen: list[int] = []
    resumed = train(spec, checkpoint_dir=tmp_path, on_epoch=lambda m: seen.append(m.epoch))
    assert resumed.resumed_from_epoch == 3
    assert seen == [4, 5, 6]  # only new epochs are reported
    assert _losses(resumed.history) == _losses(uninterrupted.history)
    assert [m.lr for m in resumed.history] == [m.lr for m in uninterrupted.history]


def test_checkpoint_of_another_spec_is_refused(tmp_path: Path) -> None:
    train(seed_spec({"name": "sgd", "lr": 0.01}, epochs=1), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="different spec"):
        train(seed_spec({"name": "sgd", "lr": 0.02}, epochs=1), checkpoint_dir=tmp_path)


def test_early_stopping_stops_after_patience() -> None:
    # lr so small nothing improves by min_delta: stops after exactly patience + 1 epochs.
    spec = seed_spec({"name": "sgd", "lr": 1e-9}, epochs=50, early_stopping={"patience": 3, "min_delta": 0.1})
    result = train(spec)
    assert result.outcome == "early_stopped"
    assert result.epochs_done == 4


def test_early_stopped_checkpoint_is_not_trained_further(tmp_path: Path) -> None:
    spec = seed_spec({"name": "sgd", "lr": 1e-9}, epochs=50, early_stopping={"patience": 2, "min_delta": 0.1})
    first = train(spec, checkpoint_dir=tmp_path)
    again = train(spec, checkpoint_dir=tmp_path)
    assert again.outcome == "early_stopped"
    assert again.epochs_done == first.epochs_done


def test_should_stop_cancels_before_the_next_epoch() -> None:
    seen: list[int] = []
    result = train(
        seed_spec({"name": "sgd", "lr": 0.01}, epochs=10),
        on_epoch=lambda m: seen.append(m.epoch),
        should_stop=lambda: len(seen) >= 2,
    )
    assert result.outcome == "cancelled"
    assert seen == [1, 2]
    assert result.epochs_done == 2


def test_metrics_follow_design_semantics() -> None:
    result = train(digits_spec({"name": "sgd", "lr": 0.1}, epochs=3))
    for metrics in result.history:
        assert metrics.val_loss is not None
        assert 0.0 <= (metrics.val_accuracy or 0) <= 1.0
        assert metrics.grad_norm > 0
        assert metrics.epoch_seconds > 0
        assert metrics.samples_per_second > 0
    best = result.best
    assert best is not None
    assert best.epoch == result.best_epoch
    assert best.val_loss == min(m.val_loss for m in result.history if m.val_loss is not None)
    regression = train(seed_spec({"name": "sgd", "lr": 0.01}))
    assert all(m.val_accuracy is None for m in regression.history)
    env = regression.environment
    assert env["torch"] == torch.__version__
    assert env["device"] == "cpu"
    assert env["dtype"] == "float32"
    assert env["seed"] == 0


def test_train_loss_is_sample_weighted_mean() -> None:
    # 100 training samples in batches of 64 and 36: the mean must weight the batches by size.
    spec = JobSpec.model_validate(
        seed_spec(
            {"name": "sgd", "lr": 1e-12},
            epochs=1,
            batch_size=64,
            dataset={"name": "synthetic_regression", "params": {"n_samples": 125}},
        )
    )
    data, model = build_dataset(spec), build_model(spec)
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(model(data.x_train), data.y_train).item()
    assert train(spec).history[0].train_loss == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("loss", ["mse", "l1", "smooth_l1", "huber"])
def test_regression_losses(loss: str) -> None:
    assert train(seed_spec({"name": "adam"}, loss=loss, epochs=2)).outcome == "completed"


@pytest.mark.parametrize(
    ("dataset", "loss", "model"),
    [
        ("breast_cancer", "bce_with_logits", "logistic_regression"),
        ("iris", "cross_entropy", "logistic_regression"),
        ("wine", {"name": "cross_entropy", "label_smoothing": 0.1}, "mlp"),
        ("diabetes", "huber", "mlp"),
        ("digits", "cross_entropy", "cnn"),
    ],
)
def test_bundled_datasets_and_models(dataset: str, loss: Any, model: str) -> None:
    spec = {
        "model": {"name": model},
        "dataset": {"name": dataset},
        "loss": loss,
        "optimizer": {"name": "adam"},
        "epochs": 2,
        "device": "cpu",
    }
    result = train(spec)
    assert result.outcome == "completed"
    assert (result.history[-1].val_accuracy is None) == (dataset == "diabetes")


def test_synthetic_classification_is_learnable() -> None:
    spec = {
        "model": {"name": "mlp"},
        "dataset": {"name": "synthetic_classification", "params": {"n_classes": 4, "class_sep": 3.0}},
        "loss": "cross_entropy",
        "optimizer": {"name": "adam", "lr": 0.01},
        "epochs": 5,
        "device": "cpu",
    }
    assert (train(spec).history[-1].val_accuracy or 0) > 0.8


def test_npz_and_csv_datasets(data_root: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((60, 3))
    np.savez(data_root / "reg.npz", features=x, target=x @ np.array([1.0, -2.0, 0.5]))
    npz = {
        "dataset": {
            "name": "npz",
            "params": {"path": "reg.npz", "x_key": "features", "y_key": "target", "task": "regression"},
        },
        "optimizer": {"name": "adam", "lr": 0.05},
        "epochs": 3,
        "device": "cpu",
    }
    assert train(npz).outcome == "completed"
    rows = "\n".join(f"{a:.4f},{b:.4f},{int(a > 0)}" for a, b in rng.standard_normal((50, 2)))
    (data_root / "sub").mkdir()
    (data_root / "sub" / "cls.csv").write_text("f1,f2,label\n" + rows + "\n")
    csv = {
        "dataset": {"name": "csv", "params": {"path": "sub/cls.csv", "target": "label"}},
        "loss": "cross_entropy",
        "optimizer": {"name": "adam"},
        "epochs": 2,
        "device": "cpu",
    }
    data = build_dataset(csv)
    assert data.x_train.shape[1] == 2
    assert data.y_train.dtype == torch.long
    assert train(csv).outcome == "completed"


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_mnist_and_cifar_read_from_torchvision_layout(data_root: Path) -> None:
    rng = np.random.default_rng(2)
    raw = data_root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 40), ("t10k", 10)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    spec = {
        "model": {"name": "cnn", "params": {"channels": [4]}},
        "dataset": {"name": "mnist"},
        "loss": "cross_entropy",
        "optimizer": {"name": "adam"},
        "epochs": 1,
        "device": "cpu",
    }
    data = build_dataset(spec)
    assert data.x_train.shape == (40, 784)
    assert data.x_val.shape == (10, 784)
    assert float(data.x_train.max()) <= 1.0
    assert train(spec).outcome == "completed"

    cifar = data_root / "cifar-10-batches-py"
    cifar.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with (cifar / name).open("wb") as handle:
            pickle.dump(
                {"data": rng.integers(0, 255, (4, 3072)).astype(np.uint8), "labels": list(rng.integers(0, 10, 4))},
                handle,
            )
    data = build_dataset(
        {**spec, "dataset": {"name": "cifar10", "params": {"use_test_split": False}, "val_fraction": 0.25}}
    )
    assert data.x_train.shape == (15, 3072)
    assert data.x_val.shape == (5, 3072)


def test_bf16_autocast_runs_on_cpu() -> None:
    result = train(digits_spec({"name": "adam"}, precision="bf16"))
    assert result.environment["dtype"] == "bfloat16-autocast"
    assert result.outcome == "completed"


def test_pinned_implementation_is_obeyed_and_default_is_fastest() -> None:
    default = train(digits_spec({"name": "adam"}, epochs=1)).environment["optimizer_implementation"]
    pinned = train(digits_spec({"name": "adam", "params": {"fused": False, "foreach": False}}, epochs=1)).environment[
        "optimizer_implementation"
    ]
    assert default == "fused"
    assert pinned == "for-loop"


def test_thread_count_is_set_for_the_run_and_restored() -> None:
    before = torch.get_num_threads()
    result = train(seed_spec({"name": "sgd"}, epochs=1), num_threads=1)
    assert result.environment["threads"] == 1
    assert torch.get_num_threads() == before


def test_explicit_cuda_device_without_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="CUDA devices"):
        train(seed_spec({"name": "sgd"}, device="cuda:0", epochs=1))


@pytest.mark.slow
def test_torch_compile_path_matches_eager() -> None:
    spec = digits_spec({"name": "sgd", "lr": 0.1}, epochs=2)
    eager = train(spec)
    compiled = train({**spec, "compile": True})
    assert compiled.environment["compiled"] is True
    assert [m.train_loss for m in compiled.history] == pytest.approx([m.train_loss for m in eager.history], rel=1e-4)


def test_optimizer_plugin_through_entry_point(tmp_path: Path) -> None:
    package = tmp_path / "myplugin"
    package.mkdir()
    (package / "__init__.py").write_text(
        textwrap.dedent(
            """
            from pydantic import BaseModel, ConfigDict
            from optim_engine.plugins import OptimizerPlugin

            class SignSGDParams(BaseModel):
                model_config = ConfigDict(extra="forbid")
                momentum: float = 0.0

            plugin = OptimizerPlugin(name="sign_sgd", target="myplugin.opt:SignSGD", params_model=SignSGDParams, default_lr=0.01)
            """
        )
    )
    (package / "opt.py").write_text(
        textwrap.dedent(
            """
            import torch

            class SignSGD(torch.optim.SGD):
                @torch.no_grad()
                def step(self, closure=None):
                    for group in self.param_groups:
                        for p in group["params"]:
                            if p.grad is not None:
                                p.grad.sign_()
                    return super().step(closure)
            """
        )
    )
    dist = tmp_path / "myplugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[optimlab.optimizers]\nsign_sgd = myplugin:plugin\n")
    code = textwrap.dedent(
        """
        from optim_engine import catalog, train
        assert any(e["name"] == "sign_sgd" for e in catalog()["optimizers"])
        result = train({"optimizer": {"name": "sign_sgd", "params": {"momentum": 0.5}}, "epochs": 2, "device": "cpu"})
        assert result.outcome == "completed", result.outcome
        try:
            train({"optimizer": {"name": "sign_sgd", "params": {"momentum": "x"}}, "device": "cpu"})
        except ValueError as exc:
            assert "optimizer.sign_sgd.params.momentum" in str(exc), exc
        else:
            raise AssertionError("bad plugin params accepted")
        """
    )
    env = {"PYTHONPATH": f"{tmp_path}:{Path.cwd()}", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=Path.cwd())


def test_command_line_trains_a_yaml_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from optim_engine.__main__ import main

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(JobSpec.model_validate(seed_spec({"name": "sgd", "lr": 0.01}, epochs=2)).to_yaml())
    assert main([str(spec_file)]) == 0
    out = capsys.readouterr().out
    assert '"outcome": "completed"' in out
    assert '"epochs_done": 2' in out
    spec_file.write_text("optimizer: {name: sgd, lr: -1}\n")
    assert main([str(spec_file)]) == 2
    assert "optimizer.lr: Input should be greater than 0" in capsys.readouterr().err


def test_checkpoint_every_s_skips_young_checkpoints(tmp_path: Path) -> None:
    spec = seed_spec({"name": "sgd", "lr": 0.01}, epochs=3)
    train(spec, checkpoint_dir=tmp_path / "every", checkpoint_every_s=0)
    train(spec, checkpoint_dir=tmp_path / "hourly", checkpoint_every_s=3600)
    assert (tmp_path / "every" / "checkpoint.pt").exists()
    assert not (tmp_path / "hourly").exists()


def test_grad_norm_is_measured_before_clipping() -> None:
    result = train(digits_spec({"name": "sgd", "lr": 0.01}, grad_clip_norm=1e-3))
    assert all(m.grad_norm > 1e-3 for m in result.history)

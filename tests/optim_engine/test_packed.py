"""Packed trials: every trial of a pack equals the same spec trained alone by ``train``."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch

from optim_engine import EpochMetrics, JobSpec, TrainResult, can_pack, pack_key, train, train_packed
from tests.conftest import digits_spec, seed_spec

COMPARED = ("train_loss", "val_loss", "val_accuracy", "lr", "grad_norm")
MLP = {"name": "mlp", "params": {"depth": 2, "width": 32}}

# Every packable optimizer, with weight decay, nesterov, dampening, amsgrad, centered and momentum
# variants, and schedulers per epoch, per step (with cycled momentum) and on plateau.
PACKED_TRIALS: list[tuple[dict[str, Any], Any]] = [
    ({"name": "sgd", "lr": 0.1}, None),
    ({"name": "sgd", "lr": 0.05, "params": {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}}, None),
    ({"name": "sgd", "lr": 0.05, "params": {"momentum": 0.9, "dampening": 0.1}}, {"name": "cosine_annealing_lr"}),
    ({"name": "sgd", "lr": 0.05, "params": {"momentum": 0.9}}, {"name": "one_cycle_lr", "params": {"max_lr": 0.1}, "interval": "step"}),
    ({"name": "adam", "lr": 1e-3}, None),
    ({"name": "adam", "lr": 1e-3, "params": {"amsgrad": True, "weight_decay": 1e-2}}, {"name": "step_lr", "params": {"step_size": 2, "gamma": 0.5}}),
    ({"name": "adam", "lr": 2e-3, "params": {"decoupled_weight_decay": True, "weight_decay": 0.1}}, None),
    ({"name": "adam", "lr": 1e-3}, {"name": "one_cycle_lr", "params": {"max_lr": 0.01}, "interval": "step"}),
    ({"name": "adamw", "lr": 1e-3, "params": {"weight_decay": 0.1}}, {"name": "linear_lr", "params": {"start_factor": 0.5, "total_iters": 3}}),
    ({"name": "adamw", "lr": 1e-3, "params": {"amsgrad": True, "betas": [0.8, 0.99]}}, None),
    ({"name": "rmsprop", "lr": 1e-3, "params": {"momentum": 0.5, "centered": True, "weight_decay": 1e-3}}, None),
    ({"name": "rmsprop", "lr": 1e-3}, {"name": "reduce_lr_on_plateau", "params": {"patience": 0, "factor": 0.5}}),
    ({"name": "adagrad", "lr": 0.05, "params": {"lr_decay": 0.01, "initial_accumulator_value": 0.1, "weight_decay": 1e-3}}, None),
    ({"name": "adagrad", "lr": 0.02}, {"name": "exponential_lr", "params": {"gamma": 0.9}}),
]  # fmt: skip


def _spec(optimizer: dict[str, Any], scheduler: Any, seed: int, **overrides: Any) -> dict[str, Any]:
    spec = digits_spec(optimizer, **{"model": MLP, "epochs": 6, "seed": seed, **overrides})
    if scheduler is not None:
        spec["scheduler"] = scheduler
    return spec


def _max_abs(packed: list[EpochMetrics], alone: list[EpochMetrics]) -> float:
    assert [m.epoch for m in packed] == [m.epoch for m in alone]
    worst = 0.0
    for mine, theirs in zip(packed, alone, strict=True):
        for name in COMPARED:
            a, b = getattr(mine, name), getattr(theirs, name)
            assert (a is None) == (b is None), name
            if a is not None and (math.isfinite(a) or math.isfinite(b)):
                worst = max(worst, abs(a - b))
    return worst


def _assert_match(packed: list[TrainResult], alone: list[TrainResult]) -> list[float]:
    diffs = []
    for mine, theirs in zip(packed, alone, strict=True):
        assert (mine.outcome, mine.diverged_epoch) == (theirs.outcome, theirs.diverged_epoch)
        diffs.append(_max_abs(mine.history, theirs.history))
    assert statistics.median(diffs) <= 1e-6, diffs
    assert max(diffs) <= 1e-4, diffs
    return diffs


def test_every_packable_optimizer_matches_its_unpacked_run() -> None:
    specs = [_spec(opt, sched, seed) for seed, (opt, sched) in enumerate(PACKED_TRIALS)]
    packed = train_packed(specs)
    alone = [train(spec) for spec in specs]
    _assert_match(packed, alone)
    assert all(r.outcome == "completed" and r.epochs_done == 6 for r in packed)
    assert packed[0].environment["optimizer_implementation"] == "packed"
    assert packed[0].environment["pack_size"] == len(specs)
    # A schedule really ran in the pack: OneCycle's per-step lr and the plateau's cut.
    assert len({m.lr for m in packed[3].history}) == 6


@pytest.mark.parametrize(
    ("make", "optimizers"),
    [
        (lambda o, i: seed_spec(o, seed=i, epochs=5), [{"name": "sgd", "lr": 0.01}, {"name": "adam", "lr": 0.01}]),
        (
            lambda o, i: digits_spec(o, seed=i, model={"name": "logistic_regression"}, loss={"name": "cross_entropy", "label_smoothing": 0.1}),
            [{"name": "sgd", "lr": 0.1, "params": {"momentum": 0.5}}, {"name": "rmsprop", "lr": 1e-3}],
        ),
        (
            lambda o, i: seed_spec(o, seed=i, model={"name": "mlp", "params": {"depth": 1, "width": 16, "activation": "tanh"}}, loss="huber", grad_clip_norm=0.5),
            [{"name": "sgd", "lr": 0.05}, {"name": "adamw", "lr": 0.01}],
        ),
        (
            lambda o, i: {**seed_spec(o, seed=i), "dataset": {"name": "breast_cancer"}, "loss": "bce_with_logits", "model": {"name": "linear", "params": {"bias": False}}},
            [{"name": "adagrad", "lr": 0.01}, {"name": "sgd", "lr": 1e-3, "params": {"maximize": True}}],
        ),
    ],
    ids=["linear-mse", "logistic-label-smoothing", "tanh-mlp-huber-clipped", "bce-no-bias-maximize"],
)  # fmt: skip
def test_models_losses_and_clipping_match_unpacked_runs(make: Any, optimizers: list[dict[str, Any]]) -> None:
    specs = [make(opt, seed) for seed in range(2) for opt in optimizers]
    _assert_match(train_packed(specs), [train(spec) for spec in specs])


def test_diverging_trial_is_frozen_without_poisoning_the_others() -> None:
    specs = [_spec({"name": "sgd", "lr": lr}, None, seed) for seed, lr in enumerate([0.01, 10.0, 0.05, 0.1])]
    specs.append(_spec({"name": "adam", "lr": 1e-3}, None, 7))
    ended: list[tuple[int, str]] = []
    packed = train_packed(specs, on_finish=lambda i, result: ended.append((i, result.outcome)))
    assert packed[1].outcome == "diverged"
    assert packed[1].diverged_epoch == packed[1].epochs_done
    assert ended[0] == (1, "diverged")  # reported when it happens, not when the pack ends
    for i in (0, 2, 3, 4):
        alone = train(specs[i])
        assert packed[i].outcome == "completed"
        assert _max_abs(packed[i].history, alone.history) <= 1e-5
    # Not one bit of the others depends on the diverged trial: a pack without it gives the same.
    without = train_packed([spec for i, spec in enumerate(specs) if i != 1])
    for mine, theirs in zip([packed[i] for i in (0, 2, 3, 4)], without, strict=True):
        assert [(m.train_loss, m.val_loss, m.grad_norm) for m in mine.history] == [
            (m.train_loss, m.val_loss, m.grad_norm) for m in theirs.history
        ]


def test_early_stopping_and_cancellation_are_per_trial() -> None:
    early = {"patience": 1, "min_delta": 10.0, "monitor": "train_loss"}  # stops at epoch 2
    specs = [
        _spec({"name": "sgd", "lr": 0.05}, None, 0),
        _spec({"name": "sgd", "lr": 0.05}, None, 1, early_stopping=early),
        _spec({"name": "adam", "lr": 1e-3}, None, 2),
    ]
    epochs_seen: list[int] = []

    def stop() -> set[int]:
        epochs_seen.append(1)
        return {2} if len(epochs_seen) > 3 else set()  # cancel trial 2 before epoch 4

    packed = train_packed(specs, should_stop=stop)
    assert [r.outcome for r in packed] == ["completed", "early_stopped", "cancelled"]
    assert [r.epochs_done for r in packed] == [6, 2, 3]
    assert train(specs[1]).epochs_done == 2
    assert _max_abs(packed[0].history, train(specs[0]).history) <= 1e-5


class _Crash(RuntimeError):
    pass


def test_resume_from_pack_checkpoint_equals_uninterrupted_run(tmp_path: Path) -> None:
    specs = [_spec(opt, sched, seed) for seed, (opt, sched) in enumerate(PACKED_TRIALS[:8])]
    keys = [f"job-{i}" for i in range(len(specs))]
    uninterrupted = train_packed(specs, keys=keys)

    def crash_at_epoch_4(_: int, metrics: EpochMetrics) -> None:
        if metrics.epoch == 4:
            raise _Crash

    with pytest.raises(_Crash):
        train_packed(specs, keys=keys, on_epoch=crash_at_epoch_4, checkpoint_dir=tmp_path)
    seen: list[tuple[int, int]] = []
    resumed = train_packed(specs, keys=keys, checkpoint_dir=tmp_path, on_epoch=lambda i, m: seen.append((i, m.epoch)))
    assert min(epoch for _, epoch in seen) == 4
    for mine, theirs in zip(resumed, uninterrupted, strict=True):
        assert mine.resumed_from_epoch == 3
        assert [m.train_loss for m in mine.history] == [m.train_loss for m in theirs.history]
        assert [m.val_loss for m in mine.history] == [m.val_loss for m in theirs.history]

    # A later attempt may hold fewer trials (the others finished): it resumes those rows only.
    subset = [1, 4, 6]
    again = train_packed([specs[i] for i in subset], keys=[keys[i] for i in subset], checkpoint_dir=tmp_path)
    for mine, i in zip(again, subset, strict=True):
        assert [m.train_loss for m in mine.history] == [m.train_loss for m in uninterrupted[i].history]


def test_checkpoint_of_another_spec_is_refused(tmp_path: Path) -> None:
    specs = [_spec({"name": "sgd", "lr": 0.1}, None, 0, epochs=2)]
    train_packed(specs, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="another spec"):
        train_packed([_spec({"name": "sgd", "lr": 0.2}, None, 0, epochs=2)], checkpoint_dir=tmp_path)


def test_can_pack_names_the_trial_and_field() -> None:
    ok = [digits_spec({"name": "sgd", "lr": lr}, seed=i) for i, lr in enumerate([0.1, 0.01])]
    assert can_pack(ok).ok
    assert pack_key(JobSpec.model_validate(ok[0])) == pack_key(JobSpec.model_validate(ok[1]))
    cases = {
        "model.params.dropout": digits_spec({"name": "sgd"}, model={"name": "mlp", "params": {"dropout": 0.1}}),
        "model.name: cnn": digits_spec({"name": "sgd"}, model={"name": "cnn"}),
        "optimizer.name: nadam": digits_spec({"name": "nadam"}),
        "compile": digits_spec({"name": "sgd"}, compile=True),
        "precision": digits_spec({"name": "sgd"}, precision="bf16"),
        "batch_size differs": digits_spec({"name": "sgd"}, batch_size=32),
        "dataset differs": digits_spec({"name": "sgd"}, dataset={"name": "digits", "val_fraction": 0.3}),
    }
    for expected, spec in cases.items():
        check = can_pack([ok[0], spec])
        assert not check.ok
        assert any(reason.startswith("trial 1: ") and expected in reason for reason in check.reasons), check.reasons
    with pytest.raises(ValueError, match=r"optimizer\.name: nadam"):
        train_packed([ok[0], cases["optimizer.name: nadam"]])


def test_pack_restores_the_global_rng_and_thread_count() -> None:
    torch.manual_seed(123)
    before, threads = torch.get_rng_state(), torch.get_num_threads()
    train_packed([digits_spec({"name": "sgd", "lr": 0.1}, epochs=1)], num_threads=2)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.get_num_threads() == threads


def test_the_catalog_says_what_packs() -> None:
    from optim_engine import catalog

    entries = catalog()
    packable = {e["name"] for key in ("models", "optimizers") for e in entries[key] if e.get("packable")}
    assert packable == {"linear", "logistic_regression", "mlp", "sgd", "adam", "adamw", "rmsprop", "adagrad"}
    assert next(e for e in entries["models"] if e["name"] == "cnn")["packable"] is False

"""The CUDA paths: run on a GPU machine, skipped cleanly elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from optim_engine import train
from tests.conftest import digits_spec

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_auto_device_trains_on_cuda_with_fused_optimizer() -> None:
    result = train(digits_spec({"name": "adam"}, device="auto"))
    assert result.outcome == "completed"
    assert result.environment["device"].startswith("cuda")
    assert result.environment["optimizer_implementation"] == "fused"


def test_foreach_where_torch_has_no_fused_kernel() -> None:
    result = train(digits_spec({"name": "rmsprop"}, device="cuda"))
    assert result.environment["optimizer_implementation"] == "foreach"


def test_bf16_autocast_on_cuda() -> None:
    result = train(digits_spec({"name": "adamw"}, device="cuda", precision="bf16", epochs=3))
    assert result.environment["dtype"] == "bfloat16-autocast"
    assert result.history[-1].val_accuracy is not None
    assert result.history[-1].val_accuracy > 0.5


def test_compile_on_cuda() -> None:
    result = train(digits_spec({"name": "sgd", "lr": 0.1}, device="cuda", compile=True))
    assert result.outcome == "completed"
    assert result.environment["compiled"] is True


def test_resume_on_cuda_matches_uninterrupted(tmp_path: Path) -> None:
    spec = digits_spec({"name": "adam"}, device="cuda", epochs=4)
    full = train(spec)
    calls = {"n": 0}

    def stop_after_two() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    train(spec, should_stop=stop_after_two, checkpoint_dir=tmp_path)
    resumed = train(spec, checkpoint_dir=tmp_path)
    assert [m.train_loss for m in resumed.history] == pytest.approx([m.train_loss for m in full.history], rel=1e-5)


def test_packed_trials_on_cuda_match_the_cpu_pack() -> None:
    from optim_engine import train_packed

    specs = [digits_spec({"name": name, "lr": 0.01}, seed=i) for i, name in enumerate(["sgd", "adam", "rmsprop"])]
    on_gpu = train_packed([{**spec, "device": "cuda"} for spec in specs])
    on_cpu = train_packed(specs)
    assert on_gpu[0].environment["device"].startswith("cuda")
    for gpu, cpu in zip(on_gpu, on_cpu, strict=True):
        assert [round(m.train_loss, 4) for m in gpu.history] == [round(m.train_loss, 4) for m in cpu.history]

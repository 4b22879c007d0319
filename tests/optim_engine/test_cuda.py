"""The CUDA paths: run on a GPU machine (bench/gpu_check.sh), skipped cleanly elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from optim_engine import JobSpec, build_model, build_optimizer, train, train_packed
from optim_engine.spec import OPTIMIZER_VARIANTS, variant_names
from tests.conftest import digits_spec
from tests.optim_engine.test_packed import PACKED_TRIALS, _assert_match, _spec

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
    specs = [
        digits_spec({"name": name, "lr": 0.01}, seed=i, device="cpu")
        for i, name in enumerate(["sgd", "adam", "rmsprop"])
    ]
    on_gpu = train_packed([{**spec, "device": "cuda"} for spec in specs])
    on_cpu = train_packed(specs)
    assert on_gpu[0].environment["device"].startswith("cuda")
    for gpu, cpu in zip(on_gpu, on_cpu, strict=True):
        assert [round(m.train_loss, 4) for m in gpu.history] == [round(m.train_loss, 4) for m in cpu.history]


def test_packed_trials_on_cuda_match_the_same_specs_alone_on_cuda() -> None:
    # Every packable optimizer and schedule, as tests/optim_engine/test_packed.py on the CPU, with
    # its tolerance (float32 drift): the vectorized updates on CUDA kernels equal torch's own.
    specs = [_spec(opt, sched, seed, device="cuda") for seed, (opt, sched) in enumerate(PACKED_TRIALS)]
    packed = train_packed(specs)
    alone = [train(spec) for spec in specs]
    assert all(r.environment["device"].startswith("cuda") for r in packed + alone)
    _assert_match(packed, alone)


# What torch ships on CUDA: fused Adam, AdamW and SGD kernels; RMSprop has none, so foreach.
CUDA_IMPLEMENTATION = {"adam": "fused", "adamw": "fused", "sgd": "fused", "rmsprop": "foreach"}


@pytest.mark.parametrize("variant", OPTIMIZER_VARIANTS, ids=lambda v: variant_names(v)[0])
def test_the_optimizer_object_on_cuda_holds_the_implementation_reported(variant: Any) -> None:
    name = variant_names(variant)[0]
    if variant.extra == "pytorch-optimizer":
        pytest.importorskip("pytorch_optimizer")
    spec = JobSpec.model_validate(digits_spec({"name": name}, device="cuda"))
    model = build_model(spec).to("cuda")
    optimizer = build_optimizer(spec, model, "cuda")
    # The choice read from torch's own optimizer, not from the label the engine writes.
    fused, foreach = bool(optimizer.defaults.get("fused")), bool(optimizer.defaults.get("foreach"))
    held = "fused" if fused else "foreach" if foreach else "for-loop"
    assert held == optimizer.engine_implementation  # type: ignore[attr-defined]
    assert held == CUDA_IMPLEMENTATION.get(name, held)
    if "foreach" in optimizer.defaults and not fused:
        assert foreach, f"{name}: torch has a foreach implementation; a CUDA run should use it"

    def closure() -> float:  # L-BFGS asks for one; the others call it once
        optimizer.zero_grad(set_to_none=True)
        loss = model(torch.randn(16, 64, device="cuda")).square().mean()
        loss.backward()
        return loss.item()

    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step(closure)  # the chosen kernel runs on this device, or raises here
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))

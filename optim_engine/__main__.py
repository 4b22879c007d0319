"""Train one spec file from a terminal: ``python -m optim_engine spec.yaml``.

Prints one line per epoch and a JSON summary; exit code 0 for completed / early-stopped /
diverged runs (divergence is a result), 2 for an invalid spec.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from optim_engine.results import EpochMetrics
from optim_engine.spec import JobSpec, host_problems
from optim_engine.spec.errors import error_details


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m optim_engine``."""
    parser = argparse.ArgumentParser(prog="python -m optim_engine", description="Train one optimlab job spec.")
    parser.add_argument("spec", type=Path, help="a YAML or JSON job spec")
    parser.add_argument("--checkpoint-dir", type=Path, help="resume from / checkpoint to this folder")
    args = parser.parse_args(argv)
    try:
        spec = JobSpec.from_yaml(args.spec.read_text())  # YAML is a superset of JSON
    except OSError as exc:
        print(f"cannot read {args.spec}: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # one line per error, at its JSON path, as the API names it
        for detail in error_details(exc.errors()):
            print(f"invalid spec {args.spec}: {'.'.join(map(str, detail['loc']))}: {detail['msg']}", file=sys.stderr)
        return 2
    problems = host_problems(spec)
    if problems:  # what this machine lacks: data files, an extra, a plugin
        for loc, msg in problems:
            print(f"invalid spec {args.spec}: {'.'.join(loc)}: {msg}", file=sys.stderr)
        return 2

    from optim_engine._trials import train  # torch loads only once the spec is known to be valid

    print(f"{'epoch':>5} {'train_loss':>12} {'val_loss':>12} {'val_acc':>8} {'lr':>10} {'s':>7}")

    def show(m: EpochMetrics) -> None:
        val = f"{m.val_loss:12.6g}" if m.val_loss is not None else f"{'-':>12}"
        acc = f"{m.val_accuracy:8.4f}" if m.val_accuracy is not None else f"{'-':>8}"
        print(f"{m.epoch:5d} {m.train_loss:12.6g} {val} {acc} {m.lr:10.3g} {m.epoch_seconds:7.3f}", flush=True)

    result = train(spec, on_epoch=show, checkpoint_dir=args.checkpoint_dir)
    summary = {
        "outcome": result.outcome,
        "epochs_done": result.epochs_done,
        "best_epoch": result.best_epoch,
        "diverged_epoch": result.diverged_epoch,
        "final": result.final.as_dict() if result.final else None,
        "environment": result.environment,
        "artifacts": result.artifacts,
    }
    print(json.dumps(summary, indent=2, allow_nan=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

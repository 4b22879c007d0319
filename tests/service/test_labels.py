"""service/labels.py: the one canonical configuration label, and who shares it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from service import client_display, labels
from service.analysis import service as analysis

ROOT = Path(__file__).resolve().parents[2]
GRID = {
    "optimizer": {"name": "sgd", "lr": 0.01, "params": {"momentum": 0.9}},
    "scheduler": {"name": "step_lr", "params": {"step_size": 10, "gamma": 0.1}},
}


def test_flatten_names_leaves_by_dotted_paths() -> None:
    assert labels.flatten(GRID) == {
        "optimizer.name": "sgd",
        "optimizer.lr": 0.01,
        "optimizer.params.momentum": 0.9,
        "scheduler.name": "step_lr",
        "scheduler.params.step_size": 10,
        "scheduler.params.gamma": 0.1,
    }
    assert labels.flatten({"scheduler": None, "optimizer": {}}) == {"scheduler": None, "optimizer": {}}


def test_label_groups_by_top_level_key_name_first() -> None:
    assert labels.label(labels.flatten(GRID)) == "sgd lr=0.01 momentum=0.9 | step_lr step_size=10 gamma=0.1"
    assert labels.label({"optimizer.lr": 0.1}) == "lr=0.1"
    assert (
        labels.label({"optimizer.name": "sgd", "optimizer.lr": 0.01, "scheduler": None})
        == "sgd lr=0.01 | scheduler=none"
    )
    assert labels.label({"optimizer.lr": 1e-05}) == "lr=1e-05"
    assert labels.label({}) == "base"


def test_config_label_names_the_optimizer_when_the_grid_does_not_vary_it() -> None:
    assert labels.config_label({"optimizer.lr": 0.001}, "adam") == "adam lr=0.001"
    assert (
        labels.config_label({"optimizer": {"lr": 0.001}, "scheduler": None}, "adam") == "adam lr=0.001 | scheduler=none"
    )
    assert labels.config_label({"optimizer.name": "sgd", "optimizer.lr": 0.1}, "adam") == "sgd lr=0.1"
    assert labels.config_label({}, "adam") == "adam"
    assert labels.config_label({"optimizer.lr": 0.1}) == "lr=0.1"


def test_every_caller_shares_the_one_label() -> None:
    assert client_display.flatten is labels.flatten
    assert client_display.label is labels.label
    assert analysis.config_label is labels.config_label  # the analysis routes' arm names
    nested = {"optimizer": {"name": "sgd", "lr": 0.01, "params": {"momentum": 0.9}}, "scheduler": None}
    dotted = labels.flatten(nested)
    expected = "sgd lr=0.01 momentum=0.9 | scheduler=none"
    assert analysis.config_label(nested, "adam") == analysis.config_label(dotted, "adam") == expected
    assert client_display.label(client_display.flatten(nested)) == expected


def test_the_module_is_pure() -> None:
    code = "import sys, service.labels; bad = {'torch', 'numpy', 'fastapi', 'sqlalchemy'} & set(sys.modules); print(sorted(bad))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


CASES: list[tuple[dict[str, Any], str | None]] = [
    (GRID, None),
    ({"optimizer": {"name": "sgd", "lr": 0.01}, "scheduler": None}, None),
    ({"optimizer.lr": 1e-05, "optimizer.params.betas": [0.9, 0.999]}, "adam"),
    ({"optimizer.lr": 0.0001, "optimizer.params.nesterov": True, "batch_size": 64}, "sgd"),
    ({"optimizer.lr": 3e16, "scheduler.name": "cosine", "scheduler.params.T_max": 30}, "sgd"),
    ({}, "adam"),
    ({}, None),
]


def test_the_dashboards_port_says_the_same_words(tmp_path: Path) -> None:
    """static/js/configs.js's configLabel against config_label, run by Node where it is installed."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    script = tmp_path / "labels.js"
    source = (ROOT / "service/dashboard/static/js/configs.js").read_text()
    script.write_text(
        f"{source}\nconst cases = {json.dumps(CASES)};\n"
        "console.log(JSON.stringify(cases.map(([c, o]) => Configs.configLabel(c, o))));\n"
    )
    out = subprocess.run([node, str(script)], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [labels.config_label(config, optimizer) for config, optimizer in CASES]

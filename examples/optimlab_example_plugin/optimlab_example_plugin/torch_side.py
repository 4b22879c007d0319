"""The worker's side of the example plugin: the CNN as a torch module, the file as arrays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from optim_engine.plugins import data_file
from optimlab_example_plugin import NpzFileParams, SmallResNetParams


class _Block(nn.Module):
    """Two 3x3 convolutions and a skip connection (no normalization: runs stay deterministic)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class SmallResNet(nn.Module):
    """Stem, residual blocks, global average pooling and a linear head, on flattened images."""

    def __init__(self, image_shape: tuple[int, int, int], params: SmallResNetParams, n_outputs: int) -> None:
        super().__init__()
        self.image_shape = image_shape
        self.stem = nn.Conv2d(image_shape[0], params.width, 3, padding=1)
        self.blocks = nn.Sequential(*(_Block(params.width) for _ in range(params.blocks)))
        self.head = nn.Linear(params.width, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.view(x.shape[0], *self.image_shape)  # every dataset hands over flat rows
        features = self.blocks(torch.relu(self.stem(images)))
        return self.head(features.mean(dim=(2, 3)))  # type: ignore[no-any-return]


def build(params: SmallResNetParams, info: Any, n_outputs: int) -> nn.Module:
    """``ModelPlugin.target``: the model for a dataset of shape ``info``."""
    return SmallResNet(tuple(info.image_shape), params, n_outputs)


def load(params: NpzFileParams, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """``DatasetPlugin.target``: the file's two arrays."""
    with np.load(data_file(params.path, root), allow_pickle=False) as archive:
        return np.asarray(archive[params.x_key]), np.asarray(archive[params.y_key])

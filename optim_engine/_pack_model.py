"""A pack's model: the trials' weights as views into one ``[N, D]`` tensor, their forward and
backward as batched matmuls, and their per-trial losses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

NARROW = 16  # a linear layer with fewer outputs is multiplied transposed (``PackLayout``)


class PackLayout:
    """The model as a list of ops over views into a trial's flat parameter row.

    A weight is kept transposed ([in, out]) and followed by its bias, so the forward is
    ``x @ w + b`` and gradients come out contiguous. The first layer's bias is folded into its
    weight as one more input row: the inputs carry a column of ones (``augment``), and one
    matmul gives the layer's output and, backwards, both its gradients.

    A layer with a narrow output (fewer than ``NARROW`` features, such as a classifier's ten
    logits) is multiplied the other way round, ``(w^T x^T)^T``: CPU batched matmuls whose result
    has a short last dimension run 3-6x slower than the same product transposed (a 64x128 by
    128x10 product per trial: 225 us against 73 us for 30 trials, its weight gradient 488 us
    against 85 us). Its output is then a transposed view, which the loss wants anyway.
    """

    def __init__(self, template: nn.Module) -> None:
        modules = list(template) if isinstance(template, nn.Sequential) else [template]
        self.shapes: list[tuple[int, ...]] = []
        self.ops: list[tuple[str, Any]] = []
        self.narrow: list[bool] = []  # per op: a linear layer multiplied transposed
        first = modules[0]
        self.augment = isinstance(first, nn.Linear) and first.bias is not None
        for module in modules:
            if isinstance(module, nn.Linear):
                weight = len(self.shapes)
                n_out, n_in = module.weight.shape
                bias = None
                if module is first and self.augment:
                    self.shapes.append((n_in + 1, n_out))  # [w; b], as the row stores them
                else:
                    self.shapes.append((n_in, n_out))
                    if module.bias is not None:
                        bias = len(self.shapes)
                        self.shapes.append((1, n_out))
                self.ops.append(("linear", (weight, bias)))
                self.narrow.append(n_out < NARROW)
            else:
                self.ops.append(("act", module))
                self.narrow.append(False)
        self.sizes = [int(torch.Size(s).numel()) for s in self.shapes]

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer views of ``flat`` ([N, D]): weights [N, in, out], biases [N, 1, out]."""
        views, offset = [], 0
        for shape, size in zip(self.shapes, self.sizes, strict=True):
            views.append(flat[:, offset : offset + size].view(flat.shape[0], *shape))
            offset += size
        return views

    def forward(self, weights: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The trials' outputs for inputs ``x`` ([N, B, in]), without gradients."""
        for position, (kind, op) in enumerate(self.ops):
            if kind == "linear":
                x = self._linear(position, weights, x)
            else:
                x = x.relu_() if isinstance(op, nn.ReLU) else op(x)
        return x

    def gradients(
        self,
        weights: list[torch.Tensor],
        grads: list[torch.Tensor],
        x: torch.Tensor,
        loss: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """Forward, per-trial losses and backward; writes d(loss)/d(weights) into ``grads``.

        The backward of the linear layers is written out (batched matmuls straight into the
        gradient rows); ``loss`` returns the per-trial losses and their gradient with respect
        to the output; autograd handles only activations other than ReLU.
        """
        saved: list[Any] = []
        for position, (kind, op) in enumerate(self.ops):
            if kind == "linear":
                saved.append(x)
                x = self._linear(position, weights, x)
            elif isinstance(op, nn.ReLU):
                x = x.relu_()
                saved.append(x)
            else:
                with torch.enable_grad():
                    inp = x.requires_grad_()
                    x = op(inp)
                saved.append((inp, x))
                x = x.detach()
        losses, g = loss(x)
        for position in range(len(self.ops) - 1, -1, -1):
            (kind, op), inp = self.ops[position], saved[position]
            if kind == "linear":
                w, b = op
                if self.narrow[position]:
                    grads[w].copy_(torch.bmm(g.transpose(1, 2), inp).transpose(1, 2))
                else:
                    torch.bmm(inp.transpose(1, 2), g, out=grads[w])
                if b is not None:
                    torch.sum(g, dim=1, keepdim=True, out=grads[b])
                if position > 0:
                    g = torch.bmm(g, weights[w].transpose(1, 2))
            elif isinstance(op, nn.ReLU):
                # In place: g is this step's own buffer (bool-mask ops are far slower on CPU).
                g = torch.ops.aten.threshold_backward.grad_input(g, inp, 0, grad_input=g)
            else:
                (g,) = torch.autograd.grad(inp[1], inp[0], g)
        return losses

    def _linear(self, position: int, weights: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Op ``position``, a linear layer, on ``x`` ([N, B, in]): [N, B, out], a transposed view
        for a narrow layer."""
        w, b = self.ops[position][1]
        if self.narrow[position]:
            y = torch.bmm(weights[w].transpose(1, 2), x.transpose(1, 2)).transpose(1, 2)
        else:
            y = torch.bmm(x, weights[w])
        return y if b is None else y.add_(weights[b])


class PackLoss:
    """The spec's loss per trial: a mean over each trial's own batch, as ``train``'s mean
    reduction, with its gradient written out for cross-entropy."""

    def __init__(self, loss_fn: nn.Module) -> None:
        self.loss_fn = loss_fn
        self.loss_fn.reduction = "none"  # type: ignore[assignment]

    def loss_and_grad(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-trial mean losses ([N]) and their gradient with respect to ``output``."""
        if isinstance(self.loss_fn, nn.CrossEntropyLoss):
            _, batch, classes = output.shape
            losses, logp, index = self._cross_entropy(output, target)
            smoothing = self.loss_fn.label_smoothing
            # d/dz of the mean loss: (softmax - smoothed one-hot) / batch, with softmax = exp(logp).
            grad = logp.exp_()
            grad.scatter_add_(1, index, torch.full(index.shape, smoothing - 1, dtype=grad.dtype, device=grad.device))
            if smoothing > 0:
                grad.sub_(smoothing / classes)
            return losses, grad.div_(batch).transpose(1, 2)
        with torch.enable_grad():
            leaf = output.requires_grad_()
            losses = self.losses(leaf, target)
            (grad,) = torch.autograd.grad(losses.sum(), leaf)
        return losses.detach(), grad

    def losses(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Each trial's mean loss over its batch, shape [N]; ``target`` is the trials' batches
        stacked along dim 0. Per-sample losses, then a mean per trial: ``train``'s mean reduction."""
        if isinstance(self.loss_fn, nn.CrossEntropyLoss):
            return self._cross_entropy(output, target)[0]
        per_sample = self.loss_fn(output.reshape(-1, output.shape[-1]), target)
        return per_sample.view(output.shape[0], -1).mean(1)  # type: ignore[no-any-return]

    def _cross_entropy(
        self, output: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-trial mean cross-entropy (with label smoothing), the log-probabilities [N, C, B]
        and the target index [N, 1, B]. log_softmax over a short last dim is slow on CPU; over
        dim 1 of [N, C, B] it is not."""
        assert isinstance(self.loss_fn, nn.CrossEntropyLoss)
        logp = torch.log_softmax(output.transpose(1, 2), dim=1)
        index = target.view(output.shape[0], 1, -1)
        nll = -logp.gather(1, index).squeeze(1)
        smoothing = self.loss_fn.label_smoothing
        if smoothing > 0:
            nll = (1 - smoothing) * nll - smoothing * logp.mean(1)
        return nll.mean(1), logp, index

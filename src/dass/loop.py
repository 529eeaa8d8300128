"""Training-loop pieces shared by search and final training: one SGD step, evaluation, schedules."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import current_world
from .runtime.precision import current_precision


class GradientOverflow(Exception):
    """fp16 gradients overflowed at the current loss scale: the step is skipped (and the scale halved)."""


def cosine_lr(base: float, minimum: float, epoch: int, epochs: int) -> float:
    """Cosine annealing from ``base`` at epoch 0 towards ``minimum`` at ``epochs`` (per phase)."""
    if epochs <= 0:
        return base
    return minimum + 0.5 * (base - minimum) * (1.0 + math.cos(math.pi * epoch / epochs))


LR_SCHEDULES = ("cosine", "cosine_power")   # the per-phase schedules (search.lr_schedule, train.lr_schedule)


def cosine_power_lr(base: float, minimum: float, epoch: int, epochs: int, power: float) -> float:
    """sharpDARTS' cosine power annealing (Hundt et al. 2019, ``cnn/cosine_power_annealing.py``), per phase:

        c(t)  = (1 + cos(pi * t)) / 2,            t = epoch / epochs   (1 at the start, 0 at ``epochs``)
        lr(t) = minimum + (base - minimum) * (power ** c(t) - 1) / (power - 1)

    i.e. the cosine curve raised as an exponent of ``power`` and rescaled to run from ``base`` to ``minimum``
    (the authors' ``power ** (c + 1)`` shifted by ``power`` and divided by ``power ** 2 - power``). A larger
    ``power`` drops faster early and flattens late, closer to exponential decay; ``power = 1`` (the limit) is
    :func:`cosine_lr`. The authors' code samples the curve at epochs 1..E and rescales it by those samples' end
    points; here it is sampled at ``epoch = 0..epochs-1`` like :func:`cosine_lr`, so epoch 0 gets ``base``."""
    if power < 1:
        raise ValueError(f"cosine power annealing needs power >= 1, got {power}")
    if epochs <= 0:
        return base
    c = 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    share = c if power == 1 else (power ** c - 1.0) / (power - 1.0)
    return minimum + (base - minimum) * share


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def classification_loss(output, y: torch.Tensor, label_smoothing: float = 0.0,
                        aux_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the logits, plus ``aux_weight`` times that of auxiliary logits when the model gives them."""
    logits, aux = output if isinstance(output, tuple) else (output, None)
    loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    if aux is not None and aux_weight:
        loss = loss + aux_weight * F.cross_entropy(aux, y, label_smoothing=label_smoothing)
    return loss, logits


def gradients(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
    """``d loss / d params`` (None where unused), averaged over the ranks of a data-parallel run; under fp16,
    through the loss scale (raises :class:`GradientOverflow` when they overflow)."""
    precision = current_precision()
    grads = current_world().average(torch.autograd.grad(precision.scaled(loss), params, allow_unused=True))
    grads, finite = precision.unscale(grads)
    if not finite:
        raise GradientOverflow
    return grads


def sgd_step(model: nn.Module, params: Sequence[nn.Parameter], optimizer: torch.optim.Optimizer,
             x: torch.Tensor, y: torch.Tensor, grad_clip: float | None, label_smoothing: float = 0.0,
             aux_weight: float = 0.0) -> tuple[float, int]:
    """Forward, backward into ``params`` only (nothing else accumulates gradients), clip, step.

    Returns the batch loss and the number of correct predictions.
    """
    with current_precision().autocast():
        loss, logits = classification_loss(model(x), y, label_smoothing, aux_weight)
    apply_gradients(loss, params, optimizer, grad_clip)
    return float(loss.detach()), int((logits.argmax(1) == y).sum())


def apply_gradients(loss: torch.Tensor, params: Sequence[nn.Parameter], optimizer: torch.optim.Optimizer,
                    grad_clip: float | None) -> bool:
    """One optimizer step on ``d loss / d params`` (rank-averaged, clipped); under fp16 a step whose gradients
    overflow is skipped and halves the loss scale. Returns whether the step was taken."""
    precision = current_precision()
    try:
        grads = gradients(loss, params)
    except GradientOverflow:
        precision.update(False)
        return False
    for p, g in zip(params, grads):
        p.grad = g
    if grad_clip:
        nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    precision.update(True)
    return True


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device | None = None) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy in eval mode (batches moved to ``device``); restores the mode.

    In a data-parallel run each rank evaluates its part of every batch and the totals are summed."""
    was_training = model.training
    model.eval()
    try:
        return mean_loss_and_accuracy(model, batches, device)
    finally:
        model.train(was_training)


@torch.no_grad()
def mean_loss_and_accuracy(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                           device: torch.device | None = None, min_batch: int = 1) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy in the model's current mode (batches smaller than ``min_batch``
    skipped); in a data-parallel run each rank takes its part of every batch and the totals are summed."""
    world = current_world()
    totals = torch.zeros(3, dtype=torch.float64)   # loss, correct, count
    for x, y in batches:
        x, y = world.part(x), world.part(y)
        if len(y) < min_batch:
            continue
        if device is not None:
            x, y = x.to(device), y.to(device)
        with current_precision().autocast():
            logits = model(x).float()
        totals += torch.tensor([float(F.cross_entropy(logits, y, reduction="sum")),
                                int((logits.argmax(1) == y).sum()), len(y)], dtype=torch.float64)
    loss, correct, count = world.sum_(totals).tolist()
    return loss / max(count, 1), correct / max(count, 1)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                          device: torch.device | None, max_batches: int) -> None:
    """Re-estimate every batch norm's running statistics (a cumulative average over ``max_batches`` batches in
    training mode) for the model as it is now: after the masks change, the running averages still describe
    the network before, and an evaluation with them measures a network that no longer exists."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    saved = [(m, m.momentum) for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        world = current_world()
        for i, (x, _) in enumerate(batches):
            if i >= max_batches:
                break
            x = world.shard(x)   # (a data-parallel run: each rank its share, batch norm syncs the statistics)
            model(x.to(device) if device is not None else x)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(was_training)

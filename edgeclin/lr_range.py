"""``--lr auto``: a learning-rate range test on the training split picks the run's rate.

The test (Smith 2017, "Cyclical learning rates"; fastai's ``lr_find``) trains the prepared model
for a few dozen steps while the rate grows geometrically from far below the method's default to
far above it, and watches the smoothed training loss. Past some rate the loss turns and climbs:
the divergence point. The run then uses a tenth of the rate at which the smoothed loss was
lowest, which lies below the divergence point by construction; every group keeps its ratio to
the others (a prompt's tokens and its head move together).

The trainable weights are put back afterwards, so the run starts from the same weights as without
the test. What the test saw and chose goes into the run record (``resolved.lr_range_test``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

STEPS = 50  # about 800 rows at batch 16: a fraction of an epoch on a few thousand notes
LOWEST, HIGHEST = 1e-2, 1e2  # the scanned rates, as multiples of the method's default for the task
SMOOTHING = 0.9  # of the loss: an exponential moving average, bias-corrected (as fastai does)
DIVERGED = 4.0  # the smoothed loss this many times its lowest: the rates above are not worth trying
FROM_MINIMUM = 10.0  # the chosen rate: the rate at the lowest smoothed loss divided by this


@dataclass
class RangeTest:
    """What the test saw: per step the rate multiplier and the smoothed loss; and what it chose."""

    multipliers: list[float]
    smoothed_losses: list[float]
    at_minimum: float  # the multiplier at the lowest smoothed loss
    diverged_at: float | None  # the multiplier where the loss diverged (None: it never did)
    chosen: float  # the multiplier the run uses

    def as_record(self, base_lr: float, base_head_lr: float | None) -> dict:
        return {**asdict(self), "base_lr": base_lr, "base_head_lr": base_head_lr, "steps": len(self.multipliers),
                "lr": base_lr * self.chosen,
                "head_lr": None if base_head_lr is None else base_head_lr * self.chosen}


def multiplier_at(step: int, steps: int = STEPS) -> float:
    """The rate multiplier of ``step`` (0-based): geometric from LOWEST to HIGHEST."""
    return LOWEST * (HIGHEST / LOWEST) ** (step / max(steps - 1, 1))


def round_down(value: float) -> float:
    """The largest of 1, 2 and 5 times a power of ten not above ``value``: a rate people can read, and the same
    choice in every process of a multi-GPU run whatever noise separates their tests."""
    power = 10.0 ** math.floor(math.log10(value))
    return next(step * power for step in (5, 2, 1) if step * power <= value * (1 + 1e-9))


def smooth(losses: list[float]) -> list[float]:
    """The bias-corrected moving average of the losses, up to the first that is not finite."""
    smoothed, average = [], 0.0
    for step, loss in enumerate(losses):
        if not math.isfinite(loss):
            break
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        smoothed.append(average / (1 - SMOOTHING ** (step + 1)))
    return smoothed


def diverged_step(losses: list[float]) -> int | None:
    """The first step whose loss is not finite or whose smoothed loss is DIVERGED times the lowest before it."""
    smoothed = smooth(losses)
    lowest = math.inf
    for step, value in enumerate(smoothed):
        lowest = min(lowest, value)
        if value > DIVERGED * lowest:
            return step
    return len(smoothed) if len(smoothed) < len(losses) else None


def choose(multipliers: list[float], losses: list[float]) -> RangeTest:
    """Where the smoothed loss was lowest and where it diverged; the multiplier the run takes."""
    smoothed = smooth(losses)
    if not smoothed:
        raise ValueError("the range test's first loss was not finite")
    stop = diverged_step(losses)
    lowest = int(np.argmin(smoothed[:stop]))
    chosen = round_down(max(multipliers[lowest] / FROM_MINIMUM, LOWEST))
    return RangeTest(multipliers[:len(smoothed)], smoothed, multipliers[lowest],
                     None if stop is None else multipliers[stop], chosen)


def run_range_test(model, batches, loss_of, groups: list[dict], max_grad_norm: float | None,
                   steps: int = STEPS) -> RangeTest:
    """Train ``model`` for ``steps`` steps on ``batches`` (cycled) at rising rates, then restore its weights.

    ``groups``: the optimizer's parameter groups at the base rates (a group marked ``fixed`` keeps its rate);
    ``loss_of(batch)``: one batch's loss.
    Stops once the loss has diverged.
    """
    import torch

    saved = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([dict(g) for g in groups])
    bases = [g["lr"] for g in groups]
    multipliers, losses = [], []
    model.train()
    try:
        for step in range(steps):
            multiplier = multiplier_at(step, steps)
            for group, base in zip(optimizer.param_groups, bases, strict=True):
                group["lr"] = base if group.get("fixed") else base * multiplier
            loss = loss_of(batches[step % len(batches)])
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], max_grad_norm or math.inf)
            optimizer.step()
            optimizer.zero_grad()
            multipliers.append(multiplier)
            losses.append(float(loss.detach()))
            if diverged_step(losses) is not None:
                break
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in saved:
                    p.copy_(saved[name])
    return choose(multipliers, losses)

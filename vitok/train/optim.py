"""AdamW with linear warm-up then cosine decay, and an exponential moving average of the weights."""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


def build_optimizer(params, sched: dict[str, Any], lr: float | None = None) -> torch.optim.AdamW:
    """AdamW over parameters that need gradients; no weight decay on 1-D tensors (norms, biases, scalars)."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": float(sched["weight_decay"])},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=float(lr if lr is not None else sched["lr"]),
                             betas=tuple(sched["betas"]))


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the base lr at ``step``: linear warm-up to 1, then cosine down to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(opt: torch.optim.Optimizer, step: int, sched: dict[str, Any]) -> float:
    """Put the warm-up + cosine lr for ``step`` into every parameter group (the schedule is a pure function of the
    step, so a checkpoint's step restores it exactly); returns the lr."""
    lr = float(sched["lr"]) * lr_factor(step, int(sched["warmup"]), int(sched["steps"]), float(sched["min_lr_ratio"]))
    for group in opt.param_groups:
        group["lr"] = lr
    return lr


class EMA:
    """Float32 shadow copy of a model, updated as ``ema = d * ema + (1 - d) * model``; the decay ramps up as
    ``min(decay, (1 + n) / (10 + n))`` so early weights are not frozen in. The shadow is what gets exported."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        # eval mode, updated under no_grad; requires_grad stays as is: a vitok Tokenizer with no trainable
        # parameters counts as frozen and caches its weights hash, which in-place EMA updates would make stale
        self.model = copy.deepcopy(model).eval()
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_state = self.model.state_dict()
        for name, value in model.state_dict().items():
            target = ema_state[name]
            if target.dtype.is_floating_point:
                target.lerp_(value.detach().to(target.dtype), 1 - d)
            else:
                target.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])

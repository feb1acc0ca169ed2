"""The training loop shared by the thorax model, its refinement models and the CTV models."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch
from monai.losses import DiceCELoss

logger = logging.getLogger("rtnode.train")


def fit(
    network: torch.nn.Module,
    batches: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    lr: float,
) -> tuple[torch.nn.Module, list[float]]:
    """Train ``network`` on ``batches()`` (images, soft targets) with soft Dice +
    cross-entropy, channels-last (the fastest layout on this CPU); returns it in eval
    mode and the mean loss of every 50 steps."""
    network = network.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    network.train()
    loss_fn = DiceCELoss(softmax=True, include_background=False, batch=True)

    def step_loss() -> torch.Tensor:
        images, targets = batches()
        loss: torch.Tensor = loss_fn(
            network(images.to(memory_format=torch.channels_last_3d)), targets
        )
        return loss

    history = fit_steps(network, step_loss, steps, lr)
    network = network.to(memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]
    return network, history


def fit_steps(
    network: torch.nn.Module,
    step_loss: Callable[[], torch.Tensor],
    steps: int,
    lr: float,
    label: str = "",
) -> list[float]:
    """``steps`` optimiser steps on ``step_loss()`` (AdamW, weight decay 1e-4, warm-up and
    cosine schedule); returns the mean loss of every 50 steps, logged with ``label``."""
    optimiser = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: lr_factor(step, steps))
    history, running, start = [], 0.0, time.perf_counter()
    for step in range(1, steps + 1):
        loss = step_loss()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        running += loss.item()
        if step % 50 == 0:
            history.append(round(running / 50, 4))
            elapsed = time.perf_counter() - start
            logger.info(
                "%sstep %d/%d loss %.4f (%.0f s, %.2f s/step)",
                f"{label} " if label else "",
                step,
                steps,
                running / 50,
                elapsed,
                elapsed / step,
            )
            running = 0.0
    return history


def lr_factor(step: int, steps: int, warmup: int = 30) -> float:
    """Linear warm-up, then cosine decay to 2% of the base learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress))

"""Training throughput of a config (clips/s), measured on the trainer's own step so later changes compare fairly."""
from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from vitok.data.errors import VitokError
from vitok.train import distributed as D
from vitok.train.data import StepSampler


def bench_train(cfg: dict[str, Any], steps: int = 5, warmup: int = 2) -> dict[str, Any]:
    """Run ``warmup`` untimed and ``steps`` timed training steps of ``cfg`` (single process, nothing kept on disk).

    Data loading is timed apart from the step (forward, losses, backward, optimizer, EMA), and so is making the timed
    steps' clips again in this process (``worker_clips_per_s``: what one data worker makes, so a loader of W workers
    on W free cores is capped near W times that; compare it with ``step_clips_per_s`` to size ``data.num_workers``).
    With a patch GAN (``loss.gan`` > 0) every step includes the discriminator, whatever ``loss.gan_start``
    (``gan``: True). A step the trainer skips as non-finite (no optimizer step) is refused, not timed."""
    from vitok.train.trainer import Trainer

    cfg = {**cfg, "schedule": {**cfg["schedule"], "steps": max(cfg["schedule"]["steps"], warmup + steps)}}
    gan = float(cfg["loss"]["gan"]) > 0
    if gan:   # the discriminator joins at loss.gan_start: from the first step here, so the timed steps include it
        cfg["loss"] = {**cfg["loss"], "gan_start": 0}
    info = D.DistInfo(device=D.pick_device(cfg["device"]))
    with tempfile.TemporaryDirectory(prefix="vitok-bench-") as tmp:
        trainer = Trainer(cfg, Path(tmp), info, resume=False, overwrite=True, quiet=True)
        it = iter(trainer.loader)
        step_s, data_s = [], []
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            batch = next(it).to(trainer.device)
            t1 = time.perf_counter()
            if trainer.train_step(batch) is None:
                raise VitokError(f"step {i + 1} of the bench was skipped (non-finite loss or gradients: no optimizer "
                                 f"step to time); lower schedule.lr or check the data")
            trainer.step += 1
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            if i >= warmup:
                data_s.append(t1 - t0)
                step_s.append(t2 - t1)
        clip_s = _clip_seconds(trainer.dataset, trainer.batch_size, int(cfg["seed"]), warmup, steps)
    b = trainer.batch_size
    mean_step = sum(step_s) / len(step_s)
    mean_data = sum(data_s) / len(data_s)
    return {"config": cfg["name"], "model": cfg["model"]["name"], "device": str(trainer.device),
            "threads": torch.get_num_threads(), "precision": trainer.precision, "compiled": bool(cfg["compile"]),
            "batch_size": b,
            "clip": [trainer.num_frames, cfg["data"]["size"], cfg["data"]["size"]],
            "params": sum(p.numel() for p in trainer.tok.parameters()), "steps": steps,
            "step_s": mean_step, "data_s": mean_data, "clips_per_s": b / (mean_step + mean_data),
            "step_clips_per_s": b / mean_step, "worker_clips_per_s": 1 / clip_s, "gan": gan}


def _clip_seconds(dataset: Any, batch_size: int, seed: int, first_step: int, steps: int) -> float:
    """Mean seconds to make one of the clips of ``steps`` steps from ``first_step`` on, in this process on one
    thread, as a DataLoader worker makes them."""
    keys = list(itertools.islice(StepSampler(len(dataset), batch_size, seed=seed, start_step=first_step),
                                 steps * batch_size))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        for key in keys:
            dataset[key]
        return (time.perf_counter() - t0) / len(keys)
    finally:
        torch.set_num_threads(threads)

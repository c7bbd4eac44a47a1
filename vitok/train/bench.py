"""Training throughput of a config (clips/s), measured on the trainer's own step so later changes compare fairly."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from vitok.train import distributed as D


def bench_train(cfg: dict[str, Any], steps: int = 5, warmup: int = 2) -> dict[str, Any]:
    """Run ``warmup`` untimed and ``steps`` timed training steps of ``cfg`` (single process, nothing kept on disk).

    Data loading is timed apart from the step (forward, losses, backward, optimizer, EMA)."""
    from vitok.train.trainer import Trainer

    cfg = {**cfg, "schedule": {**cfg["schedule"], "steps": max(cfg["schedule"]["steps"], warmup + steps)}}
    info = D.DistInfo(device=D.pick_device(cfg["device"]))
    with tempfile.TemporaryDirectory(prefix="vitok-bench-") as tmp:
        trainer = Trainer(cfg, Path(tmp), info, resume=False, overwrite=True, quiet=True)
        it = iter(trainer.loader)
        step_s, data_s = [], []
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            batch = next(it).to(trainer.device)
            t1 = time.perf_counter()
            trainer.train_step(batch)
            trainer.step += 1
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            if i >= warmup:
                data_s.append(t1 - t0)
                step_s.append(t2 - t1)
    b = trainer.batch_size
    mean_step = sum(step_s) / len(step_s)
    mean_data = sum(data_s) / len(data_s)
    return {"config": cfg["name"], "model": cfg["model"]["name"], "device": str(trainer.device),
            "threads": torch.get_num_threads(), "precision": trainer.precision, "batch_size": b,
            "clip": [trainer.num_frames, cfg["data"]["size"], cfg["data"]["size"]],
            "params": sum(p.numel() for p in trainer.tok.parameters()), "steps": steps,
            "step_s": mean_step, "data_s": mean_data, "clips_per_s": b / (mean_step + mean_data),
            "step_clips_per_s": b / mean_step}

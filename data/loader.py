"""make_loader: a seeded DataLoader over any clip Dataset, batching to (B,3,T,H,W), optionally distributed."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler


def _seed_worker(worker_id: int) -> None:
    """Seed numpy and random in each worker from torch's per-worker seed (itself derived from the loader's seed)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, batch_size: int, *, num_workers: int = 0, shuffle: bool = True, seed: int = 0,
                distributed: bool = False, drop_last: bool = True) -> DataLoader:
    """DataLoader yielding float (B,3,T,H,W) batches; the same ``seed`` gives the same order of items, whatever
    ``num_workers``.

    With ``distributed=True`` and ``torch.distributed`` initialized, each rank reads its own shard through a
    DistributedSampler (call ``loader.sampler.set_epoch(epoch)`` each epoch); otherwise one process reads all.
    """
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    elif shuffle:   # its own generator: the workers' base seeds (drawn per epoch without persistent workers) do
        # not advance it, so the order is the same for any num_workers
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=drop_last, generator=torch.Generator().manual_seed(seed + 1),
                      worker_init_fn=_seed_worker, persistent_workers=num_workers > 0)

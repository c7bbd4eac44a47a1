"""Training data: a mix of procedural motion clips, the sample clips' training ranges and an optional folder,
drawn by a step-indexed sampler so that a resumed run sees exactly the batches the uninterrupted run would have."""
from __future__ import annotations

import warnings
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vitok.data.convert import frames_to_tensor, tensor_to_frames
from vitok.data.errors import VitokError


def scan_folder(data_cfg: dict[str, Any], num_frames: int) -> Any:
    """The ``data.folder`` of a config as a VideoFolder of training crops."""
    from vitok.data.folder import VideoFolder

    return VideoFolder(data_cfg["folder"], num_frames=num_frames, size=int(data_cfg["size"]))


class TrainClips(Dataset):
    """Clips ``(3,T,H,W)`` in [-1,1] from several sources, indexed by ``(item, draw_seed)``: the seed drives the
    random window, crop and flip of sample and folder clips (procedural clips are fixed per item), so augmentation
    depends only on the sampler's position, not on worker or global RNG."""

    def __init__(self, data_cfg: dict[str, Any], num_frames: int, folder: Any = None) -> None:
        """``folder``: the ``data.folder`` scan when the caller made it (one rank scans, the others share it);
        else it is scanned here."""
        self.num_frames = num_frames
        self.size = int(data_cfg["size"])
        self.hflip = bool(data_cfg["hflip"])
        self.sources: list[tuple[str, Any, int]] = []   # (kind, payload, virtual length)
        syn = data_cfg["synthetic"]
        if syn["num_clips"] > 0:
            from vitok.data.synthetic import SyntheticMotion

            ds = SyntheticMotion(syn["num_clips"], num_frames, self.size, seed=syn["seed"])
            self.sources.append(("synthetic", ds, len(ds)))
        smp = data_cfg["samples"]
        if smp["repeat"] > 0:
            from vitok.data.samples import SAMPLE_CLIPS, SIZES, load_sample

            named = [(f"{name} at {s} px", load_sample(name, "train", size=int(s)))
                     for s in smp["sizes"] for name in SAMPLE_CLIPS]
            dropped = [n for n, c in named if c.shape[0] < num_frames or min(c.shape[1:3]) < self.size]
            clips = [c for n, c in named if n not in dropped]
            if dropped and clips:
                warnings.warn(f"data.samples: left out {', '.join(dropped)} (fewer than {num_frames} frames or "
                              f"smaller than data.size {self.size})", stacklevel=2)
            side = {name: min(SIZES[name]) for name in SAMPLE_CLIPS}
            raised = [f"{name} ({side[name]} px) to {s}" for s in smp["sizes"] for name in SAMPLE_CLIPS
                      if int(s) > side[name]]
            if raised:
                warnings.warn(f"data.samples.sizes upsamples {', '.join(raised)} px squares", stacklevel=2)
            if not clips:
                raise VitokError(f"data.samples: no training clip has {num_frames} frames of >= {self.size} px; "
                                 f"lower data.size or data.num_frames")
            windows = [c.shape[0] // num_frames for c in clips]
            owner = np.repeat(np.arange(len(clips)), windows)   # item -> clip, in proportion to clip length
            self.sources.append(("samples", (clips, owner), len(owner) * int(smp["repeat"])))
        if data_cfg["folder"]:
            ds = folder if folder is not None else scan_folder(data_cfg, num_frames)
            self.sources.append(("folder", ds, len(ds)))
        if not self.sources:
            raise VitokError("config data: no training clips (set data.synthetic.num_clips, data.samples.repeat "
                             "or data.folder)")
        self.offsets = np.cumsum([0] + [n for _, _, n in self.sources])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def fingerprint(self) -> str | None:
        """The folder's files, when a folder is among the sources (the others are fixed by the config)."""
        return next((ds.fingerprint() for kind, ds, _ in self.sources if kind == "folder"), None)

    def __getitem__(self, key: tuple[int, int] | int) -> torch.Tensor:
        item, seed = key if isinstance(key, tuple) else (key, key)
        rng = np.random.default_rng(seed)
        which = int(np.searchsorted(self.offsets, item, side="right") - 1)
        kind, payload, _ = self.sources[which]
        local = item - int(self.offsets[which])
        if kind == "samples":
            clips, owner = payload
            clip = self._crop(clips[owner[local % len(owner)]], rng)
        elif kind == "folder":   # the draw's own start frame and crop: each epoch another window of each file
            clip = payload.read_item(local, rng)
            if self.hflip and rng.random() < 0.5:
                clip = clip.flip(-1)
        else:
            clip = payload[local]
        return clip.float().contiguous()

    def _crop(self, frames: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """Random temporal window anywhere in the clip, random ``size`` px crop, optional horizontal flip."""
        t0 = int(rng.integers(0, frames.shape[0] - self.num_frames + 1))
        y0 = int(rng.integers(0, frames.shape[1] - self.size + 1))
        x0 = int(rng.integers(0, frames.shape[2] - self.size + 1))
        clip = frames[t0:t0 + self.num_frames, y0:y0 + self.size, x0:x0 + self.size]
        if self.hflip and rng.random() < 0.5:
            clip = clip[:, :, ::-1]
        return frames_to_tensor(np.ascontiguousarray(clip))[0]


class StepSampler(torch.utils.data.Sampler):
    """Endless stream of ``(item, draw_seed)``: one shuffled permutation per epoch (seeded by seed and epoch), the
    stream cut into per-step slices of ``batch_size * world`` and each rank takes its own part, as a
    DistributedSampler would. It starts at ``start_step``, which is all a checkpoint needs to store."""

    def __init__(self, n: int, batch_size: int, *, seed: int, rank: int = 0, world: int = 1, start_step: int = 0):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.start_step = start_step

    def __iter__(self) -> Iterator[tuple[int, int]]:
        step, epoch, perm = self.start_step, -1, np.empty(0, dtype=np.int64)
        while True:
            first = (step * self.world + self.rank) * self.batch_size
            for pos in range(first, first + self.batch_size):
                if pos // self.n != epoch:
                    epoch = pos // self.n
                    perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
                yield int(perm[pos % self.n]), int(np.random.default_rng([self.seed, pos]).integers(2**31))
            step += 1


def make_train_loader(dataset: Dataset, batch_size: int, *, seed: int, rank: int, world: int, start_step: int,
                      num_workers: int, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``dataset`` fed by a StepSampler; its own torch generator keeps the global RNG untouched.
    ``pin_memory`` (for a CUDA device) lets the trainer's ``non_blocking`` copy overlap the step."""
    sampler = StepSampler(len(dataset), batch_size, seed=seed, rank=rank, world=world, start_step=start_step)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed), drop_last=True,
                      persistent_workers=num_workers > 0, pin_memory=pin_memory)


def eval_clips(eval_cfg: dict[str, Any]) -> list[tuple[str, np.ndarray]]:
    """Held-out ``(id, uint8 (T,H,W,3))`` segments: the sample clips' eval split, or procedural clips with a seed
    no training config uses (their motion is unseen, their still pictures are the training ones: a smoke test for
    tiny configs, not a held-out figure)."""
    n, frames, size = eval_cfg["num_segments"], eval_cfg["num_frames"], eval_cfg["size"]
    if eval_cfg["source"] == "samples":
        from vitok.data.samples import eval_segments

        segs = eval_segments(num_frames=frames, size=size)
        return [segs[i] for i in sorted(set(np.linspace(0, len(segs) - 1, min(n, len(segs))).round().astype(int)))]
    if eval_cfg["source"] == "synthetic":
        from vitok.data.synthetic import SyntheticMotion

        ds = SyntheticMotion(n, frames, size, seed=987_654_321)
        return [(f"synthetic-{i}", tensor_to_frames(ds[i])) for i in range(n)]
    raise VitokError(f"config eval.source: expected 'samples' or 'synthetic', got {eval_cfg['source']!r}")

"""VideoFolder: a torch Dataset of random clips from a user's folder of videos and images."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .convert import frames_to_tensor
from .errors import VideoReadError
from .io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, VideoInfo, center_crop_box, frame_times, iter_video, probe_video


class VideoFolder(torch.utils.data.Dataset):
    """Clips of ``num_frames`` frames (every ``stride``-th) from every video under ``root`` (recursive).

    Item ``i`` is clip ``i % clips_per_video`` of file ``i // clips_per_video``; its start frame and crop come from
    ``numpy.random.default_rng((seed, i))``, so an index always gives the same clip. The crop has the aspect of
    ``size`` (int or ``(W, H)``) and a random side between ``min_scale`` and 1 of the largest such region, at a
    random position; it is resized to ``size``. Output: float ``(3,T,H,W)`` in [-1, 1].
    Images (png/jpg/...) are still clips: the picture repeated ``num_frames`` times. Videos shorter than a clip
    repeat their last frame. Hidden files and folders (``.name``, e.g. macOS ``._clip.mp4``, ``.ipynb_checkpoints``)
    are ignored. Unreadable files are skipped with one warning each, at scan time or when a read fails later (then
    the next file stands in), so an epoch never crashes on a bad file. A window is reached by seeking to the
    keyframe before it (mp4/mov/mkv/webm; other containers are decoded from their start up to it), so long videos
    cost no more per clip than short ones.
    """

    def __init__(self, root: str | os.PathLike, num_frames: int, size: int | tuple[int, int], *, stride: int = 1,
                 seed: int = 0, clips_per_video: int = 1, min_scale: float = 1.0) -> None:
        self.root = Path(root)
        self.num_frames, self.stride, self.seed, self.clips_per_video = num_frames, stride, seed, clips_per_video
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.min_scale = min_scale
        if num_frames < 1 or stride < 1 or clips_per_video < 1 or not 0 < min_scale <= 1:
            raise ValueError("need num_frames, stride, clips_per_video >= 1 and 0 < min_scale <= 1")
        if not self.root.is_dir():
            raise VideoReadError(f"{self.root}: not a folder")
        self._warned: set[Path] = set()
        self.items: list[VideoInfo] = []
        exts = VIDEO_EXTENSIONS + IMAGE_EXTENSIONS
        paths = (p for p in self.root.rglob("*") if p.suffix.lower() in exts and p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(self.root).parts))
        h = hashlib.sha1()   # the files served, by relative path and size: see fingerprint()
        for path in sorted(paths):
            try:
                info = probe_video(path)
                if info.num_frames is None and not info.is_image:   # no count, no duration (a live webm): count
                    info = dataclasses.replace(info, num_frames=len(frame_times(path)))   # packets, no decoding
                size = path.stat().st_size
            except VideoReadError as e:
                self._warn(path, f"skipping {e}")
                continue
            except OSError as e:   # gone since the listing
                self._warn(path, f"skipping {path}: {e.strerror}")
                continue
            self.items.append(info)
            h.update(os.fsencode(path.relative_to(self.root)) + f"\0{size}\0".encode())   # any file name
        if not self.items:
            raise VideoReadError(f"{self.root}: no readable videos or images ({', '.join(exts)})")
        self._fingerprint = h.hexdigest()[:16]

    def _warn(self, path: Path, message: str) -> None:
        """One warning per file, however often it comes up."""
        if path not in self._warned:
            self._warned.add(path)
            warnings.warn(f"VideoFolder: {message}", stacklevel=3)

    def __len__(self) -> int:
        return len(self.items) * self.clips_per_video

    def fingerprint(self) -> str:
        """The files this folder served when scanned (relative paths and sizes): a resumed run checks its data is
        the same. Taken at scan time, so a file lost during the run (skipped then) does not fail a checkpoint."""
        return self._fingerprint

    def _read(self, info: VideoInfo, rng: np.random.Generator) -> np.ndarray:
        span = (self.num_frames - 1) * self.stride + 1
        last_start = (info.num_frames or 1) - span
        start = int(rng.integers(0, last_start + 1)) if last_start > 0 and not info.is_image else 0
        _, _, w, h = center_crop_box(info.width, info.height, self.size)
        scale = rng.uniform(self.min_scale, 1.0)
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
        x, y = int(rng.integers(0, info.width - w + 1)), int(rng.integers(0, info.height - h + 1))
        read = dict(num_frames=1 if info.is_image else self.num_frames, stride=self.stride, crop=(x, y, w, h),
                    size=self.size, chunk_frames=self.num_frames)
        try:
            frames = np.concatenate(list(iter_video(info.path, start_time=float(start / info.fps), **read)))
        except VideoReadError:
            if start == 0:
                raise
            # the frame count was an estimate (mkv/webm headers hold none) or the file is cut short: fall back to
            # the first frames, and say so once, since every such draw now gives the same clip
            self._warn(info.path, f"{info.path}: fewer frames than its header's {info.num_frames}; clips from its "
                                  f"start only")
            frames = np.concatenate(list(iter_video(info.path, **read)))
        if len(frames) < self.num_frames:
            frames = np.concatenate([frames, np.repeat(frames[-1:], self.num_frames - len(frames), axis=0)])
        return frames

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.read_item(index, np.random.default_rng((self.seed, index)))

    def read_item(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        """Item ``index``'s file with the start frame and crop drawn from ``rng`` (a trainer passes each draw's own,
        so a file gives another window every epoch)."""
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range 0..{len(self) - 1}")
        item = index // self.clips_per_video
        for k in range(len(self.items)):
            info = self.items[(item + k) % len(self.items)]
            try:
                return frames_to_tensor(self._read(info, rng))[0]
            except VideoReadError as e:
                self._warn(info.path, f"skipping {e}")
        raise VideoReadError(f"{self.root}: no file could be read")

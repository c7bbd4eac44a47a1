"""vitok.data: the ground floor. Video file I/O, frame <-> tensor conversion, sample clips, datasets, loaders.

Names load lazily (PEP 562) so ``import vitok.data`` stays cheap: PyAV and torch load on first use.
"""
from __future__ import annotations

from .lazy import lazy_exports

from .errors import VideoReadError, VideoWriteError, VitokError

_EXPORTS = {
    "io": ("VideoInfo", "probe_video", "read_video", "iter_video", "write_video", "read_frames_dir", "iter_frames_dir",
           "frame_times", "FrameTimingWarning", "HDRWarning",
           "resize_frames", "center_crop_box", "CODECS", "VIDEO_EXTENSIONS", "IMAGE_EXTENSIONS"),
    "convert": ("frames_to_tensor", "tensor_to_frames"),
    "atomic": ("atomic_path", "atomic_dir", "write_bytes_atomic"),
    "samples": ("SAMPLE_CLIPS", "sample_path", "sample_info", "load_sample", "eval_segments", "train_segments"),
    "folder": ("VideoFolder",),
    "synthetic": ("SyntheticMotion",),
    "loader": ("make_loader",),
    "shards": ("LatentShards", "collate_latents"),
}
_WHERE = {name: f".{module}" for module, names in _EXPORTS.items() for name in names}
__all__ = ["VitokError", "VideoReadError", "VideoWriteError", *_WHERE]
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)

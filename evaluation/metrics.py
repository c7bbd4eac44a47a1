"""Full-reference quality metrics on uint8 RGB video: PSNR (RGB and BT.709 Y), SSIM, MS-SSIM, LPIPS.

Every metric is computed per frame and then averaged over the frames of the clip (a clip's number is the mean of
its frames; averaging over clips is left to the report). Conventions:

- Frames are ``uint8`` arrays ``(T, H, W, 3)`` (a single ``(H, W, 3)`` image is treated as one frame).
- PSNR uses peak 255. A frame identical to its reference has MSE 0; its PSNR is capped at ``PSNR_CAP`` = 100 dB
  (so means stay finite and JSON stays valid), and the cap is applied per frame before averaging.
- PSNR-Y converts both videos to full-range BT.709 luma ``Y = 0.2126 R + 0.7152 G + 0.0722 B`` in float (no
  rounding, no studio-range offset), peak 255: one luma for every codec, not a codec's own (the classical codecs
  code BT.601 limited-range YUV, so theirs differs).
- SSIM is ``piq.ssim`` on RGB in [0, 1] (11x11 Gaussian window, sigma 1.5, piq's downsampling for large frames);
  frames smaller than 11 px a side return ``None``.
- MS-SSIM is ``piq.multi_scale_ssim`` (5 scales): it needs at least 161 px a side; smaller frames return ``None``
  ("not applicable").
- LPIPS is the ``lpips`` package with the AlexNet backbone. Its linear layers ship with the package, but the
  backbone comes from torchvision's download cache; the network is never touched. If the checkpoint is not in
  ``torch.hub.get_dir()/checkpoints`` the metric is ``None`` ("unavailable") and a warning is issued once. AlexNet's
  pooling needs 31 px a side: smaller frames return ``None`` ("not applicable"), as SSIM and MS-SSIM do.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from vitok.evaluation.errors import EvaluationError
from vitok.metric_sizes import LPIPS_MIN_SIDE, MS_SSIM_MIN_SIDE, SSIM_MIN_SIDE

PSNR_CAP = 100.0
METRICS = ("psnr", "psnr_y", "ssim", "ms_ssim", "lpips")
BT709 = np.array([0.2126, 0.7152, 0.0722], dtype=np.float64)
_BATCH = 8  # frames per torch batch: bounds memory on long or large clips

_lpips_cache: dict[str, object] = {}
_lpips_warned = False


def _check(ref: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref, dist = np.asarray(ref), np.asarray(dist)
    if ref.ndim == 3 and dist.ndim == 3:
        ref, dist = ref[None], dist[None]
    if ref.shape != dist.shape or ref.ndim != 4 or ref.shape[-1] != 3:
        raise EvaluationError(f"metrics need two uint8 (T,H,W,3) videos of the same shape, got {ref.shape} and "
                              f"{dist.shape}")
    if ref.dtype != np.uint8 or dist.dtype != np.uint8:
        raise EvaluationError(f"metrics need uint8 frames, got {ref.dtype} and {dist.dtype}")
    return ref, dist


def _psnr_from_mse(mse: np.ndarray) -> float:
    with np.errstate(divide="ignore"):
        per_frame = np.where(mse > 0, 10.0 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-300)), PSNR_CAP)
    return float(np.mean(np.minimum(per_frame, PSNR_CAP)))


def psnr(ref: np.ndarray, dist: np.ndarray) -> float:
    """RGB PSNR in dB: MSE over all pixels and channels of each frame, per-frame PSNR capped at 100, then mean."""
    ref, dist = _check(ref, dist)
    mse = np.stack([((r.astype(np.float64) - d) ** 2).mean() for r, d in zip(ref, dist)])
    return _psnr_from_mse(mse)


def psnr_y(ref: np.ndarray, dist: np.ndarray) -> float:
    """PSNR in dB of full-range BT.709 luma (float, peak 255), per frame (capped at 100), then mean."""
    ref, dist = _check(ref, dist)
    mse = np.stack([(((r.astype(np.float64) - d) @ BT709) ** 2).mean() for r, d in zip(ref, dist)])
    return _psnr_from_mse(mse)


def _batches(ref: np.ndarray, dist: np.ndarray) -> Iterable[tuple["torch.Tensor", "torch.Tensor"]]:  # noqa: F821
    import torch

    for i in range(0, len(ref), _BATCH):
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a[i:i + _BATCH])).permute(0, 3, 1, 2).float() / 255.0
        yield to(ref), to(dist)


def _piq_frame_mean(metric_name: str, ref: np.ndarray, dist: np.ndarray, min_side: int) -> float | None:
    """Mean over frames of the piq metric ``metric_name`` (RGB, data range 1); ``None`` below ``min_side`` px."""
    import piq
    import torch

    ref, dist = _check(ref, dist)
    if min(ref.shape[1:3]) < min_side:
        return None
    metric = getattr(piq, metric_name)
    with torch.no_grad():
        vals = [metric(x, y, data_range=1.0, reduction="none") for x, y in _batches(ref, dist)]
    return float(torch.cat(vals).mean())


def ssim(ref: np.ndarray, dist: np.ndarray) -> float | None:
    """Mean per-frame SSIM (piq, RGB, data range 1); ``None`` when a side is below 11 px."""
    return _piq_frame_mean("ssim", ref, dist, SSIM_MIN_SIDE)


def ms_ssim(ref: np.ndarray, dist: np.ndarray) -> float | None:
    """Mean per-frame MS-SSIM (piq, 5 scales); ``None`` (not applicable) when a side is below 161 px."""
    return _piq_frame_mean("multi_scale_ssim", ref, dist, MS_SSIM_MIN_SIDE)


def lpips_checkpoint(net: str = "alex") -> Path:
    """Where torchvision keeps the ImageNet backbone that ``lpips`` needs (it is not shipped with ``lpips``)."""
    import torch
    import torchvision.models as tvm

    weights = {"alex": tvm.AlexNet_Weights, "vgg": tvm.VGG16_Weights, "squeeze": tvm.SqueezeNet1_1_Weights}[net]
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.IMAGENET1K_V1.url).name


def lpips_available(net: str = "alex") -> bool:
    """Whether the LPIPS backbone is cached locally; warns once per process when it is not."""
    global _lpips_warned
    ckpt = lpips_checkpoint(net)
    if ckpt.is_file():
        return True
    if not _lpips_warned:
        warnings.warn(f"LPIPS unavailable: backbone weights not found at {ckpt} (offline); reporting None",
                      RuntimeWarning, stacklevel=3)
        _lpips_warned = True
    return False


def lpips_model(net: str = "alex"):
    """The LPIPS module with pretrained backbone, or ``None`` when the backbone is not cached (warns once)."""
    if net in _lpips_cache:
        return _lpips_cache[net]
    if not lpips_available(net):
        return None
    import lpips as lpips_pkg

    model = lpips_pkg.LPIPS(net=net, verbose=False).eval()
    _lpips_cache[net] = model
    return model


def lpips(ref: np.ndarray, dist: np.ndarray, model=None) -> float | None:
    """Mean per-frame LPIPS (AlexNet) on inputs scaled to [-1, 1]; ``None`` when the backbone is unavailable or the
    frames are too small for it.

    ``model`` overrides the default pretrained module (any ``lpips.LPIPS``, e.g. one with a random backbone).
    """
    import torch

    ref, dist = _check(ref, dist)
    model = lpips_model() if model is None else model
    if model is None or min(ref.shape[1:3]) < LPIPS_MIN_SIDE.get(getattr(model, "pnet_type", "alex"), 1):
        return None
    device = next(model.parameters()).device
    vals = []
    with torch.no_grad():
        for x, y in _batches(ref, dist):
            vals.append(model(x.to(device) * 2 - 1, y.to(device) * 2 - 1).flatten().cpu())
    return float(torch.cat(vals).mean())


def compute_metrics(ref: np.ndarray, dist: np.ndarray, which: Sequence[str] = METRICS,
                    lpips_net=None) -> dict[str, float | None]:
    """All requested metrics for one clip: ``{name: per-frame mean}``; ``None`` = not applicable / unavailable.

    ``which`` is a subset of ``METRICS``; ``lpips_net`` optionally supplies the LPIPS module to use.
    """
    unknown = [m for m in which if m not in METRICS]
    if unknown:
        raise EvaluationError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}")
    ref, dist = _check(ref, dist)
    fns = {"psnr": psnr, "psnr_y": psnr_y, "ssim": ssim, "ms_ssim": ms_ssim,
           "lpips": lambda a, b: lpips(a, b, model=lpips_net)}
    return {name: fns[name](ref, dist) for name in which}

"""Procedural motion clips over natural stills: thousands of distinct training clips from a few images.

Each clip is one of six kinds: ``pan``, ``zoom``, ``rotate``, ``mixed`` (all three, gentler), ``crossfade``
(two moving stills blended over a smooth ramp) and ``sprites`` (1-3 soft-edged elliptic or rectangular patches
of other stills gliding and turning over a panning background). A virtual camera looks at a still through a
window of the output's aspect ratio; its centre, scale and angle move linearly (scale geometrically) over the
clip, and every frame is rendered with one affine sampling grid and ``grid_sample`` (bilinear, reflection
padding). Parameters come from ``numpy.random.default_rng((seed, index))``: a clip depends only on (seed, index,
sources). Output values are rounded to the uint8 grid, like decoded video.

Default sources: every 8th training-range frame of the sample clips (``vitok.data.samples.train_stills``; never
eval frames) plus the colour and texture images that ship inside scikit-image (no download), all resized so the
short side is twice the output's long side.
"""
from __future__ import annotations

import functools
import math
import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .io import read_video, resize_frames

KINDS = ("pan", "zoom", "rotate", "mixed", "crossfade", "sprites")
_SKIMAGE_COLOR = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
_SKIMAGE_GRAY = ("camera", "coins", "moon", "grass", "gravel", "brick", "clock")


def _fit_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = short_side / min(h, w)
    return resize_frames(image[None], (max(1, round(w * scale)), max(1, round(h * scale))))[0]


def skimage_stills(short_side: int = 256) -> list[np.ndarray]:
    """scikit-image's bundled photos and textures as uint8 RGB (H,W,3), short side ``short_side``."""
    import skimage.data

    out = []
    for name in _SKIMAGE_COLOR + _SKIMAGE_GRAY:
        try:
            image = np.asarray(getattr(skimage.data, name)())
        except (AttributeError, ImportError, OSError, ValueError):  # missing here, or would need a download
            continue
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        out.append(_fit_short_side(np.ascontiguousarray(image[..., :3], dtype=np.uint8), short_side))
    return out


@functools.lru_cache(maxsize=2)
def default_stills(short_side: int = 256) -> tuple[torch.Tensor, ...]:
    """Training-split sample frames plus scikit-image images, uint8 (3,H,W) tensors, cached per process."""
    from .samples import train_stills

    images = train_stills(short_side) + skimage_stills(short_side)
    return tuple(torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).contiguous() for im in images)


def _load_source(source: np.ndarray | str | os.PathLike) -> torch.Tensor:
    image = read_video(source, num_frames=1)[0][0] if isinstance(source, (str, os.PathLike)) else np.asarray(source)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"sources must be uint8 RGB (H,W,3) images or paths, got {image.dtype} {image.shape}")
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


def _affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(theta, (T,C,height,width), align_corners=False)`` by broadcasting (several times faster)."""
    xs = (torch.arange(width, dtype=theta.dtype) * 2 + 1) / width - 1
    ys = (torch.arange(height, dtype=theta.dtype) * 2 + 1) / height - 1
    t = theta[:, :, :, None, None, None]  # (T,2,3,1,1,1): each output coordinate is a row of theta
    grid = t[:, :, 0] * xs[:, None] + t[:, :, 1] * ys[:, None, None] + t[:, :, 2]  # (T,2,H,W,1)
    return torch.cat([grid[:, 0], grid[:, 1]], dim=-1)


class SyntheticMotion(torch.utils.data.Dataset):
    """``num_clips`` procedural clips, float ``(3,T,H,W)`` in [-1, 1] (on the uint8 grid), deterministic per index.

    ``size``: int (square) or ``(W, H)``. ``sources``: uint8 RGB (H,W,3) arrays or image/video paths (first frame);
    default: sample-clip training frames and scikit-image images (see module docstring).
    """

    def __init__(self, num_clips: int, num_frames: int, size: int | tuple[int, int], *, seed: int = 0,
                 sources: Sequence[np.ndarray | str | os.PathLike] | None = None) -> None:
        self.num_clips, self.num_frames, self.seed = int(num_clips), int(num_frames), int(seed)
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if self.num_clips < 1 or self.num_frames < 1 or min(self.size) < 1:
            raise ValueError(f"need num_clips, num_frames, size >= 1; got {num_clips}, {num_frames}, {size}")
        # uint8 (3,H,W) tensors; loaded here, so DataLoader workers forked later share them
        self.stills = default_stills(2 * max(self.size)) if sources is None else tuple(map(_load_source, sources))
        if not self.stills:
            raise ValueError("sources is empty")

    def __len__(self) -> int:
        return self.num_clips

    def params(self, index: int) -> dict:
        """The random choices behind clip ``index``: kind, stills, camera paths, fade and sprites."""
        if not 0 <= index < self.num_clips:
            raise IndexError(f"clip {index} out of range 0..{self.num_clips - 1}")
        rng = np.random.default_rng((self.seed, index))
        kind = KINDS[rng.integers(len(KINDS))]
        n = len(self.stills)
        p = {"kind": kind, "still": int(rng.integers(n))}
        p["camera"] = self._camera(rng, p["still"], kind)
        if kind == "crossfade":
            p["still2"] = int(rng.integers(n))
            p["camera2"] = self._camera(rng, p["still2"], "pan")
            p["fade"] = (float(rng.uniform(0, 0.5)), float(rng.uniform(0.25, 0.5)))  # start, length (clip fractions)
        if kind == "sprites":
            p["sprites"] = [self._sprite(rng, int(rng.integers(n))) for _ in range(int(rng.integers(1, 4)))]
        return p

    def _camera(self, rng: np.random.Generator, still: int, kind: str) -> dict:
        """Window centre/scale/angle at the clip's start and end, in the still's units (height = 2)."""
        _, h, w = self.stills[still].shape
        a_src, a_out = w / h, self.size[0] / self.size[1]
        s_max = min(1.0, a_src / a_out)
        frames_px = (self.num_frames - 1) * 2 / self.size[1]  # one output pixel per frame, per unit window scale
        pan = kind in ("pan", "mixed", "crossfade", "sprites")
        s0 = s_max * rng.uniform(0.45, 0.95 if kind in ("rotate", "mixed") else 1.0)
        s1 = s0
        if kind in ("zoom", "mixed"):
            s1 = float(np.clip(s0 * math.exp(rng.choice([-1, 1]) * rng.uniform(0.1, 0.5 if kind == "zoom" else 0.25)),
                               0.3 * s_max, s_max))
        angle0 = rng.uniform(-0.15, 0.15) if kind in ("rotate", "mixed") else 0.0
        angle1 = angle0
        if kind in ("rotate", "mixed"):
            angle1 = angle0 + rng.choice([-1, 1]) * math.radians(rng.uniform(5, 30 if kind == "rotate" else 12))
        s_big = max(s0, s1)
        lim = (max(0.0, a_src - s_big * a_out), max(0.0, 1 - s_big))
        c0 = np.array([rng.uniform(-lim[0], lim[0]), rng.uniform(-lim[1], lim[1])])
        c1 = c0.copy()
        if pan:
            speed = rng.uniform(0.0, 4.0 if kind == "pan" else 2.0) * s_big * frames_px
            direction = rng.uniform(0, 2 * math.pi)
            c1 = np.clip(c0 + speed * np.array([math.cos(direction), math.sin(direction)]),
                         [-lim[0], -lim[1]], [lim[0], lim[1]])
        return {"center": (c0.tolist(), c1.tolist()), "scale": (float(s0), float(s1)),
                "angle": (float(angle0), float(angle1))}

    def _sprite(self, rng: np.random.Generator, still: int) -> dict:
        """A patch of ``still``: half-extents, position and motion in output units (height = 2), texture window."""
        _, h, w = self.stills[still].shape
        a_out = self.size[0] / self.size[1]
        r = rng.uniform(0.15, 0.4)
        aspect = math.exp(rng.uniform(-0.4, 0.4))
        radii = (r * math.sqrt(aspect), r / math.sqrt(aspect))
        step = 2 / self.size[1] * (self.num_frames - 1)
        p0 = (rng.uniform(-0.8, 0.8) * a_out, rng.uniform(-0.8, 0.8))
        speed, direction = rng.uniform(0.5, 4.0) * step, rng.uniform(0, 2 * math.pi)
        p1 = (p0[0] + speed * math.cos(direction), p0[1] + speed * math.sin(direction))
        phi0 = rng.uniform(-math.pi, math.pi)
        phi1 = phi0 + math.radians(rng.uniform(-3, 3)) * (self.num_frames - 1)
        tex_y = rng.uniform(0.2, 0.6)
        tex_x = min(1.0, tex_y * radii[0] / radii[1] * h / w)
        tex_c = (rng.uniform(-(1 - tex_x), 1 - tex_x), rng.uniform(-(1 - tex_y), 1 - tex_y))
        return {"still": still, "shape": str(rng.choice(["ellipse", "rect"])), "radii": radii,
                "pos": (p0, p1), "angle": (phi0, phi1), "texture": (tex_x, tex_y, *tex_c)}

    def _progress(self) -> torch.Tensor:
        return torch.linspace(0, 1, self.num_frames, dtype=torch.float64) if self.num_frames > 1 else \
            torch.zeros(1, dtype=torch.float64)

    def _render_camera(self, still: torch.Tensor, cam: dict) -> torch.Tensor:
        """(T,3,H,W) view of ``still`` (float (1,3,h,w)) through the moving window ``cam``."""
        W, H = self.size
        a_src, a_out = still.shape[3] / still.shape[2], W / H
        p = self._progress()
        (c0, c1), (s0, s1), (r0, r1) = cam["center"], cam["scale"], cam["angle"]
        cx, cy = c0[0] + (c1[0] - c0[0]) * p, c0[1] + (c1[1] - c0[1]) * p
        s = s0 * (s1 / s0) ** p
        cos, sin = torch.cos(r0 + (r1 - r0) * p), torch.sin(r0 + (r1 - r0) * p)
        theta = torch.stack([torch.stack([s * cos * a_out / a_src, -s * sin / a_src, cx / a_src], -1),
                             torch.stack([s * sin * a_out, s * cos, cy], -1)], 1).float()
        grid = _affine_grid(theta, H, W)
        return F.grid_sample(still.expand(self.num_frames, -1, -1, -1), grid, mode="bilinear",
                             padding_mode="reflection", align_corners=False)

    def _render_sprite(self, frames: torch.Tensor, sp: dict) -> torch.Tensor:
        W, H = self.size
        a_out = W / H
        p = self._progress()
        (p0, p1), (phi0, phi1), (rx, ry) = sp["pos"], sp["angle"], sp["radii"]
        px, py = p0[0] + (p1[0] - p0[0]) * p, p0[1] + (p1[1] - p0[1]) * p
        phi = phi0 + (phi1 - phi0) * p
        cos, sin = torch.cos(phi), torch.sin(phi)
        # local = diag(1/rx, 1/ry) R(-phi) (diag(a_out, 1) (u, v) - pos)
        row0 = torch.stack([cos * a_out / rx, sin / rx, -(cos * px + sin * py) / rx], -1)
        row1 = torch.stack([-sin * a_out / ry, cos / ry, (sin * px - cos * py) / ry], -1)
        local = _affine_grid(torch.stack([row0, row1], 1).float(), H, W)
        lx, ly = local[..., 0], local[..., 1]
        dist = (lx * lx + ly * ly).sqrt_() if sp["shape"] == "ellipse" else torch.maximum(lx.abs(), ly.abs())
        mask = dist.sub_(1).mul_(-0.5 * min(rx, ry) * H).clamp_(0, 1).unsqueeze(1)  # ~1 px soft edge
        tx, ty, tcx, tcy = sp["texture"]
        tex_grid = local * local.new_tensor([tx, ty]) + local.new_tensor([tcx, tcy])
        still = self.stills[sp["still"]].unsqueeze(0).float().div_(127.5).sub_(1)
        texture = F.grid_sample(still.expand(self.num_frames, -1, -1, -1), tex_grid, mode="bilinear",
                                padding_mode="reflection", align_corners=False)
        return frames.add_(texture.sub_(frames).mul_(mask))

    def render(self, params: dict) -> torch.Tensor:
        """Draw the clip described by ``params`` (from ``params(index)``) as float (3,T,H,W) in [-1, 1]."""
        still = self.stills[params["still"]].unsqueeze(0).float().div_(127.5).sub_(1)
        frames = self._render_camera(still, params["camera"])
        if params["kind"] == "crossfade":
            other = self.stills[params["still2"]].unsqueeze(0).float().div_(127.5).sub_(1)
            start, length = params["fade"]
            x = ((self._progress() - start) / length).clamp(0, 1)
            alpha = (x * x * (3 - 2 * x)).float().view(-1, 1, 1, 1)
            frames = frames * (1 - alpha) + self._render_camera(other, params["camera2"]) * alpha
        for sp in params.get("sprites", ()):
            frames = self._render_sprite(frames, sp)
        frames = ((frames.clamp(-1, 1) + 1) * 127.5).round_().div_(127.5).sub_(1)
        return frames.permute(1, 0, 2, 3).contiguous()

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.render(self.params(index))

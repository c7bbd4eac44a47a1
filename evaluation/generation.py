"""A tiny DiT-style rectified-flow generator over latent tokens: the generator-readiness check for a tokenizer.

The model sees normalized latents ``(B, N, C)`` (per-channel mean/std from the shard manifest) with a padding
mask: padded tokens are masked out as attention keys and from the loss. Rectified flow: ``x_t = (1-t) x0 + t e``
with ``e ~ N(0, I)``; the network predicts the velocity ``e - x0``; sampling integrates from ``t = 1`` to ``0``
with Euler steps. Conditioning on the clip index (to memorize a tiny set) is optional. Fixed
small sizes let later work compare tokenizers by how well this same generator learns on their latents.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from vitok.data.atomic import atomic_dir, atomic_path, save_safetensors, write_bytes_atomic
from vitok.data.errors import VitokError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LOG_NAME = "log.jsonl"
META_KEYS = ("tokenizer", "normalization", "template")   # what sampling reads besides the architecture
META_FIELDS = {"tokenizer": ("source", "weights_hash"), "normalization": ("mean", "std"),
               "template": ("frames", "height", "width", "num_tokens", "length", "mask")}


class GeneratorError(VitokError):
    """A generator folder is missing or unreadable, or its tokenizer no longer matches."""


@dataclass
class GeneratorConfig:
    """Architecture of the tiny generator (saved as ``config.json`` beside the weights)."""

    latent_channels: int
    max_tokens: int
    width: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 0  # 0: unconditional; else labels in [0, num_classes), index num_classes = "no label"


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of ``t`` in [0, 1] (scaled by 1000 like DiT): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation from the conditioning vector."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.ada = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=-1)
        q, k, v = self.qkv(_modulate(self.norm1(x), shift1, scale1)).view(b, n, 3, self.heads, d // self.heads) \
            .permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).transpose(1, 2).reshape(b, n, d)
        x = x + gate1[:, None] * self.proj(h)
        return x + gate2[:, None] * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class FlowDiT(nn.Module):
    """Velocity network ``v(x_t, t, mask, label)`` over token sequences ``(B, N, C)`` with learned positions."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        if config.width % config.heads:
            raise ValueError(f"width {config.width} is not divisible by heads {config.heads}")
        self.config = config
        d = config.width
        self.inp = nn.Linear(config.latent_channels, d)
        self.pos = nn.Parameter(torch.randn(1, config.max_tokens, d) * 0.02)
        self.t_mlp = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.label = nn.Embedding(config.num_classes + 1, d) if config.num_classes else None
        self.blocks = nn.ModuleList(DiTBlock(d, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, config.latent_channels)
        for layer in (self.ada, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        n = x.shape[1]
        if n > self.config.max_tokens:
            raise ValueError(f"{n} tokens exceed the generator's max_tokens {self.config.max_tokens}")
        h = self.inp(x) + self.pos[:, :n]
        c = self.t_mlp(timestep_embedding(t, 256))
        if self.label is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), self.config.num_classes, device=x.device, dtype=torch.long)
            c = c + self.label(labels)
        attn_mask = mask[:, None, None, :] if mask is not None else None
        for block in self.blocks:
            h = block(h, c, attn_mask)
        shift, scale = self.ada(F.silu(c)).chunk(2, dim=-1)
        return self.out(_modulate(self.norm(h), shift, scale))


def flow_loss(model: FlowDiT, x0: torch.Tensor, mask: torch.Tensor | None = None,
              labels: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rectified-flow velocity MSE over present tokens only (padding contributes nothing)."""
    b = x0.shape[0]
    t = torch.rand(b, generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device)
    tt = t[:, None, None]
    xt = (1 - tt) * x0 + tt * noise
    err = (model(xt, t, mask, labels) - (noise - x0)) ** 2
    if mask is None:
        return err.mean()
    m = mask[..., None].to(err.dtype)
    return (err * m).sum() / (m.sum() * x0.shape[-1]).clamp_min(1)


@torch.no_grad()
def sample_flow(model: FlowDiT, num: int, length: int, mask: torch.Tensor | None = None, steps: int = 32,
                labels: torch.Tensor | None = None, generator: torch.Generator | None = None,
                on_step: Callable[[], None] | None = None) -> torch.Tensor:
    """Euler integration of the learned velocity from noise (t=1) to data (t=0): (num, length, C), zero on padding.
    ``on_step`` is called after each step (progress)."""
    device = next(model.parameters()).device
    x = torch.randn(num, length, model.config.latent_channels, generator=generator, device=device)
    if mask is not None:
        mask = mask.expand(num, length).to(device)
    ts = torch.linspace(1.0, 0.0, steps + 1, device=device)
    for i in range(steps):
        t = ts[i].expand(num)
        x = x + (ts[i + 1] - ts[i]) * model(x, t, mask, labels)
        if on_step is not None:
            on_step()
    return x * mask[..., None] if mask is not None else x


def save_generator(model: FlowDiT, out_dir: str | os.PathLike, meta: dict[str, Any]) -> None:
    """Write ``model.safetensors`` and ``config.json`` (architecture + ``meta``: ``tokenizer``, ``normalization``,
    ``template``), each atomically (``train_generator`` writes into a new folder that replaces the old one whole)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        save_safetensors({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, tmp)
    config = {"generator": asdict(model.config), **meta}
    write_bytes_atomic(out / CONFIG_NAME, json.dumps(config, indent=1).encode())


def load_generator(gen_dir: str | os.PathLike, device: str = "cpu") -> tuple[FlowDiT, dict[str, Any]]:
    """A saved generator (eval mode) and its config dict."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    gen = Path(gen_dir)
    if not (gen / CONFIG_NAME).is_file() or not (gen / WEIGHTS_NAME).is_file():
        raise GeneratorError(f"{gen}: not a generator folder (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        meta = json.loads((gen / CONFIG_NAME).read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise GeneratorError(f"{gen / CONFIG_NAME}: unreadable generator config ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("generator"), dict):
        raise GeneratorError(f"{gen / CONFIG_NAME}: unreadable generator config (lacks generator)")
    try:
        model = FlowDiT(GeneratorConfig(**meta["generator"]))
        model.load_state_dict(load_file(str(gen / WEIGHTS_NAME)))
    except SafetensorError as e:
        raise GeneratorError(f"{gen / WEIGHTS_NAME}: unreadable generator weights ({e})") from None
    except (TypeError, ValueError, RuntimeError) as e:
        raise GeneratorError(f"{gen}: unreadable generator ({e})") from None
    missing = [k for k in META_KEYS if not isinstance(meta.get(k), dict)]
    missing += [f"{part}.{k}" for part, keys in META_FIELDS.items() if part not in missing
                for k in keys if k not in meta[part]]
    if missing:
        raise GeneratorError(f"{gen / CONFIG_NAME}: unreadable generator config (lacks {', '.join(missing)})")
    return model.to(device).eval(), meta


def _template(shards: Any) -> dict[str, Any]:
    """The geometry samples are drawn at: the most common (frames, height, width, tokens) of the set, with its mask."""
    clips = shards.clips
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(zip(*(clips.values(k) for k in ("frames", "height", "width", "num_tokens", "tokens")))):
        groups.setdefault(key, []).append(i)
    (frames, height, width, num_tokens, length), members = max(groups.items(), key=lambda kv: len(kv[1]))
    fps = clips.values("fps")
    rates = [fps[i] for i in members if fps[i]]  # older manifests have none
    return {"frames": frames, "height": height, "width": width, "num_tokens": num_tokens, "length": length,
            "fps": max(set(rates), key=rates.count) if rates else None, "mask": shards[members[0]]["mask"].tolist(),
            "members": members}   # the clips of this geometry: the labels a clip-conditioned sample may take


def template_fps(gen_dir: str | os.PathLike) -> Fraction | None:
    """The frame rate of the clips a saved generator learned from (None when its shards did not record one)."""
    fps = json.loads((Path(gen_dir) / CONFIG_NAME).read_text())["template"].get("fps")
    return Fraction(fps) if fps else None


def train_generator(shards_dir: str | os.PathLike, out_dir: str | os.PathLike, *, steps: int = 300,
                    batch_size: int = 16, lr: float = 1e-3, width: int = 64, depth: int = 4, heads: int = 4,
                    cond: str = "none", seed: int = 0, log_every: int = 10, device: str = "cpu",
                    on_log: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train the tiny generator on ``LatentShards(shards_dir, normalize=True)``; save it to ``out_dir``.

    ``cond``: ``"none"`` or ``"clip"`` (the clip's index in the set is its label). The loss (mean over each
    ``log_every`` steps) goes to ``out_dir/log.jsonl``. Returns a summary with the first and last logged loss.
    """
    from torch.utils.data import DataLoader, RandomSampler

    from vitok.data.shards import LatentShards, collate_latents

    if cond not in ("none", "clip"):
        raise GeneratorError(f"--cond {cond!r}: expected 'none' or 'clip'")
    if width % heads:
        raise GeneratorError(f"--width {width} is not divisible by --heads {heads}")
    out = Path(out_dir)
    _check_out_dir(out)
    torch.manual_seed(seed)
    shards = LatentShards(shards_dir, normalize=True)
    if len(shards) == 0:
        raise GeneratorError(f"{shards_dir}: no clips to train on")
    config = GeneratorConfig(latent_channels=shards.latent_channels, max_tokens=shards.max_tokens, width=width,
                             depth=depth, heads=heads, num_classes=len(shards) if cond == "clip" else 0)
    model = FlowDiT(config).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 20)))
    g = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(shards, replacement=True, num_samples=steps * batch_size, generator=g)
    loader = DataLoader(shards, batch_size=batch_size, sampler=sampler, collate_fn=collate_latents)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
    made = [p for p in out.parents if not p.exists()]  # parent folders this call creates, deepest first
    history: list[dict[str, Any]] = []
    try:  # weights, config and log go into a new folder that replaces out_dir whole: a failed run leaves an
        # earlier one as it was, and no run mixes another's files
        with atomic_dir(out) as tmp:
            log_path = tmp / LOG_NAME
            window, t0 = [], time.perf_counter()
            for step, batch in enumerate(loader, start=1):
                labels = batch["index"].to(device) if cond == "clip" else None
                loss = flow_loss(model, batch["z"].to(device), batch["mask"].to(device), labels, noise_gen)
                if not torch.isfinite(loss):   # diverged: say so, and write no generator of NaN weights
                    raise GeneratorError(f"training diverged at step {step} (loss {loss.item()}); lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                window.append(loss.item())
                if step % log_every == 0 or step == steps:
                    entry = {"step": step, "loss": sum(window) / len(window), "lr": sched.get_last_lr()[0],
                             "seconds": time.perf_counter() - t0}
                    with log_path.open("a") as f:
                        f.write(json.dumps(entry) + "\n")
                    history.append(entry)
                    window = []
                    if on_log is not None:
                        on_log(entry)
            manifest = shards.manifest
            meta = {"tokenizer": manifest["model"],
                    "normalization": {"mean": shards.mean.tolist(), "std": shards.std.tolist()},
                    "template": _template(shards), "shards_dir": str(Path(shards_dir).resolve()),
                    "train": {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "cond": cond,
                              "first_loss": history[0]["loss"], "final_loss": history[-1]["loss"]}}
            save_generator(model.eval(), tmp, meta)
    except BaseException:
        for folder in made:  # only folders left empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return {"out": str(out), "steps": steps, "clips": len(shards), "params": sum(p.numel() for p in model.parameters()),
            "first_loss": history[0]["loss"], "final_loss": history[-1]["loss"], "log_windows": len(history),
            "seconds": time.perf_counter() - t0}


def _check_out_dir(out: Path) -> None:
    """``out`` is replaced whole: refuse a file, or a folder holding anything but an earlier generator's files."""
    if out.exists() and not out.is_dir():
        raise GeneratorError(f"--out {out} is a file; give a folder name")
    if not out.is_dir() or not any(out.iterdir()):
        return
    try:
        ours = "generator" in json.loads((out / CONFIG_NAME).read_text())
    except (OSError, ValueError, TypeError):
        ours = False
    others = sorted(e.name for e in out.iterdir() if e.name not in (CONFIG_NAME, WEIGHTS_NAME, LOG_NAME))
    if not ours or others:
        what = (f"holds {', '.join(others[:3])}" if others
                else "is not a generator folder (its config.json names no generator)")
        raise GeneratorError(f"--out {out} {what}; training would replace it whole: choose another folder")


def load_tokenizer_for(meta: dict[str, Any], model: str | None = None, device: str = "cpu") -> Any:
    """The frozen tokenizer a generator was trained on (or ``model``), checked against the recorded weights hash."""
    import vitok

    info = meta["tokenizer"]
    tok = vitok.load(model or info["source"], device=device, frozen=True)
    if tok.weights_hash != info["weights_hash"]:
        raise GeneratorError(f"tokenizer {model or info['source']}: weights differ from those the latents were "
                             f"extracted with (hash {tok.weights_hash[:12]} != {info['weights_hash'][:12]})")
    return tok


def sample_videos(gen_dir: str | os.PathLike, *, num: int = 4, steps: int = 32, seed: int = 0,
                  labels: list[int] | None = None, model: str | None = None, device: str = "cpu",
                  on_step: Callable[[], None] | None = None) -> torch.Tensor:
    """Sample ``num`` latent sets and decode them with the frozen tokenizer: float (num, 3, T, H, W) in [-1, 1].
    ``on_step`` is called after each sampling step."""
    gen, meta = load_generator(gen_dir, device)
    tok = load_tokenizer_for(meta, model, device)
    tpl = meta["template"]
    mask = torch.tensor(tpl["mask"], dtype=torch.bool)[None]
    label_t = None
    if gen.config.num_classes:   # by default the clips of the template's geometry, the one samples are drawn at
        members = tpl.get("members") or list(range(gen.config.num_classes))
        ids = labels if labels is not None else [members[i % len(members)] for i in range(num)]
        label_t = torch.tensor(ids, dtype=torch.long, device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    z = sample_flow(gen, num, tpl["length"], mask, steps, label_t, g, on_step)
    mean = torch.tensor(meta["normalization"]["mean"], device=device)
    std = torch.tensor(meta["normalization"]["std"], device=device)
    z = (z * std + mean) * mask[..., None].to(z)
    lat = tok.make_latents(z, tpl["frames"], tpl["height"], tpl["width"], num_tokens=tpl["num_tokens"])
    with torch.inference_mode():
        return tok.decode(lat).clamp(-1, 1)


def tile_videos(videos: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) -> one (3, T, rows*H, cols*W) mosaic, nearly square, empty cells black."""
    b, c, t, h, w = videos.shape
    cols = math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    canvas = videos.new_full((c, t, rows * h, cols * w), -1.0)
    for i in range(b):
        r, k = divmod(i, cols)
        canvas[:, :, r * h:(r + 1) * h, k * w:(k + 1) * w] = videos[i]
    return canvas

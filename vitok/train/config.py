"""Training configs: JSON files (packaged in ``vitok/train/configs`` or any path) merged over defaults, with
dotted ``--set key=value`` overrides. A config is a plain nested dict; unknown keys are errors (typos fail loudly)."""
from __future__ import annotations

import copy
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

from vitok.data.errors import VitokError
# the smallest frame sides the metrics take: held-out frames (always scored by SSIM), frames trained with SSIM/LPIPS
from vitok.metric_sizes import LPIPS_MIN_SIDE, SSIM_MIN_SIDE

# Every key a config may hold, with its default. Comments say what each means; losses are weights (0 = off).
DEFAULTS: dict[str, Any] = {
    "name": None,                    # run name (default: the config file's stem)
    "seed": 0,
    "device": "auto",                # auto | cpu | cuda
    "compile": False,                # torch.compile the training forward
    "precision": "auto",             # auto: bf16 autocast on CUDA, fp32 on CPU | fp32 | bf16 (autocast on either)
    "model": {
        "name": "vit-tiny",          # registry name for vitok.create_model
        "overrides": {},             # keyword overrides for the model config
        "init": None,                # start from these weights: a bundled model name or a save_pretrained folder
                                     # (a 1D model may change its token count; a ViT may grow deeper, new blocks
                                     # starting as identities)
        "freeze": [],                # parameter-name prefixes kept fixed: ["from_latent", "decoder", "to_pixels"]
                                     # keeps a grid ViT's decoder as it is (a 1D model's also has latent_pos,
                                     # tail_token, patch_token) and trains the encoder for it
    },
    "data": {
        "num_frames": None,          # clip length; None = the model's clip_frames
        "size": 64,                  # training crop, square
        "num_workers": 0,
        "synthetic": {"num_clips": 256, "seed": 0},   # procedural motion clips (0 clips = off)
        # training ranges of the sample clips, each resized+centre-cropped to every side in `sizes`; an epoch draws
        # `repeat` random windows/crops per non-overlapping window of num_frames
        "samples": {"repeat": 0, "sizes": [128]},
        "folder": None,              # optional folder of videos (VideoFolder)
        "hflip": True,               # random horizontal flips of sample/folder clips
    },
    "loss": {
        "l1": 1.0,
        "l2": 0.0,
        "charbonnier": 0.0,
        "ssim": 0.0,                 # 1 - SSIM per frame (piq)
        "ms_ssim": 0.0,              # 1 - MS-SSIM per frame; only when frames are >= 161 px a side
        "lpips": 0.0,                # needs the lpips backbone weights offline; else a notice and weight 0
        "lpips_net": "alex",
        "image_frames": 4,           # evenly spaced frames per clip that SSIM/MS-SSIM/LPIPS look at (0 = all)
        # times the model's KL for posterior bottlenecks; the model reports a per-element mean (over tokens and
        # channels); 1e-6..1e-4 bounds the latent scale without costing reconstruction PSNR
        "kl": 1e-6,
        "consistency": 0.0,          # || encode(decode(z)) - sg(z) ||^2, per-element mean
        "gan": 0.0,                  # generator hinge-loss weight of the patch discriminator
        "gan_start": 0,              # step at which the discriminator joins
        "disc_lr": 1e-4,
        "disc_channels": 32,
    },
    "nested_dropout": {
        "mode": "model",             # model: the 1D model samples its token count itself; uniform | pow2: the trainer does
        "min_tokens": 1,
    },
    "schedule": {
        "steps": 1000,
        "batch_size": 8,             # per process
        "lr": 3e-4,
        "min_lr_ratio": 0.1,         # cosine decays to lr * min_lr_ratio
        "warmup": 100,
        "weight_decay": 0.05,
        "betas": [0.9, 0.95],
        "grad_clip": 1.0,
    },
    "ema": {"decay": 0.999},
    "eval": {
        "every": 0,                  # steps between evaluations (0 = only at the end)
        "source": "samples",         # samples: held-out sample segments | synthetic: held-out procedural clips
        "num_segments": 4,
        "num_frames": 17,
        "size": 128,
        "grid_frames": 4,            # frames per segment shown in the PNG grid
    },
    "checkpoint": {"every": 500, "keep": 2},  # every: steps between checkpoints (0 = only at the end or a stop)
    "export": {"stats_clips": 64},   # training clips that give the per-channel latent mean/std
    "log_every": 10,
    "max_bad_steps": 5,              # consecutive non-finite steps before training stops
}

# Keys a resumed run may change: those that leave the loss curve it continues as it was, and the two a run that
# must fit its time or that diverged needs (schedule.steps, schedule.lr; each session records them).
RESUMABLE_CHANGES = ("name", "device", "compile", "precision", "schedule.steps", "schedule.lr", "eval", "checkpoint",
                     "export", "log_every", "data.num_workers", "max_bad_steps")


def config_dir() -> Path:
    """The folder of packaged configs."""
    return Path(str(resources.files("vitok.train") / "configs"))


def list_configs() -> list[str]:
    """Names of the packaged configs."""
    return sorted(p.stem for p in config_dir().glob("*.json"))


def load_config(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a config (a path, or a packaged name with or without ``.json``), merge it over the defaults, apply
    ``key=value`` overrides."""
    path = Path(name_or_path)
    if not path.is_file():
        packaged = config_dir() / (path.name if path.suffix == ".json" else f"{path.name}.json")
        if str(name_or_path) != path.name or not packaged.is_file():
            raise VitokError(f"config not found: {name_or_path} (packaged configs: {', '.join(list_configs())})")
        path = packaged
    try:
        raw = json.loads(path.read_text())
    except ValueError as e:   # not JSON, or not UTF-8
        raise VitokError(f"config {path}: invalid JSON ({e})") from None
    except RecursionError:
        raise VitokError(f"config {path}: invalid JSON (nested too deeply)") from None
    if not isinstance(raw, dict):
        raise VitokError(f"config {path}: top level must be a JSON object")
    cfg = merge(DEFAULTS, raw, where=str(path))
    check_values(cfg, where=str(path))
    for item in overrides:
        set_override(cfg, item)
    check_values(cfg, where="--set")
    if cfg["name"] is None:
        cfg["name"] = path.stem
    return cfg


# Counts that must be at least 1; every other number in a config must be at least 0.
POSITIVE = ("schedule.steps", "schedule.batch_size", "eval.num_segments", "eval.num_frames", "eval.size", "data.size",
            "checkpoint.keep", "max_bad_steps", "data.num_frames", "eval.grid_frames", "log_every",
            "export.stats_clips")
# What the keys that default to None take when set.
NULLABLE = {"name": "", "model.init": "", "data.folder": "", "data.num_frames": 0}
# Keys that take one of a few strings (what pick_device, the trainer, eval_clips and lpips accept).
CHOICES = {"device": ("auto", "cpu", "cuda"), "precision": ("auto", "fp32", "bf16"),
           "eval.source": ("samples", "synthetic"), "nested_dropout.mode": ("model", "uniform", "pow2"),
           "loss.lpips_net": ("alex", "vgg", "squeeze")}


def check_values(cfg: dict[str, Any], where: str = "config") -> None:
    """Each value has its default's type (an int where a float goes is fine) and a sane range, so a typo such as
    ``schedule.steps=abc`` fails here, before a run folder is written (model overrides are the model's to check)."""
    defaults = {**flatten(DEFAULTS), **NULLABLE}
    for key, value in flatten(cfg).items():
        default = defaults.get(key)
        if _is_free(key) or key.startswith("model.overrides.") or (value is None and key in NULLABLE):
            continue
        if key not in defaults:  # a section replaced by a plain value
            raise VitokError(f"{where}: {key} must be an object of settings, got {value!r}")
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, (int, float)):
            whole = isinstance(default, int)
            ok = isinstance(value, int if whole else (int, float)) and not isinstance(value, bool)
            kind = "an integer" if whole else "a number"
            least = 1 if key in POSITIVE else 0
            if ok and not math.isfinite(value):
                raise VitokError(f"{where}: {key} must be a finite number, got {value!r}")
            if ok and value < least:
                raise VitokError(f"{where}: {key} must be at least {least}, got {value!r}")
        else:
            ok = isinstance(value, type(default))
            kind = {str: "a string", list: "a list", dict: "an object"}.get(type(default), type(default).__name__)
        if not ok:
            raise VitokError(f"{where}: {key} must be {kind}, got {value!r}")
    if not cfg["ema"]["decay"] < 1:
        raise VitokError(f"{where}: ema.decay must be below 1, got {cfg['ema']['decay']!r}")
    _check_choices_and_ranges(flatten(cfg), where)


def _check_choices_and_ranges(flat: dict[str, Any], where: str) -> None:
    """Values whose type is right but whose meaning is not: a string outside its choices, betas, sizes, ranges
    (each would otherwise fail deep inside torch or lpips, or be silently ignored)."""
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise VitokError(f"{where}: {key} must be one of {', '.join(allowed)}, got {flat[key]!r}")
    betas = flat["schedule.betas"]
    if len(betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in betas):
        raise VitokError(f"{where}: schedule.betas must be 2 numbers in [0, 1), got {betas!r}")
    sizes = flat["data.samples.sizes"]
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes):
        raise VitokError(f"{where}: data.samples.sizes must be a list of positive integers, got {sizes!r}")
    if not all(isinstance(name, str) and name for name in flat["model.freeze"]):
        raise VitokError(f"{where}: model.freeze must be a list of parameter-name prefixes, got "
                         f"{flat['model.freeze']!r}")
    if flat["eval.size"] < SSIM_MIN_SIDE:
        raise VitokError(f"{where}: eval.size must be at least {SSIM_MIN_SIDE} (the held-out SSIM's window), got "
                         f"{flat['eval.size']!r}")
    if flat["loss.ssim"] > 0 and flat["data.size"] < SSIM_MIN_SIDE:
        raise VitokError(f"{where}: data.size must be at least {SSIM_MIN_SIDE} with loss.ssim > 0 (SSIM's window), "
                         f"got {flat['data.size']!r}")
    lpips_side = LPIPS_MIN_SIDE.get(flat["loss.lpips_net"], 1)
    if flat["loss.lpips"] > 0 and flat["data.size"] < lpips_side:
        raise VitokError(f"{where}: data.size must be at least {lpips_side} with loss.lpips > 0 (the "
                         f"{flat['loss.lpips_net']} backbone's pooling), got {flat['data.size']!r}")
    if flat["nested_dropout.mode"] == "model" and flat["nested_dropout.min_tokens"] != 1:
        raise VitokError(f"{where}: nested_dropout.min_tokens is the trainer's draw (mode uniform or pow2); with mode "
                         f"'model' the model draws with its own: set model.overrides.min_tokens instead")
    if flat["loss.disc_channels"] < 1:
        raise VitokError(f"{where}: loss.disc_channels must be at least 1, got {flat['loss.disc_channels']!r}")
    if not flat["schedule.min_lr_ratio"] <= 1:
        raise VitokError(f"{where}: schedule.min_lr_ratio must be in [0, 1], got {flat['schedule.min_lr_ratio']!r}")


def _is_number(value: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def merge(base: dict[str, Any], update: dict[str, Any], where: str = "config", prefix: str = "") -> dict[str, Any]:
    """Deep-merge ``update`` over a copy of ``base``; keys missing from ``base`` are errors (except free dicts)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in out:
            raise VitokError(f"{where}: unknown key '{dotted}'")
        if isinstance(out[key], dict) and _is_free(dotted):
            out[key] = {**out[key], **value} if isinstance(value, dict) else value
        elif isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = merge(out[key], value, where, prefix=f"{dotted}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _is_free(dotted: str) -> bool:
    """Dicts whose keys are not fixed by the defaults (model overrides)."""
    return dotted == "model.overrides"


def parse_value(text: str) -> Any:
    """JSON when it parses (numbers, true/false/null, lists, objects), else the raw string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def set_override(cfg: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the key path must exist (model.overrides.* is free)."""
    if "=" not in item:
        raise VitokError(f"--set {item!r}: expected key=value")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    node: Any = cfg
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node:
            raise VitokError(f"--set {item!r}: unknown key '{'.'.join(parts[:i + 1])}'")
        node = node[part]
    last = parts[-1]
    free = _is_free(".".join(parts[:-1]))
    if not isinstance(node, dict) or (last not in node and not free):
        raise VitokError(f"--set {item!r}: unknown key '{key}'")
    value = parse_value(text)
    current = node.get(last)
    if isinstance(current, dict) and not _is_free(key):
        if not isinstance(value, dict):
            raise VitokError(f"--set {item!r}: '{key}' is a section; set one of its keys ({', '.join(current)})")
        value = merge(current, value, where=f"--set {key}", prefix=f"{key}.")
    node[last] = value


def flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` (for comparing configs key by key)."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, dict) and v and not _is_free(f"{prefix}{k}"):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def incompatible_changes(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys whose change would make a resumed run diverge from the one it continues. A key the saved config lacks
    (a run from before the key existed) ran with its default."""
    a, b = {**flatten(DEFAULTS), **flatten(saved)}, flatten(new)
    if a["nested_dropout.mode"] == "model" == b["nested_dropout.mode"]:   # never read then (now refused if set)
        a["nested_dropout.min_tokens"] = b["nested_dropout.min_tokens"]
    keys = sorted(set(a) | set(b))
    return [k for k in keys if a.get(k) != b.get(k)
            and not any(k == r or k.startswith(r + ".") for r in RESUMABLE_CHANGES)]

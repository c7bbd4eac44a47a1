"""Named architectures and bundled pretrained models: list_models, create_model, load."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from vitok.config import CNNConfig, TokenizerConfig, ViT1DConfig, ViTConfig, read_config
from vitok.data.errors import VitokError
from vitok.tokenizer import Tokenizer

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"

# Paper sizes (ViTok): width, depth, heads.
SIZES = {"S": (768, 6, 12), "B": (768, 12, 12), "L": (1152, 24, 16)}
PAPER_NAME = re.compile(r"(vit|vit1d)-([SBL])-([SBL])/(\d+)x(\d+)")  # matched whole (fullmatch)

# Small architectures: tiny ones for tests, *-s-cpu ones that the bundled models are trained from.
ARCHITECTURES: dict[str, TokenizerConfig] = {
    "vit-tiny": ViTConfig(latent_channels=8, clip_frames=8, tile_size=64, patch_t=4, patch=8, enc_width=64,
                          enc_depth=2, enc_heads=4, dec_width=64, dec_depth=2, dec_heads=4),
    "vit1d-tiny": ViT1DConfig(latent_channels=8, clip_frames=8, tile_size=64, patch_t=4, patch=8, enc_width=64,
                              enc_depth=2, enc_heads=4, dec_width=64, dec_depth=2, dec_heads=4, num_latents=16),
    "cnn-tiny": CNNConfig(latent_channels=16, clip_frames=9, tile_size=64, enc_channels=[8, 16, 32],
                          dec_channels=[8, 16, 32]),
    "vit-s-cpu": ViTConfig(latent_channels=16, clip_frames=20, tile_size=256, tile_overlap=0.03125, patch_t=4,
                           patch=8, enc_width=256, enc_depth=2, enc_heads=4, dec_width=256, dec_depth=4, dec_heads=4),
    "vit1d-s-cpu": ViT1DConfig(latent_channels=16, clip_frames=20, tile_size=128, tile_overlap=0.125, patch_t=4,
                               patch=8, enc_width=256, enc_depth=3, enc_heads=4, dec_width=256, dec_depth=4,
                               dec_heads=4, num_latents=128, min_tokens=1),
    "cnn-s-cpu": CNNConfig(latent_channels=16, clip_frames=17, tile_size=256, tile_overlap=0.03125,
                           enc_channels=[32, 64, 128], dec_channels=[32, 96, 160]),
}
# Paper-size names shown by list_models(); any vit|vit1d-{S,B,L}-{S,B,L}/QxP parses.
PAPER_EXAMPLES = ["vit-S-B/4x8", "vit-S-B/8x8", "vit-S-B/4x16", "vit-S-L/4x8", "vit-L-L/4x8", "vit1d-S-B/4x8"]


def _paper_config(name: str) -> TokenizerConfig | None:
    m = PAPER_NAME.fullmatch(name)
    if m is None:
        return None
    kind, enc, dec, pt, p = m.groups()
    (ew, ed, eh), (dw, dd, dh) = SIZES[enc], SIZES[dec]
    cls, extra = (ViT1DConfig, {"num_latents": 256}) if kind == "vit1d" else (ViTConfig, {})
    return cls(latent_channels=16, clip_frames=16, tile_size=256, patch_t=int(pt), patch=int(p), enc_width=ew,
               enc_depth=ed, enc_heads=eh, dec_width=dw, dec_depth=dd, dec_heads=dh, **extra)


def bundled_models() -> list[str]:
    """Names of pretrained models shipped in vitok/pretrained/<name>/."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(d.name for d in PRETRAINED_DIR.iterdir() if (d / "config.json").is_file())


def list_models() -> list[str]:
    """Bundled pretrained names, then registered architectures (tiny, CPU-sized, paper sizes)."""
    return bundled_models() + [n for n in [*ARCHITECTURES, *PAPER_EXAMPLES] if n not in bundled_models()]


def architecture(name: str) -> TokenizerConfig:
    """A fresh copy of a registered architecture's config (VitokError listing the names if unknown)."""
    if name in ARCHITECTURES:
        return dataclasses.replace(ARCHITECTURES[name], name=name)
    config = _paper_config(name)
    if config is None:
        raise VitokError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return dataclasses.replace(config, name=name)


def build(config: TokenizerConfig) -> Tokenizer:
    """Instantiate the tokenizer class for config.kind (random weights)."""
    from vitok.models import MODEL_CLASSES

    config.validate()   # before the class lookup: a kind changed by an override is named, not a KeyError
    return MODEL_CLASSES[config.kind](config)


def create_model(name: str, /, **overrides) -> Tokenizer:
    """Random-init tokenizer from a registered architecture (or a bundled model's config), fields overridden."""
    config = read_config(PRETRAINED_DIR / name / "config.json") if name in bundled_models() else architecture(name)
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise VitokError(f"{name}: unknown config field(s) {', '.join(unknown)}")
    if overrides.get("latent_channels", config.latent_channels) != config.latent_channels:
        # statistics measured for the other channel count no longer apply (unless given anew)
        overrides = {"latent_mean": None, "latent_std": None, **overrides}
    return build(dataclasses.replace(config, **overrides))


def local_model_dir(name_or_dir: str | Path) -> Path | None:
    """The folder ``name_or_dir`` names when it is the model meant, else None (a bundled name). A folder named like
    a bundled model is that model only with a config.json; empty (an output folder made before), it yields to the
    bundled model; holding other files, it is an error naming both, since either could be meant."""
    path, name = Path(name_or_dir), str(name_or_dir)
    if not path.is_dir():
        return None
    if name not in bundled_models() or (path / "config.json").is_file():
        return path
    if any(path.iterdir()):
        raise VitokError(f"{name}: the folder {path.resolve()} holds no config.json, and {name} is also a bundled "
                         f"model; give the model folder's path (e.g. {path / 'model'} for a training run) or move "
                         "the folder")
    return None


def resolve(name_or_dir: str | Path) -> Path:
    """The directory holding config.json + model.safetensors for a path or a bundled name."""
    if not str(name_or_dir).strip():
        raise VitokError("empty model name: give a bundled name or a directory")
    local = local_model_dir(name_or_dir)
    if local is not None:
        return local
    name = str(name_or_dir)
    if name in bundled_models():
        return PRETRAINED_DIR / name
    if name in ARCHITECTURES or _paper_config(name) is not None:
        raise VitokError(f"{name!r} is an architecture without trained weights; use vitok.create_model({name!r}) "
                         f"or a bundled model ({', '.join(bundled_models()) or 'none installed'})")
    raise VitokError(f"unknown model {name!r}: not a directory and not one of {', '.join(list_models())}")


def load(name_or_dir: str | Path, device: str = "cpu", frozen: bool = True) -> Tokenizer:
    """Load a bundled model or a directory with config.json + model.safetensors; frozen = eval + no grads."""
    import torch
    from safetensors import safe_open

    from vitok.storage import restored

    directory = resolve(name_or_dir)
    with torch.random.fork_rng(devices=[]):   # the initial values are overwritten: leave the caller's RNG alone
        tok = build(read_config(directory / "config.json"))
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise VitokError(f"{directory}: missing model.safetensors")
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises several types for truncated/garbled files
        raise VitokError(f"{weights}: corrupt weights file ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                         ) from None
    expected_hash = metadata.get("weights_hash")
    if expected_hash is None:
        raise VitokError(f"{weights}: no weights_hash in its metadata (not written by vitok's save_pretrained), so it "
                         f"cannot be checked")
    state = restored(tensors, metadata, str(weights))
    model_state = tok.state_dict()
    missing = sorted(set(model_state) - set(state))
    extra = sorted(set(state) - set(model_state))
    bad = sorted(k for k in set(state) & set(model_state) if state[k].shape != model_state[k].shape)
    if missing or extra or bad:
        detail = "; ".join(f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for label, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", bad))
                           if keys)
        raise VitokError(f"{weights}: weights do not match config.json ({detail})")
    tok.load_state_dict(state)
    tok.to(device)
    if frozen:
        tok.freeze()   # before the check: a frozen model keeps the hash it checks for its users (codecs, extraction)
    if tok.weights_hash != expected_hash:
        raise VitokError(f"{weights}: weights hash mismatch (file corrupt or edited)")
    return tok

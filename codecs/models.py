"""Where models come from for the codecs: bundled names (``vitok/pretrained/<name>/``) or model directories."""
from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

#: the bundled model ``vitok encode`` and ``vitok demo`` use when no ``--model`` is given: the one with the best
#: held-out PSNR in the README's model table (the 1D model takes over once its training catches up)
DEFAULT_MODEL = "vitok-grid"


def pretrained_root() -> Path:
    return Path(str(importlib.resources.files("vitok") / "pretrained"))


def bundled_dir(name: str) -> Path | None:
    """The folder of a bundled model, or None if ``name`` is not one."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    d = pretrained_root() / name
    return d if (d / "config.json").is_file() else None


def bundled_names() -> list[str]:
    """Bundled models that carry entropy tables (usable as ``vitok:<name>`` codecs)."""
    root = pretrained_root()
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if (d / "config.json").is_file()
                  and (d / "entropy.safetensors").is_file())


def find_bundled(model_name: str) -> str | None:
    """The bundled model a stream names: a bundled folder of that name, else one whose config has that name."""
    if bundled_dir(model_name) is not None:
        return model_name
    for name in bundled_names():
        try:
            if json.loads((pretrained_root() / name / "config.json").read_text()).get("name") == model_name:
                return name
        except (OSError, ValueError, AttributeError):
            continue
    return None

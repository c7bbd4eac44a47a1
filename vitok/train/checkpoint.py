"""Training checkpoints without pickle: every tensor in one safetensors file, everything else (optimizer layout,
scheduler, step, RNG states) in JSON that names the tensors by key. Each checkpoint is its own directory written
atomically; ``latest.json`` points at the newest complete one, so a kill at any moment leaves a usable checkpoint."""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from vitok.data.atomic import atomic_dir, save_safetensors, write_bytes_atomic
from vitok.data.errors import VitokError

_TENSOR = "__tensor__"
_TUPLE = "__tuple__"


def split_tensors(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "") -> Any:
    """Replace each tensor in a nested dict/list/tuple by ``{"__tensor__": key}``, collecting it in ``tensors``."""
    if torch.is_tensor(obj):
        key = prefix.rstrip(".") or "tensor"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        return {str(k): split_tensors(v, tensors, f"{prefix}{k}.") for k, v in obj.items()} | \
            ({"__int_keys__": True} if obj and all(isinstance(k, int) for k in obj) else {})
    if isinstance(obj, tuple):
        return {_TUPLE: [split_tensors(v, tensors, f"{prefix}{i}.") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [split_tensors(v, tensors, f"{prefix}{i}.") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return split_tensors(torch.from_numpy(obj.copy()), tensors, prefix)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint: cannot store {type(obj).__name__} at {prefix.rstrip('.')}")


def join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`split_tensors`."""
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if _TUPLE in obj:
            return tuple(join_tensors(v, tensors) for v in obj[_TUPLE])
        int_keys = obj.get("__int_keys__", False)
        return {(int(k) if int_keys else k): join_tensors(v, tensors) for k, v in obj.items() if k != "__int_keys__"}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states of this process."""
    np_state = np.random.get_state()
    numpy_state = {"name": np_state[0], "keys": np_state[1].astype(np.int64), "pos": int(np_state[2]),
                   "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()   # this process's device only: a resume may see fewer GPUs
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):   # earlier checkpoints kept every visible device's state
            i = torch.cuda.current_device()
            cuda = cuda[i] if i < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


def save_checkpoint(run_dir: str | Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``checkpoints/step-XXXXXXXX/{state.json,tensors.safetensors}`` atomically, point ``latest.json`` at it,
    keep the newest ``keep`` checkpoints."""
    root = Path(run_dir) / "checkpoints"
    dest = root / f"step-{step:08d}"
    tensors: dict[str, torch.Tensor] = {}
    meta = split_tensors(state, tensors)
    with atomic_dir(dest, durable=True) as tmp:   # on disk before latest.json names it, even across a power loss
        save_safetensors(tensors, tmp / "tensors.safetensors")
        (tmp / "state.json").write_text(json.dumps({"step": step, "state": meta}))
    write_bytes_atomic(root / "latest.json", json.dumps({"step": step, "dir": dest.name}).encode(), durable=True)
    for old in sorted(root.glob("step-*"))[:-max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def clear_partial_writes(run_dir: str | Path) -> None:
    """Remove what a kill mid-write left of a run's atomic folders (``checkpoints/.step-*``, ``.model.*``): rotation
    never sees them, so each would stay, checkpoint-sized. A kill between moving ``model/`` aside and putting the
    new one in place leaves the old one aside: it goes back first."""
    run = Path(run_dir)
    for folder, name in ((run / "checkpoints", "step-"), (run, "model")):
        if not folder.is_dir():
            continue
        for tmp in sorted(folder.glob(f".{name}*")):
            aside = [d for d in tmp.iterdir() if d.is_dir()] if ".old." in tmp.name else []
            for d in aside:
                if not (folder / d.name).exists():
                    os.replace(d, folder / d.name)
            shutil.rmtree(tmp, ignore_errors=True)


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """A run's complete checkpoint directories to resume from, in order of preference: the one ``latest.json`` names,
    then the others newest first (the fallbacks when a newer one does not read)."""
    root = Path(run_dir) / "checkpoints"
    done = [d for d in sorted(root.glob("step-*"), reverse=True) if (d / "state.json").is_file()
            and (d / "tensors.safetensors").is_file()]
    try:
        named = root / json.loads((root / "latest.json").read_text())["dir"]
    except (OSError, ValueError, KeyError, TypeError):
        return done
    return [named] + [d for d in done if d != named] if named in done else done


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint directory of a run (``latest.json``, else the highest complete step dir)."""
    done = complete_checkpoints(run_dir)
    return done[0] if done else None


def load_checkpoint(path: str | Path) -> tuple[int, dict[str, Any]]:
    """Read a checkpoint directory back into ``(step, state)``."""
    path = Path(path)
    try:
        meta = json.loads((path / "state.json").read_text())
        tensors = load_file(str(path / "tensors.safetensors"))
        return int(meta["step"]), join_tensors(meta["state"], tensors)
    except SafetensorError as e:
        raise VitokError(f"checkpoint {path / 'tensors.safetensors'}: unreadable ({e})") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise VitokError(f"checkpoint {path}: unreadable ({type(e).__name__}: {e})") from None

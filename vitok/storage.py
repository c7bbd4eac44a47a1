"""How a model's weights sit in ``model.safetensors``: as they are, at a lower float precision, or as int8.

int8 keeps each weight matrix (every floating tensor of two or more dimensions) as int8 values and one float32
scale per output row (``name`` and ``name.scale``: symmetric, ``w = q * scale``, |q| <= 127), the other floating
tensors (biases, norms) as float16: about a quarter of float32's bytes. Loading rebuilds float32 tensors, exactly
the ones whose hash the file records (saving computes it from the stored tensors), so an int8 or float16 file
loads as a model slightly unlike the one saved, with its own hash.
"""
from __future__ import annotations

import torch

from vitok.data.errors import VitokError

INT8 = "int8-rowwise"   # the file's "storage" metadata value for int8 weights
SCALE = ".scale"


def is_matrix(t: torch.Tensor) -> bool:
    """The tensors int8 storage quantizes: floating, two or more dimensions."""
    return t.is_floating_point() and t.ndim >= 2


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 ``q`` and float32 per-row ``scale`` of a matrix ``w`` (rows = first dimension)."""
    rows = w.detach().float().reshape(w.shape[0], -1)
    scale = rows.abs().amax(1).clamp_min(1e-12) / 127
    q = torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(w.shape), scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 ``q * scale`` per row; the one formula both saving and loading use, so the hash survives."""
    return (q.float().reshape(q.shape[0], -1) * scale[:, None]).reshape(q.shape)


def stored(state: dict[str, torch.Tensor], dtype: torch.dtype | None
           ) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, torch.Tensor]]:
    """For ``state`` at ``dtype`` (None: as it is; a float dtype; or torch.int8): the tensors to write, the file's
    metadata entries, and the state loading will rebuild from them (``state`` itself is left as it is)."""
    if dtype is not None and dtype != torch.int8 and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise VitokError(f"weights dtype must be None, a floating dtype or torch.int8, got {dtype!r}")
    if dtype is None:
        return dict(state), {}, dict(state)
    out: dict[str, torch.Tensor] = {}
    rebuilt: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, t in state.items():
            if dtype == torch.int8 and is_matrix(t):
                q, scale = quantize_rows(t)
                out[name], out[name + SCALE] = q, scale
                rebuilt[name] = dequantize_rows(q, scale).to(t.dtype)
            elif t.is_floating_point():
                out[name] = t.to(torch.float16 if dtype == torch.int8 else dtype)
                rebuilt[name] = out[name].to(t.dtype)
            else:
                out[name] = rebuilt[name] = t
    return out, ({"storage": INT8} if dtype == torch.int8 else {}), rebuilt


def restored(tensors: dict[str, torch.Tensor], metadata: dict[str, str], where: str) -> dict[str, torch.Tensor]:
    """The state dict a file's ``tensors`` stand for (inverse of ``stored``); a malformed int8 file is a VitokError
    naming ``where``."""
    storage = metadata.get("storage")
    if storage is None:
        return tensors
    if storage != INT8:
        raise VitokError(f"{where}: unknown weight storage {storage!r} (written by a newer vitok?)")
    state = {}
    for name, t in tensors.items():
        if name.endswith(SCALE):
            if name[: -len(SCALE)] not in tensors:
                raise VitokError(f"{where}: corrupt weights file (scale {name} without its weights)")
            continue
        if t.dtype != torch.int8:
            state[name] = t.float() if t.is_floating_point() else t
            continue
        scale = tensors.get(name + SCALE)
        if scale is None or t.ndim < 2 or scale.shape != (t.shape[0],) or not scale.is_floating_point() or \
                not torch.isfinite(scale).all():
            raise VitokError(f"{where}: corrupt weights file (int8 tensor {name} without a valid per-row scale)")
        state[name] = dequantize_rows(t, scale.float())
    return state

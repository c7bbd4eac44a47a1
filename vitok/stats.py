"""Parameter count and FLOPs per clip, counted by torch.utils.flop_counter on a meta-device copy (no compute)."""
from __future__ import annotations

import dataclasses

import torch
from torch.utils.flop_counter import FlopCounterMode

from vitok.tokenizer import Tokenizer


def model_stats(tok: Tokenizer, frames: int = 16, size: int = 128) -> dict:
    """{params, gflops (encode + decode of one frames x size x size clip, all chunks and tiles; 1 multiply-add
    = 2 FLOPs; counted ops: matmul, conv, attention), tokens, channels} for this tokenizer's architecture."""
    from vitok.registry import build

    with torch.device("meta"):
        meta = build(dataclasses.replace(tok.config)).freeze()
    geo = meta.plan(frames, size, size)
    unit = torch.zeros(1, 3, *geo.unit_size, device="meta")
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:  # all units share one geometry
        meta.decode_unit(meta.encode_unit(unit)[0], None, geo.unit_size)
    tokens, channels = tok.latent_shape(frames, size, size)
    return {"params": sum(p.numel() for p in tok.parameters()),
            "gflops": geo.units * counter.get_total_flops() / 1e9, "tokens": tokens, "channels": channels}

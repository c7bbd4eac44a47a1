"""`vitok models` and model_stats (parameters, FLOPs per clip)."""
from __future__ import annotations

import json

import torch
from click.testing import CliRunner

import vitok
from vitok.cli.main import cli
from vitok.cli.models import format_table


def test_model_stats_tiny():
    tok = vitok.create_model("cnn-tiny")
    stats = vitok.model_stats(tok, frames=16, size=64)
    assert stats["params"] == sum(p.numel() for p in tok.parameters())
    assert stats["gflops"] > 0.1
    assert (stats["tokens"], stats["channels"]) == (2 * 3 * 8 * 8, 16)  # 16 frames = 2 chunks of 9 -> 3 each


def test_flop_count_sees_attention_on_the_meta_device():
    """model_stats counts on the meta device, where attention breaks into counted matmuls (QK^T and AV, 2 FLOPs per
    multiply-add); on a real CPU tensor the fused kernel has no FLOP formula and attention would drop out unseen."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    heads, n, d = 4, 256, 32
    q = torch.zeros(1, heads, n, d, device="meta")
    with FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(q, q, q)
    assert counter.get_total_flops() == 2 * (2 * heads * n * n * d)


def test_model_stats_paper_size_reference():
    """ViTok S-B/4x8 on 16x128x128: the paper reports 160.8 GFLOPs counting multiply-adds; we count 2 per MAC."""
    with torch.device("meta"):
        tok = vitok.create_model("vit-S-B/4x8")
    stats = vitok.model_stats(tok)
    assert stats["tokens"] == 1024
    assert 0.9 * 2 * 160.8 < stats["gflops"] < 1.1 * 2 * 160.8


def test_models_command(monkeypatch):
    import vitok.registry as registry

    monkeypatch.setattr(registry, "PAPER_EXAMPLES", ["vit-S-B/4x8"])
    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert {"vit-tiny", "vit1d-tiny", "cnn-tiny", "vit-s-cpu", "vit1d-s-cpu", "cnn-s-cpu", "vit-S-B/4x8"} <= set(rows)
    cnn = rows["cnn-s-cpu"]
    assert (cnn["kind"], cnn["tokens"], cnn["channels"], cnn["weights"]) == ("cnn", 5 * 16 * 16, 16, "-")
    assert rows["vit1d-s-cpu"]["tokens"] * 4 * 16 <= 5 * 16 * 16 * 16  # 1D: at most a quarter of the CNN values
    assert all(r["params"] > 0 and r["gflops"] > 0 for r in rows.values())
    text = format_table(list(rows.values()))
    assert "vit-S-B/4x8" in text and "GFLOPs" in text and len(text.splitlines()) == len(rows) + 1

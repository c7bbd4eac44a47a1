"""`vitok models` and model_stats (parameters, FLOPs per clip)."""
from __future__ import annotations

import json

import pytest
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


def test_model_stats_counts_attention(monkeypatch):
    """model_stats counts on the meta device, where attention breaks into counted matmuls (QK^T and AV, 2 FLOPs per
    multiply-add); on a real CPU tensor the fused kernel has no FLOP formula and attention would drop out unseen.
    Taking attention out must lower vit-tiny's count by exactly units x blocks x 2 x (2 n^2 width)."""
    import vitok.nn.attention as attention

    tok = vitok.create_model("vit-tiny")
    cfg = tok.config
    with_attention = vitok.model_stats(tok)["gflops"]
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", lambda q, k, v: v)   # no FLOPs, same shape
    without = vitok.model_stats(tok)["gflops"]
    geo = tok.plan(16, 128, 128)
    t, h, w = geo.unit_size
    n = (t // cfg.patch_t) * (h // cfg.patch) * (w // cfg.patch)   # tokens per unit
    blocks = cfg.enc_depth + cfg.dec_depth
    assert with_attention - without == pytest.approx(geo.units * blocks * 2 * 2 * n * n * cfg.enc_width / 1e9)
    assert cfg.enc_width == cfg.dec_width and n == 98 and geo.units == 18   # 3 x 3 tiles of 56 px, 2 chunks


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

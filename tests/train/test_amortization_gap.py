"""tools/amortization_gap.py: latents optimised through the frozen decoder rebuild a clip better than encoded ones."""
from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("amortization_gap")


def test_refined_latents_rebuild_better_and_leave_the_model_alone(tool):
    import vitok
    from vitok.train.evaluate import frame_psnr

    torch.manual_seed(0)
    tok = vitok.create_model("vit-tiny").eval()
    tok.requires_grad_(False)
    before = {k: v.clone() for k, v in tok.state_dict().items()}
    frames = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    first, refined = tool.refine(tok, frames, steps=20, lr=0.05)
    assert first.shape == refined.shape == frames.shape and refined.dtype == np.uint8
    assert frame_psnr(frames, refined) > frame_psnr(frames, first) + 0.1
    assert all(torch.equal(before[k], v) for k, v in tok.state_dict().items())   # only the latents moved


def test_bad_arguments_are_one_line(tool):
    with pytest.raises(SystemExit, match="--steps and --every must be at least 1"):
        tool.main(["vitok-grid", "--steps", "0"])
    with pytest.raises(SystemExit, match="error: unknown model 'no-such-model'"):
        tool.main(["no-such-model"])


def test_main_reports_the_gap_on_the_held_out_segments(tool, tmp_path, monkeypatch, capsys):
    """The normal run (whose figures the README quotes), with a tiny random model saved to a folder and the held-out
    segments stubbed by three small clips: every --every-th segment gets a row whose refined PSNR (from the latents
    after the Adam steps, not the encoder's) is above its encoded PSNR, and the means are over those rows."""
    import json

    import vitok
    import vitok.data.samples as samples

    torch.manual_seed(0)
    vitok.create_model("vit-tiny").save_pretrained(tmp_path / "tiny")
    rng = np.random.default_rng(1)
    segments = [(f"clip:{i}", rng.integers(0, 256, (17, 32, 32, 3), dtype=np.uint8)) for i in range(3)]
    asked = []
    monkeypatch.setattr(samples, "eval_segments", lambda **kw: asked.append(kw) or segments)
    tool.main([str(tmp_path / "tiny"), "--steps", "8", "--lr", "0.05", "--every", "2", "--threads", "1", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert asked == [{"num_frames": 17, "size": 128}]
    assert (out["model"], out["steps"], out["lr"]) == (str(tmp_path / "tiny"), 8, 0.05)
    rows = out["segments"]
    assert [r["id"] for r in rows] == ["clip:0", "clip:2"]
    assert all(r["refined_psnr"] > r["encoded_psnr"] + 0.05 for r in rows)
    for key in ("encoded_psnr", "refined_psnr"):
        assert out[key] == pytest.approx(np.mean([r[key] for r in rows]))

    tool.main([str(tmp_path / "tiny"), "--steps", "1", "--every", "3", "--threads", "1"])   # the text form
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("clip:0: ") and lines[0].endswith(" dB")
    assert lines[1].startswith(f"{tmp_path / 'tiny'}: encoded ") and "latents refined by 1 steps" in lines[1]
    assert "1 held-out 17x128x128 segments, unquantized)" in lines[1]

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

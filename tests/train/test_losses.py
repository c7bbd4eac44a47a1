"""Loss terms, their switches (LPIPS without offline weights, MS-SSIM on small frames) and the GAN pieces."""
from __future__ import annotations

import pytest
import torch

from vitok.data.errors import VitokError
from vitok.train.config import DEFAULTS
from vitok.train.losses import PatchDiscriminator, TokenizerLoss, charbonnier, consistency_loss, hinge_d_loss, \
    hinge_g_loss, load_lpips, lpips_backbone_file, sample_num_tokens, ssim_loss


def _cfg(**weights) -> dict:
    return {**DEFAULTS["loss"], "l1": 0.0, "kl": 0.0, **weights}


def test_pixel_and_ssim_losses():
    x = torch.rand(1, 3, 4, 24, 24) * 2 - 1
    y = x + 0.5
    assert charbonnier(x, y).item() == pytest.approx(0.5, abs=1e-3)
    assert ssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-5)
    assert ssim_loss(x, torch.rand_like(x)).item() > 0.5


def test_weighted_total():
    loss = TokenizerLoss(_cfg(l1=1.0, l2=2.0, ssim=0.5, kl=0.1, consistency=3.0, image_frames=2), frame_size=24)
    x = torch.rand(2, 3, 5, 24, 24) * 2 - 1
    r = (x + 0.1 * torch.randn_like(x)).requires_grad_()
    total, terms = loss(x, r, kl=torch.tensor(2.0), consistency=torch.tensor(0.5))
    assert set(terms) == {"l1", "l2", "ssim", "kl", "consistency"}
    want = terms["l1"] + 2 * terms["l2"] + 0.5 * terms["ssim"] + 0.1 * 2.0 + 3.0 * 0.5
    assert total.item() == pytest.approx(want.item(), rel=1e-5)
    total.backward()
    assert torch.isfinite(r.grad).all()


def test_image_losses_see_only_the_subsampled_frames():
    """image_frames=2 of 5 frames takes frames 0 and 4: an error in frame 2 alone shows in L1 but not in SSIM, while
    with every frame (image_frames=0) SSIM sees it too."""
    x = torch.rand(1, 3, 5, 24, 24) * 2 - 1
    r = x.clone()
    r[:, :, 2] = torch.rand(1, 3, 24, 24) * 2 - 1
    _, sub = TokenizerLoss(_cfg(l1=1.0, ssim=1.0, image_frames=2), frame_size=24)(x, r)
    _, full = TokenizerLoss(_cfg(l1=1.0, ssim=1.0, image_frames=0), frame_size=24)(x, r)
    assert sub["l1"].item() == pytest.approx(full["l1"].item()) and sub["l1"].item() > 0.05
    assert sub["ssim"].item() == pytest.approx(0.0, abs=1e-5) and full["ssim"].item() > 0.1


def test_lpips_unavailable_prints_notice_and_weight_zero(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert load_lpips("alex") is None
    loss = TokenizerLoss(_cfg(l1=1.0, lpips=1.0), frame_size=32)
    err = capsys.readouterr().err
    assert err.count("notice: LPIPS loss disabled (weight 0)") == 1 and str(lpips_backbone_file("alex")) in err
    assert loss.w["lpips"] == 0.0 and loss.lpips is None
    x = torch.zeros(1, 3, 2, 32, 32)
    assert "lpips" not in loss(x, x)[1]
    TokenizerLoss(_cfg(l1=1.0, lpips=1.0), frame_size=32, verbose=False)   # other ranks stay quiet
    assert capsys.readouterr().err == ""


def test_lpips_loads_backbone_from_local_file_only(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    path = lpips_backbone_file("squeeze")
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    backbone = torchvision.models.squeezenet1_1()
    torch.save(backbone.state_dict(), path)
    metric = load_lpips("squeeze")
    assert metric is not None and not any(p.requires_grad for p in metric.parameters())
    assert torch.equal(metric.net.slice1[0].weight, backbone.features[0].weight)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert metric(x, x).abs().max() < 1e-6 and metric(x, -x).mean() > 0


def test_a_loss_without_a_reconstruction_term_is_refused(capsys):
    """KL, consistency or GAN alone train no decoder; a reconstruction term dropped by its notice counts as absent."""
    with pytest.raises(VitokError, match="no reconstruction loss has a weight above 0"):
        TokenizerLoss(_cfg(ssim=0.0, kl=1.0, consistency=1.0, gan=1.0), frame_size=64)
    with pytest.raises(VitokError, match="no reconstruction loss"):
        TokenizerLoss(_cfg(ssim=0.0, ms_ssim=1.0), frame_size=64)
    assert "MS-SSIM loss disabled" in capsys.readouterr().err


def test_ssim_of_a_non_finite_reconstruction_is_nan():
    x = torch.rand(1, 3, 2, 24, 24) * 2 - 1
    for bad in (float("nan"), float("inf")):
        y = x.clone()
        y[0, 0, 0, 0, 0] = bad
        assert torch.isnan(ssim_loss(y, x)) and torch.isnan(ssim_loss(x, y, multiscale=False))
    assert ssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-5)


def test_ms_ssim_needs_large_frames(capsys):
    loss = TokenizerLoss(_cfg(ms_ssim=1.0, l1=1.0), frame_size=64)
    assert loss.w["ms_ssim"] == 0.0 and "MS-SSIM loss disabled" in capsys.readouterr().err
    assert TokenizerLoss(_cfg(ms_ssim=1.0), frame_size=192).w["ms_ssim"] == 1.0


def test_consistency_counts_present_tokens_only():
    z = torch.ones(1, 4, 2)
    again = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [9.0, 9.0], [9.0, 9.0]]], requires_grad=True)
    mask = torch.tensor([[True, True, False, False]])
    assert consistency_loss(z, again, mask).item() == pytest.approx(2.0)   # (0 + 4 + 4 + 0) / 4 values
    assert consistency_loss(z, again).item() == pytest.approx((0 + 8 + 128 + 128) / 8)


def test_nested_dropout_schedules():
    g = torch.Generator().manual_seed(0)
    draws = [sample_num_tokens(16, "uniform", 2, g) for _ in range(200)]
    assert min(draws) == 2 and max(draws) == 16
    assert {sample_num_tokens(12, "pow2", 1, g) for _ in range(200)} == {1, 2, 4, 8, 12}
    with pytest.raises(ValueError, match="model, uniform or pow2, got 'sometimes'"):
        sample_num_tokens(8, "sometimes", 1)


def test_patch_discriminator_and_hinge():
    d = PatchDiscriminator(channels=8)
    logits = d(torch.randn(2, 3, 4, 32, 32))
    assert logits.shape == (2, 1, 4, 4, 4)
    assert hinge_d_loss(torch.full((3,), 2.0), torch.full((3,), -2.0)).item() == 0.0
    assert hinge_g_loss(torch.full((3,), 2.0)).item() == -2.0

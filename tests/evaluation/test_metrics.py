"""Metrics against values known in closed form: identical frames, +-k noise, luma weights, applicability."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from vitok.evaluation import metrics as M
from vitok.evaluation.errors import EvaluationError


def _gray(t=3, h=48, w=64, value=128):
    return np.full((t, h, w, 3), value, np.uint8)


def _signs(shape, seed=0):
    return np.random.default_rng(seed).choice([-1, 1], size=shape)


def test_identical_frames_cap_psnr_and_give_ssim_one():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    assert M.psnr(ref, ref) == M.PSNR_CAP == 100.0
    assert M.psnr_y(ref, ref) == 100.0
    assert M.ssim(ref, ref) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_psnr_of_plus_minus_k_noise_is_analytic(k):
    # every sample moves by exactly +-k (random sign), so MSE = k^2 and PSNR = 20 log10(255 / k)
    ref = _gray()
    dist = (ref.astype(int) + k * _signs(ref.shape)).astype(np.uint8)
    assert M.psnr(ref, dist) == pytest.approx(20 * math.log10(255 / k), abs=1e-9)


def test_psnr_y_uses_bt709_weights():
    k = 12
    ref = _gray()
    dist = ref.astype(int)
    dist[..., 0] += k * _signs(ref.shape[:3])  # only red moves: luma moves by 0.2126 k
    dist = dist.astype(np.uint8)
    assert M.psnr(ref, dist) == pytest.approx(10 * math.log10(255 ** 2 / (k ** 2 / 3)), abs=1e-9)
    assert M.psnr_y(ref, dist) == pytest.approx(20 * math.log10(255 / (0.2126 * k)), abs=1e-9)
    grey_shift = (ref.astype(int) + k * _signs(ref.shape[:3])[..., None]).astype(np.uint8)  # same move on R, G, B
    assert M.psnr_y(ref, grey_shift) == pytest.approx(20 * math.log10(255 / k), abs=1e-9)


def test_psnr_is_mean_of_per_frame_values():
    ref = _gray(t=2)
    dist = ref.copy()
    dist[0] += 1  # frame 0: MSE 1 -> 48.13 dB; frame 1 identical -> cap
    assert M.psnr(ref, dist) == pytest.approx((20 * math.log10(255) + 100.0) / 2)


def test_ms_ssim_needs_161_pixels():
    small = _gray(t=1, h=144, w=176)
    assert M.ms_ssim(small, small) is None
    for h, w in ((160, 170), (170, 160)):   # one pixel short on either side
        edge = np.random.default_rng(2).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
        assert M.ms_ssim(edge, edge) is None
    big = np.random.default_rng(1).integers(0, 256, (1, 161, 170, 3), dtype=np.uint8)
    assert M.ms_ssim(big, big) == pytest.approx(1.0, abs=1e-5)
    noisy = np.clip(big.astype(int) + 20 * _signs(big.shape), 0, 255).astype(np.uint8)
    assert 0 < M.ms_ssim(big, noisy) < 1


def test_lpips_real_code_path_with_random_backbone():
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecation notes about `pretrained`
        net = lpips.LPIPS(pretrained=True, net="alex", pnet_rand=True, verbose=False).eval()
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    noisy = np.clip(ref.astype(int) + 40 * _signs(ref.shape), 0, 255).astype(np.uint8)
    assert M.lpips(ref, ref, model=net) == pytest.approx(0.0, abs=1e-6)
    value = M.compute_metrics(ref, noisy, which=("lpips",), lpips_net=net)["lpips"]
    assert math.isfinite(value) and value > 0
    # AlexNet's pooling needs 31 px a side: smaller frames are "not applicable", as for SSIM, not a crash
    assert M.lpips(ref[:, :30], noisy[:, :30], model=net) is None
    assert math.isfinite(M.lpips(ref[:, :31], noisy[:, :31], model=net))


def test_lpips_loads_a_cached_backbone_without_network(tmp_path, monkeypatch):
    # stand-in for torchvision's download cache: random SqueezeNet weights under the checkpoint's file name
    import torch
    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(M, "_lpips_cache", {})
    ckpt = M.lpips_checkpoint("squeeze")
    ckpt.parent.mkdir(parents=True)
    torch.save(torchvision.models.squeezenet1_1().state_dict(), ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = M.lpips_model("squeeze")
    assert model is not None and M.lpips_model("squeeze") is model  # built once, then cached
    ref = _gray(t=2, h=64, w=64)
    noisy = (ref.astype(int) + 30 * _signs(ref.shape)).astype(np.uint8)
    assert math.isfinite(M.lpips(ref, noisy, model=model)) and M.lpips(ref, ref, model=model) == pytest.approx(0)


def test_lpips_unavailable_is_none_with_one_warning(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty hub: no cached backbone
    monkeypatch.setattr(M, "_lpips_cache", {})
    monkeypatch.setattr(M, "_lpips_warned", False)
    ref = _gray(t=1)
    with pytest.warns(RuntimeWarning, match="LPIPS unavailable") as rec:
        assert M.lpips(ref, ref) is None
        assert M.compute_metrics(ref, ref)["lpips"] is None
    assert len([w for w in rec if "LPIPS" in str(w.message)]) == 1


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(EvaluationError, match="same shape"):
        M.psnr(_gray(), _gray(h=32))
    with pytest.raises(EvaluationError, match="uint8"):
        M.psnr(_gray().astype(np.float32), _gray().astype(np.float32))
    with pytest.raises(EvaluationError, match="unknown metric 'vmaf'"):
        M.compute_metrics(_gray(), _gray(), which=("psnr", "vmaf"))

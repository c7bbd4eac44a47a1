"""Tokenizer training losses: pixel (L1/L2/Charbonnier), SSIM/MS-SSIM (piq), LPIPS (offline weights only), KL,
latent consistency, and a patch-GAN hinge loss. ``TokenizerLoss`` weighs them from the config's ``loss`` section."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitok.data.errors import VitokError
from vitok.metric_sizes import MS_SSIM_MIN_SIDE

RECONSTRUCTION_TERMS = ("l1", "l2", "charbonnier", "ssim", "ms_ssim", "lpips")
_LPIPS_BACKBONES = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}


def frames(x: torch.Tensor) -> torch.Tensor:
    """``(B,3,T,H,W)`` -> ``(B*T,3,H,W)``: image losses look at every frame."""
    return x.transpose(1, 2).flatten(0, 1)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1,1] -> [0,1], clamped (piq checks the range)."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def charbonnier(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Smooth L1: sqrt((x-y)^2 + eps^2), mean; behaves like L1 but has a gradient at zero."""
    return torch.sqrt((x.float() - y.float()) ** 2 + eps * eps).mean()


def ssim_loss(x: torch.Tensor, y: torch.Tensor, multiscale: bool = False) -> torch.Tensor:
    """1 - (MS-)SSIM over all frames of two video batches in [-1,1]."""
    import piq

    a, b = frames(x).float(), frames(y).float()
    fn = piq.multi_scale_ssim if multiscale else piq.ssim
    loss = 1.0 - fn(to_unit(a.nan_to_num()), to_unit(b.nan_to_num()), data_range=1.0, reduction="mean")
    # a non-finite input gives a NaN loss (the trainer skips the step) rather than piq's range assertion
    finite = torch.isfinite(a).all() & torch.isfinite(b).all()
    return torch.where(finite, loss, torch.full_like(loss, float("nan")))


def lpips_backbone_file(net: str = "alex") -> Path:
    """Where torchvision keeps the backbone checkpoint that LPIPS needs (the torch hub checkpoints folder)."""
    import torchvision

    weights = getattr(torchvision.models, _LPIPS_BACKBONES[net]).IMAGENET1K_V1
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def load_lpips(net: str = "alex") -> nn.Module | None:
    """The LPIPS metric with its backbone read from the local torch hub cache, or None when the file is absent.

    Never downloads: the backbone is built random and loaded from the file; lpips' own linear layers ship with it.
    """
    if net not in _LPIPS_BACKBONES:
        raise ValueError(f"lpips_net must be one of {sorted(_LPIPS_BACKBONES)}, got {net!r}")
    path = lpips_backbone_file(net)
    if not path.is_file():
        return None
    import lpips
    import torchvision

    with warnings.catch_warnings():   # lpips passes torchvision's deprecated `pretrained=False`
        warnings.simplefilter("ignore", UserWarning)
        metric = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    builder = {"alex": torchvision.models.alexnet, "vgg": torchvision.models.vgg16,
               "squeeze": torchvision.models.squeezenet1_1}[net]
    backbone = builder()
    backbone.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    for slice_ in (getattr(metric.net, f"slice{i}") for i in range(1, metric.net.N_slices + 1)):
        for idx, layer in slice_.named_children():
            layer.load_state_dict(backbone.features[int(idx)].state_dict())
    return metric.eval().requires_grad_(False)


class PatchDiscriminator(nn.Module):
    """A small 3D conv patch discriminator: strided (1,2,2) convs, one logit per space-time patch."""

    def __init__(self, channels: int = 32, layers: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        cin = 3
        for i in range(layers):
            cout = channels * 2 ** i
            blocks += [nn.Conv3d(cin, cout, (3, 4, 4), stride=(1, 2, 2), padding=(1, 1, 1)),
                       nn.GroupNorm(min(8, cout), cout) if i else nn.Identity(), nn.LeakyReLU(0.2)]
            cin = cout
        blocks.append(nn.Conv3d(cin, 1, 3, padding=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss."""
    return -fake_logits.mean()


def consistency_loss(z: torch.Tensor, z_again: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared distance between re-encoded latents and the (stop-gradient) latents, over present tokens."""
    err = (z_again.float() - z.detach().float()) ** 2
    if mask is None:
        return err.mean()
    m = mask.to(err.dtype).unsqueeze(-1)
    return (err * m).sum() / (m.sum() * err.shape[-1]).clamp_min(1)


class TokenizerLoss(nn.Module):
    """Weighted sum of the configured losses; weights of 0 switch a term off. LPIPS without offline weights and
    MS-SSIM on frames too small for it print one notice each and drop to weight 0."""

    def __init__(self, cfg: dict[str, Any], frame_size: int, verbose: bool = True) -> None:
        super().__init__()
        self.w = {k: float(cfg[k]) for k in ("l1", "l2", "charbonnier", "ssim", "ms_ssim", "lpips", "kl",
                                              "consistency", "gan")}
        self.image_frames = int(cfg["image_frames"])
        self.lpips: nn.Module | None = None
        if self.w["lpips"] > 0:
            self.lpips = load_lpips(cfg["lpips_net"])
            if self.lpips is None:
                self.w["lpips"] = 0.0
                _notice(f"LPIPS loss disabled (weight 0): backbone weights not found at "
                        f"{lpips_backbone_file(cfg['lpips_net'])} (no download; copy the file there to enable it)",
                        verbose)
        if self.w["ms_ssim"] > 0 and frame_size < MS_SSIM_MIN_SIDE:
            self.w["ms_ssim"] = 0.0
            _notice(f"MS-SSIM loss disabled (weight 0): frames of {frame_size} px are below the "
                    f"{MS_SSIM_MIN_SIDE} px it needs", verbose)
        if not any(self.w[k] > 0 for k in RECONSTRUCTION_TERMS):  # KL, consistency and GAN alone train no decoder
            raise VitokError(f"config loss: no reconstruction loss has a weight above 0 (one of "
                             f"{', '.join(RECONSTRUCTION_TERMS)}, after the notices above)")

    def forward(self, x: torch.Tensor, recon: torch.Tensor, kl: torch.Tensor | float = 0.0,
                consistency: torch.Tensor | None = None, gan: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its unweighted terms (for logging)."""
        w, terms = self.w, {}
        x, recon = x.float(), recon.float()
        if w["l1"]:
            terms["l1"] = (recon - x).abs().mean()
        if w["l2"]:
            terms["l2"] = F.mse_loss(recon, x)
        if w["charbonnier"]:
            terms["charbonnier"] = charbonnier(recon, x)
        if w["ssim"] or w["ms_ssim"] or (w["lpips"] and self.lpips is not None):
            xs, rs = self._subsample(x), self._subsample(recon)
            if w["ssim"]:
                terms["ssim"] = ssim_loss(rs, xs)
            if w["ms_ssim"]:
                terms["ms_ssim"] = ssim_loss(rs, xs, multiscale=True)
            if w["lpips"] and self.lpips is not None:
                terms["lpips"] = self.lpips(frames(rs), frames(xs)).mean()
        if w["kl"] and torch.is_tensor(kl):
            terms["kl"] = kl.float()
        if w["consistency"] and consistency is not None:
            terms["consistency"] = consistency
        if w["gan"] and gan is not None:
            terms["gan"] = gan
        total = sum((w[k] * v for k, v in terms.items()), torch.zeros((), device=x.device))
        return total, terms


    def _subsample(self, x: torch.Tensor) -> torch.Tensor:
        """Evenly spaced ``image_frames`` frames of each clip for the costly image losses (0 = all frames)."""
        T = x.shape[2]
        if self.image_frames <= 0 or self.image_frames >= T:
            return x
        return x[:, :, torch.linspace(0, T - 1, self.image_frames, device=x.device).round().long()]


def sample_num_tokens(max_tokens: int, mode: str, min_tokens: int, generator: torch.Generator | None = None) -> int:
    """Nested-dropout token count for one step: uniform in [min, K] or a power of two in [min, K] (K included)."""
    lo = max(1, min(min_tokens, max_tokens))
    if mode == "uniform":
        return int(torch.randint(lo, max_tokens + 1, (), generator=generator))
    if mode == "pow2":
        choices = sorted({2 ** i for i in range(max_tokens.bit_length()) if lo <= 2 ** i <= max_tokens} | {max_tokens})
        return choices[int(torch.randint(len(choices), (), generator=generator))]
    raise ValueError(f"nested_dropout.mode must be model, uniform or pow2, got {mode!r}")


def _notice(msg: str, verbose: bool) -> None:
    """One line on stderr (rank 0 only: the trainer passes verbose=False elsewhere)."""
    if verbose:
        print(f"notice: {msg}", file=sys.stderr)

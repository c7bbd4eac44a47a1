"""The smallest frame side each quality metric takes: the core's training checks and `vitok.evaluation`'s metrics
read them here (the core imports nothing from evaluation)."""
from __future__ import annotations

SSIM_MIN_SIDE = 11                # piq's SSIM: an 11x11 Gaussian window
MS_SSIM_MIN_SIDE = 161            # piq's MS-SSIM: 5 scales of that window
LPIPS_MIN_SIDE = {"alex": 31}     # per backbone: the smallest side its pooling stack takes (others: no limit known)

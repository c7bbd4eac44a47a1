"""Figures for RD reports: RD curves, side-by-side frames, token-budget plots (matplotlib, Agg, no pyplot).

Every figure is written as PNG (and SVG where it is a chart) atomically; functions return the paths written.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from vitok.data.atomic import atomic_path

LABELS = {"psnr": "PSNR RGB (dB)", "psnr_y": "PSNR Y (dB)", "ssim": "SSIM", "ms_ssim": "MS-SSIM",
          "lpips": "LPIPS (lower is better)", "bpp": "bits per pixel", "kbps": "kbit/s", "bytes": "bytes"}


def _figure(w: float = 6.0, h: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, stem: Path, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    out = []
    for ext in formats:
        path = Path(f"{stem}.{ext}")
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext)
        out.append(path)
    return out


def plot_rd(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], stem: str | Path, *,
            x: str = "bpp", metric: str = "psnr", title: str = "", logx: bool = True) -> list[Path]:
    """One curve per codec (``{codec: (xs, ys)}``); writes ``stem.png`` and ``stem.svg``.

    Every point is drawn; the line joins the codec's efficient points (those better than every cheaper point), so
    operating points from different knobs (step, tokens, rate control) do not zig-zag.
    """
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    sign = -1.0 if metric == "lpips" else 1.0
    for name, (xs, ys) in curves.items():
        x_arr, y_arr = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
        order = np.lexsort((-sign * y_arr, x_arr))
        front = [i for n, i in enumerate(order) if n == 0 or sign * y_arr[i] > max(sign * y_arr[order[:n]])]
        (line,) = ax.plot(x_arr[front], y_arr[front], marker="o", ms=4, label=name)
        if len(front) < len(x_arr):
            ax.plot(x_arr, y_arr, ls="none", marker="o", ms=4, mfc="none", color=line.get_color())
    if logx:
        _plain_log_ticks(ax, [v for xs, _ in curves.values() for v in xs])
    ax.set_xlabel(LABELS.get(x, x) + (" (log)" if logx else ""))
    ax.set_ylabel(LABELS.get(metric, metric))
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(stem))


def _plain_log_ticks(ax, xs: Sequence[float]) -> None:
    """Log x axis labelled 0.05, 0.1, 0.2 (not mathtext, which is slow and reads poorly); minor labels at 2, 3 and
    5 times a power of ten when the data span less than 1.5 decades."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    pos = [float(v) for v in xs if v and v > 0]
    if pos and max(pos) / min(pos) < 10 ** 1.5:
        lead = lambda v: round(v / 10 ** math.floor(math.log10(v)), 6)
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if v > 0 and lead(v) in (2, 3, 5) else ""))
    else:
        ax.xaxis.set_minor_formatter(NullFormatter())


def plot_side_by_side(panels: Sequence[tuple[str, np.ndarray]], path: str | Path, title: str = "") -> Path:
    """The same frame from several sources in a row, each labelled; written as one PNG."""
    h, w = panels[0][1].shape[:2]
    scale = max(1.0, 256 / max(h, w))  # small frames are enlarged (nearest) so artefacts stay visible
    fig = _figure(len(panels) * w * scale / 100 + 0.2, h * scale / 100 + 0.8)
    for i, (label, img) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(img, interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, Path(path).with_suffix(""), ("png",))[0]


def plot_token_budget(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], stem: str | Path, *,
                      metric: str = "psnr") -> list[Path]:
    """Quality vs tokens per chunk, one line per 1D model."""
    return plot_rd(curves, stem, x="tokens per chunk (per tile)", metric=metric,
                   title="token budget", logx=True)


def plot_token_histogram(counts: Mapping[str, Sequence[int]], stem: str | Path) -> list[Path]:
    """How often rate control chose each token count (one per chunk, or per tile): grouped bars, one colour per
    series."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    values = sorted({int(v) for vs in counts.values() for v in vs})
    width = 0.8 / max(len(counts), 1)
    for i, (name, vs) in enumerate(counts.items()):
        heights = [list(vs).count(v) for v in values]
        ax.bar(np.arange(len(values)) + (i - (len(counts) - 1) / 2) * width, heights, width, label=name)
    ax.set_xticks(np.arange(len(values)), [str(v) for v in values])
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("tokens per unit")
    ax.set_ylabel("chunks (or tiles, where chosen per tile)")
    ax.set_title("token counts chosen by rate control")
    ax.legend(fontsize=8)
    return _save(fig, Path(stem))

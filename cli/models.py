"""`vitok models`: bundled and registered tokenizers with compression, parameters, FLOPs and weight locations."""
from __future__ import annotations

import click

from vitok.cli.common import emit, json_option

CLIP = (16, 128, 128)  # frames, height, width of the reference clip


def model_rows() -> list[dict]:
    """One dict per model: name, kind, tokens/channels per 16x128x128 clip, compression ratio, params, GFLOPs,
    weights (bundled directory or '-' for architecture only). Counted on the meta device: no weights touched."""
    import torch

    from vitok.config import read_config
    from vitok.registry import PRETRAINED_DIR, architecture, build, bundled_models, list_models
    from vitok.stats import model_stats

    bundled = set(bundled_models())
    rows = []
    for name in list_models():
        config = read_config(PRETRAINED_DIR / name / "config.json") if name in bundled else architecture(name)
        with torch.device("meta"):
            tok = build(config)
        stats = model_stats(tok, frames=CLIP[0], size=CLIP[1])
        values = stats["tokens"] * stats["channels"]
        rows.append({
            "name": name, "kind": config.kind, "tokens": stats["tokens"], "channels": stats["channels"],
            "compression": round(3 * CLIP[0] * CLIP[1] * CLIP[2] / values, 1),
            "params": stats["params"], "gflops": round(stats["gflops"], 2),
            "weights": str(PRETRAINED_DIR / name) if name in bundled else "-",
        })
    return rows


def format_table(rows: list[dict]) -> str:
    header = ["name", "kind", "tokens x ch / 16x128x128", "ratio", "params", "GFLOPs", "weights"]
    lines = [[r["name"], r["kind"], f"{r['tokens']} x {r['channels']}", f"{r['compression']:g}x",
              f"{r['params'] / 1e6:.2f}M", f"{r['gflops']:.1f}", r["weights"]] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *lines])


@click.command()
@json_option
def models(as_json: bool) -> None:
    """List bundled pretrained tokenizers and registered architectures.

    Compression is per 16x128x128 clip (tokens x channels, and the ratio of pixel values to latent values);
    GFLOPs count one encode + decode of that clip (torch.utils.flop_counter; 1 multiply-add = 2 FLOPs).
    """
    rows = model_rows()
    emit(rows, as_json, format_table(rows))

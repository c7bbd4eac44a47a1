"""``vitok compare INPUT``: one clip through vitok and classical codecs at matched PSNR, a table and a PNG."""
from __future__ import annotations

from pathlib import Path

import click

from vitok.cli.common import (check_output, count, device_option, emit, json_option, overwrite_option, resolve_device,
                              set_threads, threads_option)
from vitok.codecs.models import DEFAULT_MODEL
from vitok.codecs.refine import MAX_STEPS as MAX_REFINE_STEPS
from vitok.data.errors import VitokError


@click.command()
@click.argument("input")
@click.option("--model", default=None,
              help=f"vitok model name or directory [default: {DEFAULT_MODEL}, the default bundled model].")
@click.option("--codec", "codecs", multiple=True, default=("h264",), show_default=True,
              help="Classical codec(s) to match in PSNR by bisection over CRF (repeatable).")
@click.option("--frames", type=click.IntRange(min=1), default=17, show_default=True, help="Frames to code.")
@click.option("--refine", type=click.IntRange(min=0, max=MAX_REFINE_STEPS), default=0, show_default=True,
              metavar="STEPS", help="Refine vitok's tokens through its decoder first (as `vitok encode --refine`).")
@click.option("-o", "--output", default=None,
              help="Side-by-side PNG [default: <clip name>_compare.png in the current folder].")
@device_option
@threads_option
@overwrite_option
@json_option
def compare(input, model, codecs, frames, refine, output, device, threads, overwrite, as_json) -> None:
    """Encode INPUT (file or sample name) with vitok, then each codec at the CRF that matches vitok's PSNR."""
    from vitok.evaluation.clips import load_clip
    from vitok.evaluation.compare import compare_codecs, unmatched_note
    from vitok.evaluation.plots import plot_side_by_side
    from vitok.evaluation.report import format_table, op_label

    for c in codecs:
        if c.startswith("vitok:"):
            raise VitokError(f"--codec {c}: compare matches classical codecs (h264, h265, av1, vp9) by CRF; "
                             "give the vitok model with --model")
    if output is not None and Path(output).suffix != ".png":
        raise VitokError(f"output {output}: the side-by-side image is a PNG; give a name ending in .png")
    set_threads(threads)
    name, video, fps = load_clip(input, frames)
    out = check_output(output or f"{Path(name).name.replace(':', '_')}_compare.png", overwrite, inputs=[input])
    rows, shown, _ = compare_codecs(video, fps, model=model, codecs=codecs, device=resolve_device(device),
                                    model_op={"refine": refine} if refine else None)
    for r in rows:
        r["label"] = f"{r['codec']} {op_label(r['op'])}"
    labels = {r["codec"]: f"{r['codec']}\n{r['bytes']} B, {r['psnr']:.2f} dB" for r in rows}
    plot_side_by_side([(labels.get(k, k), v) for k, v in shown.items()], out,
                      title=f"{name}: middle frame at matched PSNR")
    t, h, w = video.shape[:3]
    text = f"{name}: {count(t, 'frame')} {w}x{h} @ {float(fps):.4g} fps\n" + format_table(rows, [
        ("label", "codec", ""), ("bytes", "bytes", "d"), ("bpp", "bpp", ".4f"), ("psnr", "PSNR", ".2f"),
        ("ssim", "SSIM", ".4f"), ("encode_s", "enc s", ".3f"), ("decode_s", "dec s", ".3f")])
    ratios = "".join(f"\nvitok bytes / {r['codec']} bytes at vitok's PSNR: {rows[0]['bytes'] / r['bytes_at_psnr']:.2f}x"
                     for r in rows[1:] if r["matched"])   # the codec's bytes between its two nearest CRFs
    emit({"clip": name, "frames": t, "width": w, "height": h, "fps": str(fps), "rows": rows, "image": str(out)},
         as_json, text + unmatched_note(rows) + ratios + f"\nwrote {out}")

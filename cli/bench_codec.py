"""``vitok bench codec``: encode/decode fps and peak memory of codecs on one clip, x264 medium as reference."""
from __future__ import annotations

import click

from vitok.cli.common import count, emit, json_option, quiet_option
from vitok.data.errors import VitokError


@click.command("codec")
@click.option("--codec", "codecs", multiple=True, help="Codec to time (repeatable); default: every bundled vitok "
                                                       "model. x264 medium is always timed as the reference line.")
@click.option("--clip", default="carphone", show_default=True,
              help="Video file, folder (its first video file), or sample name / eval segment id (its first clip).")
@click.option("--frames", type=click.IntRange(min=1), default=33, show_default=True, help="Frames to code.")
@click.option("--op", "ops", multiple=True, metavar="CODEC:K=V[,K=V]", help="Knobs for a codec (one per codec).")
@click.option("--repeat", type=click.IntRange(min=1), default=3, show_default=True, help="Timed rounds (best kept).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads for torch and for the classical encoders and decoders alike (default: torch's default, "
                   "the physical cores, and the codecs' own choice).")
@click.option("--isolate/--same-process", default=True, show_default=True,
              help="Run each codec in a fresh process, so its memory is not hidden by what an earlier codec freed.")
@quiet_option
@json_option
def bench_codec(codecs, clip, frames, ops, repeat, threads, isolate, quiet, as_json) -> None:
    """Encode and decode frames per second, and the peak memory of a first encode and decode, for each codec on the
    same clip, in one run."""
    from vitok.cli.rd import parse_ops
    from vitok.evaluation.bench import bench_codecs
    from vitok.evaluation.clips import load_clip
    from vitok.evaluation.report import format_table, op_label

    if not codecs:
        from vitok.codecs.neural import bundled_codec_names

        codecs = bundled_codec_names()
    points = parse_ops(ops, codecs)
    several = [name for name, ps in points.items() if len(ps) > 1]
    if several:   # one row per codec: a second point was dropped unsaid
        raise VitokError(f"--op: one operating point per codec here, {several[0]} has {len(points[several[0]])} "
                         f"(`vitok rd` sweeps several)")
    parsed = {name: ps[0] for name, ps in points.items()}
    name, video, fps = load_clip(clip, frames)
    rows = bench_codecs(list(codecs), video, fps, parsed, repeat=repeat, progress=not quiet, isolate=isolate,
                        threads=threads)
    for r in rows:
        r["label"] = f"{r['codec']} {op_label(r['op'])}" + (" (reference)" if r["reference"] else "")
    t, h, w = video.shape[:3]
    coders = f"classical codec threads {threads if threads else 'auto'}"
    text = f"{name}: {count(t, 'frame')} {w}x{h}; torch threads {rows[0]['threads']}, {coders}\n" + format_table(rows, [
        ("label", "codec", ""), ("encode_fps", "enc fps", ".1f"), ("decode_fps", "dec fps", ".1f"),
        ("load_peak_mb", "load MiB", ".0f"), ("encode_peak_mb", "enc MiB", ".0f"), ("decode_peak_mb", "dec MiB", ".0f"),
        ("bytes", "bytes", "d"),
        ("bpp", "bpp", ".3f"), ("psnr", "PSNR", ".2f")])
    emit({"clip": name, "rows": rows}, as_json, text)

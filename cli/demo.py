"""``vitok demo``: the main job on a fresh machine, offline. A bundled sample clip goes through the default bundled
model and through h264 at the same PSNR; the decoded video, the .vtok file and a side-by-side PNG land in a folder."""
from __future__ import annotations

import click

from vitok.cli.common import (check_output, count, emit, json_option, overwrite_option, quiet_option, set_threads,
                              threads_option)

DEMO_CLIP = "carphone"  # 176x144: small enough for a fast CPU demo, real camera content
DEMO_CLIPS = ["carphone", "bikes", "bigbuckbunny"]   # the sample clips it may code


@click.command()
@click.option("-o", "--output", default="vitok-demo", show_default=True, help="Folder for the demo's outputs.")
@click.option("--model", default=None, help="vitok model name or directory (default: the default bundled model).")
@click.option("--clip", default=DEMO_CLIP, show_default=True,
              type=click.Choice(DEMO_CLIPS), help="Bundled sample clip (its eval split).")
@click.option("--frames", type=click.IntRange(min=1), default=34, show_default=True, help="Frames to code.")
@overwrite_option
@quiet_option
@json_option
@threads_option
def demo(output, model, clip, frames, overwrite, quiet, as_json, threads) -> None:
    """Encode and decode a bundled sample clip with a bundled model, next to h264 at matched PSNR."""
    from vitok.data.atomic import atomic_dir
    from vitok.data.io import write_video
    from vitok.data.samples import load_sample, sample_info
    from vitok.evaluation.compare import compare_codecs, unmatched_note
    from vitok.evaluation.plots import plot_side_by_side
    from vitok.evaluation.report import format_table, op_label

    set_threads(threads)
    # an earlier demo's files (of any clip) are replaced; any other file, a .vtok of the user's say, is refused
    demo_files = [f"{c}{end}" for c in DEMO_CLIPS for end in (".vtok", "_vitok.mkv", "_h264.mp4")]
    out = check_output(output, overwrite, folder_of=(*demo_files, "side_by_side.png"))
    video = load_sample(clip, "eval")[:frames]
    info = sample_info(clip)
    fps, sar = info.fps, info.sample_aspect_ratio
    if not quiet:
        click.echo(f"demo: {clip} (held-out frames), {count(len(video), 'frame')} {video.shape[2]}x{video.shape[1]}; "
                   "encoding with vitok, then h264 at the same PSNR ...", err=True)
    rows, shown, streams = compare_codecs(video, fps, model=model, codecs=("h264",))
    neural = rows[0]["codec"]
    with atomic_dir(out) as tmp:
        data, decoded = streams[neural]
        (tmp / f"{clip}.vtok").write_bytes(data)
        write_video(tmp / f"{clip}_vitok.mkv", decoded, fps, codec="ffv1")
        (tmp / f"{clip}_h264.mp4").write_bytes(streams["h264"][0])
        labels = {r["codec"]: f"{r['codec']}\n{r['bytes']} B, {r['psnr']:.2f} dB" for r in rows}
        plot_side_by_side([(labels.get(k, k), v) for k, v in shown.items()], tmp / "side_by_side.png",
                          title=f"{clip}: middle frame at matched PSNR")
    for r in rows:
        r["label"] = f"{r['codec']} {op_label(r['op'])}"
    h264 = rows[1]
    ratio = rows[0]["bytes"] / max(h264["bytes_at_psnr"] or h264["bytes"], 1)   # at vitok's PSNR when matched
    text = format_table(rows, [("label", "codec", ""), ("bytes", "bytes", "d"), ("bpp", "bpp", ".4f"),
                               ("psnr", "PSNR", ".2f"), ("ssim", "SSIM", ".4f"), ("encode_s", "enc s", ".2f"),
                               ("decode_s", "dec s", ".2f")])
    matched = (f"at vitok's PSNR ({h264['bytes_at_psnr']:.0f}, between its two nearest CRFs)" if h264["matched"]
               else "(PSNR not matched)")
    text += f"{unmatched_note(rows)}\nvitok bytes / h264 bytes {matched}: {ratio:.2f}x\nwrote {out}/: {clip}.vtok, " \
            f"{clip}_vitok.mkv (decoded, lossless ffv1), {clip}_h264.mp4, side_by_side.png"
    if sar != 1:   # the demo codes arrays: its outputs hold no aspect (vitok encode/decode of the file keep it)
        text += (f"\nnote: {clip}'s pixels are {sar.numerator}:{sar.denominator}; the demo's outputs show them square "
                 f"(`vitok encode` and `vitok decode` of a video file keep the aspect)")
    emit({"clip": clip, "frames": len(video), "rows": rows, "bytes_ratio_vs_h264": ratio, "output": str(out),
          "source_sample_aspect_ratio": str(sar)}, as_json, text)

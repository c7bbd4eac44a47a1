"""``vitok encode``, ``vitok decode``, ``vitok info``: video files <-> ``.vtok``, and what a file holds."""
from __future__ import annotations

import itertools
import re
import warnings
from fractions import Fraction
from pathlib import Path

import click

from vitok.cli.common import (check_output, count, device_option, emit, json_option, overwrite_option, progress,
                              quiet_option, resolve_device, set_threads, threads_option)
from vitok.codecs.models import DEFAULT_MODEL
from vitok.codecs.refine import MAX_STEPS as MAX_REFINE_STEPS
from vitok.data.errors import VitokError


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    m = re.fullmatch(r"(\d+)[xX](\d+)", value.strip())
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise click.BadParameter(f"expected WxH like 256x256, got {value!r}")
    return int(m[1]), int(m[2])


def _fps(ctx: click.Context, param: click.Parameter, value: str | None) -> Fraction | None:
    if value is None:
        return None
    try:
        fps = Fraction(value.strip()).limit_denominator(1 << 20)
    except (ValueError, ZeroDivisionError):
        fps = Fraction(0)
    if fps <= 0:
        raise click.BadParameter(f"expected a positive frame rate like 25 or 30000/1001, got {value!r}")
    return fps


def _check_input(path: str) -> None:
    from vitok.codecs.files import is_frames_source

    if not is_frames_source(path) and not Path(path).exists():
        raise VitokError(f"input not found: {path}")


@click.command()
@click.argument("input")
@click.option("-o", "--output", required=True, help="Output .vtok file.")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Bundled model name or model directory.")
@click.option("--step", type=float, default=None, help="Quantization step (in latent std units; larger = smaller).")
@click.option("--tokens", type=click.IntRange(min=1), default=None, help="1D models: tokens per chunk unit.")
@click.option("--bytes", "target_bytes", type=click.IntRange(min=1), default=None,
              help="Target file size in bytes (rate control picks tokens/step per chunk; for a 1D model whose frames "
                   "span several tiles, with --per-tile, per tile).")
@click.option("--psnr", type=float, default=None, help="Target PSNR (dB) per chunk: the cheapest setting reaching it.")
@click.option("--per-tile/--per-chunk", "per_tile", default=True, show_default=True,
              help="With --bytes/--psnr, a 1D model whose frames span several tiles picks a token count per tile "
                   "(else one per chunk).")
@click.option("--overlap", type=int, default=None, metavar="PIXELS",
              help="Frames larger than one tile: overlap tiles by this many pixels (a multiple of the model's "
                   "stride, 0 for none) instead of the model's; less overlap codes fewer tokens, with seams more "
                   "likely. Decoders follow the file.")
@click.option("--refine", type=click.IntRange(min=0, max=MAX_REFINE_STEPS), default=0, show_default=True,
              metavar="STEPS",
              help="Refine each chunk's tokens by STEPS Adam steps through the decoder before quantizing: better "
                   "pixels for a few more bytes, at STEPS decoder passes and their gradients per chunk (20 is a "
                   "good start; the 1D model gains, the grid and CNN models do not). The file decodes as any other.")
@click.option("--frames", "num_frames", type=click.IntRange(min=1), default=None, help="Encode at most N frames.")
@click.option("--start", type=click.IntRange(min=0), default=0, show_default=True, help="First frame to encode.")
@click.option("--size", callback=_size, default=None,
              help="Resize (stretch) frames to WxH first; the .vtok header keeps the shown shape as a pixel aspect.")
@click.option("--fps", callback=_fps, default=None, help="Frame rate to record (e.g. 25 or 30000/1001); default: "
              "the input's (25 for frame folders).")
@overwrite_option
@quiet_option
@json_option
@device_option
@threads_option
def encode(input, output, model, step, tokens, target_bytes, psnr, per_tile, overlap, refine, num_frames, start, size,
           fps, overwrite, quiet, as_json, device, threads) -> None:
    """Encode INPUT (a video file, or a folder / glob of PNG/JPG frames) to a .vtok file."""
    from vitok.codecs.files import encode_file
    from vitok.codecs.neural import VitokCodec

    if sum(v is not None for v in (tokens, target_bytes, psnr)) > 1:
        raise click.UsageError("give at most one of --tokens, --bytes, --psnr")
    _check_input(input)
    if Path(output).suffix.lower() != ".vtok":  # a .vtok named .mp4 would look like a video no player opens
        raise VitokError(f"{output}: the output of encode is a .vtok file (decode makes videos)")
    out = check_output(output, overwrite, inputs=[input])
    set_threads(threads)
    codec = VitokCodec(model, device=resolve_device(device)).load()  # model errors before any video is read
    if overlap is not None:
        codec = codec.with_overlap(overlap)
    codec = codec.with_refinement(refine)
    with progress(desc="encode", quiet=quiet, unit="frame", total=_total(input, start, num_frames)) as bar:
        stats = encode_file(codec, input, out, start=start, num_frames=num_frames, size=size, fps=fps,
                            on_chunk=bar.update, step=step, tokens=tokens, bytes=target_bytes, psnr=psnr,
                            adapt_units=per_tile)
    result = {"output": str(out), "model": codec.model_ref, **stats.to_dict()}
    tok = "" if stats.tokens[0] is None else f", tokens/chunk {_runs(stats.tokens)}"
    text = (f"{out}: {stats.frames} frames {stats.width}x{stats.height} @ {float(stats.fps):.4g} fps -> "
            f"{stats.file_bytes} bytes ({stats.bpp:.4f} bpp, {stats.kbps:.1f} kbps), {count(stats.chunks, 'chunk')}"
            f"{tok}; entropy-coded {stats.entropy_bytes} bytes (model estimate {stats.estimated_bytes:.0f})")
    reached = [] if psnr is None else [p for p in stats.chunk_psnr if p is not None]
    if reached:   # what the target gave, chunk by chunk
        text += (f"\nPSNR {min(reached):.2f} to {max(reached):.2f} dB over {count(len(reached), 'chunk')} "
                 f"(target {psnr:g})")
    short = [p for p in reached if p < psnr]
    if psnr is not None:   # a script reads whether the target held from the JSON, a person from the warning
        result.update(psnr_target=psnr, psnr_met=not short)
    if short:
        warnings.warn(f"{len(short)} of {stats.chunks} chunks could not reach {psnr:g} dB even at the finest "
                      f"setting (lowest {min(short):.2f} dB); the file holds the closest this model gets", stacklevel=1)
    emit(result, as_json, text)


def _total(path: str, start: int, num_frames: int | None) -> int | None:
    """Frames the encode will see, for the progress bar (None when the file does not say)."""
    from vitok.codecs.files import is_frames_source
    from vitok.data.io import frame_files, probe_header

    n = len(frame_files(path)) if is_frames_source(path) else probe_header(path)[2]   # decodes no frame
    n = None if n is None else max(n - start, 0)
    return num_frames if n is None else min(n, num_frames or n)


def _tokens_text(tokens: int | list[int] | None) -> str:
    """A chunk's tokens per unit: 'all' (grid models), one count, or one per tile joined by '/'."""
    return "/".join(map(str, tokens)) if isinstance(tokens, (list, tuple)) else str(tokens or "all")


def _runs(values: list) -> str:
    """[16, 16, 4] -> '16x2 4', [(64, 8), (64, 8)] -> '(64/8)x2' (compact per-chunk lists; / between tiles, in
    brackets when repeated, so the count does not read as the last tile's)."""
    parts = []
    for value, run in itertools.groupby(values):
        n, text = len(list(run)), _tokens_text(value) if isinstance(value, tuple) else str(value)
        parts.append(text if n == 1 else f"({text})x{n}" if isinstance(value, tuple) else f"{text}x{n}")
    return " ".join(parts)


@click.command()
@click.argument("input")
@click.option("-o", "--output", required=True, help="Output: .mp4/.mkv/.mov video, .npy array, or a folder for PNGs.")
@click.option("--model", default=None, help="Model directory or bundled name (default: the one the file names).")
@click.option("--codec", "video_codec", type=click.Choice(["ffv1", "h264"]), default=None,
              help="Video codec for video output (default: ffv1 lossless for .mkv, h264 for .mp4/.mov).")
@click.option("--crf", type=click.IntRange(0, 51), default=18, show_default=True, help="CRF for h264 output.")
@click.option("--start", type=click.IntRange(min=0), default=0, show_default=True,
              help="First frame to decode (only the chunks holding the frames asked for go through the model).")
@click.option("--frames", "num_frames", type=click.IntRange(min=1), default=None, help="Decode at most N frames.")
@overwrite_option
@quiet_option
@json_option
@device_option
@threads_option
def decode(input, output, model, video_codec, crf, start, num_frames, overwrite, quiet, as_json, device,
           threads) -> None:
    """Decode a .vtok file to a video, a folder of PNGs or a .npy array."""
    from vitok.codecs.container import VtokReader, check_vtok_path
    from vitok.codecs.errors import BitstreamError
    from vitok.codecs.files import decode_file, decode_output_kind
    from vitok.codecs.neural import VitokCodec, frame_count, model_for_stream
    from vitok.data.io import check_frame_rate

    if not Path(input).exists():
        raise VitokError(f"input not found: {input}")
    check_vtok_path(Path(input))   # a folder or a pipe: said before the output is weighed
    if video_codec is None:
        video_codec = "ffv1" if Path(output).suffix.lower() == ".mkv" else "h264"
    kind = decode_output_kind(output, video_codec)   # a name decode cannot write: before -y is asked for
    with VtokReader(input) as r:
        header = r.header
    total, rate = frame_count(header.frames, start, num_frames), header.fps   # a start past the end: said first
    if kind == "video":
        check_frame_rate(output, rate)   # a rate the container cannot time: said before -y too
    out = check_output(output, overwrite, inputs=[input], folder_of=("frame_*.png",) if kind == "frames" else None)
    set_threads(threads)
    dev = resolve_device(device)
    codec = VitokCodec(model, device=dev) if model else model_for_stream(input, device=dev)
    if not model:   # a bundled model picked by the name in the file: a retrained or recalibrated copy differs
        try:
            codec.for_stream(header).check_model(header)
        except BitstreamError as e:
            raise BitstreamError(f"{e} (the bundled {codec.model_ref} was picked by the name in the file; pass "
                                 "--model DIR for the model it was encoded with)") from None
    with progress(desc="decode", quiet=quiet, unit="frame", total=total) as bar:
        result = decode_file(codec, input, out, video_codec=video_codec, crf=crf, start=start, frames=num_frames,
                             on_chunk=bar.update)
    result["model"] = codec.model_ref
    first = f" from frame {start}" if start else ""
    emit(result, as_json, f"{out}: {result['frames']} frames{first} {result['width']}x{result['height']} @ "
                          f"{result['fps']} fps (model {codec.model_ref})")


def _aspect_text(sar: str) -> str:
    """' (pixel aspect 128:117)' for non-square pixels, else nothing."""
    return "" if sar == "1" else f" (pixel aspect {sar.replace('/', ':')})"


SHOWN_CHUNKS = 10   # `vitok info` lists this many chunks at each end of a longer file


def _chunk_rows(chunks: list[dict]) -> list[dict | None]:
    """The chunks `vitok info` lists: all of a short file, else the first and last ``SHOWN_CHUNKS`` around a gap
    (None)."""
    if len(chunks) <= 2 * SHOWN_CHUNKS + 1:
        return chunks
    return [*chunks[:SHOWN_CHUNKS], None, *chunks[-SHOWN_CHUNKS:]]


def _tiles_text(meta: dict) -> str:
    """', tiles of at most 256 px overlapping by 8 px' when the header records a tiling, else nothing."""
    from vitok.config import MAX_TILE_OVERLAP

    t = meta.get("tiling")
    if not isinstance(t, dict) or type(t.get("tile")) is not int or type(t.get("overlap")) not in (int, float) \
            or not 0 <= t["overlap"] <= MAX_TILE_OVERLAP:   # NaN fails too
        return ""   # no record (one tile), or one the decoder will name as bad
    pixels = t["tile"] * t["overlap"]   # the model's stride rounds it; bundled models' overlaps are whole pixels
    shown = f"{pixels:g} px" if pixels == int(pixels) else f"{t['overlap']:g} of a tile"
    return f", tiles of at most {t['tile']} px overlapping by {shown}"


def _head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(4)


@click.command()
@click.argument("file")
@json_option
def info(file, as_json) -> None:
    """Show what FILE holds: a .vtok's header and chunks, or a video's stream properties."""
    from vitok.codecs.container import MAGIC

    path = Path(file)
    if not path.exists():
        raise VitokError(f"input not found: {file}")
    if path.suffix.lower() == ".vtok" or (path.is_file() and _head(path) == MAGIC):
        from vitok.codecs.files import describe_vtok

        d = describe_vtok(path)
        meta = d["meta"]
        lines = [f"{file}: vitok stream v{d['format_version']}, {d['file_bytes']} bytes",
                 f"  model {meta.get('model')} ({meta.get('kind')}, weights {meta.get('weights')}), "
                 f"tables {meta.get('tables')}, step {meta.get('step') or 'chosen per chunk'}",
                 f"  {d['frames']} frames {d['width']}x{d['height']}{_aspect_text(d['sample_aspect_ratio'])} @ "
                 f"{d['fps']} fps, {count(d['chunks'], 'chunk')} of {d['chunk_frames']} frames{_tiles_text(meta)}",
                 f"  {d['bpp']:.4f} bpp, {d['kbps']:.1f} kbps, header {d['header_bytes']} bytes, payload "
                 f"{d['payload_bytes']} bytes",
                 "  chunk  frames  bytes  tokens  step"]
        shown = _chunk_rows(d["chunk_list"])
        lines += [f"  {c['index']:>5}  {c['frames']:>6}  {c['bytes']:>5}  {_tokens_text(c['tokens']):>6}  {c['step']:g}"
                  + (" +" if c["continues"] else "")
                  if c else f"  ... {len(d['chunk_list']) - len(shown) + 1} more chunks (--json lists every chunk)"
                  for c in shown]
        if any(c["continues"] for c in d["chunk_list"]):
            lines.append("  +: its entropy contexts continue from the chunk before")
        emit(d, as_json, "\n".join(lines))
        return
    from vitok.data.io import probe_video

    v = probe_video(path)
    d = {"file": str(path), "width": v.width, "height": v.height, "fps": str(v.fps), "frames": v.num_frames,
         "duration": v.duration, "codec": v.codec, "pix_fmt": v.pix_fmt, "rotation": v.rotation,
         "mirrored": v.mirrored, "hdr": v.hdr, "is_image": v.is_image,
         "sample_aspect_ratio": str(v.sample_aspect_ratio),
         "file_bytes": path.stat().st_size if path.is_file() else None}   # a pipe has no size to tell
    if v.duration and d["file_bytes"] is not None:
        d["kbps"] = round(8 * d["file_bytes"] / v.duration / 1000, 3)
    size = "" if d["file_bytes"] is None else f", {d['file_bytes']} bytes"
    text = (f"{file}: {'image' if v.is_image else 'video'} {v.codec} {v.pix_fmt} {v.width}x{v.height}"
            f"{_aspect_text(d['sample_aspect_ratio'])} @ "
            f"{float(v.fps):.4g} fps, {'?' if v.num_frames is None else v.num_frames} frames, "
            f"{'?' if v.duration is None else f'{v.duration:.2f}'} s{size}"
            + (f", {d['kbps']:.1f} kbps" if "kbps" in d else "") + (f", rotation {v.rotation}" if v.rotation else "")
            + (", mirrored" if v.mirrored else "") + (f", {v.hdr} HDR" if v.hdr else ""))
    emit(d, as_json, text)

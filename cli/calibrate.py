"""``vitok calibrate MODEL_DIR``: fit a trained model's entropy tables, so that it codes ``.vtok`` files."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import click

from vitok.cli.common import check_output, emit, json_option, overwrite_option


def _is_sample_file(source: str) -> bool:
    """Whether ``source`` is one of the sample clips' files, whose evaluation segments rd and bench measure on."""
    from vitok.data.samples import SAMPLE_CLIPS, sample_path

    path = Path(source)
    return path.is_file() and any(os.path.samefile(path, sample_path(name)) for name in SAMPLE_CLIPS)


@click.command()
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--clip", "clips", multiple=True,
              help="Video file or folder of videos to calibrate on (repeatable) [default: the sample clips' "
                   "training segments]. Keep the clips you evaluate on out of it.")
@click.option("--frames", type=click.IntRange(min=1), default=None,
              help="At most this many frames of each --clip video (the default segments are one chunk each).")
@click.option("--context-radius", type=click.IntRange(0, 64), default=None,
              help="Code each value with the table of the value one step back (grid models: one latent frame; 1D "
                   "models: one token), clipped to this radius [default: the radius of the tables replaced; without "
                   "them 5 for grid models, 0 for 1D models]; 0: none (with --channel-radius 0 too: factorized "
                   "tables, which decode in one call).")
@click.option("--spatial-radius", type=click.IntRange(0, 16), default=None,
              help="Grid models: the table also depends on the mean of the value's left and upper neighbours in its "
                   "latent frame, clipped to this radius [default: the radius of the tables replaced unless "
                   "--context-radius is given; else 6 with a context radius, 0 without]; 0: none.")
@click.option("--channel-radius", type=click.IntRange(0, 4), default=None,
              help="1D models: the table also depends on three earlier channels of the value's token (picked per "
                   "channel on the clips), each clipped to this radius, instead of a temporal context [default: the "
                   "radius of the tables replaced unless --context-radius is given; else 2 for 1D models without a "
                   "context radius, 0 otherwise]; 0: none.")
@click.option("--iters", type=click.IntRange(min=1), default=None,
              help="Optimisation steps of the factorized tables' entropy bottleneck (--context-radius 0 "
                   "--channel-radius 0) [default: 300].")
@click.option("--threads", type=int, default=None, hidden=True)   # before calibration ran on one thread: ignored
@overwrite_option
@json_option
def calibrate(model_dir: str, clips: tuple[str, ...], frames: int | None, context_radius: int | None,
              spatial_radius: int | None, channel_radius: int | None, iters: int, threads: int | None,
              overwrite: bool, as_json: bool) -> None:
    """Fit MODEL_DIR's entropy tables (entropy.safetensors beside its config.json), e.g. for a model that
    `vitok train` exported to RUN/model; then `vitok encode --model MODEL_DIR` codes with it. It runs on one thread,
    so that a machine fits the same tables every time (a .vtok names the tables it was coded with)."""
    from vitok.codecs.entropy import FILENAME, calibrate_model_dir, kept_name
    from vitok.data.errors import VitokError

    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        raise VitokError(f"{folder}: not a model directory (no config.json)")
    out = check_output(folder / FILENAME, overwrite)
    if threads is not None:
        warnings.warn("--threads is ignored: calibration runs on one thread, so that it fits the same tables every "
                      "time", stacklevel=1)
    videos = None
    if frames is not None and not clips:
        raise VitokError("--frames limits --clip videos; without --clip the sample clips' training segments are used "
                         "whole (one chunk each)")
    if clips:
        from vitok.evaluation.clips import resolve_clips

        resolved = resolve_clips(clips)
        held_out = [c.name for c in resolved if c.source.startswith("sample:")]
        if held_out:   # a sample name or `eval` means the evaluation segments, which tables must not be fitted on
            raise VitokError(f"--clip {held_out[0]}: sample names, segment ids and 'eval' are the evaluation segments "
                             f"that rd/bench measure on; give video files, or no --clip for the samples' training "
                             f"segments")
        sample_files = [c.source for c in resolved if _is_sample_file(c.source)]
        if sample_files:   # the same frames by their path
            raise VitokError(f"--clip {sample_files[0]}: a sample clip's file, which holds the evaluation segments "
                             f"that rd/bench measure on; give other videos, or no --clip for the samples' training "
                             f"segments")
        videos = [clip.load(frames)[0] for clip in resolved]
    kept_before = set(folder.glob(kept_name("*")))
    tables = calibrate_model_dir(folder, videos, iters=iters or 300, context_radius=context_radius,
                                 spatial_radius=spatial_radius, channel_radius=channel_radius)
    kept = sorted(p.name for p in set(folder.glob(kept_name("*"))) - kept_before)
    if iters is not None and tables.contexts > 1:
        warnings.warn("--iters is ignored: these tables are counted per context, not optimised (--context-radius 0 "
                      "--channel-radius 0 fits factorized tables)", stacklevel=1)
    report = tables.meta["calibration"]
    inter = tables.predicts and "predicted_bits" in next(iter(report["bits_per_symbol"].values()))
    rows = [f"{step:>6}  {r['real_bits']:.3f}" + (f"  {r['alone_bits']:>10.3f}  {r['predicted_bits']:.3f}"
                                                  if inter else "") for step, r in report["bits_per_symbol"].items()]
    offset = f"an offset per token position ({tables.unit_tokens} x {tables.channels})" if tables.unit_tokens \
        else f"an offset per channel ({tables.channels})"
    radii = f" (context radius {tables.context_radius}, spatial radius {tables.spatial_radius})" \
        if tables.context_radius else f" (channel radius {tables.channel_radius})" if tables.channel_radius else ""
    model = f"{offset}, {tables.contexts} table(s) per channel and step{radii}"
    if tables.predicts:
        model += f", {tables.inter_contexts} inter table(s) per channel and step for predicted tokens"
    text = "\n".join([f"wrote {out}: tables {tables.table_id}, {report['tokens']} calibration tokens, {model}",
                      *(f"kept the tables replaced as {name}: streams coded with them still decode" for name in kept),
                      "  step  bits/value" + ("  (chunks after the first: alone, as coded)" if inter else ""), *rows])
    emit({"path": str(out), "table_id": tables.table_id, "unit_tokens": tables.unit_tokens,
          "channels": tables.channels, "contexts": tables.contexts, "context_radius": tables.context_radius,
          "spatial_radius": tables.spatial_radius, "channel_radius": tables.channel_radius,
          "channel_parents": tables.channel_parents and [list(ps) for ps in tables.channel_parents], "kept": kept,
          **report},
         as_json, text)

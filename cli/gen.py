"""``vitok gen``: train the tiny rectified-flow generator on latent shards, sample it through the tokenizer."""
from __future__ import annotations

from pathlib import Path

import click

from vitok.cli.common import check_output, count, device_option, emit, json_option, overwrite_option, progress, \
    quiet_option, resolve_device, set_threads, threads_option
from vitok.data.errors import VitokError

SAMPLE_SUFFIXES = (".mp4", ".mkv", ".mov", ".m4v", ".avi", ".ts")   # containers that take gen sample's h264 video


@click.group()
def gen() -> None:
    """Generator-readiness check: a tiny DiT rectified-flow model trained on extracted latents."""


@gen.command()
@click.argument("shards_dir", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", default="generator", show_default=True, type=click.Path(file_okay=False),
              help="Folder for model.safetensors, config.json and log.jsonl (an earlier run's is replaced whole "
                   "with -y; a folder holding anything else is refused).")
@click.option("--steps", type=click.IntRange(min=1), default=300, show_default=True, help="Optimizer steps.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Clips per step.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
              help="AdamW learning rate.")
@click.option("--width", type=click.IntRange(min=8), default=64, show_default=True, help="Transformer width.")
@click.option("--depth", type=click.IntRange(min=1), default=4, show_default=True, help="Transformer blocks.")
@click.option("--heads", type=click.IntRange(min=1), default=4, show_default=True,
              help="Attention heads (must divide --width).")
@click.option("--cond", type=click.Choice(["none", "clip"]), default="none", show_default=True,
              help="Condition on nothing or on the clip's index in the set.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the weights, the batches and the flow noise.")
@click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True,
              help="Steps per logged mean loss (log.jsonl and stderr).")
@device_option
@threads_option
@overwrite_option
@quiet_option
@json_option
def train(shards_dir: str, out_dir: str, steps: int, batch_size: int, lr: float, width: int, depth: int, heads: int,
          cond: str, seed: int, log_every: int, device: str, threads: int | None, overwrite: bool, quiet: bool,
          as_json: bool) -> None:
    """Train on SHARDS_DIR (normalized with the manifest's per-channel mean/std); the loss goes to log.jsonl."""
    from pathlib import Path

    from vitok.evaluation.generation import CONFIG_NAME, LOG_NAME, WEIGHTS_NAME, train_generator

    set_threads(threads)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):   # replaced whole: only an earlier run's
        check_output(out, overwrite, inputs=(shards_dir,), folder_of=(CONFIG_NAME, WEIGHTS_NAME, LOG_NAME))

    def on_log(entry: dict) -> None:
        if not quiet:
            click.echo(f"step {entry['step']:5d}  loss {entry['loss']:.4f}", err=True)

    s = train_generator(shards_dir, out_dir, steps=steps, batch_size=batch_size, lr=lr, width=width, depth=depth,
                        heads=heads, cond=cond, seed=seed, log_every=log_every, device=resolve_device(device),
                        on_log=on_log)
    # one log window (steps <= --log-every): its mean is the only figure, not a first and a last one
    loss = f"loss {s['first_loss']:.4f} -> {s['final_loss']:.4f}" if s["log_windows"] > 1 else \
        f"mean loss {s['final_loss']:.4f} over the {s['steps']} steps (one --log-every window)"
    emit(s, as_json, f"trained {s['params']:,}-parameter generator on {count(s['clips'], 'clip')} for "
                     f"{count(s['steps'], 'step')} ({s['seconds']:.1f}s): {loss}; saved to {s['out']}")


@gen.command()
@click.option("--gen", "gen_dir", required=True, type=click.Path(file_okay=False),
              help="Folder written by `gen train`.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Video file (e.g. out.mp4).")
@click.option("--num", type=click.IntRange(min=1), default=4, show_default=True, help="Samples, tiled in one video.")
@click.option("--steps", type=click.IntRange(min=1), default=32, show_default=True, help="Euler steps.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampled noise.")
@click.option("--fps", type=click.IntRange(min=1), default=None,
              help="Frame rate of the video [default: that of the clips the generator learned from, else 8].")
@click.option("--model", default=None, help="Tokenizer to decode with [default: the one named in the manifest].")
@device_option
@threads_option
@overwrite_option
@quiet_option
@json_option
def sample(gen_dir: str, output: str, num: int, steps: int, seed: int, fps: int | None, model: str | None, device: str,
           threads: int | None, overwrite: bool, quiet: bool, as_json: bool) -> None:
    """Sample latents, decode them through the frozen tokenizer, write the samples tiled into one video."""
    from fractions import Fraction

    from vitok.data.convert import tensor_to_frames
    from vitok.data.io import check_frame_rate, write_video
    from vitok.evaluation.generation import sample_videos, template_fps, tile_videos

    set_threads(threads)
    if Path(output).suffix.lower() not in SAMPLE_SUFFIXES:   # before the sampling, and before asking for -y
        raise VitokError(f"{output}: gen sample writes an h264 video; name it {', '.join(SAMPLE_SUFFIXES)}")
    if fps:
        check_frame_rate(output, fps)   # before the sampling (the template's own rate is a real clip's)
    check_output(output, overwrite)
    with progress(total=steps, desc="sampling", quiet=quiet, unit="step") as bar:
        videos = sample_videos(gen_dir, num=num, steps=steps, seed=seed, model=model, device=resolve_device(device),
                               on_step=lambda: bar.update(1))
    frames = tensor_to_frames(tile_videos(videos))
    write_video(output, frames, Fraction(fps) if fps else template_fps(gen_dir) or Fraction(8))
    t, h, w = frames.shape[:3]
    emit({"output": output, "num": num, "frames": t, "height": h, "width": w, "steps": steps}, as_json,
         f"wrote {num} samples ({t} frames, {w}x{h} mosaic) to {output}")

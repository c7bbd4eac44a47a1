"""``vitok latents``: extract latent shards from a folder of videos (alone or under torchrun), print their stats."""
from __future__ import annotations


import click

from vitok.cli.common import count, device_option, emit, json_option, overwrite_option, quiet_option, set_threads, \
    threads_option, torchrun_rank


@click.group()
def latents() -> None:
    """Latent shards for generator training: `extract` a folder of videos, show `stats`, `verify` the files."""


@latents.command()
@click.argument("input_dir", type=click.Path(file_okay=False))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Shards folder (created; a rerun resumes, skipping finished shards).")
@click.option("--model", required=True,
              help="Tokenizer: a bundled name or a folder with config.json + model.safetensors.")
@click.option("--frames", type=click.IntRange(min=1), default=None,
              help="Frames per clip [default: the model's clip length].")
@click.option("--size", default=None,
              help="WxH (or S for SxS): resize to cover it keeping the aspect, then center-crop (unlike `vitok "
                   "encode --size`, which stretches) [default: native size].")
@click.option("--tokens", type=click.IntRange(min=1), default=None, help="Tokens per unit for 1D models.")
@click.option("--clips-per-video", type=click.IntRange(min=1), default=1, show_default=True,
              help="Consecutive clips taken from the start of each video.")
@click.option("--shard-size", type=click.IntRange(min=1), default=64, show_default=True, help="Videos per shard.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Clips per encode call.")
@device_option
@threads_option
@overwrite_option
@quiet_option
@json_option
def extract(input_dir: str, out_dir: str, model: str, frames: int | None, size: str | None, tokens: int | None,
            clips_per_video: int, shard_size: int, batch_size: int, device: str, threads: int | None,
            overwrite: bool, quiet: bool, as_json: bool) -> None:
    """Encode every video of INPUT_DIR into safetensors shards + manifest.json (per-channel stats included).

    Unreadable files are listed as skipped (an error only when no file can be read). Scale out with torchrun, e.g.
    `torchrun --nproc_per_node=4 --no-python vitok latents extract ...`: shard i goes to rank i % world size.
    -y replaces shards left by a different extraction (other model, options or input files) instead of refusing,
    and writes into a folder that holds other files (which it leaves alone, unless named as it names its own:
    shard-NNNNN.safetensors/.json, manifest.json). SIGTERM stops like Ctrl-C.
    """
    from vitok.cli.common import resolve_device
    from vitok.extract import extract_latents, parse_size

    set_threads(threads)
    rank = torchrun_rank()

    def on_shard(index: int, record: dict) -> None:
        if not quiet:
            click.echo(f"rank {rank}: shard {index}: {count(len(record['clips']), 'clip')}, "
                       f"{len(record['skipped'])} skipped", err=True)

    summary = extract_latents(input_dir, out_dir, model, frames=frames, size=parse_size(size), tokens=tokens,
                              clips_per_video=clips_per_video, shard_size=shard_size, batch_size=batch_size,
                              device=resolve_device(device), overwrite=overwrite, on_shard=on_shard)
    if rank != 0:
        return
    text = (f"{count(summary['clips'], 'clip')} in {count(summary['shards'], 'shard')} "
            f"({summary['skipped']} files skipped) -> "
            f"{summary['manifest']}\n{count(summary['clips_made_total'], 'clip')} encoded by {summary['world_size']} "
            f"process(es) in {summary['wall_seconds']:.2f}s ({summary['clips_per_s']:.2f} clips/s)")
    emit(summary, as_json, text)


@latents.command()
@click.argument("shards_dir", type=click.Path(file_okay=False))
@json_option
def stats(shards_dir: str, as_json: bool) -> None:
    """Print the per-channel latent mean/std of an extracted shard set."""
    from vitok.extract import latent_stats

    s = latent_stats(shards_dir)
    lines = [f"{s['shards_dir']}: {s['clips']} clips ({s['skipped']} skipped), model {s['model']} "
             f"({s['weights_hash'][:12]}), {s['count']} tokens x {s['latent_channels']} channels",
             "channel       mean        std"]
    lines += [f"{c:7d} {m:10.4f} {sd:10.4f}" for c, (m, sd) in enumerate(zip(s["mean"], s["std"]))]
    emit(s, as_json, "\n".join(lines))


@latents.command()
@click.argument("shards_dir", type=click.Path(file_okay=False))
@json_option
def verify(shards_dir: str, as_json: bool) -> None:
    """Check every shard file of SHARDS_DIR against the sha256 recorded at extraction (a bad copy, disk rot, a
    truncated transfer); exit code 1 naming the first damaged shard."""
    from vitok.data.shards import ShardError, verify_shards

    result = verify_shards(shards_dir)
    unchecked = f", {count(result['unchecked'], 'shard')} without a checksum (extracted by an earlier vitok)" \
        if result["unchecked"] else ""
    if result["damaged"]:
        first = result["damaged"][0]
        if as_json:
            emit(result, True, "")
        raise ShardError(f"{shards_dir}: {count(len(result['damaged']), 'damaged shard')}; first "
                         f"{first['file']}: {first['reason']}")
    emit(result, as_json, f"{shards_dir}: {count(result['checked'], 'shard')} match their checksums{unchecked}")

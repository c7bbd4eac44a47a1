"""``vitok bench train CONFIG``: training throughput (clips/s) of a config over a few steps."""
from __future__ import annotations

import click

from vitok.cli.common import count, emit, json_option, set_threads, threads_option


@click.command("train")
@click.argument("config")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Config override (as in `vitok train`).")
@click.option("--steps", type=click.IntRange(min=1), default=5, show_default=True, help="Timed steps.")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True, help="Untimed steps first.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="Compute device [default: the config's, auto].")
@threads_option
@json_option
def bench_train(config: str, sets: tuple[str, ...], steps: int, warmup: int, device: str | None,
                threads: int | None, as_json: bool) -> None:
    """Print training throughput (clips/s) of CONFIG: the trainer's full step (forward, losses, backward,
    optimizer, EMA; the patch GAN's discriminator from the first step when loss.gan > 0) and data loading, timed over
    --steps steps after --warmup, and what one data worker makes."""
    from vitok.train.bench import bench_train as run_bench
    from vitok.train.config import load_config

    set_threads(threads)
    cfg = load_config(config, sets)
    if device:
        cfg["device"] = device
    r = run_bench(cfg, steps=steps, warmup=warmup)
    text = (f"{r['config']} ({r['model']}, {r['params'] / 1e6:.2f}M params) on {r['device']} "
            f"({count(r['threads'], 'thread')}, {r['precision']}{', torch.compile' if r['compiled'] else ''}"
            f"{', GAN included' if r['gan'] else ''}): "
            f"{r['clips_per_s']:.2f} clips/s "
            f"(batch {r['batch_size']} of {'x'.join(map(str, r['clip']))}; step {r['step_s']:.3f} s, "
            f"data {r['data_s']:.3f} s); one data worker makes {r['worker_clips_per_s']:.1f} clips/s")
    emit(r, as_json, text)

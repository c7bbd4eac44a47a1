"""``vitok train CONFIG``: train a tokenizer from a packaged config name or a JSON file (also under torchrun)."""
from __future__ import annotations


import click

from vitok.cli.common import (count, emit, json_option, overwrite_option, quiet_option, set_threads, threads_option,
                              torchrun_rank)


def _list_configs(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from vitok.train.config import list_configs

        click.echo("\n".join(list_configs()))
        ctx.exit()


@click.command()
@click.argument("config")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a config value by dotted key; VALUE is parsed as JSON (e.g. schedule.steps=2000, "
                   "model.overrides.latent_channels=16). Repeatable.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Run directory [default: runs/<config name>].")
@click.option("--resume", is_flag=True, help="Continue the run in the run directory from its latest checkpoint.")
@click.option("--stop-at", "stop_at", type=click.IntRange(min=1), default=None, metavar="STEP",
              help="End this session at STEP (checkpointed) with the schedule unchanged; --resume continues the "
                   "same learning-rate curve.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="Compute device [default: the config's, auto].")
@click.option("--list", "list_", is_flag=True, expose_value=False, is_eager=True, callback=_list_configs,
              help="List the packaged configs and exit.")
@threads_option
@overwrite_option
@quiet_option
@json_option
def train(config: str, sets: tuple[str, ...], out_dir: str | None, resume: bool, stop_at: int | None,
          device: str | None, threads: int | None, overwrite: bool, quiet: bool, as_json: bool) -> None:
    """Train a tokenizer as CONFIG says (a packaged name such as vitok-grid, or a path to a JSON config).

    Writes checkpoints, metrics.jsonl, eval PNG grids and the exported EMA model (model/: config.json +
    model.safetensors) into the run directory. It evaluates on the held-out segments every `eval.every` steps and
    always at the end (eval.every=0: only at the end), and checkpoints every `checkpoint.every` steps, at the end and
    on a stop. Multi-process: `torchrun --nproc_per_node=N --no-python vitok train
    CONFIG`. Held-out PSNR/SSIM of a result: `python -m vitok.train.evaluate RUN/model`.
    """
    from vitok.train.config import load_config
    from vitok.train.trainer import train as run_training

    set_threads(threads)
    cfg = load_config(config, sets)
    if device:
        cfg["device"] = device
    summary = run_training(cfg, out_dir, resume=resume, overwrite=overwrite, quiet=quiet, stop_at=stop_at)
    if torchrun_rank() != 0:
        return
    ev = summary["eval"]
    loss = summary["last"].get("loss")
    text = (f"trained {cfg['model']['name']} for {count(summary['steps'], 'step')}"
            + (f" of {cfg['schedule']['steps']} (--stop-at; continue with --resume)" if summary["stopped"] else "")
            + (f"; last loss {loss:.4f}" if loss is not None else "; no step run in this session")
            + (f"; held-out PSNR {ev['psnr']:.2f} dB, SSIM {ev['ssim']:.4f}" if ev else "")
            + f"\nmodel: {summary['model_dir']}")
    if ev:
        summary["eval"] = {k: v for k, v in ev.items() if k != "segments"}
    emit(summary, as_json, text)

"""``vitok rd``: rate-distortion sweeps, tables and plots; ``vitok rd plot DIR`` redraws from stored records.

``vitok rd CLIPS... --codec h264 --codec vitok:NAME -o results/`` runs the sweep (resuming from
``results/records.jsonl``), writes records, plots, BD-rate and summary tables, and prints the tables.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import click

from vitok.cli.common import json_option, overwrite_option, quiet_option
from vitok.codecs.refine import MAX_STEPS as MAX_REFINE_STEPS
from vitok.data.errors import VitokError

METRIC_CHOICE = click.Choice(["psnr", "psnr_y", "ssim", "ms_ssim", "lpips"])


def parse_value(text: str):
    """Knob values from the command line: int, float, true/false, else the string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _knobs(codec: str) -> tuple[str, ...] | None:
    """The knobs a codec's operating points may set, without loading a vitok model for it."""
    from vitok.codecs import get_codec
    from vitok.codecs.neural import VitokCodec

    return VitokCodec.knobs if codec.startswith("vitok:") else get_codec(codec).knobs


def _check_values(codec: Any, op: dict, spec: str) -> None:
    """Refuse an operating point whose values ``codec`` would refuse, before any clip is coded (a vitok codec loads
    its model to check)."""
    check = getattr(codec, "check_knobs", None)
    if check is not None:
        try:
            check(**op)
        except VitokError as e:   # CodecError
            raise VitokError(f"--op {spec}: {e}") from None


def parse_ops(specs: tuple[str, ...], codecs: Sequence[str]) -> dict[str, list[dict]]:
    """``CODEC:k=v[,k=v]`` (repeatable) -> ``{codec: [knob dict, ...]}``, one operating point per spec; each CODEC
    must be one of ``codecs`` and each key one of its knobs."""
    from vitok.codecs import get_codec

    out: dict[str, list[dict]] = {}
    checkers: dict[str, Any] = {}   # one codec (a vitok model loaded once) per name
    for spec in specs:
        codec, sep, knobs = spec.rpartition(":")
        if not sep or not codec:
            raise click.BadParameter(f"{spec!r}: expected CODEC:key=value[,key=value]", param_hint="--op")
        if codec not in codecs:
            raise VitokError(f"--op {spec}: codec {codec} is not selected (add --codec {codec})")
        allowed = _knobs(codec)
        op = {}
        for item in filter(None, knobs.split(",")):
            k, eq, v = item.partition("=")
            if not eq or not k:
                raise click.BadParameter(f"{spec!r}: {item!r} is not key=value", param_hint="--op")
            if allowed is not None and k.strip() not in allowed:
                raise VitokError(f"--op {spec}: {codec} has no knob {k.strip()!r} (knobs: {', '.join(allowed)})")
            op[k.strip()] = parse_value(v.strip())
        if codec not in checkers:
            checkers[codec] = get_codec(codec)
        _check_values(checkers[codec], op, spec)
        out.setdefault(codec, []).append(op)
    return out


class _DefaultRunGroup(click.Group):
    """A group whose default subcommand is ``run``: ``vitok rd CLIPS...`` means ``vitok rd run CLIPS...``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]   # bare `vitok rd` shows the help, as the other groups do
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultRunGroup, context_settings={"help_option_names": ["-h", "--help"]})
def rd() -> None:
    """Rate-distortion evaluation.

    \b
    vitok rd CLIPS... [--codec C]... -o DIR   sweep, write tables and plots (same as `vitok rd run`)
    vitok rd eval [--codec C]... -o DIR       ... over `eval`: the 8 held-out sample segments
    vitok rd plot DIR                         redraw plots and tables from DIR/records.json
    """


def _default_codecs() -> list[str]:
    from vitok.codecs import list_codecs

    return ["h264"] + [n for n in list_codecs() if n.startswith("vitok:")]


def _report(records, out: Path, metrics, x, anchor, method, as_json) -> None:
    from vitok.cli.common import emit
    from vitok.evaluation.report import write_report

    rep = write_report(records, out, anchor=anchor, metrics=list(metrics), x=x, method=method)
    text = rep["text"] or f"(no {anchor} records: no BD-rate table)"
    emit({"bd": rep["bd"], "summary": rep["summary"], "files": rep["files"]}, as_json,
         text + f"\nwrote {len(rep['files'])} files to {out}")


def _plot_options(f):
    f = click.option("--method", type=click.Choice(["akima", "pchip", "cubic"]), default="akima", show_default=True,
                     help="BD interpolation.")(f)
    f = click.option("--anchor", default="h264", show_default=True, help="Codec the BD-rates are measured against.")(f)
    f = click.option("--x", "x", type=click.Choice(["bpp", "kbps", "bytes"]), default="bpp", show_default=True,
                     help="Rate axis of the plots.")(f)
    f = click.option("--metric", "metrics", type=METRIC_CHOICE, multiple=True, default=("psnr",),
                     show_default=True, help="Quality metric(s) for plots and BD tables (repeatable).")(f)
    return f


@rd.command("run")
@click.argument("clips", nargs=-1)
@click.option("--codec", "codecs", multiple=True,
              help="Codec to sweep (repeatable): h264, h265, av1, vp9, vitok:NAME. Default: h264 and every bundled "
                   "vitok model.")
@click.option("--op", "ops", multiple=True, metavar="CODEC:K=V[,K=V]",
              help="An operating point (repeatable); replaces that codec's default list, e.g. h264:crf=28.")
@_plot_options
@click.option("-o", "--output", "output", type=click.Path(file_okay=False), default="rd-results", show_default=True,
              help="Results folder (also the cache: a rerun resumes).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Parallel processes.")
@click.option("--frames", "max_frames", type=click.IntRange(min=1), default=None,
              help="Use at most this many frames of each file clip.")
@click.option("--fresh", is_flag=True,
              help="Measure this sweep's points again; their records replace the cached ones once the sweep "
                   "finishes (the cache keeps other codecs', clips' and points' records: a new -o folder starts "
                   "afresh).")
@click.option("--rate-control/--no-rate-control", "rate_control", default=True, show_default=True,
              help="For 1D vitok models swept without --op, also run PSNR-target rate control (token study).")
@click.option("--refine", type=click.IntRange(min=1, max=MAX_REFINE_STEPS), default=None, metavar="STEPS",
              help="Also sweep every vitok codec's points with its tokens refined by STEPS Adam steps through the "
                   "decoder (as `vitok encode --refine`): a curve of its own, named CODEC+refineSTEPS. The "
                   "PSNR-target rate-control pass runs on the points as given only.")
@overwrite_option
@quiet_option
@json_option
def run(clips, codecs, ops, metrics, x, anchor, method, output, workers, max_frames, fresh, rate_control, refine,
        overwrite, quiet, as_json) -> None:
    """Sweep CLIPS (video files, folders, `eval` or eval segment ids) with each codec and report.

    Writes records.csv/.json, plots/ (RD curves per clip and mean, PNG+SVG; side-by-side frames; token budget),
    bdrate.json, summary.json and report.txt into the output folder, and prints the BD-rate table.
    """
    from vitok.evaluation.rd import CACHE_FILE, FRESH_FILE, fresh_cache

    out = Path(output)
    if out.exists() and any(out.iterdir()) and not (out / CACHE_FILE).exists() and not overwrite:
        raise VitokError(f"output folder {out} is not empty and holds no RD cache (use -y to write into it)")
    if not fresh:
        (out / FRESH_FILE).unlink(missing_ok=True)   # what a killed fresh run measured: never to be used
    codec_list = list(codecs) or _default_codecs()
    op_map = parse_ops(ops, codec_list)
    given = set(op_map)   # codecs whose points --op chose
    if refine:
        from vitok.codecs import get_codec

        neural = [c for c in codec_list if c.startswith("vitok:")]
        if not neural:
            raise VitokError("--refine refines vitok codecs' tokens: select one with --codec vitok:NAME")
        for c in neural:
            points = op_map.get(c) or get_codec(c).operating_points()
            op_map[c] = [*points, *({**op, "refine": refine} for op in points)]
    with fresh_cache(out) if fresh else nullcontext(CACHE_FILE) as cache_name:  # the old cache stays until the end
        kw = dict(workers=workers, cache_dir=out, cache_name=cache_name, progress=not quiet, max_frames=max_frames)
        records = _sweep(list(clips), codec_list, op_map, rate_control, kw, given)
    _report(records, out, metrics, x, anchor, method, as_json)


def _sweep(clips: list[str], codecs: list[str], op_map: dict[str, list[dict]], rate_control: bool,
           kw: dict[str, Any], given: set[str]) -> list[dict]:
    """The sweep's records; with ``rate_control``, a second pass adds PSNR-target rate control for the 1D vitok
    codecs swept at their own points (not ``given`` theirs by --op), at qualities their fixed-token points
    reached."""
    from vitok.evaluation.rd import rate_control_ops, rd_sweep

    records = rd_sweep(clips, codecs, op_map or None, **kw)
    rc = {c: rate_control_ops(records, c) for c in codecs if rate_control and c not in given}
    rc = {c: v for c, v in rc.items() if v}
    if rc:
        records += rd_sweep(clips, list(rc), rc, **kw)
    return records


@rd.command("plot")
@click.argument("results", type=click.Path(exists=True))
@_plot_options
@json_option
def plot(results, metrics, x, anchor, method, as_json) -> None:
    """Redraw plots and tables from stored records (a results folder or its records.json)."""
    from vitok.evaluation.report import load_records

    path = Path(results)
    records = load_records(path)
    _report(records, path if path.is_dir() else path.parent, metrics, x, anchor, method, as_json)

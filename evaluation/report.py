"""From RD records to the things a paper needs: CSV/JSON, RD plots, BD-rate table, bytes-vs-anchor summary,
side-by-side frames at matched bytes and the token-budget study. Everything is computed from records.

Averages: a record's metrics are per-frame means over its clip; "mean" curves and summaries average over clips
(per operating point for curves; BD-rates are computed per clip, then averaged; byte ratios take a geometric mean
per clip, then over clips).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from vitok.data.atomic import atomic_path, write_bytes_atomic
from vitok.evaluation.bdrate import LOWER_IS_BETTER, bd_psnr, bd_rate, rd_points
from vitok.evaluation.errors import EvaluationError
from vitok.evaluation.plots import plot_rd, plot_side_by_side, plot_token_budget, plot_token_histogram
from vitok.evaluation.rd import read_json_lines

FIELDS = ("clip", "codec", "op", "bytes", "stream_bytes", "bpp", "kbps", "psnr", "psnr_y", "ssim", "ms_ssim", "lpips",
          "tokens", "tokens_per_s", "tokens_per_chunk", "encode_s", "decode_s", "peak_mem_mb", "frames", "width",
          "height", "fps", "frame", "ref_frame", "key")
TOKEN_KNOB = "tokens"  # the knob of a 1D model's codec for a fixed number of tokens per unit in every chunk
RATE_CONTROL_KNOBS = ("psnr", "bytes")  # knobs that make a vitok codec choose the tokens of each chunk


def op_label(op: dict) -> str:
    """Compact text for an operating point: ``crf=23`` or ``num_tokens=64,quality=2``."""
    return ",".join(f"{k}={v}" for k, v in sorted(op.items())) or "default"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "clip"


# -- records in and out -------------------------------------------------------------------------------------------
def write_records(records: Sequence[dict], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``records.csv`` (``op`` and lists as JSON text, ``None`` as empty) and ``records.json`` in ``out_dir``."""
    out = Path(out_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(FIELDS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: (json.dumps(r.get(k)) if isinstance(r.get(k), (dict, list)) else
                             "" if r.get(k) is None else r.get(k)) for k in FIELDS})
    write_bytes_atomic(out / "records.csv", buf.getvalue().encode())
    write_bytes_atomic(out / "records.json", json.dumps(list(records), indent=1).encode())
    return out / "records.csv", out / "records.json"


def load_records(path: str | os.PathLike) -> list[dict]:
    """Records from ``records.json``, a ``records.jsonl`` cache (lines torn by interrupted sweeps are skipped, with
    a warning), or a results folder holding either; one record per clip, codec and operating point."""
    p = Path(path)
    if p.is_dir():
        p = p / "records.json" if (p / "records.json").is_file() else p / "records.jsonl"
    if not p.is_file():
        raise EvaluationError(f"no RD records at {path} (expected records.json or records.jsonl)")
    records = _jsonl_records(p) if p.suffix == ".jsonl" else _json_records(p)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise EvaluationError(f"{p}: not a list of RD records")
    seen: dict[tuple, int] = {}
    for i, r in enumerate(records):
        problem = _record_problem(r)
        if problem:
            raise EvaluationError(f"{p}: record {i}: {problem}")
        point = (str(r["clip"]), r["codec"], op_label(r.get("op") or {}))
        if point in seen:
            raise EvaluationError(f"{p}: records {seen[point]} and {i} are both {point[1]} {point[2]} on clip "
                                  f"{point[0]!r} (several sweeps in one cache?); report one sweep's records.json")
        seen[point] = i
    return records


def _jsonl_records(p: Path) -> list:
    """The values of a ``.jsonl`` cache's lines; lines that are not JSON (torn by interrupted sweeps, or not UTF-8)
    are skipped with a warning, as the sweep's own cache reading skips them."""
    records, torn = read_json_lines(p.read_bytes())
    if torn:
        warnings.warn(f"{p}: skipped {torn} line(s) that are not JSON (cut by interrupted sweeps)", stacklevel=3)
    return records


def _json_records(p: Path) -> Any:
    """The value of a ``records.json`` file; a file that is not UTF-8 JSON text (a video, say) is not records."""
    try:
        return json.loads(p.read_bytes().decode())
    except UnicodeDecodeError:
        raise EvaluationError(f"{p}: not RD records (not text; expected records.json or records.jsonl)") from None
    except json.JSONDecodeError as e:
        raise EvaluationError(f"{p}: not valid JSON ({e.msg}, line {e.lineno})") from None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _counts(value: Any) -> bool:
    """``tokens_per_chunk``: per chunk a token count, or a list of counts (one per tile)."""
    return isinstance(value, list) and all(_number(k) or (isinstance(k, list) and all(map(_number, k))) for k in value)


# every field the report reads -> (check, what it must be); None passes, except for the required fields
_FIELD_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "codec": (lambda v: isinstance(v, str), "a string"),
    "clip": (lambda v: isinstance(v, (str, int)) and not isinstance(v, bool), "a string"),
    "op": (lambda v: isinstance(v, dict) and _number(v.get(TOKEN_KNOB, 0)), "an object of knobs"),
    "tokens_per_chunk": (_counts, "a list of token counts"),
    "frame": (lambda v: isinstance(v, str), "a string"),
    "ref_frame": (lambda v: isinstance(v, str), "a string"),
    **{f: (_number, "a number") for f in ("bytes", "stream_bytes", "bpp", "kbps", "psnr", "psnr_y", "ssim", "ms_ssim",
                                          "lpips", "tokens", "tokens_per_s", "encode_s", "decode_s", "peak_mem_mb",
                                          "frames", "width", "height")},
}
_REQUIRED = ("codec", "clip", "bytes", "bpp")


def _record_problem(r: dict) -> str | None:
    """What is wrong with one record for the report: a required field missing or a field of the wrong type."""
    for field in _REQUIRED:
        if r.get(field) is None:
            return f"field {field!r} is missing"
    for field, (ok, what) in _FIELD_CHECKS.items():
        if r.get(field) is not None and not ok(r[field]):
            return f"field {field!r} must be {what}, got {json.dumps(r[field])[:40]}"
    return None


def _group(records: Iterable[dict], *fields: str) -> dict[tuple, list[dict]]:
    """Records by the values of ``fields``; a clip by its name as text (records may name clip 7 as 7 or "7")."""
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        out[tuple(str(r.get(f)) if f == "clip" else r.get(f) for f in fields)].append(r)
    return out


def codecs_of(records: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(r["codec"] for r in records))


def clips_of(records: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(str(r["clip"]) for r in records))


# -- curves -------------------------------------------------------------------------------------------------------
def mean_curve(records: Sequence[dict], x: str = "bpp", metric: str = "psnr") -> tuple[list[float], list[float]]:
    """One codec's curve averaged over clips: per operating point run on every clip, the mean x and mean metric."""
    clips = set(clips_of(records))
    xs, ys = [], []
    for group in _by_op(records).values():
        vals = [r for r in group if r.get(metric) is not None and r.get(x) is not None]
        if {str(r["clip"]) for r in vals} == clips:
            xs.append(float(np.mean([r[x] for r in vals])))
            ys.append(float(np.mean([r[metric] for r in vals])))
    return xs, ys


def _by_op(records: Iterable[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        out[json.dumps(r.get("op", {}), sort_keys=True)].append(r)
    return out


def _curve(records: Sequence[dict], x: str, metric: str) -> tuple[list[float], list[float]]:
    pts = [(float(r[x]), float(r[metric])) for r in records if r.get(x) is not None and r.get(metric) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def rd_plots(records: Sequence[dict], out_dir: str | os.PathLike, *, metric: str = "psnr",
             x: str = "bpp") -> list[Path]:
    """``rd_<clip>_<metric>.png/.svg`` per clip and ``rd_mean_<metric>.png/.svg`` (averaged over clips)."""
    out = Path(out_dir)
    paths: list[Path] = []
    by_codec = _group(records, "codec")
    for clip in clips_of(records):
        curves = {c: _curve([r for r in by_codec[(c,)] if str(r["clip"]) == clip], x, metric)
                  for c in codecs_of(records)}
        curves = {c: v for c, v in curves.items() if v[0]}
        if curves:
            paths += plot_rd(curves, out / f"rd_{_slug(clip)}_{metric}", x=x, metric=metric, title=clip)
    n = len(clips_of(records))
    mean = {}
    for c in codecs_of(records):   # a codec run on fewer clips is averaged over those, and its label says so
        k = len(clips_of(by_codec[(c,)]))
        mean[c if k == n else f"{c} ({k} of {n} clips)"] = mean_curve(by_codec[(c,)], x, metric)
    mean = {c: v for c, v in mean.items() if v[0]}
    if mean:
        paths += plot_rd(mean, out / f"rd_mean_{metric}", x=x, metric=metric, title=f"mean over {n} clip(s)")
    return paths


# -- BD-rate and bytes at matched quality --------------------------------------------------------------------------
def bd_table(records: Sequence[dict], anchor: str = "h264", metric: str = "psnr",
             method: str = "akima") -> list[dict]:
    """One row per test codec: BD-rate (%) and BD-metric vs ``anchor``, averaged over the clips where defined.

    Row fields: codec, anchor, metric, bd_rate, bd_metric, clips and clips_metric (the clips each is defined on:
    curves may overlap in quality but not in bytes, or the reverse), per_clip ({clip: {bd_rate or rate_error,
    bd_metric or metric_error}}). ``bd_rate`` is ``None`` when no clip allows it.
    """
    by = _group(records, "codec", "clip")
    if anchor not in codecs_of(records):
        raise EvaluationError(f"anchor codec {anchor!r} is not in the records (codecs: "
                              f"{', '.join(codecs_of(records))})")
    rows = []
    for codec in codecs_of(records):
        if codec == anchor:
            continue
        per_clip: dict[str, dict] = {}
        for clip in clips_of(records):
            a, t = by.get((anchor, clip)), by.get((codec, clip))
            if not a or not t:
                continue
            per_clip[clip] = {}
            for key, fn in (("bd_rate", bd_rate), ("bd_metric", bd_psnr)):
                try:
                    per_clip[clip][key] = fn(a, t, metric, method)
                except EvaluationError as e:
                    per_clip[clip][key.replace("bd_", "") + "_error"] = str(e)
        rates = [v["bd_rate"] for v in per_clip.values() if "bd_rate" in v]
        deltas = [v["bd_metric"] for v in per_clip.values() if "bd_metric" in v]
        rows.append({"codec": codec, "anchor": anchor, "metric": metric, "method": method,
                     "bd_rate": float(np.mean(rates)) if rates else None,
                     "bd_metric": float(np.mean(deltas)) if deltas else None,
                     "clips": len(rates), "clips_metric": len(deltas), "per_clip": per_clip})
    return rows


def anchor_bytes_at(anchor_records: Sequence[dict], value: float, metric: str = "psnr") -> float | None:
    """Bytes the anchor needs for ``metric == value`` on one clip: linear in log-bytes between its RD points
    (the monotone part of the curve); ``None`` outside the anchor's measured range (no extrapolation)."""
    rates, quality = rd_points(anchor_records, metric, "bytes")
    q = -value if metric in LOWER_IS_BETTER else value
    if len(rates) < 2 or not quality[0] <= q <= quality[-1]:
        return None
    return float(10 ** np.interp(q, quality, np.log10(rates)))


def bytes_vs_anchor(records: Sequence[dict], anchor: str = "h264", metric: str = "psnr") -> list[dict]:
    """The headline summary: per codec, its bytes as a multiple of the anchor's bytes at the same ``metric``.

    On each clip, each point of the test codec's curve as BD-rate takes it (`rd_points`: no point that a cheaper
    one matches in quality) whose quality lies inside the anchor's range gives one ratio
    ``bytes / anchor_bytes_at(quality)``; the clip's ratios are averaged, then the clips' (geometric means, so
    each clip counts once however many of its points match). Row fields: codec, points, matched, clips (clips with a
    match), ratio, ratio_min, ratio_max (over all matched points), tokens_per_s (mean over records; ``None`` for
    classical codecs), bpp (mean), metric range.
    """
    by = _group(records, "codec", "clip")
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    rows = []
    for codec in codecs_of(records):
        if codec == anchor:
            continue
        mine = [r for r in records if r["codec"] == codec]
        ratios, clip_means = [], []
        for (name, clip), curve in by.items():
            if name != codec:
                continue
            rates, quality = rd_points(curve, metric, "bytes")
            here = [b / ab for b, q in zip(rates, quality)
                    if (ab := anchor_bytes_at(by.get((anchor, clip), []), sign * float(q), metric))]
            if here:
                ratios += here
                clip_means.append(float(np.mean(np.log(here))))
        tps = [r["tokens_per_s"] for r in mine if r.get("tokens_per_s") is not None]
        vals = [float(r[metric]) for r in mine if r.get(metric) is not None]
        rows.append({"codec": codec, "anchor": anchor, "metric": metric, "points": len(mine),
                     "matched": len(ratios), "clips": len(clip_means),
                     "ratio": float(math.exp(np.mean(clip_means))) if clip_means else None,
                     "ratio_min": min(ratios) if ratios else None, "ratio_max": max(ratios) if ratios else None,
                     "tokens_per_s": float(np.mean(tps)) if tps else None,
                     "bpp": float(np.mean([r["bpp"] for r in mine])) if mine else None,
                     f"{metric}_min": min(vals) if vals else None, f"{metric}_max": max(vals) if vals else None})
    return rows


# -- side by side --------------------------------------------------------------------------------------------------
def pick_matched(records: Sequence[dict], target_bytes: float) -> dict[str, dict]:
    """Per codec, the record whose bytes are closest (in log) to ``target_bytes``."""
    out = {}
    for codec in codecs_of(records):
        mine = [r for r in records if r["codec"] == codec]
        out[codec] = min(mine, key=lambda r: abs(math.log(max(r["bytes"], 1) / target_bytes)))
    return out


def side_by_side(records: Sequence[dict], root: str | os.PathLike, out_path: str | os.PathLike, *,
                 clip: str | None = None, target_bytes: float | None = None, metric: str = "psnr") -> Path | None:
    """PNG of the stored middle frame of one clip: the reference, then each codec at about ``target_bytes``.

    The default target is the median bytes of the first ``vitok:`` codec on that clip (else of all its records).
    Frames come from the sweep's cache (``root``/frames); returns ``None`` when they were not kept.
    """
    from PIL import Image

    root = Path(root)
    clip = clip if clip is not None else clips_of(records)[0]
    mine = [r for r in records if str(r["clip"]) == clip and r.get("frame") and (root / r["frame"]).is_file()]
    if not mine:
        return None
    if target_bytes is None:
        neural = [r for r in mine if r["codec"].startswith("vitok")]
        first = [r for r in neural if r["codec"] == neural[0]["codec"]] if neural else mine
        target_bytes = float(np.median([r["bytes"] for r in first]))
    chosen = pick_matched(mine, target_bytes)
    ref = mine[0].get("ref_frame")
    panels = [("reference", np.asarray(Image.open(root / ref).convert("RGB")))] if ref and (root / ref).is_file() \
        else []
    for codec, r in chosen.items():
        m = r.get(metric)
        label = f"{codec}\n{r['bytes']} B, {metric} {m:.2f}" if m is not None else f"{codec}\n{r['bytes']} B"
        panels.append((label, np.asarray(Image.open(root / r["frame"]).convert("RGB"))))
    return plot_side_by_side(panels, out_path, title=f"{clip}: frame at ~{target_bytes:.0f} bytes")


# -- token budget (1D models) --------------------------------------------------------------------------------------
def token_budget(records: Sequence[dict], out_dir: str | os.PathLike, metric: str = "psnr") -> tuple[dict, list[Path]]:
    """The token-budget study of 1D models, from records that carry ``tokens_per_chunk``.

    ``curve``: per codec, mean ``metric`` over clips vs the fixed ``tokens`` knob (tokens per unit in every chunk);
    ``chosen``: per codec and rate-control setting (``psnr=``/``bytes=`` knob), the tokens per unit picked for each
    chunk of each clip (a list where it picked one count per tile; the histogram counts each). Writes
    ``token_budget_<metric>.png/.svg`` and ``tokens_per_chunk_hist.png/.svg`` when there is something to draw;
    returns ``(study, paths)``.
    """
    out = Path(out_dir)
    study: dict[str, Any] = {"curve": {}, "chosen": {}}
    paths: list[Path] = []
    fixed = [r for r in records if r.get("tokens_per_chunk") and TOKEN_KNOB in (r.get("op") or {})
             and r.get(metric) is not None]
    for codec in codecs_of(fixed):
        per_k: dict[int, list[float]] = defaultdict(list)
        for r in fixed:
            if r["codec"] == codec:
                per_k[int(r["op"][TOKEN_KNOB])].append(float(r[metric]))
        ks = sorted(per_k)
        study["curve"][codec] = {"tokens": ks, metric: [float(np.mean(per_k[k])) for k in ks]}
    if study["curve"]:
        curves = {c: (v["tokens"], v[metric]) for c, v in study["curve"].items()}
        paths += plot_token_budget(curves, out / f"token_budget_{metric}", metric=metric)
    chosen = [r for r in records if r.get("tokens_per_chunk")
              and any(k in (r.get("op") or {}) for k in RATE_CONTROL_KNOBS)]
    counts: dict[str, list[int]] = defaultdict(list)
    for r in chosen:
        label = f"{r['codec']} {op_label(r['op'])}"
        study["chosen"].setdefault(r["codec"], {}).setdefault(op_label(r["op"]), {})[str(r["clip"])] = \
            [k if isinstance(k, list) else int(k) for k in r["tokens_per_chunk"]]
        counts[label].extend(int(n) for k in r["tokens_per_chunk"] for n in (k if isinstance(k, list) else [k]))
    if counts:
        paths += plot_token_histogram(counts, out / "tokens_per_chunk_hist")
    return study, paths


# -- text tables and the whole report ------------------------------------------------------------------------------
def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """Fixed-width text table; ``columns`` = (field, header, format spec); ``None`` prints as ``n/a``."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append(["n/a" if r.get(f) is None else format(r[f], spec) for f, _, spec in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in cells)


def format_bd_table(rows: Sequence[dict]) -> str:
    if not rows:
        return "BD-rate: no test codecs"
    head = f"BD vs {rows[0]['anchor']} ({rows[0]['metric']}, {rows[0]['method']}; negative BD-rate = fewer bytes)"
    table = format_table(rows, [("codec", "codec", ""), ("bd_rate", "BD-rate %", "+.2f"), ("clips", "clips", "d"),
                                ("bd_metric", f"BD-{rows[0]['metric']}", "+.3f"), ("clips_metric", "clips", "d")])
    notes = [f"  n/a {r['codec']}: {next(v['rate_error'] for v in r['per_clip'].values())}" for r in rows
             if r["bd_rate"] is None and r["per_clip"]]
    return "\n".join([head, table, *notes])


def format_summary(rows: Sequence[dict]) -> str:
    if not rows:
        return ""
    head = f"bytes as a multiple of {rows[0]['anchor']} at matched {rows[0]['metric']}"
    return head + "\n" + format_table(rows, [("codec", "codec", ""), ("ratio", "x bytes", ".2f"),
                                             ("ratio_min", "min", ".2f"), ("ratio_max", "max", ".2f"),
                                             ("matched", "matched pts", "d"), ("clips", "clips", "d"),
                                             ("tokens_per_s", "tokens/s", ".0f")])


def write_report(records: Sequence[dict], out_dir: str | os.PathLike, *, root: str | os.PathLike | None = None,
                 anchor: str = "h264", metrics: Sequence[str] = ("psnr",), x: str = "bpp",
                 method: str = "akima") -> dict[str, Any]:
    """Write records (CSV, JSON), RD plots, BD tables, the bytes-vs-anchor summary, side-by-side frames and the
    token-budget study into ``out_dir``; ``root`` is where the sweep kept its frames (default ``out_dir``).

    Returns ``{"bd": {metric: rows}, "summary": rows, "tokens": study, "files": [paths], "text": tables}``; the
    tables are also written as ``bdrate.json``, ``summary.json``, ``token_budget.json`` (1D models) and
    ``report.txt``. Without the anchor in the records the BD and summary tables are empty.
    """
    if not records:
        raise EvaluationError("no RD records to report")
    out = Path(out_dir)
    root = Path(root) if root is not None else out
    files = list(write_records(records, out))
    plots = out / "plots"
    for metric in metrics:
        files += rd_plots(records, plots, metric=metric, x=x)
    has_anchor = anchor in codecs_of(records)
    bd = {m: bd_table(records, anchor, m, method) for m in metrics} if has_anchor else {}
    summary = bytes_vs_anchor(records, anchor, metrics[0]) if has_anchor else []
    for name, obj in (("bdrate.json", bd), ("summary.json", summary)):
        write_bytes_atomic(out / name, json.dumps(obj, indent=1).encode())
        files.append(out / name)
    for clip in clips_of(records):
        p = side_by_side(records, root, plots / f"side_by_side_{_slug(clip)}.png", clip=clip, metric=metrics[0])
        if p is not None:
            files.append(p)
    study, token_files = token_budget(records, plots, metrics[0])
    files += token_files
    if study["curve"] or study["chosen"]:
        write_bytes_atomic(out / "token_budget.json", json.dumps(study, indent=1).encode())
        files.append(out / "token_budget.json")
    text = "\n\n".join([format_bd_table(rows) for rows in bd.values()] + ([format_summary(summary)] if summary
                                                                           else []))
    with atomic_path(out / "report.txt") as tmp:
        tmp.write_text(text + "\n")
    files.append(out / "report.txt")
    return {"bd": bd, "summary": summary, "tokens": study, "files": [str(f) for f in files], "text": text}

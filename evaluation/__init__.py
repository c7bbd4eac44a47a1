"""vitok.evaluation: quality metrics, rate-distortion sweeps, Bjontegaard deltas, reports, codec benchmarks.

    from vitok.evaluation import rd_sweep, write_report, bd_rate
    records = rd_sweep(["eval"], ["h264", "vitok:<model>"], cache_dir="results")
    write_report(records, "results")            # CSV/JSON, RD plots, BD-rate table, bytes-vs-h264 summary
    bd_rate([r for r in records if r["codec"] == "h264"], [r for r in records if r["codec"] != "h264"])

Names load lazily so importing the package stays cheap.
"""
from __future__ import annotations

from vitok.data.lazy import lazy_exports

_EXPORTS = {
    "metrics": ("compute_metrics", "psnr", "psnr_y", "ssim", "ms_ssim", "lpips", "METRICS", "PSNR_CAP"),
    "bdrate": ("bd_rate", "bd_psnr", "rd_points"),
    "clips": ("Clip", "resolve_clips", "load_clip"),
    "rd": ("rd_sweep", "load_cache", "rate_control_ops"),
    "report": ("write_report", "write_records", "load_records", "bd_table", "bytes_vs_anchor", "side_by_side",
               "token_budget", "rd_plots"),
    "bench": ("bench_codecs", "bench_one"),
    "compare": ("compare_codecs", "match_psnr"),
    "memory": ("PeakMemory",),
    "errors": ("EvaluationError",),
}
_WHERE = {name: f".{module}" for module, names in _EXPORTS.items() for name in names}
__all__ = list(_WHERE)
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)

"""Training of vitok tokenizers: configs, losses, the trainer, held-out evaluation and the throughput bench.

Imports are lazy so that ``python -m vitok.train.evaluate`` and ``vitok --help`` stay light."""
from __future__ import annotations

from vitok.data.lazy import lazy_exports

_EXPORTS = {
    "train": "vitok.train.trainer",
    "Trainer": "vitok.train.trainer",
    "TrainingDiverged": "vitok.train.trainer",
    "latent_stats": "vitok.train.trainer",
    "load_config": "vitok.train.config",
    "list_configs": "vitok.train.config",
    "evaluate_model": "vitok.train.evaluate",
    "save_grid": "vitok.train.evaluate",
    "TokenizerLoss": "vitok.train.losses",
    "bench_train": "vitok.train.bench",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

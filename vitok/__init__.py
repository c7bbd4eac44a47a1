"""vitok: visual tokenizers (grid ViT, 1D ViT, causal CNN) behind one API, and the latents they produce.

    import vitok
    tok = vitok.load("<bundled name>")       # frozen: eval(), no grads, inference mode
    lat = tok.encode(video)                  # video (B,3,T,H,W) in [-1,1] -> vitok.Latents
    recon = tok.decode(lat)

Names load lazily so `import vitok` (and the CLI) stays fast.
"""
from __future__ import annotations

from vitok.data.lazy import lazy_exports

_EXPORTS = {
    "Tokenizer": "vitok.tokenizer",
    "Latents": "vitok.latents",
    "load": "vitok.registry",
    "create_model": "vitok.registry",
    "list_models": "vitok.registry",
    "model_stats": "vitok.stats",
    "DiffusersAdapter": "vitok.adapters",
    "latents_from_batch": "vitok.extract",
    "extract_latents": "vitok.extract",
    "VitokError": "vitok.data.errors",
}

__all__ = [*_EXPORTS, "__version__"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vitok")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


__version__ = _version()
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

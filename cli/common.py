"""Options and helpers shared by the subcommands: output safety, JSON results, device choice, progress."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from vitok.data.errors import VitokError


def check_output(path: str | Path, overwrite: bool) -> Path:
    """Refuse to replace an existing output unless ``-y`` was given."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise VitokError(f"output exists: {p} (use -y to overwrite)")
    return p


def resolve_device(device: str) -> str:
    """``auto`` picks cuda, then mps, then cpu; an explicit device that is missing is a user error."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise VitokError("--device cuda requested but CUDA is not available")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise VitokError("--device mps requested but MPS is not available")
    return device


def emit(result: Any, as_json: bool, text: str) -> None:
    """Results go to stdout: JSON with ``--json``, else the human text."""
    click.echo(json.dumps(result, indent=2, default=str) if as_json else text)


def progress(iterable=None, *, total=None, desc: str = "", quiet: bool = False, unit: str = "it"):
    """A tqdm bar on stderr, silent with ``-q`` or when stderr is not a terminal and nothing asks for it."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=quiet, file=sys.stderr, unit=unit, leave=False)


# Reusable decorators so every command spells the common options the same way.
overwrite_option = click.option("-y", "--overwrite", is_flag=True, help="Overwrite existing outputs.")
quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON results.")
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto",
                             show_default=True, help="Compute device.")
threads_option = click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for torch.")


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)

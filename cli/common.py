"""Options and helpers shared by the subcommands: output safety, JSON results, device choice, progress."""
from __future__ import annotations

import fnmatch
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import click

from vitok.data.errors import VitokError


def check_output(path: str | Path, overwrite: bool, *, inputs: Iterable[str | Path] = (),
                 folder_of: Sequence[str] | None = None) -> Path:
    """Refuse an output that would lose data: an existing one without ``-y``, one that is or holds an input, a
    special file (pipe, device), and a folder that holds files the command did not write.

    ``folder_of`` is ``None`` for a file output, else the glob patterns of what the output folder holds (an existing
    folder is replaced as a whole, so anything else in it would be lost).
    """
    p = Path(path)
    for src in inputs:
        src = Path(src)
        if not src.exists():
            continue
        if p.exists() and os.path.samefile(p, src):
            raise VitokError(f"output {p} is the input; choose another name")
        if p.is_dir() and src.resolve().is_relative_to(p.resolve()):
            raise VitokError(f"output folder {p} holds the input {src}; choose another folder")
    if folder_of is not None and p.is_dir() and Path.cwd().resolve().is_relative_to(p.resolve()):
        raise VitokError(f"output folder {p} holds the current folder, which replacing it would move away; "
                         "choose another folder or run from elsewhere")
    if not p.exists():
        return p
    if not (p.is_file() or p.is_dir()):  # a pipe, socket or device: renaming over it would replace it
        raise VitokError(f"output {p} is not a regular file or folder; choose another name")
    if folder_of is None and p.is_dir():
        raise VitokError(f"output {p} is a folder; give a file name")
    if folder_of is not None and not p.is_dir():
        raise VitokError(f"output {p} is a file; give a folder name")
    if not overwrite:
        raise VitokError(f"output exists: {p} (use -y to overwrite)")
    if folder_of is not None:
        foreign = [e.name for e in p.iterdir() if not any(fnmatch.fnmatch(e.name, g) for g in folder_of)]
        if foreign:
            raise VitokError(f"output folder {p} holds other files ({', '.join(sorted(foreign)[:3])}"
                             f"{', ...' if len(foreign) > 3 else ''}), which -y would delete; choose another folder")
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


def torchrun_rank() -> int:
    """This process's rank in a torchrun job (WORLD_SIZE > 1), else 0: a RANK a single process inherited from a
    job's environment does not make it another rank (its summary and errors are its own to print)."""
    if os.environ.get("WORLD_SIZE", "1") in ("", "0", "1"):
        return 0
    return int(os.environ.get("RANK") or 0)


def count(n: int, noun: str) -> str:
    """'1 chunk', '3 chunks': a count and its noun, plural unless one."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def emit(result: Any, as_json: bool, text: str) -> None:
    """Results go to stdout: JSON with ``--json`` (NaN and infinities as null: JSON has no such numbers), else the
    human text."""
    click.echo(json.dumps(_finite(result), indent=2, default=str, allow_nan=False) if as_json else text)


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, through dicts, lists and tuples."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def progress(iterable=None, *, total=None, desc: str = "", quiet: bool = False, unit: str = "it"):
    """A tqdm bar on stderr, silent with ``-q`` or when stderr is not a terminal (a log then holds no bar lines)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=True if quiet else None, file=sys.stderr, unit=unit,
                leave=False)


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

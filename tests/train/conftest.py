"""Shared helpers for the trainer tests: tiny configs on 8x32x32 procedural clips, one torch thread."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test in this folder runs on one torch thread."""


@pytest.fixture
def make_cfg():
    """``make_cfg("tiny-vit", "schedule.steps=4", ...)`` -> a resolved config dict (eval on 2 tiny synthetic clips)."""
    from vitok.train.config import load_config

    def make(name: str = "tiny-vit", *sets: str) -> dict:
        return load_config(name, ["device=cpu", *sets])

    return make


@pytest.fixture
def cli_cmd():
    """The installed ``vitok`` console script (or ``python -m vitok.cli.main``) for subprocess tests."""
    script = Path(sys.executable).parent / "vitok"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vitok.cli.main"]


@pytest.fixture
def sub_env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def metrics():
    return read_metrics


@pytest.fixture(scope="session")
def load_tool():
    """``load_tool("linear_baseline")`` -> the script tools/linear_baseline.py as a module (tools are not a package)."""
    import importlib.util

    def load(name: str):
        path = Path(__file__).resolve().parents[2] / "tools" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load

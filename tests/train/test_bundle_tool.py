"""tools/bundle_model.py: ship a run as a model folder, history chained across continued runs."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import vitok
from vitok.train.trainer import train

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bundle_model.py"


def _bundle(run: Path, dest: Path, command: str, *extra: str) -> None:
    spec = importlib.util.spec_from_file_location("bundle_model", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.main([str(run), "tiny-shipped", "--dest", str(dest), "--command", command, "--calibration-iters", "5",
               *extra])


@pytest.mark.skipif(not TOOL.is_file(), reason="tools/ is not in this checkout")
def test_bundle_chains_history_of_a_continued_run(make_cfg, tmp_path):
    first = make_cfg("tiny-vit", "schedule.steps=2", "data.synthetic.num_clips=2")
    train(first, tmp_path / "run1", quiet=True)
    _bundle(tmp_path / "run1", tmp_path / "b1", "first", "--note", "shared the cores")
    again = make_cfg("tiny-vit", "schedule.steps=3", "data.synthetic.num_clips=2",
                     f"model.init={json.dumps(str(tmp_path / 'b1'))}")
    train(again, tmp_path / "run2", quiet=True)
    _bundle(tmp_path / "run2", tmp_path / "b2", "second")

    info = json.loads((tmp_path / "b2" / "training.json").read_text())
    assert info["steps"] == 5 and info["command"] == "first && second"
    assert [(h["steps"], h.get("note")) for h in info["hardware_history"]] == [(2, "shared the cores"), (3, None)]
    first_info = json.loads((tmp_path / "b1" / "training.json").read_text())
    second_run = json.loads((tmp_path / "run2" / "train_info.json").read_text())
    assert info["train_seconds"] == round(first_info["train_seconds"] + second_run["train_seconds"], 1)
    assert json.loads((tmp_path / "b2" / "config.json").read_text())["name"] == "tiny-shipped"
    assert (tmp_path / "b2" / "entropy.safetensors").is_file()
    assert vitok.load(tmp_path / "b2").weights_hash == vitok.load(tmp_path / "run2" / "model").weights_hash

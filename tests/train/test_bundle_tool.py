"""tools/bundle_model.py: ship a run as a model folder, history chained across continued runs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import vitok
from vitok.train.trainer import train

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bundle_model.py"


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("bundle_model")


@pytest.fixture
def small_calibration(monkeypatch):
    """The entropy calibration's clips, the sample clips' training segments at their native 1280x720 (nine tenths of
    these tests' time), replaced by two random 16x32x32 segments; the list holds each request."""
    import vitok.data.samples as samples

    asked = []
    rng = np.random.default_rng(0)
    segments = [(f"small:{i}", rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)) for i in range(2)]
    monkeypatch.setattr(samples, "train_segments", lambda **kw: asked.append(kw) or segments)
    return asked


def _bundle(tool, run: Path, dest: Path, command: str, *extra: str) -> None:
    tool.main([str(run), "tiny-shipped", "--dest", str(dest), "--command", command, "--calibration-iters", "5",
               *extra])


@pytest.mark.skipif(not TOOL.is_file(), reason="tools/ is not in this checkout")
def test_bundle_chains_history_of_a_continued_run(tool, small_calibration, make_cfg, tmp_path):
    first = make_cfg("tiny-vit", "schedule.steps=2", "data.synthetic.num_clips=2")
    train(first, tmp_path / "run1", quiet=True)
    _bundle(tool, tmp_path / "run1", tmp_path / "b1", "first", "--note", "shared the cores")
    first_info = json.loads((tmp_path / "b1" / "training.json").read_text())
    again = make_cfg("tiny-vit", "schedule.steps=3", "data.synthetic.num_clips=2",
                     f"model.init={json.dumps(str(tmp_path / 'b1'))}")
    train(again, tmp_path / "run2", quiet=True)
    # b1 replaced after run2 started (a sibling continuation bundled over it): run2 still chains b1 as it found it
    (tmp_path / "b1" / "training.json").write_text(json.dumps({**first_info, "steps": 999, "command": "sibling"}))
    _bundle(tool, tmp_path / "run2", tmp_path / "b2", "second")

    info = json.loads((tmp_path / "b2" / "training.json").read_text())
    assert info["steps"] == 5 and info["command"] == "first && second"
    assert [(h["steps"], h.get("note")) for h in info["hardware_history"]] == [(2, "shared the cores"), (3, None)]
    assert [(s["start_step"], s["end_step"]) for s in info["hardware_history"][-1]["sessions"]] == [(0, 3)]
    second_run = json.loads((tmp_path / "run2" / "train_info.json").read_text())
    assert info["train_seconds"] == round(first_info["train_seconds"] + second_run["train_seconds"], 1)
    assert json.loads((tmp_path / "b2" / "config.json").read_text())["name"] == "tiny-shipped"
    assert (tmp_path / "b2" / "entropy.safetensors").is_file()
    # both bundles calibrated on the (stubbed) training segments: chunks of the model's clip length at native size
    assert small_calibration == [{"num_frames": 8, "size": None}] * 2
    assert vitok.load(tmp_path / "b2").weights_hash == vitok.load(tmp_path / "run2" / "model").weights_hash
    from vitok.codecs.entropy import load_entropy_tables

    load_entropy_tables(tmp_path / "b2").with_rdoq(0.1).save(tmp_path / "b2")   # tools/rdoq.py --write
    _bundle(tool, tmp_path / "run2", tmp_path / "b2", "second")   # bundled again over it: the setting is kept
    assert load_entropy_tables(tmp_path / "b2").rd_lambda == 0.1
    assert list((tmp_path / "b2").glob("entropy-*.safetensors"))   # the same weights: the replaced tables stay
    kept = sorted(p.name for p in (tmp_path / "b2").glob("entropy-*.safetensors"))
    _bundle(tool, tmp_path / "run2", tmp_path / "b2", "third")   # a folder holding them is a model folder, and
    assert set(kept) <= {p.name for p in (tmp_path / "b2").glob("entropy-*.safetensors")}   # bundling keeps them


@pytest.mark.skipif(not TOOL.is_file(), reason="tools/ is not in this checkout")
def test_history_of_a_run_whose_source_is_gone_or_has_none(tool, make_cfg, tmp_path, capsys):
    """Runs made before init.json read the source's history from where model.init points: a source without
    training.json gives a note (the history starts with the run), a source that is gone a one-line error."""
    vitok.create_model("vit-tiny").save_pretrained(tmp_path / "start")
    init = str(tmp_path / "start")
    train(make_cfg("tiny-vit", "schedule.steps=1", "data.synthetic.num_clips=2", f"model.init={json.dumps(init)}"),
          tmp_path / "run", quiet=True)
    assert tool._prior_training(tmp_path / "run", init) == {}
    assert "has no training.json" in capsys.readouterr().out
    (tmp_path / "run" / "init.json").unlink()
    assert tool._prior_training(tmp_path / "run", init) == {}  # the same, read from the source
    for f in ("model.safetensors", "config.json"):
        (tmp_path / "start" / f).unlink()
    (tmp_path / "start").rmdir()
    with pytest.raises(SystemExit, match=r"model.init=.*start, which is gone .* cannot be chained"):
        tool._prior_training(tmp_path / "run", init)


@pytest.mark.skipif(not TOOL.is_file(), reason="tools/ is not in this checkout")
def test_a_run_resumed_past_its_end_or_broken_is_refused_in_one_line(tool, small_calibration, make_cfg, tmp_path):
    """A finished run resumed for more steps kept its old train_info.json while model/ moved on: bundling recorded
    the old steps for the new weights. A run without model/ or with a train_info.json lacking a field was a
    traceback."""
    cfg = make_cfg("tiny-vit", "schedule.steps=2", "data.synthetic.num_clips=2")
    train(cfg, tmp_path / "run", quiet=True)
    longer = make_cfg("tiny-vit", "schedule.steps=4", "data.synthetic.num_clips=2")
    assert train(longer, tmp_path / "run", resume=True, quiet=True, stop_at=3)["stopped"]
    with pytest.raises(SystemExit, match=r"resumed past the end .* \(checkpoint step 3, train_info step 2\)"):
        _bundle(tool, tmp_path / "run", tmp_path / "b", "c")
    train(longer, tmp_path / "run", resume=True, quiet=True)   # finished at 4: bundles
    _bundle(tool, tmp_path / "run", tmp_path / "b", "c")
    assert json.loads((tmp_path / "b" / "training.json").read_text())["steps"] == 4
    assert len(small_calibration) == 1   # the refused bundle stopped before calibrating
    _bundle(tool, tmp_path / "run", tmp_path / "b", "again")   # a model folder is replaced
    assert json.loads((tmp_path / "b" / "training.json").read_text())["command"] == "again"
    # --dest was replaced whatever it held: a folder of notes, the run itself, a folder above it; a file: traceback
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "results.csv").write_text("data")
    (tmp_path / "afile").write_text("data")
    for dest, why in (("notes", r"notes holds other files \(results.csv\)"), ("run", "is the input"),
                      (".", "holds the input"), ("afile", "is a file")):
        with pytest.raises(SystemExit, match=f"^error: output .*{why}"):
            _bundle(tool, tmp_path / "run", tmp_path / dest, "c")
    assert (tmp_path / "notes" / "results.csv").read_text() == "data" == (tmp_path / "afile").read_text()
    assert (tmp_path / "run" / "train_info.json").is_file() and len(small_calibration) == 2

    info = json.loads((tmp_path / "run" / "train_info.json").read_text())
    (tmp_path / "run" / "train_info.json").write_text(json.dumps({k: v for k, v in info.items() if k != "config"}))
    with pytest.raises(SystemExit, match="unreadable train_info.json"):
        _bundle(tool, tmp_path / "run", tmp_path / "b2", "c")
    (tmp_path / "run" / "train_info.json").write_text(json.dumps(info))
    for f in (tmp_path / "run" / "model").iterdir():
        f.unlink()
    with pytest.raises(SystemExit, match=r"^error: .*missing config.json$"):
        _bundle(tool, tmp_path / "run", tmp_path / "b2", "c")
    assert not (tmp_path / "b2").exists()

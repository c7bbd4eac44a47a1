"""Pickle-free checkpoints: tensors in safetensors, structure in JSON; RNG capture; the latest pointer."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from vitok.data.errors import VitokError
from vitok.train.checkpoint import (complete_checkpoints, latest_checkpoint, load_checkpoint, rng_state,
                                    save_checkpoint, set_rng_state)


def _equal(a, b) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_roundtrip_optimizer_and_rng(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": [rng_state()], "step": 7,
             "nested": {"t": (1, 2.5, None, "x")}}
    path = save_checkpoint(tmp_path, 7, state)
    assert sorted(p.name for p in path.iterdir()) == ["state.json", "tensors.safetensors"]
    step, back = load_checkpoint(latest_checkpoint(tmp_path))
    assert step == 7 and _equal(state["model"], back["model"]) and _equal(state["nested"], back["nested"])
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    opt2.load_state_dict(back["optimizer"])
    assert _equal(opt.state_dict(), opt2.state_dict())


def test_rng_state_restores_every_generator(tmp_path):
    save_checkpoint(tmp_path, 1, {"rng": rng_state()})
    expect = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_checkpoint(latest_checkpoint(tmp_path))[1]["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expect[0], got[0]) and np.array_equal(expect[1], got[1]) and expect[2] == got[2]


def test_cuda_rng_is_this_devices_so_fewer_gpus_can_resume(monkeypatch, tmp_path):
    """A checkpoint keeps the CUDA generator of its process's device only; one from a machine with more GPUs (every
    visible device's state, as earlier checkpoints held) restores the entry of this device, or none past the list."""
    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.tensor([7], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": seen.append(int(state[0])))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    save_checkpoint(tmp_path, 1, {"rng": rng_state()})
    state = load_checkpoint(latest_checkpoint(tmp_path))[1]["rng"]
    assert torch.equal(state["cuda"], torch.tensor([7], dtype=torch.uint8))
    set_rng_state(state)
    set_rng_state({**state, "cuda": [torch.tensor([i], dtype=torch.uint8) for i in range(8)]})   # an 8-GPU run
    set_rng_state({**state, "cuda": [torch.tensor([0], dtype=torch.uint8)]})   # device 1 is past its list
    assert seen == [7, 1]


def test_latest_pointer_prunes_and_falls_back(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"x": torch.tensor([step])}, keep=2)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000002", "step-00000003"]
    assert latest_checkpoint(tmp_path).name == "step-00000003"
    (root / "latest.json").write_text("{garbage")          # a torn pointer: use the newest complete dir
    (root / "step-00000003" / "state.json").unlink()        # ... and skip an incomplete one
    assert latest_checkpoint(tmp_path).name == "step-00000002"
    assert latest_checkpoint(tmp_path / "none") is None


def test_a_damaged_checkpoint_is_a_user_error_naming_the_file(tmp_path):
    """A truncated tensors file (disk full, copied half-way) stops --resume with a one-line error, not a traceback."""
    path = save_checkpoint(tmp_path, 1, {"w": torch.ones(256)})
    tensors = path / "tensors.safetensors"
    with open(tensors, "r+b") as f:
        f.truncate(tensors.stat().st_size // 2)
    with pytest.raises(VitokError, match="tensors.safetensors: unreadable"):
        load_checkpoint(latest_checkpoint(tmp_path))


def test_checkpoints_are_flushed_before_latest_names_them(tmp_path, monkeypatch):
    """A power loss must not leave latest.json naming a checkpoint whose files never reached the disk: the files, the
    checkpoint folder and the folder holding it are flushed before latest.json is written, latest.json after."""
    import os

    synced = []
    real = os.fsync

    def record(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", record)
    save_checkpoint(tmp_path, 7, {"w": torch.ones(3)})
    root = tmp_path / "checkpoints"
    names = [Path(p).name for p in synced]
    assert {"tensors.safetensors", "state.json"} <= set(names[:3])          # the files and their folder, then
    assert names[3] == "checkpoints"                                        # the rename into checkpoints/,
    assert names[4].startswith(".latest.json.") and names[5] == "checkpoints"   # then latest.json and its rename
    assert Path(synced[5]) == root.resolve()


def test_complete_checkpoints_put_latest_first_then_newest(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"x": torch.tensor([step])}, keep=3)
    root = tmp_path / "checkpoints"
    (root / "latest.json").write_text(json.dumps({"step": 2, "dir": "step-00000002"}))
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000002", "step-00000003", "step-00000001"]
    (root / "latest.json").write_text(json.dumps(["not", "an", "object"]))
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000003", "step-00000002", "step-00000001"]
    (root / "step-00000003" / "tensors.safetensors").unlink()
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000002", "step-00000001"]


def test_a_file_system_that_cannot_flush_folders_still_checkpoints(tmp_path, monkeypatch):
    """Some file systems refuse fsync on a folder (EINVAL): the folder flush is best effort there, a file's is not."""
    import errno
    import os
    import stat

    real = os.fsync

    def refuse_folders(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd)

    monkeypatch.setattr(os, "fsync", refuse_folders)
    save_checkpoint(tmp_path, 1, {"w": torch.ones(2)})
    assert load_checkpoint(latest_checkpoint(tmp_path))[0] == 1
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError, match="I/O error"):
        save_checkpoint(tmp_path, 2, {"w": torch.ones(2)})
    assert latest_checkpoint(tmp_path).name == "step-00000001"

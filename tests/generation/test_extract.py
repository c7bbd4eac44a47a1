"""Latent extraction: good and corrupt clips, resume, 2-process torchrun, bit-exact LatentShards round trip."""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

import vitok
from vitok.cli.main import main
from vitok.data.convert import frames_to_tensor
from vitok.data.shards import ClipTable, LatentShards, ShardError, collate_latents, verify_shards
from vitok.extract import ExtractError, extract_latents, latents_from_batch, read_clips

NUM_GOOD, SIDE = 6, 32  # as in conftest.py (test modules cannot import it under --import-mode=importlib)


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def test_extract_lists_corrupt_file_as_skipped(shards_dir):
    m = _manifest(shards_dir)
    assert m["num_clips"] == NUM_GOOD
    assert [s["source"] for s in m["skipped"]] == ["broken.mp4"]
    assert "broken.mp4" in m["skipped"][0]["reason"]
    assert len(m["shards"]) == 3  # 7 video files, 3 per shard; notes.txt is not a video
    assert len({c["id"] for c in m["clips"]}) == NUM_GOOD
    assert {c["source"] for c in m["clips"]} == {f"clip{i}.mp4" for i in (0, 1, 2, 4, 5)} | {"sub/clip3.mp4"}
    assert all((c["frames"], c["height"], c["width"]) == (4, SIDE, SIDE) for c in m["clips"])
    tok = vitok.load(m["model"]["source"])
    assert m["model"]["weights_hash"] == tok.weights_hash
    stats = m["stats"]
    assert len(stats["mean"]) == len(stats["std"]) == m["latent_channels"] == tok.latent_channels
    # the manifest statistics match the tokens stored in the shards
    z = torch.cat([it["z"][it["mask"]] for it in LatentShards(shards_dir)]).double()
    assert stats["count"] == z.shape[0]
    torch.testing.assert_close(torch.tensor(stats["mean"], dtype=torch.float64), z.mean(0))
    torch.testing.assert_close(torch.tensor(stats["std"], dtype=torch.float64), z.std(0, correction=0))
    assert not list(shards_dir.glob("manifest.rank-*"))  # partial manifests merged away


def test_round_trip_is_bit_exact(shards_dir, video_dir):
    ds = LatentShards(shards_dir)
    tok = vitok.load(ds.manifest["model"]["source"])
    for item in ds:
        ((_, frames),), _ = read_clips(video_dir / item["source"], 4, (SIDE, SIDE), 1)
        with torch.inference_mode():
            lat = tok.encode(frames_to_tensor(frames))
        assert torch.equal(item["z"], lat.z[0])
        expected_mask = lat.mask[0] if lat.mask is not None else torch.ones(lat.z.shape[1], dtype=torch.bool)
        assert torch.equal(item["mask"], expected_mask)
    batch = collate_latents([ds[i] for i in range(3)])
    lat = latents_from_batch(tok, batch)
    assert torch.equal(lat.z, batch["z"]) and (lat.frames, lat.height, lat.width) == (4, SIDE, SIDE)
    with torch.inference_mode():
        assert tok.decode(lat).shape == (3, 3, 4, SIDE, SIDE)
    # normalized reading is (z - mean) / std with the manifest's statistics: zero mean, unit std over the set
    normed = LatentShards(shards_dir, normalize=True)
    present = torch.cat([it["z"][it["mask"]] for it in normed]).double()
    torch.testing.assert_close(present.mean(0), torch.zeros(present.shape[1], dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(present.std(0, correction=0), torch.ones(present.shape[1], dtype=torch.float64),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(normed[0]["z"][normed[0]["mask"]],
                               (ds[0]["z"][ds[0]["mask"]] - ds.mean) / ds.std)
    # ... and latents_from_batch undoes exactly that
    norm = collate_latents([normed[i] for i in range(3)])
    torch.testing.assert_close(latents_from_batch(tok, norm, ds.mean, ds.std).z, batch["z"])
    with pytest.raises(ValueError, match="pass both mean and std"):   # the mean alone was ignored
        latents_from_batch(tok, norm, mean=ds.mean)
    # forgetting them (or passing them for a raw batch) decoded garbage silently: the batch says how it was read
    with pytest.raises(ValueError, match="the batch was read with normalize=True; pass the set's mean and std"):
        latents_from_batch(tok, norm)
    with pytest.raises(ValueError, match="the batch was read without normalize=True; do not pass mean/std"):
        latents_from_batch(tok, batch, ds.mean, ds.std)
    with pytest.raises(ValueError, match="mixes normalized and raw clips"):
        latents_from_batch(tok, collate_latents([ds[0], normed[1]]))
    made_by_hand = {k: v for k, v in norm.items() if k != "normalized"}   # a batch that does not say: as asked
    assert not torch.allclose(latents_from_batch(tok, made_by_hand).z, batch["z"])


def test_collate_pads_variable_length():
    items = [{"z": torch.ones(n, 2), "mask": torch.ones(n, dtype=torch.bool), "clip_id": torch.tensor(i),
              "source": f"v{i}"} for i, n in enumerate((3, 5))]
    b = collate_latents(items)
    assert b["z"].shape == (2, 5, 2) and b["length"].tolist() == [3, 5]
    assert b["mask"].sum(1).tolist() == [3, 5] and b["z"][0, 3:].abs().sum() == 0
    assert b["source"] == ["v0", "v1"] and b["clip_id"].tolist() == [0, 1]


def test_distributed_sampler_splits_dataset(shards_dir):
    ds = LatentShards(shards_dir)
    seen = []
    for rank in range(2):
        loader = DataLoader(ds, batch_size=2, collate_fn=collate_latents,
                            sampler=DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=False))
        seen += [i for b in loader for i in b["index"].tolist()]
    assert sorted(seen) == list(range(len(ds)))


class _Counting:
    """Wraps a tokenizer and counts encoded clips."""

    def __init__(self, tok):
        self.tok, self.clips = tok, 0

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def encode(self, x, **kw):
        self.clips += x.shape[0]
        return self.tok.encode(x, **kw)


def test_resume_skips_finished_shards(tmp_path, video_dir, model_dir):
    out = tmp_path / "shards"
    tok = _Counting(vitok.load(model_dir))
    kw = dict(frames=4, size=(SIDE, SIDE), shard_size=3, batch_size=4, tok=tok)
    extract_latents(video_dir, out, str(model_dir), **kw)
    first = _manifest(out)
    assert tok.clips == NUM_GOOD
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    # a crash after shard 0 and 2 were written: shard 1 and the manifest are gone
    for name in ("shard-00001.json", "shard-00001.safetensors", "manifest.json"):
        (out / name).unlink()
    tok.clips = 0
    summary = extract_latents(video_dir, out, str(model_dir), **kw)
    assert summary["shards_made"] == 1 and summary["shards_reused"] == 2
    assert tok.clips == first["shards"][1]["num_clips"]
    for name in ("shard-00000.safetensors", "shard-00002.safetensors", "shard-00000.json"):
        assert (out / name).stat().st_mtime_ns == mtimes[name]
    again = _manifest(out)
    assert again["clips"] == first["clips"] and again["stats"] == first["stats"]


def test_1d_shards_keep_only_the_asked_tokens(tmp_path, video_dir):
    """A 1D model held to k tokens per unit stores units * k tokens per clip, all present (not K with zeros), and
    reading them back decodes as the encoder's own latents do."""
    torch.manual_seed(0)
    tok = vitok.create_model("vit1d-tiny", tile_size=16).freeze()   # 2x2 tiles per frame: 4 units per clip
    K, k = tok.max_tokens, 3
    out = tmp_path / "shards"
    extract_latents(video_dir, out, "vit1d-tiny", frames=4, size=(SIDE, SIDE), tokens=k, shard_size=3, tok=tok)
    ds = LatentShards(out)
    item = ds[0]
    ((_, frames),), _ = read_clips(video_dir / item["source"], 4, (SIDE, SIDE), 1)
    video = frames_to_tensor(frames)
    lat = tok.encode(video, num_tokens=k)
    units = lat.z.shape[1] // K
    assert units > 1 and item["z"].shape == (units * k, tok.latent_channels) and bool(item["mask"].all())
    assert ds.max_tokens == units * k
    torch.testing.assert_close(item["z"], lat.z[0].reshape(units, K, -1)[:, :k].reshape(units * k, -1))
    back = latents_from_batch(tok, collate_latents([item]))
    assert back.z.shape == lat.z.shape and torch.equal(back.mask, lat.mask)
    torch.testing.assert_close(tok.decode(back), tok.decode(lat))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# rank 1 lists the folder without clip0.mp4, as when a file lands while ranks start: the ranks must still agree
RANK1_MISSES_A_FILE = """import os, sys
import vitok.extract as ex
listed = ex.list_videos
if os.environ["RANK"] == "1":
    ex.list_videos = lambda root: [p for p in listed(root) if p.name != "clip0.mp4"]
from vitok.cli.main import main
main(sys.argv[1:])
"""


def test_torchrun_two_processes_split_disjoint_shards(tmp_path, video_dir, model_dir, shards_dir):
    out = tmp_path / "shards"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    (tmp_path / "run_extract.py").write_text(RANK1_MISSES_A_FILE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           f"--master_port={_free_port()}", str(tmp_path / "run_extract.py"), "latents", "extract", str(video_dir),
           "-o", str(out), "--model", str(model_dir), "--frames", "4", "--size", f"{SIDE}x{SIDE}",
           "--shard-size", "1", "--batch-size", "1", "--json", "-q"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = _manifest(out)
    assert m["world_size"] == 2 and [r["shards"] for r in m["ranks"]] == [4, 3]
    assert all(s["rank"] == s["index"] % 2 for s in m["shards"])
    files = [s["file"] for s in m["shards"] if s["file"]]
    assert len(files) == len(set(files)) == NUM_GOOD
    ids = sorted(c["id"] for c in m["clips"])
    assert ids == sorted(c["id"] for c in _manifest(shards_dir)["clips"])  # every clip exactly once
    assert [(c["id"], c["source"]) for c in m["clips"]] == \
        [(c["id"], c["source"]) for c in _manifest(shards_dir)["clips"]]   # ... from its own video
    assert [s["source"] for s in m["skipped"]] == ["broken.mp4"]
    # same latents as the single-process extraction
    one = {it["source"]: it["z"] for it in LatentShards(shards_dir)}
    for it in LatentShards(out):
        torch.testing.assert_close(it["z"], one[it["source"]])


def test_shards_holding_other_videos_than_planned_are_not_merged(tmp_path, video_dir, model_dir):
    from vitok.extract import list_videos, merge_manifests

    out = tmp_path / "shards"
    extract_latents(video_dir, out, str(model_dir), **KW)
    records = [json.loads((out / f"shard-0000{i}.json").read_text()) for i in range(3)]
    partial = {"rank": 0, "world_size": 1, "job": records[0]["job"], "clips_made": 0, "shards": records}
    (out / "manifest.rank-00000.json").write_text(json.dumps(partial))
    files = list_videos(video_dir)
    files[0], files[3] = files[3], files[0]   # a plan another rank could have made from another listing
    plan = [files[i:i + 3] for i in range(0, len(files), 3)]
    with pytest.raises(ExtractError, match="shard-00000 holds other videos than planned"):
        merge_manifests(out, 1, plan, records[0]["job"], video_dir.resolve(), str(model_dir), vitok.load(model_dir))


def test_damaged_shards_are_one_line_errors_naming_the_shard(tmp_path, shards_dir, capsys):
    root = tmp_path / "shards"
    shutil.copytree(shards_dir, root)
    for shard in root.glob("shard-*.safetensors"):
        with open(shard, "r+b") as f:
            f.truncate(shard.stat().st_size // 2)
    with pytest.raises(ShardError, match="shard-00000.safetensors: damaged shard"):
        LatentShards(root)[0]
    with pytest.raises(SystemExit) as e:
        main(["gen", "train", str(root), "--out", str(tmp_path / "g"), "--steps", "2", "-q"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith("error: ") and "damaged shard" in err and err.count("\n") == 1, err


def test_a_shard_whose_latents_rotted_is_named(tmp_path, shards_dir):
    """A NaN written into z's bytes (disk rot, a bad copy) was served as data: reading names the shard (other
    changed bytes are for `vitok latents verify`, below)."""
    import struct

    from safetensors import safe_open

    root = tmp_path / "shards"
    shutil.copytree(shards_dir, root)
    shard = root / "shard-00000.safetensors"
    header = struct.unpack("<Q", shard.read_bytes()[:8])[0]
    with safe_open(str(shard), "pt") as f:
        assert f.get_tensor("z").dtype == torch.float32
    start = 8 + header + json.loads(shard.read_bytes()[8:8 + header])["z"]["data_offsets"][0]
    data = bytearray(shard.read_bytes())
    data[start:start + 4] = struct.pack("<f", float("nan"))   # the first clip's first value
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"shard-00000.safetensors: damaged shard \(clip \d+ holds NaN"):
        LatentShards(root)[0]



def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``vitok ARGS``: exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_verify_checks_each_shard_against_its_recorded_checksum(tmp_path, shards_dir, capsys):
    """`vitok latents verify`: each shard file against the sha256 its extraction recorded. A finite value changed in
    a shard (which reading cannot tell from data) and a missing shard are named; a set whose manifest predates
    checksums is reported unchecked, not damaged."""
    import struct

    root = tmp_path / "shards"
    shutil.copytree(shards_dir, root)
    files = [s["file"] for s in _manifest(root)["shards"] if s["file"]]
    assert len(files) > 1 and all(len(s["sha256"]) == 64 for s in _manifest(root)["shards"] if s["file"])
    assert verify_shards(root) == {"shards_dir": str(root), "checked": len(files), "unchecked": 0, "damaged": []}
    code, out, _ = _cli(capsys, "latents", "verify", str(root))
    assert code in (0, None) and f"{len(files)} shards match their checksums" in out
    shard = root / files[0]
    data = bytearray(shard.read_bytes())
    header = struct.unpack("<Q", data[:8])[0]
    start = 8 + header + json.loads(data[8:8 + header])["z"]["data_offsets"][0]
    data[start:start + 4] = struct.pack("<f", 1.5)   # the first clip's first value, still a number
    shard.write_bytes(bytes(data))
    assert torch.isfinite(LatentShards(root)[0]["z"]).all()   # reading serves it as data
    (root / files[-1]).unlink()
    damaged = verify_shards(root)["damaged"]
    assert [d["file"] for d in damaged] == [files[0], files[-1]] and damaged[1]["reason"] == "missing"
    code, out, err = _cli(capsys, "latents", "verify", str(root))
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith(f"error: {root}: 2 damaged shards; first {files[0]}: bytes differ"), err
    shutil.rmtree(root)
    shutil.copytree(shards_dir, root)
    manifest = _manifest(root)
    for entry in manifest["shards"]:
        entry.pop("sha256")
    (root / "manifest.json").write_text(json.dumps(manifest))
    code, out, _ = _cli(capsys, "latents", "verify", str(root), "--json")
    assert code in (0, None) and json.loads(out)["unchecked"] == len(files)

def test_a_model_giving_nan_latents_is_named_at_extraction(tmp_path, video_dir, model_dir, monkeypatch):
    """Extraction wrote a model's NaN latents into shards, which reading then called damaged."""
    import vitok.tokenizer as tokenizer

    real = tokenizer.Tokenizer.encode
    monkeypatch.setattr(tokenizer.Tokenizer, "encode", lambda self, *a, **k: (lambda lat: dataclasses.replace(
        lat, z=lat.z * float("nan")))(real(self, *a, **k)))
    with pytest.raises(ExtractError, match=r"gave NaN or infinite latents"):
        extract_latents(video_dir, tmp_path / "out", str(model_dir), frames=4, size=(SIDE, SIDE))
    assert not list((tmp_path / "out").glob("shard-*"))


def test_extract_fails_when_no_clip_can_be_read(tmp_path, video_dir, model_dir):
    """A folder of nothing but unreadable files is an error (like a folder with no videos), not a set of 0 clips;
    the run leaves nothing behind, where its shard records used to refuse the rerun after the input was fixed."""
    videos, out = tmp_path / "videos", tmp_path / "out"
    videos.mkdir()
    for name in ("a.mp4", "b.mkv"):
        (videos / name).write_bytes(b"not a video" * 50)
    with pytest.raises(ExtractError, match=r"no clip could be read \(2 files skipped; first: a.mp4: "):
        extract_latents(videos, out, str(model_dir), frames=4, size=(SIDE, SIDE))
    assert list(out.iterdir()) == []
    shutil.copy(video_dir / "clip0.mp4", videos / "a.mp4")   # the user fixes the input
    extract_latents(videos, out, str(model_dir), frames=4, size=(SIDE, SIDE))
    m = _manifest(out)
    assert m["num_clips"] == 1 and [s["source"] for s in m["skipped"]] == ["b.mkv"]


def test_native_size_clips_over_the_pixel_limit_are_skipped_before_decoding(tmp_path, video_dir, model_dir,
                                                                           monkeypatch):
    """At native size a small file can hold huge frames (a 14 KB h264 of 2048x2048 took 2.4 GB for one clip): a file
    whose clips would pass the limit a .vtok chunk has is skipped, naming it and --size, before a frame is decoded;
    with --size it is extracted."""
    import vitok.data.io as io
    import vitok.extract as extract

    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(video_dir / "clip0.mp4", videos / "a.mp4")
    monkeypatch.setattr(extract, "MAX_CHUNK_PIXELS", 4 * SIDE * SIDE - 1)
    monkeypatch.setattr(io, "iter_video", lambda *a, **k: pytest.fail("decoded a clip over the limit"))
    with pytest.raises(ExtractError, match=rf"a.mp4: clips of 4 frames at its {SIDE}x{SIDE} are over the "
                                           rf"{4 * SIDE * SIDE - 1} pixel limit of one clip; give a --size"):
        extract_latents(videos, tmp_path / "out", str(model_dir), frames=4, size=None)
    monkeypatch.undo()
    monkeypatch.setattr(extract, "MAX_CHUNK_PIXELS", 4 * SIDE * SIDE - 1)
    extract_latents(videos, tmp_path / "out", str(model_dir), frames=4, size=(SIDE // 2, SIDE // 2))
    assert _manifest(tmp_path / "out")["num_clips"] == 1


KW = dict(frames=4, size=(SIDE, SIDE), shard_size=3, batch_size=4)  # 7 files -> 3 shards, one encode call each


@pytest.mark.parametrize("error", [MemoryError("out of memory"), RuntimeError("DefaultCPUAllocator: can't allocate")],
                         ids=["memory", "allocator"])
def test_a_transient_read_error_stops_the_run_instead_of_skipping_the_video(tmp_path, video_dir, model_dir,
                                                                          monkeypatch, error):
    """Running out of memory while decoding a readable video is not the file's fault: it was recorded as skipped,
    its shard marked done, and no rerun, even with -y, ever extracted the video."""
    import vitok.data.io as io

    real_iter = io.iter_video

    def failing_on_clip2(path, **kwargs):
        if Path(path).name == "clip2.mp4":   # the first video of shard 1 (broken, clip0, clip1 | clip2, ...)
            raise error
        return real_iter(path, **kwargs)

    out = tmp_path / "shards"
    monkeypatch.setattr(io, "iter_video", failing_on_clip2)
    with pytest.raises(type(error)):
        extract_latents(video_dir, out, str(model_dir), **KW)
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.json", "shard-00000.safetensors"]
    monkeypatch.setattr(io, "iter_video", real_iter)   # the memory is back
    summary = extract_latents(video_dir, out, str(model_dir), **KW)
    assert (summary["shards_made"], summary["shards_reused"]) == (2, 1)
    m = _manifest(out)
    assert m["num_clips"] == NUM_GOOD and [s["source"] for s in m["skipped"]] == ["broken.mp4"]


def test_rerun_redoes_shards_whose_input_videos_changed(tmp_path, video_dir, model_dir):
    videos = tmp_path / "videos"
    shutil.copytree(video_dir, videos)
    out = tmp_path / "shards"
    extract_latents(videos, out, str(model_dir), **KW)
    clip1 = next(it["z"] for it in LatentShards(out) if it["source"] == "clip1.mp4")
    # the same names (and mtimes) under another input folder are other videos
    moved = tmp_path / "videos2"
    shutil.copytree(video_dir, moved)
    with pytest.raises(ExtractError, match=r"shard-00000.json: shard from a different extraction \(input folder"):
        extract_latents(moved, out, str(model_dir), **KW)
    shutil.copy(videos / "clip1.mp4", videos / "clip0.mp4")  # an edited video under its old name
    with pytest.raises(ExtractError, match=r"shard-00000.json: shard from a different extraction \(input folder"):
        extract_latents(videos, out, str(model_dir), **KW)
    summary = extract_latents(videos, out, str(model_dir), overwrite=True, **KW)
    assert (summary["shards_made"], summary["shards_reused"]) == (1, 2)
    assert torch.equal(next(it["z"] for it in LatentShards(out) if it["source"] == "clip0.mp4"), clip1)


class _Interrupting(_Counting):
    """A counting tokenizer that is interrupted (as by Ctrl-C) on its encode call number ``at``."""

    def __init__(self, tok, at):
        super().__init__(tok)
        self.at, self.calls = at, 0

    def encode(self, x, **kw):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return super().encode(x, **kw)


def test_interrupted_overwrite_with_other_options_leaves_no_manifest(tmp_path, video_dir, model_dir):
    out = tmp_path / "shards"
    extract_latents(video_dir, out, str(model_dir), **KW)
    tok = _Interrupting(vitok.load(model_dir), at=2)  # shard 0 of the new job is written, shard 1 is not
    with pytest.raises(KeyboardInterrupt):
        extract_latents(video_dir, out, str(model_dir), **{**KW, "frames": 2}, overwrite=True, tok=tok)
    assert json.loads((out / "shard-00000.json").read_text())["job"]["frames"] == 2
    with pytest.raises(ShardError, match="manifest.json: no manifest"):
        LatentShards(out)


def test_a_shard_replaced_by_an_interrupted_overwrite_is_not_taken_for_the_old_one(tmp_path, video_dir, model_dir,
                                                                                    monkeypatch):
    """-y replaced a shard before its record: killed between the two writes, the old record stayed beside the new
    shard, and a rerun of the old extraction reused that shard, another run's latents, unnoticed."""
    import vitok.extract as extract

    other = tmp_path / "other"
    shutil.copytree(video_dir, other)
    shutil.copy(video_dir / "clip1.mp4", other / "clip0.mp4")
    out = tmp_path / "shards"
    extract_latents(video_dir, out, str(model_dir), **KW)
    clip0 = next(it["z"] for it in LatentShards(out) if it["source"] == "clip0.mp4")
    real_write = extract.write_bytes_atomic

    def killed_at_the_record(path, data):
        if Path(path).name == "shard-00000.json":
            raise KeyboardInterrupt
        real_write(path, data)

    monkeypatch.setattr(extract, "write_bytes_atomic", killed_at_the_record)
    with pytest.raises(KeyboardInterrupt):
        extract_latents(other, out, str(model_dir), overwrite=True, **KW)
    monkeypatch.setattr(extract, "write_bytes_atomic", real_write)
    summary = extract_latents(video_dir, out, str(model_dir), **KW)
    assert (summary["shards_made"], summary["shards_reused"]) == (1, 2)
    assert torch.equal(next(it["z"] for it in LatentShards(out) if it["source"] == "clip0.mp4"), clip0)


def _count_held_frames(monkeypatch) -> list[int]:
    """Count decoded frames not yet encoded, as [now, peak], by wrapping the video reader and the encoder."""
    import vitok.data.io as io
    import vitok.extract as extract

    held, real_iter, real_encode = [0, 0], io.iter_video, extract._encode

    def counting_iter(*args, **kwargs):
        for chunk in real_iter(*args, **kwargs):
            held[0] += len(chunk)
            held[1] = max(held)
            yield chunk

    def counting_encode(tok, clips, *args):
        held[0] -= sum(map(len, clips))
        return real_encode(tok, clips, *args)

    monkeypatch.setattr(io, "iter_video", counting_iter)
    monkeypatch.setattr(extract, "_encode", counting_encode)
    return held


def test_decoded_clips_held_at_once_are_bounded_by_the_batch(tmp_path, model_dir, monkeypatch):
    """At native size each video has its own shape, so no group filled a batch and every clip of the shard stayed
    decoded in memory until the shard ended."""
    from vitok.data.io import write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):   # five sizes
        write_video(videos / f"v{i}.mp4", rng.integers(0, 256, (4, 32, 24 + 8 * i, 3), dtype=np.uint8), 8)
    held = _count_held_frames(monkeypatch)
    extract_latents(videos, tmp_path / "shards", str(model_dir), frames=4, shard_size=5, batch_size=2)
    assert held == [0, 2 * 4]
    assert _manifest(tmp_path / "shards")["num_clips"] == 5


def test_clips_per_video_are_decoded_one_at_a_time(tmp_path, model_dir, monkeypatch):
    """All --clips-per-video clips of a video were decoded into one array, held at once whatever --batch-size."""
    from vitok.data.io import write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "long.mp4", np.random.default_rng(0).integers(0, 256, (26, 32, 32, 3), dtype=np.uint8), 8)
    held = _count_held_frames(monkeypatch)
    extract_latents(videos, tmp_path / "shards", str(model_dir), frames=4, clips_per_video=6, batch_size=2)
    assert held == [0, 2 * 4]
    clips = _manifest(tmp_path / "shards")["clips"]
    assert [(c["id"], c["clip"], c["start"], c["frames"]) for c in clips] == [(j, j, 4 * j, 4) for j in range(6)]


def test_clips_are_the_videos_consecutive_windows(tmp_path):
    """Clips read one at a time hold exactly the frames of the whole video read at once: consecutive windows from
    its start, a shorter tail dropped, and a video shorter than a clip gives one shorter clip."""
    from vitok.data.io import read_video, write_video

    rng = np.random.default_rng(0)
    long, short = tmp_path / "long.mp4", tmp_path / "short.mp4"
    write_video(long, rng.integers(0, 256, (11, 24, 40, 3), dtype=np.uint8), 8)
    write_video(short, rng.integers(0, 256, (3, 24, 40, 3), dtype=np.uint8), 8)
    whole, _ = read_video(long, size=(24, 16), crop="center")   # (W, H)
    clips, fps = read_clips(long, 4, (16, 24), 5)                # (H, W)
    assert fps == 8 and [start for start, _ in clips] == [0, 4]
    for start, clip in clips:
        assert np.array_equal(clip, whole[start:start + 4])
    ((start, clip),), _ = read_clips(short, 4, None, 5)
    assert start == 0 and np.array_equal(clip, read_video(short)[0])


@pytest.mark.parametrize("batch_size", [1, 4], ids=["encoded", "queued"])
def test_a_video_unreadable_part_way_is_skipped_whole(tmp_path, video_dir, model_dir, monkeypatch, batch_size):
    """Clips read before a file's error (already encoded, or still queued) are not kept: the file is skipped, as
    when it is read at once."""
    import vitok.data.io as io
    from vitok.data.errors import VideoReadError

    real_iter = io.iter_video

    def truncated_after_one_clip(path, **kwargs):
        chunks = real_iter(path, **kwargs)
        if Path(path).name == "clip1.mp4":
            yield next(chunks)
            raise VideoReadError(f"{path}: truncated")
        yield from chunks

    monkeypatch.setattr(io, "iter_video", truncated_after_one_clip)
    out, tok = tmp_path / "shards", _Counting(vitok.load(model_dir))
    extract_latents(video_dir, out, str(model_dir), tok=tok,
                    **{**KW, "frames": 2, "clips_per_video": 2, "batch_size": batch_size})
    m = _manifest(out)
    wasted = 1 if batch_size == 1 else 0   # the file's first clip, encoded before its error; a queued one is not
    assert tok.clips == m["num_clips"] + wasted
    assert [s["source"] for s in m["skipped"]] == ["broken.mp4", "clip1.mp4"]
    assert "clip1.mp4" not in {c["source"] for c in m["clips"]} and m["num_clips"] == 2 * (NUM_GOOD - 1)
    assert m["stats"]["count"] == sum(it["mask"].sum().item() for it in LatentShards(out))


def test_an_edited_model_config_is_another_extraction(tmp_path, video_dir, model_dir):
    """Editing the model folder's config.json (here the tile size) changes what encode gives under the same name and
    weights, yet a rerun reused the shards of the old config."""
    from safetensors import safe_open

    model, out, fresh = tmp_path / "model", tmp_path / "shards", tmp_path / "fresh"
    shutil.copytree(model_dir, model)
    extract_latents(video_dir, out, str(model), **KW)
    before, old_hash = {it["source"]: it["z"] for it in LatentShards(out)}, _manifest(out)["model"]["config_hash"]
    config = json.loads((model / "config.json").read_text())
    stats = {"latent_mean": [0.5] * config["latent_channels"], "latent_std": [2.0] * config["latent_channels"]}
    (model / "config.json").write_text(json.dumps({**config, **stats}))   # measured statistics: same latents
    assert extract_latents(video_dir, out, str(model), **KW)["shards_reused"] == 3
    (model / "config.json").write_text(json.dumps({**config, "tile_size": 16}))   # 32x32 frames now in tiles
    with pytest.raises(ExtractError, match=r"shard-00000.json: shard from a different extraction \(model or options"):
        extract_latents(video_dir, out, str(model), **KW)
    assert extract_latents(video_dir, out, str(model), overwrite=True, **KW)["shards_made"] == 3
    extract_latents(video_dir, fresh, str(model), **KW)
    after = {it["source"]: it["z"] for it in LatentShards(out)}
    assert all(torch.equal(after[it["source"]], it["z"]) for it in LatentShards(fresh))   # as a fresh extraction
    assert not any(torch.equal(after[source], z) for source, z in before.items())
    with safe_open(str(out / "shard-00000.safetensors"), framework="pt") as f:   # the shard says which config too
        assert f.metadata()["config_hash"] == _manifest(out)["model"]["config_hash"] != old_hash


def test_shards_recorded_before_config_hashes_are_refused(tmp_path, video_dir, model_dir):
    """A record without the model's config hash cannot tell which config made it: refused, and -y replaces it."""
    out = tmp_path / "shards"
    extract_latents(video_dir, out, str(model_dir), **KW)
    for path in out.glob("shard-*.json"):
        record = json.loads(path.read_text())
        del record["job"]["config_hash"]
        path.write_text(json.dumps(record))
    with pytest.raises(ExtractError, match=r"shard-00000.json: shard from a different extraction \(model or options"):
        extract_latents(video_dir, out, str(model_dir), **KW)
    assert extract_latents(video_dir, out, str(model_dir), overwrite=True, **KW)["shards_made"] == 3


def test_shards_of_another_extraction_are_refused(tmp_path, shards_dir, video_dir, model_dir):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(1)
    other_tok = vitok.create_model("vit-tiny").freeze()
    other_weights, other_options = tmp_path / "weights", tmp_path / "options"
    extract_latents(video_dir, other_weights, str(model_dir), tok=other_tok, **{**KW, "batch_size": 1})
    extract_latents(video_dir, other_options, str(model_dir), **{**KW, "size": (16, 16)})
    root = tmp_path / "set"
    shutil.copytree(shards_dir, root)
    shard = root / "shard-00000.safetensors"
    shutil.copy(other_weights / shard.name, shard)
    with pytest.raises(ShardError, match="shard-00000.safetensors: shard made with other tokenizer weights"):
        LatentShards(root)[0]
    shutil.copy(other_options / shard.name, shard)
    with pytest.raises(ShardError, match="shard-00000.safetensors: shard made with other extraction options"):
        LatentShards(root)[0]
    from safetensors import safe_open

    with safe_open(str(shards_dir / shard.name), framework="pt") as f:
        meta = f.metadata()
    save_file(load_file(shards_dir / shard.name), str(shard), metadata={**meta, "config_hash": "0" * 16})
    with pytest.raises(ShardError, match="shard-00000.safetensors: shard made with another model config than the "
                                         "manifest's"):
        LatentShards(root)[0]
    save_file(load_file(other_options / shard.name), str(shard))  # as written before shards had metadata
    with pytest.raises(ShardError, match=r"shard-00000.safetensors: row 0 does not hold clip 1 of 16 tokens"):
        LatentShards(root)[0]


def test_open_shards_are_bounded(shards_dir, monkeypatch):
    expected = [it["z"] for it in LatentShards(shards_dir)]
    monkeypatch.setattr("vitok.data.shards.MAX_OPEN_SHARDS", 2)
    ds = LatentShards(shards_dir)
    for _ in range(2):  # 3 shards, 2 open at most: the second pass reopens closed ones
        for i, z in enumerate(expected):
            assert torch.equal(ds[i]["z"], z) and len(ds._handles) <= 2
    assert list(ds._handles) == ["shard-00001.safetensors", "shard-00002.safetensors"]


def test_shard_that_cannot_be_mapped_is_an_error_not_damage(shards_dir, monkeypatch):
    import safetensors

    def no_maps_left(*args, **kwargs):
        raise RuntimeError("unable to mmap 4096 bytes from file <shard>: Cannot allocate memory (12)")

    monkeypatch.setattr(safetensors, "safe_open", no_maps_left)
    with pytest.raises(ShardError, match=r"shard-00000.safetensors: cannot open shard \(unable to mmap") as e:
        LatentShards(shards_dir)[0]
    assert "damaged" not in str(e.value)


def test_items_are_copies(shards_dir):
    ds = LatentShards(shards_dir)
    first = ds[0]
    z, mask = first["z"].clone(), first["mask"].clone()
    first["z"].add_(100)
    first["mask"].logical_not_()
    assert torch.equal(ds[0]["z"], z) and torch.equal(ds[0]["mask"], mask)


_SIGTERM_AFTER_SAVE = """
import os, signal, sys, time
import safetensors.torch

save = safetensors.torch.save_file

def save_then_sigterm(*args, **kwargs):  # the shard's temporary file is written, not yet renamed into place
    save(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)

safetensors.torch.save_file = save_then_sigterm
from vitok.cli.main import main
main(sys.argv[1:])
"""


def test_sigterm_stops_cleanly_and_a_rerun_clears_leftover_temporaries(tmp_path, video_dir, model_dir):
    out = tmp_path / "shards"
    cmd = [sys.executable, "-c", _SIGTERM_AFTER_SAVE, "latents", "extract", str(video_dir), "-o", str(out),
           "--model", str(model_dir), "--frames", "4", "--size", f"{SIDE}x{SIDE}", "--shard-size", "3",
           "--device", "cpu", "-q"]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=120)  # cwd: the repo root on sys.path would shadow the installed package
    assert proc.returncode == 130 and proc.stderr.strip() == "error: aborted", proc.stderr[-3000:]  # as Ctrl-C
    assert sorted(p.name for p in out.iterdir()) == []
    # a SIGKILL leaves temporaries no handler could remove: the next run clears them
    leftovers = [".shard-00000.safetensors.k1ll3d.safetensors", ".shard-00001.json.k1ll3d.json",
                 ".manifest.json.k1ll3d.json", ".manifest.rank-00001.json.k1ll3d.json"]
    for name in leftovers:
        (out / name).write_bytes(b"partial")
    extract_latents(video_dir, out, str(model_dir), **KW)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("edit", [lambda m: {"format": "vitok-latent-shards"}, lambda m: [m],
                                  lambda m: {**m, "clips": [{k: v for k, v in c.items() if k != "row"}
                                                            for c in m["clips"]]}],
                         ids=["no-keys", "list", "clip-without-row"])
def test_malformed_manifest_is_a_one_line_error(tmp_path, shards_dir, capsys, edit):
    root = tmp_path / "shards"
    shutil.copytree(shards_dir, root)
    (root / "manifest.json").write_text(json.dumps(edit(_manifest(shards_dir))))
    with pytest.raises(ShardError, match="manifest.json: "):
        LatentShards(root)[0]
    with pytest.raises(SystemExit) as e:
        main(["latents", "stats", str(root)])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith("error: ") and err.count("\n") == 1, err


def test_opening_looks_at_each_shard_file_once(tmp_path, shards_dir, monkeypatch):
    root = tmp_path / "shards"
    shutil.copytree(shards_dir, root)
    m = _manifest(root)
    m["clips"] *= 50  # many clips per shard file, as in a large set
    (root / "manifest.json").write_text(json.dumps(m))
    looked, stat = [], Path.stat

    def counting_stat(self, *args, **kwargs):
        looked.append(self.name)
        return stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", counting_stat)
    assert len(LatentShards(root)) == 50 * NUM_GOOD
    assert sorted(n for n in looked if n.startswith("shard-")) == [f"shard-0000{i}.safetensors" for i in range(3)]


def test_clip_table_gives_back_the_manifests_clips(tmp_path, shards_dir):
    root = tmp_path / "shards"
    shutil.copytree(shards_dir, root)
    m = _manifest(root)
    m["clips"][1]["source"] = "caf\u00e9/\udcff.mp4"   # any name a file system gave (a lone surrogate too)
    for key in ("fps", "num_tokens", "clip", "start"):   # an older manifest's clip
        m["clips"][2].pop(key)
    (root / "manifest.json").write_text(json.dumps(m))
    clips = LatentShards(root).clips
    assert len(clips) == NUM_GOOD and list(clips)[0] == clips[0] == clips[-NUM_GOOD]
    assert list(clips) == m["clips"]
    assert "fps" not in clips[2] and clips[0]["fps"] == "8" and clips[1]["source"] == "caf\u00e9/\udcff.mp4"
    assert clips.column("tokens").tolist() == [c["tokens"] for c in m["clips"]]
    assert clips.column("fps").tolist() == ["8", "8", None, "8", "8", "8"]
    with pytest.raises(IndexError):
        clips[NUM_GOOD]
    empty = ClipTable([])
    assert len(empty) == 0 and empty.shard_names == [] and list(empty) == []
    odd = [{"source": "a", "shard": "s", "big": 2 ** 63 - 1, "low": -2 ** 63, "flag": 1, "tags": [1, 2]},
           {"source": "b", "shard": "s", "big": 5, "low": 3, "flag": True, "tags": None}]
    assert list(ClipTable(odd)) == odd and type(ClipTable(odd)[1]["flag"]) is bool   # True stays True, not 1
    # as a DataLoader worker started by spawn gets it: a key some clips lack stays absent, not a stray object
    assert list(pickle.loads(pickle.dumps(clips))) == m["clips"]
    nulls = ClipTable([{"source": "a", "shard": "s", "fps": None}, {"source": "b", "shard": "s"}])
    assert nulls.column("fps").tolist() == [None, None] and list(nulls)[1] == {"source": "b", "shard": "s"}
    mixed = ClipTable([{"source": "a", "shard": "s", "num_tokens": None},
                       {"source": "b", "shard": "s", "num_tokens": 8},
                       {"source": "c", "shard": "s"}])
    assert mixed.values("num_tokens") == [None, 8, None] and mixed.values("nothing") == [None] * 3


def test_a_large_manifest_is_held_in_columns(tmp_path, shards_dir):
    """A million clip dicts took ~0.8 GB per process (and DataLoader workers copy what they touch); columns take
    about 130 bytes a clip here."""
    import gc
    import tracemalloc

    root = tmp_path / "shards"
    shutil.copytree(shards_dir, root)
    m = _manifest(root)
    clips = [{**c, "id": i, "source": f"videos/part{i % 97:03d}/clip_{i:08d}.mp4"}
             for i, c in enumerate(m["clips"] * 4000)]
    (root / "manifest.json").write_text(json.dumps({**m, "clips": clips, "num_clips": len(clips)}))
    del clips, m
    gc.collect()
    tracemalloc.start()
    try:
        ds = LatentShards(root)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(ds) == 4000 * NUM_GOOD and ds.clips[-1]["id"] == len(ds) - 1
    assert held / len(ds) < 300, f"{held / len(ds):.0f} bytes held per clip"


def test_manifest_records_each_clips_frame_rate(shards_dir):
    assert [c["fps"] for c in _manifest(shards_dir)["clips"]] == ["8"] * NUM_GOOD  # conftest writes 8 fps clips


def test_too_many_tokens_are_refused_before_any_output(tmp_path, video_dir):
    torch.manual_seed(0)
    tok = vitok.create_model("vit1d-tiny").freeze()
    out = tmp_path / "shards"
    with pytest.raises(ExtractError, match=r"--tokens 999: vit1d-tiny takes 1 to 16 tokens per unit"):
        extract_latents(video_dir, out, "vit1d-tiny", tokens=999, tok=tok, **KW)
    assert not out.exists()


def test_output_folder_rules(tmp_path, video_dir, model_dir):
    from safetensors.torch import save_file

    videos = tmp_path / "videos"
    shutil.copytree(video_dir, videos)
    for out in (videos, videos / "sub" / "shards"):
        with pytest.raises(ExtractError, match="is the input folder or inside it") as e:
            extract_latents(videos, out, str(model_dir), **KW)
        assert e.value.all_ranks   # every rank finds it: under torchrun rank 0 alone prints it
    assert sorted(p.name for p in videos.rglob("*")) == sorted(p.name for p in video_dir.rglob("*"))
    out = tmp_path / "shards"
    extract_latents(videos, out, str(model_dir), **{**KW, "shard_size": 2})  # 4 shards
    (out / "notes.txt").write_text("mine")
    (out / "shard-99999.json").write_text('{"mine": true}')  # named like a shard record, but not one
    save_file({"w": torch.ones(3)}, str(out / "shard-00042.safetensors"))   # ... like a shard, but not one
    with pytest.raises(ExtractError, match=r"holds other files \(notes.txt, shard-00042.safetensors, "
                                           r"shard-99999.json\); choose another folder, or -y") as e:
        extract_latents(videos, out, str(model_dir), **{**KW, "shard_size": 2})
    assert e.value.all_ranks
    extract_latents(videos, out, str(model_dir), overwrite=True, **KW)  # 3 shards: shard 3 is stale
    shards = [f"shard-0000{i}.{s}" for i in range(3) for s in ("json", "safetensors")]
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", "notes.txt", "shard-99999.json",
                                                            "shard-00042.safetensors", *shards])
    for name in ("notes.txt", "shard-99999.json", "shard-00042.safetensors"):
        (out / name).unlink()
    # a name as this code writes them is no licence to overwrite the file without -y
    (out / "shard-00001.json").write_text("my notes")
    with pytest.raises(ExtractError, match=r"holds other files \(shard-00001.json\)"):
        extract_latents(videos, out, str(model_dir), **KW)
    (out / "shard-00001.json").unlink()
    save_file({"w": torch.ones(3)}, str(out / "shard-00001.safetensors"))   # a shard whose record is gone
    (out / "manifest.json").write_text('{"my": "dataset index"}')
    with pytest.raises(ExtractError, match=r"holds other files \(manifest.json, shard-00001.safetensors\)"):
        extract_latents(videos, out, str(model_dir), **KW)
    assert json.loads((out / "manifest.json").read_text()) == {"my": "dataset index"}


def test_size_is_width_by_height_as_in_encode(tmp_path, video_dir, model_dir):
    from vitok.extract import parse_size

    assert parse_size("64x32") == (32, 64) and parse_size("16") == (16, 16)  # (H, W) from WxH
    out = tmp_path / "wide"
    with pytest.raises(SystemExit) as e:
        main(["latents", "extract", str(video_dir), "-o", str(out), "--model", str(model_dir), "--frames", "4",
              "--size", "32x16", "-q"])
    assert e.value.code == 0
    clips = json.loads((out / "manifest.json").read_text())["clips"]
    assert {(c["width"], c["height"]) for c in clips} == {(32, 16)}


def test_errors_every_rank_raises_are_printed_by_rank_0_alone(tmp_path, video_dir, model_dir, capsys, monkeypatch):
    """Under torchrun each rank raised the same option error and printed it: one line per rank for one mistake.
    An error about a rank's own shards is still printed by that rank."""
    empty, out = tmp_path / "empty", tmp_path / "shards"
    empty.mkdir()
    command = ["latents", "extract", "-o", str(out), "--model", str(model_dir), "--frames", "4", "-q"]
    mistakes = {"--size 'abc': expected WxH": [str(video_dir), "--size", "abc"],
                "--tokens is only for 1D models": [str(video_dir), "--tokens", "2"],
                f"{empty.resolve()}: no video files found": [str(empty)]}
    for other_rank, lines in ((True, 0), (False, 1)):   # as rank 1 of a torchrun job would, then rank 0
        monkeypatch.setattr("vitok.cli.common.torchrun_rank", lambda other=other_rank: int(other))
        for message, args in mistakes.items():
            with pytest.raises(SystemExit) as e:
                main([*command, *args])
            err = capsys.readouterr().err
            assert e.value.code == 1 and err.count("\n") == err.count(f"error: {message}") == lines, (lines, err)
    extract_latents(video_dir, out, str(model_dir), **KW)
    monkeypatch.setattr("vitok.cli.common.torchrun_rank", lambda: 1)   # a refusal of a rank's own shard: it says it
    with pytest.raises(SystemExit) as e:
        main([*command, str(video_dir), "--size", "16"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "shard from a different extraction" in err and err.count("\n") == 1, err


MIXED = [(32, 32), (16, 16), (48, 32), (16, 24)]   # (H, W) of the videos of a native-size extraction
MIXED_KW = dict(frames=4, shard_size=3, batch_size=1)   # 2 shards, the first of three sizes; no --size


@pytest.fixture(scope="module")
def mixed_set(tmp_path_factory, model_dir) -> tuple[Path, Path]:
    """(videos, shards) of a native-size extraction of videos of different sizes. Read-only for tests."""
    from vitok.data.io import write_video

    videos, out = tmp_path_factory.mktemp("mixed"), tmp_path_factory.mktemp("mixed_shards")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(MIXED):
        write_video(videos / f"v{i}.mp4", rng.integers(0, 256, (4, h, w, 3), dtype=np.uint8), 8)
    torch.set_num_threads(1)
    extract_latents(videos, out, str(model_dir), **MIXED_KW)
    return videos, out


def _as_version_1(src: Path, dst: Path) -> None:
    """Copy shard set ``src`` to ``dst`` as version 1 wrote it: each shard's rows padded to its longest clip
    (``z`` (n, N, C), ``mask`` (n, N), no ``offset``), version 1 in the manifest and in each shard record's job."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    shutil.copytree(src, dst)
    m = _manifest(dst)
    for name in sorted({c["shard"] for c in m["clips"]}):
        with safe_open(str(dst / name), framework="pt") as f:
            meta, t = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        if "offset" in t:   # (a set already padded, as the code before version 2 wrote, is kept as it is)
            offset, lengths = t.pop("offset").tolist(), t["length"].tolist()
            z = torch.zeros(len(lengths), max(lengths), t["z"].shape[1])
            mask = torch.zeros(len(lengths), max(lengths), dtype=torch.bool)
            for row, (a, b) in enumerate(zip(offset, offset[1:])):
                z[row, :b - a], mask[row, :b - a] = t["z"][a:b], t["mask"][a:b]
            t.update(z=z, mask=mask)
        save_file(t, str(dst / name), metadata=meta)
    for path in dst.glob("shard-*.json"):
        record = json.loads(path.read_text())
        record["job"]["version"] = 1
        path.write_text(json.dumps(record))
    (dst / "manifest.json").write_text(json.dumps({**m, "version": 1}))


def _items_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]
                                        for k in a)


def test_mixed_sizes_are_stored_ragged_without_padding(mixed_set, model_dir):
    """At native size every row of a shard was padded to the shard's largest clip (one 512x512 video beside 32x32
    ones stored 15x the real tokens): a shard now holds exactly its clips' tokens, one clip after another."""
    from safetensors.torch import load_file

    videos, out = mixed_set
    m = _manifest(out)
    assert len({(c["height"], c["width"]) for c in m["clips"]}) == len(MIXED)
    stored = 0
    for shard in m["shards"]:
        t = load_file(out / shard["file"])
        clips = sorted((c for c in m["clips"] if c["shard"] == shard["file"]), key=lambda c: c["row"])
        lengths = [c["tokens"] for c in clips]
        assert len(set(lengths)) == len(lengths)   # mixed sizes within one shard, not only across shards
        assert t["z"].shape == (sum(lengths), m["latent_channels"]) and t["mask"].shape == (sum(lengths),)
        assert t["offset"].tolist() == np.cumsum([0, *lengths]).tolist()
        assert t["length"].tolist() == lengths and t["clip"].tolist() == [c["id"] for c in clips]
        stored += t["z"].shape[0]
    assert stored == sum(c["tokens"] for c in m["clips"]) and m["version"] == 2
    tok = vitok.load(model_dir)
    for item in LatentShards(out):
        ((_, frames),), _ = read_clips(videos / item["source"], 4, None, 1)
        with torch.inference_mode():
            lat = tok.encode(frames_to_tensor(frames))
        assert torch.equal(item["z"], lat.z[0])
        expected_mask = lat.mask[0] if lat.mask is not None else torch.ones(lat.z.shape[1], dtype=torch.bool)
        assert torch.equal(item["mask"], expected_mask)
        assert (item["height"].item(), item["width"].item()) == tuple(frames.shape[1:3])


def test_version_1_padded_sets_still_read(tmp_path, mixed_set):
    """Sets extracted before shards were ragged (manifest version 1, rows padded) read the same items; a shard whose
    layout is not its manifest's version, or a row not holding the manifest's clip, is a ShardError naming it."""
    from safetensors.torch import load_file, save_file

    _, out = mixed_set
    old = tmp_path / "v1"
    _as_version_1(out, old)
    padded = load_file(old / "shard-00000.safetensors")
    assert "offset" not in padded and padded["z"].dim() == 3 and not padded["mask"].all()   # really padded
    new_ds, old_ds = LatentShards(out), LatentShards(old)
    assert len(old_ds) == len(new_ds) == len(MIXED) and old_ds.max_tokens == new_ds.max_tokens
    for i in range(len(new_ds)):
        assert _items_equal(old_ds[i], new_ds[i])
    for normalize in (False, True):   # collated batches too
        batch = [collate_latents([LatentShards(r, normalize=normalize)[i] for i in range(3)]) for r in (out, old)]
        assert _items_equal(*batch)
    first = old_ds[0]   # items of a padded set are copies too
    first["z"].add_(100)
    assert torch.equal(old_ds[0]["z"], new_ds[0]["z"])
    # the manifest's version decides the layout; a shard of the other layout is refused, not misread
    mixed = tmp_path / "mixed"
    shutil.copytree(out, mixed)
    shutil.copy(old / "shard-00000.safetensors", mixed / "shard-00000.safetensors")
    with pytest.raises(ShardError, match="shard-00000.safetensors: shard has the padded layout of version 1, not "
                                         "that of the manifest's version 2"):
        LatentShards(mixed)[0]
    shutil.copy(out / "shard-00000.safetensors", old / "shard-00001.safetensors")
    with pytest.raises(ShardError, match="shard-00001.safetensors: shard has the ragged layout of version 2 or "
                                         "later, not that of the manifest's version 1"):
        LatentShards(old)[len(MIXED) - 1]
    t = load_file(out / "shard-00000.safetensors")   # a ragged shard whose offsets do not fit its lengths
    save_file({**t, "offset": t["offset"] + 1}, str(mixed / "shard-00000.safetensors"))
    with pytest.raises(ShardError, match=r"shard-00000.safetensors: damaged shard \(z .*offsets and lengths do not"):
        LatentShards(mixed)[0]
    m = _manifest(old)   # ... and each padded row is still checked against the manifest
    m["clips"][0]["row"] = 1
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ShardError, match=r"shard-00000.safetensors: row 1 does not hold clip 0 of 16 tokens"):
        LatentShards(old)[0]


def test_a_rerun_over_a_version_1_set_is_another_extraction(tmp_path, mixed_set, model_dir):
    """Version-1 shards are not resumed into a version-2 set: refused without -y (naming the version), replaced
    with it."""
    from safetensors.torch import load_file

    videos, out = mixed_set
    old = tmp_path / "v1"
    _as_version_1(out, old)
    with pytest.raises(ExtractError, match=r"shard-00000.json: shard from a different extraction \(shard format "
                                           r"version 1; this vitok writes 2\); use another output folder or -y"):
        extract_latents(videos, old, str(model_dir), **MIXED_KW)
    assert _manifest(old)["version"] == 1 and len(LatentShards(old)) == len(MIXED)   # left as it was
    summary = extract_latents(videos, old, str(model_dir), overwrite=True, **MIXED_KW)
    assert (summary["shards_made"], summary["shards_reused"]) == (2, 0)
    assert _manifest(old)["version"] == 2 and "offset" in load_file(old / "shard-00000.safetensors")
    assert all(_items_equal(a, b) for a, b in zip(LatentShards(old), LatentShards(out)))
    for path in old.glob("shard-*.json"):
        assert json.loads(path.read_text())["job"]["version"] == 2

"""The trainer end to end on tiny configs, in process: loss falls, exports load, resume is exact, NaN guard, GAN."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import vitok
from vitok.data.errors import VitokError
from vitok.train.losses import TokenizerLoss
from vitok.train.trainer import TrainingDiverged, TrainingStopped, train


def test_tiny_run_learns_and_exports(make_cfg, metrics, tmp_path):
    cfg = make_cfg("tiny-vit", "schedule.steps=12", "schedule.lr=3e-3", "data.synthetic.num_clips=2",
                   "loss.consistency=0", "checkpoint.every=6", "eval.every=6")
    summary = train(cfg, tmp_path / "run", quiet=True)
    recs = [r for r in metrics(tmp_path / "run") if "loss" in r]
    losses = [r["loss"] for r in recs]
    assert [r["step"] for r in recs] == list(range(1, 13))
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3])
    assert all(k in recs[0] for k in ("lr", "grad_norm", "clips_per_s", "data_wait_s", "l1"))
    # the wait for data is part of each step's wall time (batch / clips_per_s; log_every is 1 here)
    assert all(0 <= r["data_wait_s"] <= cfg["schedule"]["batch_size"] / r["clips_per_s"] for r in recs)
    evals = [r for r in metrics(tmp_path / "run") if "eval_psnr" in r]
    assert [r["step"] for r in evals] == [6, 12] and summary["eval"]["psnr"] == evals[-1]["eval_psnr"]
    assert sorted(p.name for p in (tmp_path / "run" / "eval").iterdir()) == ["step-00000006.png",
                                                                              "step-00000012.png"]
    tok = vitok.load(tmp_path / "run" / "model")
    assert len(tok.config.latent_mean) == len(tok.config.latent_std) == tok.latent_channels
    info = json.loads((tmp_path / "run" / "train_info.json").read_text())
    assert info["steps"] == 12 and info["hardware"]["processes"] == 1 and info["eval"]["psnr"] > 0


def test_data_wait_is_the_time_spent_waiting_for_batches(make_cfg, metrics, monkeypatch, tmp_path):
    """data_wait_s measures the loader: clips that take 0.1 s each to read (in process, batch 2) are a wait of at
    least 0.2 s per step."""
    import time

    from vitok.train.data import TrainClips

    real = TrainClips.__getitem__
    monkeypatch.setattr(TrainClips, "__getitem__", lambda self, key: (time.sleep(0.1), real(self, key))[1])
    cfg = make_cfg("tiny-vit", "schedule.steps=2", "data.synthetic.num_clips=2", "data.num_workers=0",
                   "checkpoint.every=0", "eval.every=0")
    train(cfg, tmp_path / "run", quiet=True)
    waits = [r["data_wait_s"] for r in metrics(tmp_path / "run") if "loss" in r]
    assert len(waits) == 2 and all(w >= 0.2 for w in waits)


def test_clips_per_s_leaves_out_evaluations_and_checkpoints(make_cfg, metrics, monkeypatch, tmp_path):
    """An evaluation or a checkpoint has its own record (eval_s, checkpoint_s): the step after one must not count
    its time again as slower training."""
    import time

    from vitok.train.trainer import Trainer

    slow = lambda real: lambda self, *a, **kw: (time.sleep(1.5), real(self, *a, **kw))[1]
    monkeypatch.setattr(Trainer, "_evaluate", slow(Trainer._evaluate))
    monkeypatch.setattr(Trainer, "_checkpoint", slow(Trainer._checkpoint))
    cfg = make_cfg("tiny-vit", "schedule.steps=5", "data.synthetic.num_clips=2", "loss.consistency=0",
                   "checkpoint.every=2", "eval.every=2")
    train(cfg, tmp_path / "run", quiet=True)
    recs = [r for r in metrics(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5]
    # steps 3 and 5 came after a slowed evaluation and checkpoint (step 1 carries the start, whatever it costs)
    assert all(cfg["schedule"]["batch_size"] / r["clips_per_s"] < 1.0 for r in recs[1:])


def test_folder_is_scanned_by_rank_0_and_shared(monkeypatch, tmp_path):
    """Under a process group only rank 0 scans data.folder and every rank trains on its listing (ranks that scanned
    apart could index different files); a scan that fails fails on every rank with rank 0's message."""
    from types import SimpleNamespace

    from vitok.train import distributed as D
    from vitok.train import trainer as T

    scans, sent = [], {}
    monkeypatch.setattr(T, "scan_folder", lambda cfg, n: scans.append(n) or "rank-0 listing")
    monkeypatch.setattr(D, "broadcast_object", lambda obj, info: sent.setdefault("obj", obj))
    data_cfg = {"folder": str(tmp_path)}
    for rank in (1, 0):
        me = SimpleNamespace(info=D.DistInfo(rank=rank, world=2), main=rank == 0, num_frames=8)
        sent.clear()
        if rank == 1:
            sent["obj"] = "rank-0 listing"   # what rank 0 broadcast
        assert T.Trainer._shared_folder_scan(me, data_cfg) == "rank-0 listing"
    assert scans == [8]   # rank 1 never scanned
    monkeypatch.setattr(T, "scan_folder", lambda cfg, n: (_ for _ in ()).throw(VitokError("no readable videos")))
    sent.clear()
    with pytest.raises(VitokError, match="no readable videos"):
        T.Trainer._shared_folder_scan(SimpleNamespace(info=D.DistInfo(rank=0, world=2), main=True, num_frames=8),
                                      data_cfg)
    sent["obj"] = VitokError("no readable videos")   # a rank other than 0 raises what it was sent
    with pytest.raises(VitokError, match="no readable videos"):
        T.Trainer._shared_folder_scan(SimpleNamespace(info=D.DistInfo(rank=1, world=2), main=False, num_frames=8),
                                      data_cfg)
    assert T.Trainer._shared_folder_scan(SimpleNamespace(info=D.DistInfo(), main=True, num_frames=8),
                                         data_cfg) is None   # one process: TrainClips scans it itself
    # any other failure on rank 0 still reaches the other ranks (as a message), so none waits for a listing
    monkeypatch.setattr(T, "scan_folder", lambda cfg, n: (_ for _ in ()).throw(MemoryError("out of memory")))
    sent.clear()
    with pytest.raises(MemoryError):
        T.Trainer._shared_folder_scan(SimpleNamespace(info=D.DistInfo(rank=0, world=2), main=True, num_frames=8),
                                      data_cfg)
    assert isinstance(sent["obj"], VitokError) and "rank 0's scan failed: MemoryError" in str(sent["obj"])


def test_resume_continues_the_same_loss_curve(make_cfg, metrics, tmp_path):
    """1D model: nested dropout and the posterior sample draw random numbers, so RNG state must come back too."""
    cfg = make_cfg("tiny-vit1d", "schedule.steps=6", "checkpoint.every=3")
    train(cfg, tmp_path / "a", quiet=True)
    b = tmp_path / "b"
    (b / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-00000003", b / "checkpoints" / "step-00000003")
    shutil.copy(tmp_path / "a" / "config.json", b / "config.json")
    train(cfg, b, resume=True, quiet=True)
    la = [r["loss"] for r in metrics(tmp_path / "a") if "loss" in r][3:]
    lb = [r["loss"] for r in metrics(b) if "loss" in r]
    assert len(lb) == 3 and la == pytest.approx(lb, rel=1e-6, abs=1e-7)
    wa = vitok.load(tmp_path / "a" / "model").weights_hash
    assert wa == vitok.load(b / "model").weights_hash


def test_stop_at_ends_the_session_and_resume_continues_the_same_curve(make_cfg, metrics, tmp_path):
    """--stop-at 3 of a 6-step schedule: checkpointed at 3 with no final evaluation, and --resume then runs steps 4-6
    under the unchanged schedule, giving the uninterrupted run's losses and weights."""
    cfg = make_cfg("tiny-vit1d", "schedule.steps=6", "schedule.warmup=2", "checkpoint.every=100")
    train(cfg, tmp_path / "a", quiet=True)
    b = tmp_path / "b"
    first = train(cfg, b, quiet=True, stop_at=3)
    assert first["stopped"] and first["steps"] == 3 and first["eval"] is None
    assert json.loads((b / "checkpoints" / "latest.json").read_text())["step"] == 3
    assert (b / "model" / "model.safetensors").is_file() and not (b / "train_info.json").exists()
    assert not [r for r in metrics(b) if "eval_psnr" in r]
    with pytest.raises(VitokError, match=r"--stop-at 2: the run in .* is already at step 3"):
        train(cfg, b, resume=True, quiet=True, stop_at=2)
    done = train(cfg, b, resume=True, quiet=True, stop_at=10)   # past the schedule: runs to its end
    assert not done["stopped"] and done["steps"] == 6 and done["eval"] is not None
    la, lb = ([(r["step"], r["loss"], r["lr"]) for r in metrics(run) if "loss" in r] for run in (tmp_path / "a", b))
    assert [s for s, _, _ in lb] == [1, 2, 3, 4, 5, 6]
    assert [v for _, *vs in la for v in vs] == pytest.approx([v for _, *vs in lb for v in vs], rel=1e-6, abs=1e-7)
    assert vitok.load(tmp_path / "a" / "model").weights_hash == vitok.load(b / "model").weights_hash
    sessions = json.loads((b / "train_info.json").read_text())["sessions"]
    assert [(s["start_step"], s["end_step"], s["schedule_steps"]) for s in sessions] == [(0, 3, 6), (3, 6, 6)]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_stop_at_must_be_a_step_number(make_cfg, tmp_path, bad):
    with pytest.raises(VitokError, match=r"--stop-at: a step number >= 1"):
        train(make_cfg("tiny-vit", "schedule.steps=2"), tmp_path, quiet=True, stop_at=bad)
    assert not tmp_path.joinpath("config.json").exists()


def test_held_out_clips_that_do_not_exist_stop_the_run_before_its_first_step(make_cfg, tmp_path):
    """eval.num_frames longer than any held-out range crashed at the first evaluation (a ValueError traceback after
    the training time was spent); now the config is refused before anything is written."""
    cfg = make_cfg("tiny-vit", "schedule.steps=2", "eval.source=samples", "eval.num_frames=70")
    with pytest.raises(VitokError, match="config eval: no eval segment of 70 frames fits the sample clips"):
        train(cfg, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_the_trainer_trains_on_the_shared_listing(make_cfg, tmp_path, monkeypatch):
    """The listing ``_shared_folder_scan`` returns (rank 0's, under torchrun) is the one the run trains on: a
    trainer that rescanned data.folder itself would see the config's folder (2 videos), not the listing (3)."""
    import numpy as np

    from vitok.data.io import write_video
    from vitok.train import trainer as T

    rng = np.random.default_rng(0)
    for name, count in (("videos", 2), ("rank0", 3)):
        (tmp_path / name).mkdir()
        for i in range(count):
            write_video(tmp_path / name / f"v{i}.mp4", rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), 10)
    cfg = make_cfg("tiny-vit", "schedule.steps=1", "data.synthetic.num_clips=0", "data.num_workers=0",
                   f"data.folder={json.dumps(str(tmp_path / 'videos'))}")
    listing = T.scan_folder({**cfg["data"], "folder": str(tmp_path / "rank0")}, 8)
    monkeypatch.setattr(T.Trainer, "_shared_folder_scan", lambda self, data_cfg: listing)
    train(cfg, tmp_path / "run", quiet=True)
    state = json.loads(next((tmp_path / "run" / "checkpoints").glob("step-*/state.json")).read_text())
    assert state["state"]["dataset_size"] == 3


def test_resume_refuses_a_changed_data_folder(make_cfg, tmp_path):
    """A file added to data.folder between sessions silently reshuffled every later batch (the sampler's
    permutation is of len(dataset) items): --resume now names the change."""
    import numpy as np

    from vitok.data.io import write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        write_video(videos / f"v{i}.mp4", rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), 10)
    cfg = make_cfg("tiny-vit", "schedule.steps=2", "data.synthetic.num_clips=0",
                   f"data.folder={json.dumps(str(videos))}")
    train(cfg, tmp_path / "run", quiet=True, stop_at=1)
    write_video(videos / "v3.mp4", rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), 10)
    with pytest.raises(VitokError, match=r"--resume: the training data now holds 4 clips, the run's checkpoint 3"):
        train(cfg, tmp_path / "run", resume=True, quiet=True)
    (videos / "v1.mp4").rename(tmp_path / "v1.mp4")   # as many files, one of them another: refused too
    with pytest.raises(VitokError, match=r"--resume: the files in data.folder changed since the checkpoint"):
        train(cfg, tmp_path / "run", resume=True, quiet=True)
    (videos / "v3.mp4").unlink()
    (tmp_path / "v1.mp4").rename(videos / "v1.mp4")
    assert train(cfg, tmp_path / "run", resume=True, quiet=True)["steps"] == 2


def test_a_folder_file_lost_during_training_does_not_fail_a_checkpoint(make_cfg, tmp_path, monkeypatch):
    """The data fingerprint read every file's size at each checkpoint: a file gone since the scan (which the folder
    skips, standing in the next) crashed the run there."""
    import numpy as np

    from vitok.data.folder import VideoFolder
    from vitok.data.io import write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        write_video(videos / f"v{i}.mp4", rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), 10)
    read = VideoFolder.read_item

    def losing_a_file(self, index, rng):
        (videos / "v1.mp4").unlink(missing_ok=True)   # gone after the scan, before the first checkpoint
        return read(self, index, rng)

    monkeypatch.setattr(VideoFolder, "read_item", losing_a_file)
    cfg = make_cfg("tiny-vit", "schedule.steps=3", "checkpoint.every=1", "data.synthetic.num_clips=0",
                   f"data.folder={json.dumps(str(videos))}", "data.num_workers=0")
    with pytest.warns(UserWarning, match=r"skipping .*v1.mp4: no such file"):
        assert train(cfg, tmp_path / "run", quiet=True)["steps"] == 3


def test_run_dir_rules(make_cfg, tmp_path):
    cfg = make_cfg("tiny-cnn", "schedule.steps=1", "eval.num_segments=1")
    train(cfg, tmp_path, quiet=True)
    with pytest.raises(VitokError, match="already holds a run.*--resume.*-y"):
        train(cfg, tmp_path, quiet=True)
    with pytest.raises(VitokError, match="config differs.*schedule.batch_size"):
        train(make_cfg("tiny-cnn", "schedule.steps=2", "schedule.batch_size=1"), tmp_path, resume=True, quiet=True)
    assert train(make_cfg("tiny-cnn", "schedule.steps=2", "eval.num_segments=1"), tmp_path, resume=True,
                 quiet=True)["steps"] == 2                                    # extending a run is fine
    assert train(cfg, tmp_path, overwrite=True, quiet=True)["steps"] == 1     # -y starts over


def test_nan_guard_skips_then_stops(make_cfg, metrics, tmp_path, monkeypatch, capsys):
    real = TokenizerLoss.forward
    calls = {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        total, terms = real(self, *a, **k)
        return (total * float("nan") if calls["n"] in (2, 3) else total), terms

    monkeypatch.setattr(TokenizerLoss, "forward", flaky)
    train(make_cfg("tiny-vit", "schedule.steps=5", "max_bad_steps=3", "checkpoint.every=0"), tmp_path / "a",
          quiet=True)
    recs = [r for r in metrics(tmp_path / "a") if not {"eval_psnr", "checkpoint_s"} & r.keys()]
    assert [r.get("skipped", False) for r in recs] == [False, True, True, False, False]
    assert "step 2: non-finite loss" in capsys.readouterr().err

    monkeypatch.setattr(TokenizerLoss, "forward", lambda self, *a, **k: (real(self, *a, **k)[0] * float("inf"), {}))
    with pytest.raises(TrainingDiverged, match="non-finite for 3 consecutive steps"):
        train(make_cfg("tiny-vit", "schedule.steps=10", "max_bad_steps=3"), tmp_path / "b", quiet=True)
    assert len(metrics(tmp_path / "b")) == 3


def test_a_non_finite_reconstruction_is_skipped_with_ssim_and_consistency_on(make_cfg, metrics, tmp_path, capsys):
    """A learning rate that blows the weights up makes the reconstruction itself NaN: SSIM (piq checks its input's
    range) and the consistency re-encode must give a skipped step, not a crash."""
    cfg = make_cfg("tiny-vit", "schedule.steps=8", "schedule.lr=1e30", "schedule.warmup=0", "max_bad_steps=3",
                   "checkpoint.every=0", "loss.ssim=0.1", "loss.consistency=0.1")
    with pytest.raises(TrainingDiverged, match="non-finite for 3 consecutive steps"):
        train(cfg, tmp_path / "run", quiet=True)
    recs = metrics(tmp_path / "run")
    assert recs[0].get("skipped") is None and [r.get("skipped") for r in recs[1:]] == [True] * 3
    assert "step 2: non-finite loss" in capsys.readouterr().err


def test_consistency_reencodes_the_whole_clip_as_the_first_pass_did(make_cfg, metrics, tmp_path):
    """Clips larger than the model's tiles: the re-encode codes the whole clip in one unit like the training pass
    (tok.encode would tile it: other latents, or a shape error)."""
    tok = vitok.create_model("vit-tiny").eval()
    x = torch.rand(1, 3, 8, 96, 80) * 2 - 1
    with torch.no_grad():
        assert torch.equal(tok.encode_whole(x)[0], tok(x)["latents"].z)
    cfg = make_cfg("tiny-vit", "schedule.steps=2", "data.size=96", "eval.size=96", "loss.consistency=0.1",
                   "data.synthetic.num_clips=2", "checkpoint.every=0")
    train(cfg, tmp_path / "run", quiet=True)
    assert all(r["consistency"] > 0 for r in metrics(tmp_path / "run") if "loss" in r)


def test_gan_and_trainer_side_nested_dropout(make_cfg, metrics, tmp_path, monkeypatch):
    """The GAN joins at gan_start; the trainer draws each step's token count on the pow2 schedule, and the model
    codes that many tokens (the logged count is the one the forward pass used)."""
    from vitok.train.trainer import TrainForward

    seen = []
    real = TrainForward.forward

    def spying(self, video, num_tokens=None):
        res = real(self, video, num_tokens)
        seen.append((num_tokens, int(res["mask"][0].sum())))
        return res

    monkeypatch.setattr(TrainForward, "forward", spying)
    cfg = make_cfg("tiny-vit1d", "schedule.steps=4", "loss.gan=0.1", "loss.gan_start=2", "loss.disc_channels=8",
                   "nested_dropout.mode=pow2", "checkpoint.every=2")
    train(cfg, tmp_path, quiet=True)
    recs = [r for r in metrics(tmp_path) if "loss" in r]
    assert ["disc" in r for r in recs] == [False, False, True, True]
    counts = [r["num_tokens"] for r in recs]
    assert set(counts) <= {1, 2, 4, 8, 16} and len(set(counts)) > 1, counts
    assert [(k, k) for k in counts] == seen
    assert "gan" in recs[-1] and all(torch.isfinite(torch.tensor(r["loss"])) for r in recs)


@pytest.mark.parametrize("broken", ["loss", "gradient"])
def test_a_non_finite_discriminator_step_skips_its_update(make_cfg, metrics, tmp_path, monkeypatch, broken):
    """A NaN loss, or a finite loss whose gradient is infinite (sqrt at 0), leaves the discriminator as it was."""
    import vitok.train.trainer as trainer_mod

    real = trainer_mod.hinge_d_loss
    if broken == "loss":
        monkeypatch.setattr(trainer_mod, "hinge_d_loss", lambda a, b: real(a, b) * float("nan"))
    else:
        monkeypatch.setattr(trainer_mod, "hinge_d_loss",
                            lambda a, b: real(a, b) + torch.sqrt((a.mean() - a.mean().detach()).abs()))
    seen = {}
    real_step = trainer_mod.Trainer._disc_step

    def watch(self, x, fake):
        before = [p.detach().clone() for p in self.disc.parameters()]
        out = real_step(self, x, fake)
        seen["unchanged"] = all(torch.equal(a, b) for a, b in zip(before, self.disc.parameters()))
        return out

    monkeypatch.setattr(trainer_mod.Trainer, "_disc_step", watch)
    train(make_cfg("tiny-vit", "schedule.steps=3", "loss.gan=0.1", "loss.gan_start=1", "loss.disc_channels=8",
                   "checkpoint.every=0", "data.synthetic.num_clips=2"), tmp_path / "run", quiet=True)
    recs = [r for r in metrics(tmp_path / "run") if "loss" in r]
    assert [r.get("disc", "absent") for r in recs] == ["absent", None, None] and seen["unchanged"]


def test_init_continues_from_pretrained_weights(make_cfg, tmp_path):
    """model.init starts from saved weights (how a bundled model keeps training in a fresh clone); with lr 0 the
    exported model is the initial one, and a model of another shape is refused naming the fields that differ."""
    torch.manual_seed(123)
    start = vitok.create_model("vit-tiny")
    start.save_pretrained(tmp_path / "start")
    cfg = make_cfg("tiny-vit", "schedule.steps=2", "schedule.lr=0", "schedule.weight_decay=0",
                   "data.synthetic.num_clips=2", f"model.init={json.dumps(str(tmp_path / 'start'))}")
    (tmp_path / "start" / "training.json").write_text(json.dumps({"steps": 7, "command": "earlier"}))
    train(cfg, tmp_path / "run", quiet=True)
    start_hash = vitok.load(tmp_path / "start").weights_hash
    assert vitok.load(tmp_path / "run" / "model").weights_hash == start_hash
    # the run keeps what it started from, as it was then: bundling it later chains this history, not whatever
    # has replaced the source since
    lineage = json.loads((tmp_path / "run" / "init.json").read_text())
    assert lineage == {"source": str(tmp_path / "start"), "weights_hash": start_hash,
                       "training": {"steps": 7, "command": "earlier"}}
    train(make_cfg("tiny-vit", "schedule.steps=1", "data.synthetic.num_clips=2"), tmp_path / "run", overwrite=True,
          quiet=True)
    assert not (tmp_path / "run" / "init.json").exists()  # -y without model.init: no stale lineage left
    vitok.create_model("vit-tiny", dec_depth=3).save_pretrained(tmp_path / "deeper")
    shallower = make_cfg("tiny-vit", "schedule.steps=1", f"model.init={json.dumps(str(tmp_path / 'deeper'))}")
    with pytest.raises(VitokError, match=r"\(dec_depth 3 vs 2\); model.init can change a 1D model's token count and "
                                         r"add ViT blocks"):
        train(shallower, tmp_path / "bad", quiet=True)


def test_freeze_keeps_named_parameters_fixed(make_cfg, tmp_path):
    """model.freeze trains the rest of the model and leaves the named parts exactly as model.init gave them (an
    encoder trained for a fixed decoder); a prefix naming nothing, or everything, is refused before a file is
    written."""
    torch.manual_seed(5)
    start = vitok.create_model("vit1d-tiny")
    start.save_pretrained(tmp_path / "start")
    init = f"model.init={json.dumps(str(tmp_path / 'start'))}"
    frozen = ["decoder", "from_latent", "to_pixels", "latent_pos", "tail_token", "patch_token"]
    cfg = make_cfg("tiny-vit1d", "schedule.steps=2", "schedule.warmup=0", "schedule.lr=1e-2", "ema.decay=0",
                   "data.synthetic.num_clips=2", init, f"model.freeze={json.dumps(frozen)}")
    train(cfg, tmp_path / "run", quiet=True)
    before, after = start.state_dict(), vitok.load(tmp_path / "run" / "model").state_dict()
    fixed = [k for k in before if k.split(".")[0] in frozen]
    moved = [k for k in before if k not in fixed and not torch.equal(before[k], after[k])]
    assert fixed and all(torch.equal(before[k], after[k]) for k in fixed)
    assert any(k.startswith("encoder.") for k in moved) and "latent_tokens" in moved
    for names, needle in ((["decoder", "decodr"], r"'decodr' names no parameter of .*its parts: .*decoder"),
                          ([n.split(".")[0] for n in before], "covers every parameter")):
        bad = make_cfg("tiny-vit1d", "schedule.steps=1", f"model.freeze={json.dumps(sorted(set(names)))}")
        with pytest.raises(VitokError, match=needle):
            train(bad, tmp_path / "bad", quiet=True)
        assert not (tmp_path / "bad").exists()


def test_freezing_what_init_just_created_is_said(make_cfg, tmp_path, capsys):
    """model.init that adds decoder blocks and tokens, with model.freeze covering them: they would stay at their
    starting values (identity blocks, untrained tokens) for the whole run, so the log names them; freezing only the
    source's own parameters says nothing."""
    torch.manual_seed(5)
    vitok.create_model("vit1d-tiny").save_pretrained(tmp_path / "start")
    grow = [f"model.init={json.dumps(str(tmp_path / 'start'))}", "model.overrides.dec_depth=3",
            "model.overrides.num_latents=24", "schedule.steps=1", "data.synthetic.num_clips=2", "eval.num_segments=1"]
    train(make_cfg("tiny-vit1d", *grow, 'model.freeze=["decoder","latent_tokens"]'), tmp_path / "a", quiet=True)
    err = capsys.readouterr().err
    assert "warning: model.freeze keeps what model.init just created at its starting values (decoder.blocks.2, " \
           "latent_tokens): it will not learn" in err
    train(make_cfg("tiny-vit1d", *grow, 'model.freeze=["to_pixels","encoder.blocks.0"]'), tmp_path / "b", quiet=True)
    assert "model.freeze keeps what" not in capsys.readouterr().err


def test_precision_bf16_autocasts_on_cpu(make_cfg, metrics, tmp_path):
    """precision=bf16 runs the training forward under CPU autocast (linear layers compute in bfloat16) and the
    losses in float32, and records it in train_info.json; auto stays fp32 on CPU; an unknown precision is refused
    before any file is written."""
    seen: set[torch.dtype] = set()

    def hook(module, args, out):
        if isinstance(module, torch.nn.Linear) and torch.is_grad_enabled():
            seen.add(out.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        for precision, dtype in (("bf16", torch.bfloat16), ("auto", torch.float32)):
            seen.clear()
            cfg = make_cfg("tiny-vit", "schedule.steps=3", "data.synthetic.num_clips=2", "loss.ssim=0.1",
                           f"precision={precision}")
            train(cfg, tmp_path / precision, quiet=True)
            assert seen == {dtype}
            ssim = [r["ssim"] for r in metrics(tmp_path / precision) if "ssim" in r]  # the loss runs in float32
            assert len(ssim) == 3 and any(float(torch.tensor(v).bfloat16()) != v for v in ssim)
            info = json.loads((tmp_path / precision / "train_info.json").read_text())
            assert info["hardware"]["precision"] == {"bf16": "bf16", "auto": "fp32"}[precision]
            assert all(torch.isfinite(torch.tensor(r["loss"])) for r in metrics(tmp_path / precision) if "loss" in r)
    finally:
        handle.remove()
    with pytest.raises(VitokError, match="precision.* one of auto, fp32, bf16"):
        train(make_cfg("tiny-vit", "precision=fp16"), tmp_path / "bad", quiet=True)
    assert not (tmp_path / "bad").exists()


@pytest.mark.skipif(not any(map(shutil.which, ("g++", "c++", "clang++"))),
                    reason="torch.compile's inductor needs a C++ compiler")
def test_compile_trains_the_same_model(make_cfg, metrics, tmp_path, monkeypatch):
    """compile=true runs the training forward through torch.compile (inductor on CPU: about 40 s cold on one
    thread): the first step's loss is the eager one's (same weights and batch; within 1 %, since random draws inside
    a compiled graph come from inductor's own generator), the run stays finite and exports what an eager run does."""
    compiled = []
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, *a, **kw: compiled.append(fn) or real(fn, *a, **kw))
    losses = {}
    for flag in ("false", "true"):
        cfg = make_cfg("tiny-vit1d", "schedule.steps=3", "data.synthetic.num_clips=2", "checkpoint.every=0",
                       "eval.every=0", f"compile={flag}")
        train(cfg, tmp_path / flag, quiet=True)
        losses[flag] = [r["loss"] for r in metrics(tmp_path / flag) if "loss" in r]
    assert len(compiled) == 1 and len(losses["true"]) == 3
    assert all(torch.isfinite(torch.tensor(losses["true"])))
    assert losses["true"][0] == pytest.approx(losses["false"][0], rel=1e-2)
    compiled_tok, eager_tok = (vitok.load(tmp_path / flag / "model") for flag in ("true", "false"))
    assert compiled_tok.state_dict().keys() == eager_tok.state_dict().keys()   # no torch.compile wrapper names


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_bf16_instructions_says_so(make_cfg, tmp_path, monkeypatch, capsys, native):
    """CPU autocast to bf16 is emulated without AVX512-BF16/AMX (slower than fp32): the run says so once;
    on a CPU that has them, and for fp32, it says nothing."""
    from vitok.train import trainer as T

    monkeypatch.setattr(T, "cpu_has_native_bf16", lambda: native)
    for precision in ("bf16", "fp32"):
        train(make_cfg("tiny-vit", "schedule.steps=1", "data.synthetic.num_clips=2", f"precision={precision}"),
              tmp_path / precision, quiet=True)
        said = capsys.readouterr().err.count("without bf16 instructions")
        assert said == (1 if precision == "bf16" and not native else 0)


def test_a_warmup_as_long_as_the_run_is_said(make_cfg, tmp_path, capsys):
    """warmup >= steps: the learning rate never reaches schedule.lr; lr 0: the weights do not change. The run
    says so once."""
    for warmup, lr, said in ((2, 1e-3, "never reaches schedule.lr"), (1, 0, "the weights do not change"),
                             (1, 1e-3, None)):
        train(make_cfg("tiny-vit", "schedule.steps=2", f"schedule.warmup={warmup}", f"schedule.lr={lr}",
                       "data.synthetic.num_clips=2"), tmp_path / f"{warmup}-{lr}", quiet=True)
        err = capsys.readouterr().err
        assert err.count("notice: schedule.") == (said is not None) and (said is None or said in err), err


def test_signal_stops_after_the_step_with_a_checkpoint(make_cfg, metrics, tmp_path, monkeypatch, capsys):
    """SIGINT mid-run: the step in flight finishes, is checkpointed (no periodic checkpoint is due) and the run
    raises TrainingStopped; --resume then continues from exactly that step, and the handlers are restored."""
    import signal

    from vitok.train.trainer import Trainer

    real = Trainer.train_step

    def interrupting(self, x):
        rec = real(self, x)
        if self.step == 2:                      # during the third step
            signal.raise_signal(signal.SIGINT)
        return rec

    monkeypatch.setattr(Trainer, "train_step", interrupting)
    cfg = make_cfg("tiny-vit", "schedule.steps=6", "checkpoint.every=100")
    with pytest.raises(TrainingStopped, match=r"stopped at step 3 \(SIGINT\): .*--resume"):
        train(cfg, tmp_path, quiet=True)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert "SIGINT: stopping after this step" in capsys.readouterr().err
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text())["step"] == 3
    assert (tmp_path / "model" / "model.safetensors").is_file()
    monkeypatch.setattr(Trainer, "train_step", real)
    assert train(cfg, tmp_path, resume=True, quiet=True)["steps"] == 6
    assert [r["step"] for r in metrics(tmp_path) if "loss" in r] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("tokens", [24, 8])
def test_init_changes_a_1d_models_token_count(make_cfg, tmp_path, capsys, tokens):
    """model.init into a 1D model with more (or fewer) tokens: every tensor but the token tables comes over as is,
    the source's first tokens keep their rows (nested dropout ranks them first), and the new model encodes
    ``tokens`` tokens per unit."""
    torch.manual_seed(7)
    start = vitok.create_model("vit1d-tiny")
    K = start.max_tokens
    start.save_pretrained(tmp_path / "start")
    cfg = make_cfg("tiny-vit1d", "schedule.steps=1", "schedule.lr=0", "schedule.weight_decay=0",
                   "data.synthetic.num_clips=2", "eval.num_segments=1", f"model.overrides.num_latents={tokens}",
                   f"model.init={json.dumps(str(tmp_path / 'start'))}")
    train(cfg, tmp_path / "run", quiet=True)
    assert f"({K} -> {tokens} tokens; the first {min(K, tokens)} kept)" in capsys.readouterr().err
    grown = vitok.load(tmp_path / "run" / "model")
    theirs, ours = start.state_dict(), grown.state_dict()
    n = min(K, tokens)
    for name, t in ours.items():
        if name in ("latent_tokens", "latent_pos"):
            assert t.shape[0] == tokens and torch.equal(t[:n], theirs[name][:n])
        else:
            assert torch.equal(t, theirs[name]), name
    video = torch.rand(1, 3, 8, 32, 32)
    assert grown.encode(video).z.shape[-2] == tokens


@pytest.mark.parametrize("arch,config", [("vit-tiny", "tiny-vit"), ("vit1d-tiny", "tiny-vit1d")])
def test_init_grows_a_vits_depth_as_identity_blocks(make_cfg, tmp_path, capsys, arch, config):
    """model.init into a deeper ViT (grid or 1D): the source's blocks come over, the new ones start as identities,
    so the grown model reconstructs exactly as the source did until training uses them; a shallower target than
    the source is refused by name."""
    torch.manual_seed(11)
    start = vitok.create_model(arch)
    start.save_pretrained(tmp_path / "start")
    init = f"model.init={json.dumps(str(tmp_path / 'start'))}"
    cfg = make_cfg(config, "schedule.steps=1", "schedule.lr=0", "schedule.weight_decay=0", "data.synthetic.num_clips=2",
                   "eval.num_segments=1", "model.overrides.dec_depth=4", "model.overrides.enc_depth=3", init)
    train(cfg, tmp_path / "run", quiet=True)
    err = capsys.readouterr().err
    assert "(encoder 2 -> 3 blocks; the new ones start as identities; decoder 2 -> 4 blocks;" in err
    grown = vitok.load(tmp_path / "run" / "model")
    assert (grown.config.enc_depth, grown.config.dec_depth) == (3, 4)
    theirs, ours = start.state_dict(), grown.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in theirs.items())
    assert not ours["decoder.blocks.3.mlp.down.weight"].any() and ours["decoder.blocks.3.attn.qkv.weight"].any()
    video = torch.rand(1, 3, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(grown.decode(grown.encode(video)), start.eval().decode(start.encode(video)))
    vitok.create_model(arch, dec_depth=3).save_pretrained(tmp_path / "deeper")
    bad = make_cfg(config, "schedule.steps=1", f"model.init={json.dumps(str(tmp_path / 'deeper'))}")
    with pytest.raises(VitokError, match="model.init: .* does not fit"):
        train(bad, tmp_path / "bad", quiet=True)
    assert not (tmp_path / "bad").exists()


def test_refused_commands_leave_a_run_as_it_was(make_cfg, metrics, tmp_path):
    """A bad config (-y included), a resume to a step the run has passed, or a run folder given as model.init
    fail before anything in the run folder changes."""
    run = tmp_path / "run"
    train(make_cfg("tiny-vit", "schedule.steps=2", "data.synthetic.num_clips=2"), run, quiet=True)
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(VitokError, match="nonexistent"):
        train(make_cfg("tiny-vit", "schedule.steps=2", "data.folder=/nonexistent"), run, overwrite=True, quiet=True)
    with pytest.raises(VitokError, match="already at step 2; give schedule.steps >= 2"):
        train(make_cfg("tiny-vit", "schedule.steps=1", "data.synthetic.num_clips=2"), run, resume=True, quiet=True)
    with pytest.raises(VitokError, match="looks like a training run, whose weights are in .*model"):
        train(make_cfg("tiny-vit", "schedule.steps=1", f"model.init={json.dumps(str(run))}"), tmp_path / "new",
              quiet=True)
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "new").exists()


def test_init_from_another_kind_of_model_is_refused(make_cfg, tmp_path):
    vitok.create_model("vit1d-tiny").save_pretrained(tmp_path / "oned")
    cfg = make_cfg("tiny-vit", "schedule.steps=1", f"model.init={json.dumps(str(tmp_path / 'oned'))}")
    with pytest.raises(VitokError, match="model.init: .* does not fit the config's architecture"):
        train(cfg, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()  # a refused config leaves no run folder behind


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_that_is_not_a_run_is_never_written_over(make_cfg, tmp_path, overwrite):
    (tmp_path / "config.json").write_text("precious")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(VitokError, match="not empty and holds no vitok run.*choose a new or empty --out"):
        train(make_cfg("tiny-vit", "schedule.steps=2"), tmp_path, overwrite=overwrite, quiet=True)
    assert (tmp_path / "config.json").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "notes.txt"]


def test_a_run_stopped_before_its_first_log_is_still_a_run(make_cfg, tmp_path):
    """A run folder holding only the training config.json it wrote first is a run: refused without --resume or -y,
    started over with -y."""
    cfg = make_cfg("tiny-vit", "schedule.steps=1", "data.synthetic.num_clips=2")
    tmp_path.joinpath("config.json").write_text(json.dumps(cfg))
    with pytest.raises(VitokError, match="already holds a run: pass --resume"):
        train(cfg, tmp_path, quiet=True)
    train(cfg, tmp_path, overwrite=True, quiet=True)
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_each_session_of_a_run_is_recorded(make_cfg, tmp_path):
    """A run stopped and resumed with another schedule length (as sessions that must fit their time do) records each
    session: the steps it ran, the schedule it ran them under, device, precision and seconds."""
    run = tmp_path / "run"
    train(make_cfg("tiny-vit", "schedule.steps=2", "data.synthetic.num_clips=2"), run, quiet=True)
    train(make_cfg("tiny-vit", "schedule.steps=3", "data.synthetic.num_clips=2"), run, resume=True, quiet=True)
    info = json.loads((run / "train_info.json").read_text())
    sessions = info["sessions"]
    assert [(s["start_step"], s["end_step"], s["schedule_steps"]) for s in sessions] == [(0, 2, 2), (2, 3, 3)]
    assert all(s["precision"] == "fp32" and s["processes"] == 1 and s["device"].startswith("cpu") for s in sessions)
    assert sum(s["seconds"] for s in sessions) == pytest.approx(info["train_seconds"], abs=0.2)


def test_checkpoint_and_evaluation_time_is_logged_and_counted(make_cfg, metrics, tmp_path, monkeypatch):
    """Checkpoints (and evaluations) are part of a run's wall time: each one's seconds go to metrics.jsonl and into
    train_seconds from the next step on; the last one, which its own state cannot hold, is left out."""
    import time

    from vitok.train import trainer

    real = trainer.save_checkpoint
    monkeypatch.setattr(trainer, "save_checkpoint", lambda *a, **k: (time.sleep(0.4), real(*a, **k))[1])
    run = tmp_path / "run"
    train(make_cfg("tiny-vit", "schedule.steps=4", "checkpoint.every=1", "eval.every=2",
                   "data.synthetic.num_clips=2"), run, quiet=True)
    recs = metrics(run)
    ckpt = [(r["step"], r["checkpoint_s"]) for r in recs if "checkpoint_s" in r]
    assert [s for s, _ in ckpt] == [1, 2, 3, 4] and all(t >= 0.4 for _, t in ckpt)
    assert [r["step"] for r in recs if "eval_s" in r and r["eval_s"] > 0] == [2, 4]
    info = json.loads((run / "train_info.json").read_text())
    # the evaluation at step 2 and checkpoints 1-3 lie inside train_seconds (rounded to 0.1 s) on a machine of any
    # speed; the steps' windows (log_every is 1: batch / clips_per_s each) also hold a little loop bookkeeping that
    # train_seconds does not, so they only bound it from above, where checkpoint 4 (>= 0.4 s) would break the bound
    steps = sum(2 / r["clips_per_s"] for r in recs if "loss" in r)
    counted = sum(r["eval_s"] for r in recs if r.get("eval_s") and r["step"] < 4) + sum(t for _, t in ckpt[:3])
    assert counted - 0.05 <= info["train_seconds"] <= counted + steps + 0.3
    assert info["sessions"][0]["seconds"] == info["train_seconds"]


def test_resume_without_a_checkpoint_is_refused(make_cfg, tmp_path):
    """--resume with a mistyped --out (or a run killed before its first checkpoint) started the whole schedule from
    step 0 after a notice."""
    cfg = make_cfg("tiny-vit", "schedule.steps=1", "data.synthetic.num_clips=2")
    with pytest.raises(VitokError, match=r"--resume: no checkpoint in .*typo/checkpoints to carry on from"):
        train(cfg, tmp_path / "typo", resume=True, quiet=True)
    assert not (tmp_path / "typo").exists()


def test_a_stop_asked_of_another_process_names_no_signal(make_cfg, tmp_path, monkeypatch):
    """Under torchrun a signal may reach one worker only: the others stop with it (all ranks agree on stopping) and
    must say so without a signal number of their own."""
    from vitok.train.trainer import Trainer

    monkeypatch.setattr(Trainer, "_any_rank", lambda self, flag: flag or self.step == 2)
    with pytest.raises(TrainingStopped, match=r"stopped at step 2 \(a signal to another process\)"):
        train(make_cfg("tiny-vit", "schedule.steps=5", "checkpoint.every=0", "data.synthetic.num_clips=2"),
              tmp_path / "run", quiet=True)


def test_resuming_a_finished_run_completes_its_outputs_once(make_cfg, metrics, tmp_path):
    """A kill after the last checkpoint but before model/ was exported: --resume exports it from that checkpoint,
    adds no session and no second final evaluation. Leftovers of a kill mid-write are cleared."""
    cfg = make_cfg("tiny-vit", "schedule.steps=3", "checkpoint.every=0", "data.synthetic.num_clips=2")
    run = tmp_path / "run"
    train(cfg, run, quiet=True)
    good = vitok.load(run / "model").weights_hash
    before = json.loads((run / "train_info.json").read_text())
    shutil.rmtree(run / "model")
    vitok.create_model("vit-tiny").save_pretrained(run / "model")          # stale weights, as a kill leaves them
    (run / ".model.abc123").mkdir()                                        # a kill inside atomic_dir
    (run / "checkpoints" / ".step-00000003.xyz").mkdir()
    (run / "checkpoints" / ".step-00000003.xyz" / "tensors.safetensors").write_bytes(b"partial")
    summary = train(cfg, run, resume=True, quiet=True)
    assert vitok.load(run / "model").weights_hash == good and summary["steps"] == 3
    info = json.loads((run / "train_info.json").read_text())
    assert info["sessions"] == before["sessions"] and len(info["sessions"]) == 1
    assert [r["step"] for r in metrics(run) if "eval_psnr" in r] == [3]
    assert not [p for p in run.rglob(".*")]


def test_resume_with_another_process_count_is_refused(make_cfg, tmp_path):
    """The data position and each rank's random draws belong to the process count that wrote the checkpoint."""
    run = tmp_path / "run"
    train(make_cfg("tiny-vit", "schedule.steps=2", "data.synthetic.num_clips=2"), run, quiet=True)
    state_file = run / "checkpoints" / "step-00000002" / "state.json"
    saved = json.loads(state_file.read_text())
    saved["state"]["rng"] = saved["state"]["rng"] * 2                  # as two processes write it
    saved["state"]["world"] = 2
    state_file.write_text(json.dumps(saved))
    with pytest.raises(VitokError, match="written by 2 processes, this run has 1; resume with 2.*model.init="):
        train(make_cfg("tiny-vit", "schedule.steps=4", "data.synthetic.num_clips=2"), run, resume=True, quiet=True)


def test_a_diverged_run_keeps_a_good_checkpoint_and_resumes_with_a_lower_lr(make_cfg, metrics, tmp_path,
                                                                           monkeypatch):
    """Periodic checkpoints wait out a non-finite streak, so the one the error names is from before it, and
    schedule.lr may change on --resume (each session records its lr)."""
    real = TokenizerLoss.forward
    calls = {"n": 0}

    def from_step_3(self, *a, **k):   # one loss per step: steps 3 on are non-finite
        calls["n"] += 1
        total, terms = real(self, *a, **k)
        return (total * float("nan") if calls["n"] >= 3 else total), terms

    monkeypatch.setattr(TokenizerLoss, "forward", from_step_3)
    run = tmp_path / "run"
    cfg = ("tiny-vit", "schedule.steps=10", "checkpoint.every=2", "max_bad_steps=4", "data.synthetic.num_clips=2")
    with pytest.raises(TrainingDiverged, match=r"resume from the last good checkpoint \(.*step-00000002\) with "
                                               r"--resume --set schedule.lr"):
        train(make_cfg(*cfg), run, quiet=True)
    monkeypatch.setattr(TokenizerLoss, "forward", real)
    train(make_cfg(*cfg[:-1], "data.synthetic.num_clips=2", "schedule.lr=1e-4"), run, resume=True, quiet=True)
    info = json.loads((run / "train_info.json").read_text())
    assert [(s["start_step"], s["lr"]) for s in info["sessions"]] == [(0, 2e-3), (2, 1e-4)]
    with pytest.raises(TrainingDiverged, match="no checkpoint was written: start over with a lower schedule.lr"):
        monkeypatch.setattr(TokenizerLoss, "forward", lambda self, *a, **k: (real(self, *a, **k)[0] * float("nan"), {}))
        train(make_cfg("tiny-vit", "schedule.steps=6", "checkpoint.every=0", "max_bad_steps=2"), tmp_path / "b",
              quiet=True)


def test_resume_falls_back_from_an_unreadable_checkpoint(make_cfg, metrics, tmp_path, capsys):
    """A newest checkpoint that does not read (a disk fault, a power loss) is named, and the run resumes from the
    one before it and continues that curve; when none reads, the newest one's error stops the run."""
    cfg = make_cfg("tiny-vit", "schedule.steps=6", "checkpoint.every=2", "checkpoint.keep=2")
    train(cfg, tmp_path / "a", quiet=True)
    b = tmp_path / "b"
    train(cfg, b, quiet=True, stop_at=4)                  # checkpoints at steps 2 and 4
    newest = b / "checkpoints" / "step-00000004" / "tensors.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    capsys.readouterr()
    assert train(cfg, b, resume=True, quiet=True)["steps"] == 6
    err = capsys.readouterr().err
    assert "step-00000004/tensors.safetensors: unreadable" in err
    assert "moved it to unreadable-step-00000004 and trying step-00000002" in err
    # moved out of the checkpoints, so rotation keeps good ones (it had kept the unreadable one as the newest)
    assert sorted(p.name for p in (b / "checkpoints").glob("*step-*")) == ["step-00000004", "step-00000006",
                                                                           "unreadable-step-00000004"]
    sessions = json.loads((b / "train_info.json").read_text())["sessions"]
    assert [(s["start_step"], s["end_step"]) for s in sessions] == [(0, 2), (2, 6)]   # as step 2 recorded it
    la, lb = ([(r["step"], r["loss"]) for r in metrics(run) if "loss" in r] for run in (tmp_path / "a", b))
    assert [s for s, _ in lb] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in la] == pytest.approx([v for _, v in lb], rel=1e-6, abs=1e-7)
    c = tmp_path / "c"
    train(cfg, c, quiet=True, stop_at=4)
    for ckpt in (c / "checkpoints").glob("step-*"):
        (ckpt / "tensors.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(VitokError, match="step-00000004/tensors.safetensors: unreadable .*no other checkpoint reads"):
        train(cfg, c, resume=True, quiet=True)


def test_resume_takes_a_checkpoint_a_kill_left_set_aside(make_cfg, tmp_path):
    """A kill while a checkpoint replaced one of the same step leaves it moved aside (``.step-N.old.*/step-N``) with
    latest.json naming it: --resume puts it back and continues from it, not from the checkpoint before."""
    cfg = make_cfg("tiny-vit", "schedule.steps=6", "checkpoint.every=2", "checkpoint.keep=2")
    train(cfg, tmp_path, quiet=True, stop_at=4)
    root = tmp_path / "checkpoints"
    aside = root / ".step-00000004.old.x1"
    aside.mkdir()
    (root / "step-00000004").rename(aside / "step-00000004")
    assert train(cfg, tmp_path, resume=True, quiet=True)["steps"] == 6
    sessions = json.loads((tmp_path / "train_info.json").read_text())["sessions"]
    assert [(s["start_step"], s["end_step"]) for s in sessions] == [(0, 4), (4, 6)]
    assert not list(root.glob(".step-*"))


def test_every_rank_resumes_from_rank_0s_choice(monkeypatch, tmp_path):
    """Under torchrun rank 0 picks the checkpoint (past an unreadable one) and the others load that one, even where
    their own read of the newest would have worked: ranks at different steps would diverge or hang."""
    from types import SimpleNamespace

    import torch as th

    from vitok.train import distributed as D
    from vitok.train import trainer as T
    from vitok.train.checkpoint import save_checkpoint

    paths = [save_checkpoint(tmp_path, step, {"w": th.ones(1) * step}, keep=3) for step in (2, 4)][::-1]
    sent = {}
    monkeypatch.setattr(D, "broadcast_object", lambda obj, info: sent.setdefault("obj", obj))
    loaded = []
    me = SimpleNamespace(info=D.DistInfo(rank=1, world=2), main=False, log=print,
                         _load=lambda path, step, state: loaded.append((path.name, step)))
    sent["obj"] = paths[1]   # rank 0 found step 4 unreadable on its disk and chose step 2
    T.Trainer._load_newest_readable(me, paths)
    assert loaded == [("step-00000002", 2)]
    sent["obj"] = VitokError("checkpoint step-00000004: unreadable; no other checkpoint reads either")
    with pytest.raises(VitokError, match="no other checkpoint reads either"):
        T.Trainer._load_newest_readable(me, paths)
    # rank 0 itself: the unreadable newest is moved aside, the next one chosen and sent
    (paths[0] / "tensors.safetensors").write_bytes(b"\0" * 10)
    sent.clear()
    logs, loaded[:] = [], []
    rank0 = SimpleNamespace(info=D.DistInfo(rank=0, world=2), main=True, log=logs.append,
                            _load=lambda path, step, state: loaded.append((path.name, step)))
    T.Trainer._load_newest_readable(rank0, paths)
    assert sent["obj"] == paths[1] and loaded == [("step-00000002", 2)]
    assert "moved it to unreadable-step-00000004 and trying step-00000002" in logs[0]
    assert not paths[0].exists() and (tmp_path / "checkpoints" / "unreadable-step-00000004").is_dir()
    # any other failure on rank 0 reaches the other ranks as a message, so none waits for a choice
    (paths[1] / "tensors.safetensors").write_bytes(b"\0" * 10)
    older = save_checkpoint(tmp_path / "x", 1, {"w": th.ones(1)})
    sent.clear()
    monkeypatch.setattr(T.os, "replace", lambda *a: (_ for _ in ()).throw(PermissionError("read-only")))
    with pytest.raises(PermissionError):
        T.Trainer._load_newest_readable(rank0, [paths[1], older])
    assert isinstance(sent["obj"], VitokError)
    assert "--resume: rank 0's choice of a checkpoint failed: PermissionError" in str(sent["obj"])

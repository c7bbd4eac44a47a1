"""`vitok train`, `vitok bench train` (click, in process) and the held-out evaluation helpers."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import vitok
from vitok.cli.bench_train import bench_train
from vitok.cli.train import train
from vitok.train import evaluate_model
from vitok.train.evaluate import frame_psnr, frame_ssim, main as evaluate_main, save_grid

FAST = ["--set", "device=cpu", "--set", "data.size=16", "--set", "eval.size=16", "--set", "export.stats_clips=2",
        "--threads", "1"]


def test_train_command_json_and_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(train, ["tiny-cnn", "--out", str(tmp_path / "r"), "--set", "schedule.steps=2", "-q",
                                "--json", *FAST])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["steps"] == 2 and summary["model_dir"].endswith("model") and "psnr" in summary["eval"]
    res = runner.invoke(train, ["tiny-cnn", "--out", str(tmp_path / "r"), "--set", "schedule.steps=2", *FAST])
    assert res.exit_code != 0 and "already holds a run" in str(res.exception)
    res = runner.invoke(train, ["tiny-cnn", "--set", "schedule.stepz=2"])
    assert res.exit_code != 0 and "unknown key 'schedule.stepz'" in str(res.exception)
    res = runner.invoke(train, ["--list"])
    assert res.exit_code == 0 and "vitok-grid" in res.stdout.split()


def test_train_stop_at_says_how_to_go_on(tmp_path, monkeypatch):
    runner = CliRunner()
    monkeypatch.setenv("RANK", "1")   # inherited by a single process (no WORLD_SIZE): its summary is still printed
    res = runner.invoke(train, ["tiny-cnn", "--out", str(tmp_path / "r"), "--set", "schedule.steps=3", "--stop-at", "1",
                                "-q", *FAST])
    assert res.exit_code == 0, res.output
    assert "trained cnn-tiny for 1 step of 3 (--stop-at; continue with --resume)" in res.stdout, res.stdout
    monkeypatch.delenv("RANK")
    res = runner.invoke(train, ["tiny-cnn", "--out", str(tmp_path / "r"), "--set", "schedule.steps=3", "--resume",
                                "--stop-at", "0", *FAST])
    assert res.exit_code == 2 and "0 is not in the range x>=1" in res.output


def test_bench_train_prints_clips_per_second():
    res = CliRunner().invoke(bench_train, ["tiny-vit", "--steps", "2", "--warmup", "1", "--json", *FAST])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["clips_per_s"] > 0 and r["batch_size"] == 2 and r["clip"] == [8, 16, 16] and r["steps"] == 2
    assert r["precision"] == "fp32" and r["gan"] is False            # auto on CPU; tiny-vit has no patch GAN
    assert r["compiled"] is False and r["worker_clips_per_s"] > 0
    text = CliRunner().invoke(bench_train, ["tiny-vit", "--steps", "1", "--warmup", "0", *FAST]).stdout
    assert "one data worker makes" in text and "fp32): " in text   # not ", torch.compile)"
    res = CliRunner().invoke(bench_train, ["tiny-vit", "--steps", "1", "--warmup", "0", "--set", "precision=bf16",
                                           *FAST])
    assert res.exit_code == 0 and "clips/s" in res.stdout and "bf16" in res.stdout


def test_bench_train_times_the_gan_whatever_its_start(monkeypatch):
    """With loss.gan > 0 every bench step runs the discriminator, even with loss.gan_start past the bench's steps
    (which timed the tokenizer alone, twice as fast on tiny-cnn)."""
    from vitok.train.losses import PatchDiscriminator

    calls, real = [], PatchDiscriminator.forward
    monkeypatch.setattr(PatchDiscriminator, "forward", lambda self, x: (calls.append(len(x)), real(self, x))[1])
    args = ["tiny-cnn", "--steps", "2", "--warmup", "1", "--set", "loss.gan=0.1", "--set", "loss.gan_start=100"]
    res = CliRunner().invoke(bench_train, [*args, "--json", *FAST])
    assert res.exit_code == 0, res.output
    assert len(calls) == 3 * 3 and json.loads(res.stdout)["gan"] is True   # per step: generator loss, real, fake
    assert "fp32, GAN included)" in CliRunner().invoke(bench_train, [*args, *FAST]).stdout


def test_bench_train_refuses_a_skipped_step(monkeypatch):
    """A step the trainer skips as non-finite (no optimizer step) is not timed as a training step."""
    from vitok.train.trainer import Trainer

    monkeypatch.setattr(Trainer, "train_step", lambda self, x: None)
    res = CliRunner().invoke(bench_train, ["tiny-cnn", "--steps", "1", "--warmup", "0", *FAST])
    assert res.exit_code != 0 and "step 1 of the bench was skipped (non-finite" in str(res.exception)


def test_bench_times_one_worker_making_the_timed_steps_clips():
    """The per-worker figure makes exactly the clips of the timed steps (the sampler's keys from the first timed step
    on), on one thread as a loader worker does, and leaves the thread count as it was."""
    import itertools

    import torch

    from vitok.train.bench import _clip_seconds
    from vitok.train.data import StepSampler

    made, threads = [], torch.get_num_threads()

    class Recording:
        def __len__(self):
            return 10

        def __getitem__(self, key):
            made.append((key, torch.get_num_threads()))

    assert _clip_seconds(Recording(), 3, seed=7, first_step=2, steps=2) > 0
    expected = list(itertools.islice(StepSampler(10, 3, seed=7), 2 * 3, 4 * 3))
    assert [k for k, _ in made] == expected and {n for _, n in made} == {1}
    assert torch.get_num_threads() == threads


def test_metrics_match_conventions():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    assert frame_psnr(a, a) == 100.0 and frame_ssim(a, a) == pytest.approx(1.0)
    b = a.copy()
    b[1] ^= 1                                                        # one frame off by one level
    assert frame_psnr(a, b) == pytest.approx((100 + 100 + 10 * np.log10(255 ** 2)) / 3)


def test_metrics_agree_with_the_rd_metrics():
    """The core keeps its own PSNR/SSIM (it may not import vitok.evaluation); the model table and the RD tables must
    still measure the same thing."""
    from vitok.evaluation import metrics

    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (4, 24, 32, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    b[0] = a[0]                                                      # one exact frame: the 100 dB cap on both sides
    assert frame_psnr(a, b) == pytest.approx(metrics.psnr(a, b), rel=1e-12)
    assert frame_ssim(a, b) == pytest.approx(metrics.ssim(a, b), rel=1e-6)


def test_evaluate_model_grid_and_module_entry(tmp_path, capsys):
    import torch

    torch.manual_seed(0)
    tok = vitok.create_model("vit-tiny").train()
    rng = np.random.default_rng(1)
    segs = [(f"s{i}", rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)) for i in range(2)]
    res = evaluate_model(tok, segs, return_recons=True)
    assert tok.training and res["num_segments"] == 2 and len(res["recons"]) == 2
    assert 0 < res["psnr"] < 100 and -1 <= res["ssim"] <= 1 and [s["id"] for s in res["segments"]] == ["s0", "s1"]
    from PIL import Image

    grid = save_grid(tmp_path / "g.png", [f for _, f in segs], res["recons"], frames_per_clip=3)
    assert Image.open(grid).size == (3 * 36, 4 * 36)

    tok.save_pretrained(tmp_path / "m")
    assert evaluate_main([str(tmp_path / "m"), "--frames", "8", "--size", "32", "--limit", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_segments"] == 1 and out["segments"][0]["id"].startswith("bigbuckbunny") and out["psnr"] > 0
    # --int8: the same model with its weights rounded as int8 storage would hold them (vitok.storage), which is
    # what loading an int8-saved copy gives
    args = ["--frames", "8", "--size", "32", "--limit", "1", "--json"]
    assert evaluate_main([str(tmp_path / "m"), *args, "--int8"]) == 0
    rounded = json.loads(capsys.readouterr().out)
    tok.save_pretrained(tmp_path / "m8", dtype=torch.int8)
    assert evaluate_main([str(tmp_path / "m8"), *args]) == 0
    saved = json.loads(capsys.readouterr().out)
    assert rounded["int8"] and not saved["int8"] and rounded["psnr"] == saved["psnr"]
    assert abs(rounded["psnr"] - out["psnr"]) < 0.5

"""The tiny rectified-flow generator: loss falls, padding is ignored, the frozen encoder stays untouched, CLI path."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import vitok
from vitok.cli.main import cli
from vitok.data.convert import frames_to_tensor
from vitok.data.io import read_video
from vitok.data.shards import ShardError
from vitok.evaluation.generation import FlowDiT, GeneratorConfig, GeneratorError, flow_loss, load_generator, \
    sample_flow, sample_videos, save_generator, train_generator
from vitok.extract import read_clips

SIDE = 32


def test_loss_decreases_on_fixed_seed(shards_dir, tmp_path):
    s = train_generator(shards_dir, tmp_path / "gen", steps=60, batch_size=6, width=64, depth=2, heads=2,
                        lr=2e-3, seed=0, log_every=10)
    log = [json.loads(line) for line in (tmp_path / "gen" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(10, 61, 10))
    assert s["final_loss"] < 0.7 * s["first_loss"], log
    model, meta = load_generator(tmp_path / "gen")
    assert meta["tokenizer"]["weights_hash"] and meta["template"]["frames"] == 4
    again = train_generator(shards_dir, tmp_path / "gen2", steps=20, batch_size=6, width=64, depth=2, heads=2, seed=0)
    first = train_generator(shards_dir, tmp_path / "gen3", steps=20, batch_size=6, width=64, depth=2, heads=2, seed=0)
    assert again["final_loss"] == first["final_loss"]  # fixed seed: reproducible


def test_padding_does_not_change_loss_or_outputs():
    torch.manual_seed(0)
    model = FlowDiT(GeneratorConfig(latent_channels=4, max_tokens=8, width=32, depth=2, heads=2)).eval()
    for p in model.parameters():  # leave the adaLN-zero init so outputs depend on the input
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(1, 5, 4)
    padded = torch.cat([x, torch.randn(1, 3, 4) * 100], 1)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    t = torch.tensor([0.3])
    torch.testing.assert_close(model(padded, t, mask)[:, :5], model(x, t), rtol=1e-4, atol=1e-5)
    other = torch.cat([x, torch.randn(1, 3, 4)], 1)  # different padding values, same present tokens
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    loss_a, loss_b = flow_loss(model, padded, mask, generator=g1), flow_loss(model, other, mask, generator=g2)
    torch.testing.assert_close(loss_a, loss_b)
    calls = []
    out = sample_flow(model, 2, 8, mask, steps=3, on_step=lambda: calls.append(1))
    assert out.shape == (2, 8, 4) and out[:, 5:].abs().sum() == 0 and len(calls) == 3


def test_frozen_encoder_unchanged_after_generator_steps(model_dir, video_dir):
    tok = vitok.load(model_dir)  # frozen by default
    before = tok.weights_hash
    params = {k: v.clone() for k, v in tok.state_dict().items()}
    assert not any(p.requires_grad for p in tok.parameters())
    clips = [read_clips(video_dir / f"clip{i}.mp4", 4, (SIDE, SIDE), 1)[0][0][1] for i in (0, 1)]
    videos = frames_to_tensor(torch.stack([torch.from_numpy(c) for c in clips]))
    lat = tok.encode(videos)
    gen = FlowDiT(GeneratorConfig(latent_channels=lat.channels, max_tokens=lat.z.shape[1], width=32, depth=1, heads=2))
    opt = torch.optim.AdamW(list(gen.parameters()) + list(tok.parameters()), lr=1e-2)
    for _ in range(3):
        z = tok.encode(videos).normalized().z
        loss = flow_loss(gen, z, tok.encode(videos).mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert tok.weights_hash == before
    assert all(torch.equal(v, params[k]) for k, v in tok.state_dict().items())
    assert all(p.grad is None for p in tok.parameters())


def test_cli_extract_stats_train_sample(tmp_path, video_dir, model_dir):
    runner = CliRunner()
    shards = tmp_path / "shards"

    def ok(args):
        result = runner.invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    ok(["latents", "extract", str(video_dir), "-o", str(shards), "--model", str(model_dir), "--frames", "4",
        "--size", f"{SIDE}", "--shard-size", "4", "-q"])
    stats = json.loads(ok(["latents", "stats", str(shards), "--json"]))
    assert stats["clips"] == 6 and stats["skipped"] == 1 and len(stats["mean"]) == stats["latent_channels"]
    assert "channel" in ok(["latents", "stats", str(shards)])
    train = json.loads(ok(["gen", "train", str(shards), "--out", str(tmp_path / "gen"), "--steps", "20",
                           "--batch-size", "4", "--width", "32", "--depth", "1", "--heads", "2", "--cond", "clip",
                           "-q", "--json"]))
    assert train["steps"] == 20
    out = tmp_path / "samples.mp4"
    result = runner.invoke(cli, ["gen", "sample", "--gen", str(tmp_path / "gen"), "-o", str(out), "--num", "2",
                                 "--steps", "3"], catch_exceptions=False)
    assert result.exit_code == 0 and "sampling: " not in result.stderr   # a bar only on a terminal, not in a log
    assert f"wrote 2 samples (4 frames, {2 * SIDE}x{SIDE} mosaic)" in result.stdout   # width x height
    frames, info = read_video(out)
    assert frames.shape == (4, SIDE, 2 * SIDE, 3) and info.fps == 8  # the training clips' rate
    config = json.loads((tmp_path / "gen" / "config.json").read_text())
    assert config["template"]["fps"] == "8"
    config["template"]["fps"] = "30000/1001"  # as if the clips were NTSC: samples play at that rate
    (tmp_path / "gen" / "config.json").write_text(json.dumps(config))
    for extra, rate in (([], 30000 / 1001), (["--fps", "5"], 5)):
        ok(["gen", "sample", "--gen", str(tmp_path / "gen"), "-o", str(out), "--num", "1", "--steps", "2", "-q", "-y",
            *extra])
        assert abs(float(read_video(out)[1].fps) - rate) < 1e-3
    quiet = runner.invoke(cli, ["gen", "sample", "--gen", str(tmp_path / "gen"), "-o", str(out), "--num", "2",
                                "--steps", "3", "-q", "-y"], catch_exceptions=False)
    assert quiet.exit_code == 0 and quiet.stderr == ""
    result = runner.invoke(cli, ["gen", "sample", "--gen", str(tmp_path / "gen"), "-o", str(out)])
    assert result.exit_code != 0 and "exists" in str(result.exception)  # main() prints it as `error: ...`


def test_damaged_generator_weights_are_one_line(tmp_path, cli_error):
    gen = tmp_path / "gen"
    save_generator(FlowDiT(GeneratorConfig(latent_channels=4, max_tokens=8, width=16, depth=1, heads=2)), gen, {})
    (gen / "model.safetensors").write_text("hi\n")
    err = cli_error(["gen", "sample", "--gen", str(gen), "-o", str(tmp_path / "s.mp4"), "-q"])
    assert f"{gen / 'model.safetensors'}: unreadable generator weights" in err
    assert not (tmp_path / "s.mp4").exists()
    # a name no h264 container takes is refused before any sampling (the damaged weights are never read)
    err = cli_error(["gen", "sample", "--gen", str(gen), "-o", str(tmp_path / "s.png"), "-q"])
    assert f"{tmp_path / 's.png'}: gen sample writes an h264 video; name it .mp4, .mkv, .mov, .m4v, .avi, .ts" in err


def test_a_wrong_sample_suffix_is_said_before_asking_for_y(tmp_path, cli_error):
    """An existing output no h264 container takes said "use -y to overwrite", and only with -y that it was wrong."""
    out = tmp_path / "ex.gif"
    out.write_bytes(b"keep")
    err = cli_error(["gen", "sample", "--gen", str(tmp_path / "gen"), "-o", str(out), "-q"])
    assert f"{out}: gen sample writes an h264 video" in err and out.read_bytes() == b"keep"
    # a --fps its container cannot time (Matroska: 1 ms) is said before sampling (the folder does not even exist)
    err = cli_error(["gen", "sample", "--gen", str(tmp_path / "gen"), "-o", str(tmp_path / "s.mkv"), "--fps", "2000"])
    assert "s.mkv: Matroska times frames in milliseconds, so 2000 fps cannot be written" in err


def test_a_failed_training_run_leaves_no_folder_and_an_earlier_run_whole(tmp_path, shards_dir):
    import shutil

    bad = tmp_path / "shards"
    shutil.copytree(shards_dir, bad)
    for shard in sorted(bad.glob("shard-*.safetensors")):
        with open(shard, "r+b") as f:
            f.truncate(shard.stat().st_size // 2)
    args = dict(steps=4, batch_size=2, width=16, depth=1, heads=2, log_every=2)
    with pytest.raises(ShardError, match="damaged shard"):
        train_generator(bad, tmp_path / "new" / "gen", **args)
    assert not (tmp_path / "new").exists()  # folders it made are gone
    train_generator(shards_dir, tmp_path / "gen", **args)
    before = {p.name: p.read_bytes() for p in (tmp_path / "gen").iterdir()}
    with pytest.raises(ShardError, match="damaged shard"):
        train_generator(bad, tmp_path / "gen", **args)  # as `-y` over it would
    assert {p.name: p.read_bytes() for p in (tmp_path / "gen").iterdir()} == before


def test_gen_train_never_replaces_a_folder_it_did_not_write(tmp_path, shards_dir, model_dir, cli_error):
    """-y replaced config.json and model.safetensors of any folder, a tokenizer's included (the one the shards came
    from, which sampling needs); the output folder is now replaced whole, so only an earlier run's is accepted."""
    import shutil

    tok = tmp_path / "tok"
    shutil.copytree(model_dir, tok)
    before = {p.name: p.read_bytes() for p in tok.iterdir()}
    base = ["gen", "train", str(shards_dir), "--steps", "2", "--batch-size", "2", "--width", "16", "--depth", "1",
            "--heads", "2", "-q", "-y"]
    err = cli_error([*base, "--out", str(tok)])
    assert "is not a generator folder" in err and {p.name: p.read_bytes() for p in tok.iterdir()} == before
    assert "is the input" in cli_error([*base, "--out", str(shards_dir)])
    gen = tmp_path / "gen"
    gen.mkdir()   # an empty folder is fine
    main_ok = CliRunner().invoke(cli, [*base, "--out", str(gen)])
    assert main_ok.exit_code == 0, main_ok.output
    # 2 steps are one --log-every window: its mean, not "loss X -> X" as if nothing had been learned
    assert "mean loss" in main_ok.stdout and "over the 2 steps (one --log-every window)" in main_ok.stdout
    (gen / "notes.txt").write_text("mine")
    assert "holds other files (notes.txt)" in cli_error([*base, "--out", str(gen)])
    (gen / "notes.txt").unlink()
    (gen / "stale.bin").write_bytes(b"x")
    with pytest.raises(GeneratorError, match=r"holds stale.bin"):   # the API refuses too
        train_generator(shards_dir, gen, steps=2, batch_size=2, width=16, depth=1, heads=2)
    (gen / "stale.bin").unlink()
    train_generator(shards_dir, gen, steps=2, batch_size=2, width=16, depth=1, heads=2)   # an earlier run: replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen", "tok"]   # no temporary folder left beside it


def test_gen_errors_are_one_line(tmp_path, shards_dir, cli_error, monkeypatch):
    err = cli_error(["gen", "train", str(shards_dir), "--out", str(tmp_path / "g"), "--width", "16",
                                   "--heads", "3", "-q"])
    assert "--width 16 is not divisible by --heads 3" in err and not (tmp_path / "g").exists()
    # a diverging run wrote NaN losses as invalid JSON, exited 0 and saved NaN weights
    from vitok.evaluation import generation

    real_loss, calls = generation.flow_loss, []

    def diverging(*args):
        calls.append(1)
        loss = real_loss(*args)
        return loss * float("nan") if len(calls) >= 3 else loss

    with monkeypatch.context() as m:
        m.setattr(generation, "flow_loss", diverging)
        err = cli_error(["gen", "train", str(shards_dir), "--out", str(tmp_path / "g"), "--steps", "6",
                         "--batch-size", "2", "--width", "16", "--depth", "1", "--heads", "2", "-q", "--json"])
    assert "training diverged at step 3 (loss nan); lower --lr" in err and not (tmp_path / "g").exists()
    gen = tmp_path / "gen"
    train_generator(shards_dir, gen, steps=2, batch_size=2, width=16, depth=1, heads=2)
    config = json.loads((gen / "config.json").read_text())
    for key in ("generator", "tokenizer", "template", "normalization"):
        broken = {k: v for k, v in config.items() if k != key}
        (gen / "config.json").write_text(json.dumps(broken))
        err = cli_error(["gen", "sample", "--gen", str(gen), "-o", str(tmp_path / "s.mp4"), "-q"])
        assert f"config.json: unreadable generator config (lacks {key})" in err and not (tmp_path / "s.mp4").exists()
    for key, field in (("template", "length"), ("template", "mask"), ("normalization", "std")):
        broken = {**config, key: {k: v for k, v in config[key].items() if k != field}}
        (gen / "config.json").write_text(json.dumps(broken))
        err = cli_error(["gen", "sample", "--gen", str(gen), "-o", str(tmp_path / "s.mp4"), "-q"])
        assert f"(lacks {key}.{field})" in err and not (tmp_path / "s.mp4").exists()
    for text, reason in (("{}", "lacks generator"), ("[1]", "lacks generator"),
                         ("{", "Expecting property name")):
        (gen / "config.json").write_text(text)
        err = cli_error(["gen", "sample", "--gen", str(gen), "-o", str(tmp_path / "s.mp4"), "-q"])
        assert "config.json: unreadable generator config (" in err and reason in err, err


def test_clip_conditioned_samples_take_labels_of_the_template_geometry(tmp_path, shards_dir, monkeypatch):
    """Samples are drawn at one geometry (the set's most common): clip labels of another geometry decoded garbage,
    so by default samples cycle over the clips of that geometry only."""
    import vitok.evaluation.generation as generation

    gen = tmp_path / "gen"
    train_generator(shards_dir, gen, steps=2, batch_size=2, width=16, depth=1, heads=2, cond="clip")
    config = json.loads((gen / "config.json").read_text())
    assert config["template"]["members"] == list(range(config["generator"]["num_classes"]))   # one geometry here
    config["template"]["members"] = [4, 1]   # as if only clips 4 and 1 had it
    (gen / "config.json").write_text(json.dumps(config))
    seen = []
    real = generation.sample_flow
    monkeypatch.setattr(generation, "sample_flow", lambda *a: (seen.append(a[5].tolist()), real(*a))[1])
    videos = sample_videos(gen, num=3, steps=1)
    assert seen == [[4, 1, 4]] and videos.shape[0] == 3

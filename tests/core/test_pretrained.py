"""Saving, loading, freezing: bit-exact round trips, no gradients into a frozen tokenizer, clear errors."""
from __future__ import annotations

import json

import pytest
import torch

from safetensors.torch import load_file, save_file

import vitok
from vitok.data.errors import VitokError

FAMILIES = ["vit-tiny", "vit1d-tiny", "cnn-tiny"]


@pytest.mark.parametrize("name", FAMILIES)
def test_save_load_bit_exact(tmp_path, clip, name):
    torch.manual_seed(0)
    tok = vitok.create_model(name)
    tok.set_latent_stats([0.1] * tok.latent_channels, [2.0] * tok.latent_channels)
    tok.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = vitok.load(tmp_path / "m")
    assert loaded.weights_hash == tok.weights_hash and len(tok.weights_hash) == 64
    assert loaded.config == tok.config
    video = clip(6, 24, 16)
    tok.freeze()
    lat_a, lat_b = tok.encode(video), loaded.encode(video)
    assert torch.equal(lat_a.z, lat_b.z)
    assert torch.equal(tok.decode(lat_a), loaded.decode(lat_b))


def test_save_half_precision(tmp_path, clip):
    """float16 storage halves the file and leaves the saved model as it was; load() rebuilds the float16 values
    exactly (the hash the file records)."""
    torch.manual_seed(0)
    tok = vitok.create_model("vit1d-tiny").freeze()
    tok.save_pretrained(tmp_path / "full")
    video = clip(6, 24, 16)
    reference, before = tok.encode(video).z, tok.weights_hash
    tok.save_pretrained(tmp_path / "half", dtype=torch.float16)
    assert tok.weights_hash == before and torch.equal(tok.encode(video).z, reference)
    full, half = ((tmp_path / d / "model.safetensors").stat().st_size for d in ("full", "half"))
    assert half < 0.55 * full
    loaded = vitok.load(tmp_path / "half")
    assert next(loaded.parameters()).dtype == torch.float32
    assert all(torch.equal(v, tok.state_dict()[k].half().float()) for k, v in loaded.state_dict().items())
    assert loaded.weights_hash != before
    assert torch.allclose(loaded.encode(video).z, reference, atol=0.05)  # rounding moved the latents only slightly


def test_weights_hash_tracks_weights():
    torch.manual_seed(0)
    a = vitok.create_model("vit-tiny")
    torch.manual_seed(0)
    b = vitok.create_model("vit-tiny")
    assert a.weights_hash == b.weights_hash
    with torch.no_grad():
        b.to_pixels.bias[0] += 1e-6
    assert a.weights_hash != b.weights_hash


def test_a_folder_named_like_a_bundled_model_does_not_hide_it(tmp_path, monkeypatch):
    """An output folder called vitok-grid in the working directory made `vitok.load("vitok-grid")` fail with
    "missing config.json"; a folder that holds a model is still that model."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vitok-grid").mkdir()
    bundled = vitok.load(vitok.registry.PRETRAINED_DIR / "vitok-grid")
    assert vitok.load("vitok-grid").weights_hash == bundled.weights_hash
    torch.manual_seed(0)
    vitok.create_model("vit-tiny").save_pretrained(tmp_path / "vitok-grid")
    assert vitok.load("vitok-grid").config.name == "vit-tiny"
    (tmp_path / "vitok-1d" / "model").mkdir(parents=True)   # a training run's folder: either could be meant
    with pytest.raises(VitokError, match=r"vitok-1d: the folder .*vitok-1d holds no config.json, and vitok-1d is also "
                                         r"a bundled model; give the model folder's path \(e.g. vitok-1d/model"):
        vitok.load("vitok-1d")
    from vitok.codecs.neural import model_dir
    from vitok.extract import _model_source

    (tmp_path / "vitok-cnn").mkdir()   # empty: the codec and extraction's recorded source mean the bundled model too
    assert model_dir("vitok-cnn") == vitok.registry.PRETRAINED_DIR / "vitok-cnn" and _model_source("vitok-cnn") == \
        "vitok-cnn"
    edited = vitok.create_model("vit-tiny")
    edited.config.latent_mean = [0.0] * 3   # a config `load` refuses is not written either
    with pytest.raises(VitokError, match="latent_mean has 3 values"):
        edited.save_pretrained(tmp_path / "edited")
    assert not (tmp_path / "edited").exists()


def test_another_channel_count_drops_the_bundled_statistics():
    """`create_model("vitok-grid", latent_channels=8)` failed on "latent_mean has 16 values", a field not set."""
    tok = vitok.create_model("vitok-grid", latent_channels=8)
    assert tok.latent_channels == 8 and tok.config.latent_mean is None and tok.config.latent_std is None
    given = vitok.create_model("vitok-grid", latent_channels=8, latent_mean=[0.0] * 8, latent_std=[1.0] * 8)
    assert given.config.latent_std == [1.0] * 8
    assert vitok.create_model("vitok-grid").config.latent_mean is not None   # the same count keeps them


def test_an_override_of_kind_is_named():
    """`create_model("vit-tiny", kind="cnn")` built a CNN from a ViT's fields: AttributeError (or a KeyError)."""
    for kind in ("cnn", "vit1d", "nope"):
        with pytest.raises(VitokError, match=f"kind '{kind}' does not name this ViTConfig's architecture"):
            vitok.create_model("vit-tiny", kind=kind)


def test_forward_latents_decode_and_take_any_integer_count(clip):
    """`forward` (the training pass) codes whole frames as one unit: its Latents must say so (a grid model's frames
    larger than the tile were planned as tiles and refused), and num_tokens takes numpy/tensor integers as encode
    does."""
    import numpy as np

    torch.manual_seed(0)
    grid = vitok.create_model("vit-tiny", tile_size=32).freeze()
    video = clip(4, 48, 64)
    out = grid(video)
    assert out["latents"].tiled is False and grid.decode(out["latents"]).shape == video.shape
    torch.testing.assert_close(grid.decode(out["latents"]), out["recon"].clamp(-1, 1), atol=1e-5, rtol=0)
    torch.manual_seed(0)
    one_d = vitok.create_model("vit1d-tiny").freeze()
    for k in (np.int64(4), torch.tensor(4)):
        assert one_d(clip(4, 32, 32), num_tokens=k)["latents"].num_tokens == 4


def test_frozen_encoder_stays_frozen(tmp_path, clip):
    torch.manual_seed(0)
    vitok.create_model("vit-tiny").save_pretrained(tmp_path / "m")
    tok = vitok.load(tmp_path / "m")
    assert tok.frozen and not tok.training
    assert all(not p.requires_grad for p in tok.parameters())
    before = {k: v.clone() for k, v in tok.state_dict().items()}
    digest = tok.weights_hash
    head = torch.nn.Linear(tok.latent_channels, 1)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    for seed in range(2):
        lat = tok.encode(clip(4, 16, 16, seed=seed)).normalized()
        assert not lat.z.requires_grad and not torch.is_inference(lat.z)
        loss = head(lat.z).square().mean() + tok.decode(lat).mean() * 0
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert head.weight.grad is not None
    assert all(p.grad is None for p in tok.parameters())
    assert all(torch.equal(before[k], v) for k, v in tok.state_dict().items())
    assert tok.weights_hash == digest


def test_load_leaves_the_callers_random_state_alone(tmp_path):
    """load() built the model with random initial values before overwriting them: a training script's random
    stream depended on whether it loaded a tokenizer."""
    vitok.create_model("vit1d-tiny").save_pretrained(tmp_path / "m")
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    vitok.load(tmp_path / "m")
    assert torch.equal(torch.rand(4), expected)


def test_a_loaded_model_is_hashed_once(tmp_path, monkeypatch):
    """load() checked the hash before freezing, which drops it: every user of the model (a codec's header, the
    tables' check, extraction's shards) hashed all weights again."""
    import vitok.tokenizer as tokenizer

    vitok.create_model("vit1d-tiny").save_pretrained(tmp_path / "m")
    hashed, real = [], tokenizer.state_hash
    monkeypatch.setattr(tokenizer, "state_hash", lambda state: hashed.append(1) or real(state))
    tok = vitok.load(tmp_path / "m")
    assert tok.weights_hash == tok.weights_hash and len(hashed) == 1


def test_load_unfrozen(tmp_path):
    vitok.create_model("cnn-tiny").save_pretrained(tmp_path / "m")
    tok = vitok.load(tmp_path / "m", frozen=False)
    assert not tok.frozen


def test_load_errors(tmp_path):
    with pytest.raises(VitokError, match="unknown model"):
        vitok.load("no-such-model")
    with pytest.raises(VitokError, match="create_model"):
        vitok.load("vit-tiny")
    with pytest.raises(VitokError, match="empty model name"):
        vitok.load("")   # was the current directory
    with pytest.raises(VitokError, match="unknown model"):
        vitok.create_model("no-such-model")
    with pytest.raises(VitokError, match="unknown config field"):
        vitok.create_model("vit-tiny", widht=3)
    directory = tmp_path / "m"
    vitok.create_model("vit-tiny").save_pretrained(directory)
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())

    weights.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(VitokError, match="corrupt") as e:
        vitok.load(directory)
    assert "\n" not in str(e.value)

    data[-5] ^= 0xFF  # flip a weight byte: safetensors loads it, the hash catches it
    weights.write_bytes(bytes(data))
    with pytest.raises(VitokError, match="hash"):
        vitok.load(directory)

    vitok.create_model("vit-tiny", dec_depth=1).save_pretrained(tmp_path / "other")
    (tmp_path / "other" / "config.json").write_text((directory / "config.json").read_text())
    with pytest.raises(VitokError, match="do not match"):
        vitok.load(tmp_path / "other")

    weights.unlink()
    with pytest.raises(VitokError, match="missing model.safetensors"):
        vitok.load(directory)
    (directory / "config.json").write_text(json.dumps({"kind": "vit", "bogus": 1}))
    with pytest.raises(VitokError, match="bogus"):
        vitok.load(directory)


def test_an_interrupted_save_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    """Weights were renamed into place before the config was written: an interruption between the two left new
    weights loading with the old config's latent statistics."""
    torch.manual_seed(0)
    old = vitok.create_model("vit-tiny")
    old.save_pretrained(tmp_path / "m")
    new = vitok.create_model("vit-tiny")
    new.set_latent_stats([0.5] * 8, [2.0] * 8)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dumps", interrupted)
    with pytest.raises(KeyboardInterrupt):
        new.save_pretrained(tmp_path / "m")
    monkeypatch.undo()
    back = vitok.load(tmp_path / "m")
    assert back.weights_hash == old.weights_hash and back.config.latent_std is None
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]


def test_a_file_without_its_hash_is_refused(tmp_path):
    """A weights file without vitok's hash loaded unchecked, tampered weights included."""
    vitok.create_model("vit-tiny").save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    tensors = load_file(str(path))
    tensors[next(iter(tensors))].fill_(123.0)
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(VitokError, match="no weights_hash in its metadata"):
        vitok.load(tmp_path / "m")


@pytest.mark.parametrize("field, value, message", [
    ("enc_width", "64", "enc_width must be int, got '64'"),
    ("patch", None, "patch must be int, got None"),
    ("enc_depth", 2.5, "enc_depth must be int, got 2.5"),
    ("variational", 1, "variational must be bool"),
    ("latent_std", [1.0, "a"] + [1.0] * 6, r"latent_std must be list\[float\] \| None"),
    ("patch", 0, "sizes must be >= 1 .* got patch=0"),
    ("dec_depth", -1, "got dec_depth=-1"),
    ("mlp_ratio", -1.0, "mlp_ratio, rope_theta > 0"),
])
def test_config_fields_of_the_wrong_type_are_one_line_errors(tmp_path, cli_error, field, value, message):
    """Mistyped config.json fields were TypeErrors from deep in the model (or a ZeroDivisionError)."""
    vitok.create_model("vit-tiny").save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(VitokError, match=message):
        vitok.load(tmp_path / "m")
    err = cli_error(["calibrate", "--iters", "1", str(tmp_path / "m")])
    assert field in err and str(tmp_path / "m" / "config.json") in err   # which copy of the model is wrong


def test_config_nested_too_deeply_is_one_line(tmp_path, cli_error):
    """JSON nested past Python's recursion limit was a RecursionError traceback (a RuntimeError, not a user error)."""
    vitok.create_model("vit-tiny").save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(VitokError, match="unreadable config"):
        vitok.load(tmp_path / "m")
    assert "nested too deeply" in cli_error(["calibrate", "--iters", "1", str(tmp_path / "m")])


def test_paper_names_parse_whole_and_refuse_zero_sizes():
    with pytest.raises(VitokError, match="got patch=0"):
        vitok.create_model("vit-S-B/4x0")
    with pytest.raises(VitokError, match="unknown model"):
        vitok.create_model("vit-S-B/4x8\n")
    with pytest.raises(VitokError, match="must be int"):
        vitok.create_model("cnn-tiny", enc_blocks=1.5)


def test_public_api():
    for name in ["Tokenizer", "Latents", "load", "create_model", "list_models", "model_stats", "DiffusersAdapter",
                 "VitokError", "__version__"]:
        assert hasattr(vitok, name)
    names = vitok.list_models()
    assert {"vit-tiny", "vit1d-tiny", "cnn-tiny", "vit-s-cpu", "vit1d-s-cpu", "cnn-s-cpu", "vit-S-B/4x8"} <= set(names)


def test_paper_sizes():
    """Paper names parse for any S/B/L pair and tubelet size; params match ViTok's S-B (about 129M)."""
    with torch.device("meta"):
        tok = vitok.create_model("vit-S-B/4x8")
        assert tok.config.enc_width == 768 and tok.config.dec_depth == 12
        assert 125e6 < sum(p.numel() for p in tok.parameters()) < 133e6
        tok = vitok.create_model("vit-B-L/8x16")
        assert (tok.temporal_stride, tok.spatial_stride, tok.config.dec_width) == (8, 16, 1152)


def test_bundled_models_resolve(tmp_path, monkeypatch, clip):
    """Names of folders in vitok/pretrained/ load like registry names (weights shipped inside the package)."""
    import vitok.registry as registry

    monkeypatch.setattr(registry, "PRETRAINED_DIR", tmp_path)
    torch.manual_seed(0)
    tok = vitok.create_model("cnn-tiny", name="demo-cnn")
    tok.save_pretrained(tmp_path / "demo-cnn")
    assert vitok.list_models()[0] == "demo-cnn"
    loaded = vitok.load("demo-cnn")
    assert loaded.frozen and loaded.weights_hash == tok.weights_hash and loaded.config.name == "demo-cnn"
    assert vitok.create_model("demo-cnn").config == tok.config  # same architecture, fresh weights
    from vitok.cli.models import model_rows

    monkeypatch.setattr(registry, "ARCHITECTURES", {})
    monkeypatch.setattr(registry, "PAPER_EXAMPLES", [])
    (row,) = model_rows()
    assert row["name"] == "demo-cnn" and row["weights"] == str(tmp_path / "demo-cnn")

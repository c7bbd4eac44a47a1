"""Config files, merging over defaults, and ``--set key=value`` overrides."""
from __future__ import annotations

import json

import pytest

import vitok
from vitok.data.errors import VitokError
from vitok.train.config import DEFAULTS, incompatible_changes, list_configs, load_config, parse_value, set_override
from vitok.train.trainer import _init_from


def test_packaged_configs_load_and_name_registered_models():
    names = list_configs()
    for required in ("tiny-vit", "tiny-vit1d", "tiny-cnn", "vitok-grid", "vitok-1d", "vitok-cnn"):
        assert required in names
    for name in names:
        cfg = load_config(name)
        assert cfg["name"] == name
        assert cfg["model"]["name"] in vitok.list_models()
    assert load_config("vitok-cnn.json")["model"]["name"] == "cnn-s-cpu"


@pytest.mark.parametrize("name", ["vitok-grid", "vitok-cnn", "vitok-1d"])
def test_packaged_config_builds_its_bundled_models_architecture(name):
    """`vitok train NAME --set model.init=NAME` keeps training the shipped weights with no further overrides."""
    cfg = load_config(name)
    ours = vitok.create_model(cfg["model"]["name"], **cfg["model"]["overrides"])
    assert _init_from(ours, name)[0] == f"initialised from {name}"  # raises on any tensor shape that differs
    assert cfg["data"]["size"] <= vitok.load(name).config.tile_size


@pytest.mark.parametrize("text,value", [("3", 3), ("1e-4", 1e-4), ("true", True), ("null", None),
                                        ("[1, 2]", [1, 2]), ('{"a": 1}', {"a": 1}), ("vit-tiny", "vit-tiny"),
                                        ('"007"', "007")])
def test_parse_value_json_else_string(text, value):
    assert parse_value(text) == value


def test_set_overrides_dotted_keys():
    cfg = load_config("tiny-vit", ["schedule.steps=42", "loss.kl=1e-5", "data.synthetic.num_clips=3",
                                   "model.name=cnn-tiny", "model.overrides.latent_channels=4",
                                   'eval={"every": 7}', "data.samples.sizes=[64]"])
    assert cfg["schedule"]["steps"] == 42 and cfg["loss"]["kl"] == 1e-5
    assert cfg["data"]["synthetic"] == {"num_clips": 3, "seed": 0}
    assert cfg["model"] == {"name": "cnn-tiny", "overrides": {"latent_channels": 4}, "init": None, "freeze": []}
    assert cfg["eval"]["every"] == 7 and cfg["eval"]["source"] == "synthetic"  # section merge keeps the rest
    assert cfg["data"]["samples"]["sizes"] == [64]


@pytest.mark.parametrize("item,needle", [("schedule.stepz=3", "schedule.stepz"), ("nope.a=1", "nope"),
                                         ("schedule=3", "is a section"), ("schedule.steps", "key=value"),
                                         ('eval={"evry": 1}', "eval.evry")])
def test_bad_overrides_are_user_errors(item, needle):
    cfg = json.loads(json.dumps(DEFAULTS))
    with pytest.raises(VitokError, match=needle.replace(".", r"\.")):
        set_override(cfg, item)


@pytest.mark.parametrize("item,needle", [
    ("schedule.steps=abc", "--set: schedule.steps must be an integer, got 'abc'"),
    ("schedule.steps=1e3", "schedule.steps must be an integer, got 1000.0"),
    ("schedule.steps=0", "schedule.steps must be at least 1, got 0"),
    ("schedule.lr=-1e-4", "schedule.lr must be at least 0"),
    ("compile=1", "compile must be true or false"),
    ("data.samples.sizes=128", "data.samples.sizes must be a list"),
    ("model.init=5", "model.init must be a string"),
    ("model.freeze=decoder", "model.freeze must be a list"),
    ("eval.grid_frames=0", "eval.grid_frames must be at least 1"),
    ("log_every=0", "log_every must be at least 1"),
    ("export.stats_clips=0", "export.stats_clips must be at least 1"),
    ("eval.size=8", "eval.size must be at least 11 (the held-out SSIM's window), got 8"),
    ("data.size=8", "data.size must be at least 11 with loss.ssim > 0 (SSIM's window), got 8"),
    ("nested_dropout.min_tokens=4", "nested_dropout.min_tokens is the trainer's draw"),
    ('model.freeze=[""]', "model.freeze must be a list of parameter-name prefixes"),
    ("seed=-1", "seed must be at least 0"),
    ("ema.decay=1", "ema.decay must be below 1"),
    ('eval={"every": "often"}', "eval.every must be an integer"),
    ("schedule.betas=[0.9]", "schedule.betas must be 2 numbers in [0, 1), got [0.9]"),
    ('schedule.betas=["a","b"]', "schedule.betas must be 2 numbers"),
    ("schedule.betas=[2,3]", "schedule.betas must be 2 numbers"),
    ("schedule.min_lr_ratio=2", "schedule.min_lr_ratio must be in [0, 1]"),
    ("schedule.lr=NaN", "schedule.lr must be a finite number, got nan"),
    ("loss.kl=Infinity", "loss.kl must be a finite number, got inf"),
    ("loss.lpips_net=foo", "loss.lpips_net must be one of alex, vgg, squeeze, got 'foo'"),
    ("loss.disc_channels=0", "loss.disc_channels must be at least 1"),
    ('data.samples.sizes=["a"]', "data.samples.sizes must be a list of positive integers"),
    ("data.samples.sizes=[0]", "data.samples.sizes must be a list of positive integers"),
    ("nested_dropout.mode=foo", "nested_dropout.mode must be one of model, uniform, pow2"),
    ("device=tpu", "device must be one of auto, cpu, cuda, got 'tpu'"),
    ("precision=fp16", "precision must be one of auto, fp32, bf16"),
    ("eval.source=foo", "eval.source must be one of samples, synthetic"),
])
def test_values_of_the_wrong_type_or_range_are_user_errors(item, needle):
    with pytest.raises(VitokError) as e:
        load_config("tiny-vit", [item])
    assert needle in str(e.value)


def test_lpips_loss_needs_frames_its_backbone_can_pool():
    with pytest.raises(VitokError, match="data.size must be at least 31 with loss.lpips > 0"):
        load_config("tiny-vit", ["loss.lpips=1", "data.size=16"])
    load_config("tiny-vit", ["loss.lpips=1", "data.size=16", "loss.lpips_net=vgg"])   # AlexNet's limit only


def test_values_that_fit_pass():
    cfg = load_config("tiny-vit", ["ema.decay=0", "schedule.lr=1", "model.init=vitok-grid", "data.num_frames=null",
                                   "precision=bf16", "model.overrides.patch=4"])
    assert (cfg["ema"]["decay"], cfg["schedule"]["lr"], cfg["model"]["init"]) == (0, 1, "vitok-grid")
    assert (cfg["data"]["num_frames"], cfg["precision"], cfg["model"]["overrides"]["patch"]) == (None, "bf16", 4)


def test_config_files_errors(tmp_path):
    with pytest.raises(VitokError, match="config not found.*tiny-vit"):
        load_config("no-such-config")
    bad = tmp_path / "bad.json"
    bad.write_text('{"schedule": {"stepz": 1}}')
    with pytest.raises(VitokError, match="unknown key 'schedule.stepz'"):
        load_config(bad)
    bad.write_text("{not json")
    with pytest.raises(VitokError, match="invalid JSON"):
        load_config(bad)
    bad.write_text('{"ema": 0.99}')
    with pytest.raises(VitokError, match="ema must be an object of settings, got 0.99"):
        load_config(bad)
    bad.write_text('{"schedule": {"batch_size": "8"}}')
    with pytest.raises(VitokError, match=r"bad\.json: schedule\.batch_size must be an integer"):
        load_config(bad)
    good = tmp_path / "mine.json"
    good.write_text('{"model": {"name": "cnn-tiny"}, "schedule": {"steps": 3}}')
    cfg = load_config(good, ["seed=5"])
    assert (cfg["name"], cfg["model"]["name"], cfg["schedule"]["steps"], cfg["seed"]) == ("mine", "cnn-tiny", 3, 5)
    assert cfg["loss"] == DEFAULTS["loss"]


def test_incompatible_changes_allow_extending_a_run():
    a = load_config("tiny-vit")
    b = load_config("tiny-vit", ["schedule.steps=100", "eval.every=5", "checkpoint.every=9"])
    assert incompatible_changes(a, b) == []
    assert incompatible_changes(a, load_config("tiny-vit", ["schedule.lr=1"])) == []  # the way out of a divergence
    c = load_config("tiny-vit", ["schedule.warmup=3", "model.overrides.latent_channels=4"])
    assert incompatible_changes(a, c) == ["model.overrides", "schedule.warmup"]
    older = load_config("tiny-vit")   # saved before model.freeze existed: it ran with the default, nothing frozen
    del older["model"]["freeze"]
    assert incompatible_changes(older, a) == []
    assert incompatible_changes(older, load_config("tiny-vit", ['model.freeze=["decoder"]'])) == ["model.freeze"]
    ignored = load_config("tiny-vit")   # saved when min_tokens under mode "model" was accepted (and never read)
    ignored["nested_dropout"]["min_tokens"] = 4
    assert incompatible_changes(ignored, a) == []

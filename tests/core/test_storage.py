"""int8 weight storage (vitok.storage): a quarter of the file, bit-exact reload, malformed files refused by name."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import vitok
from vitok.data.errors import VitokError
from vitok.storage import dequantize_rows, quantize_rows, stored


def test_rows_quantize_within_half_a_step():
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3) * torch.tensor([1e-3, 0.1, 1.0, 10.0, 0.0, 2.0])[:, None, None]
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and scale.shape == (6,)
    assert int(q.abs().max()) == 127   # each non-zero row uses the full range
    err = (dequantize_rows(q, scale) - w).abs().reshape(6, -1).amax(1)
    assert (err <= scale / 2 * (1 + 1e-6)).all()
    assert torch.equal(dequantize_rows(q, scale)[4], torch.zeros(4, 3))


@pytest.mark.parametrize("name", ["vit1d-tiny", "cnn-tiny"])
def test_int8_quarter_size_and_bit_exact_reload(tmp_path, clip, name):
    torch.manual_seed(0)
    tok = vitok.create_model(name)
    video = clip(6, 24, 16)
    tok.save_pretrained(tmp_path / "full")
    with torch.no_grad():
        reference = tok.encode(video).z
    before = tok.weights_hash
    tok.save_pretrained(tmp_path / "int8", dtype=torch.int8)
    assert tok.weights_hash == before   # the live model is left as it was (a copy is saved)
    full, small = ((tmp_path / d / "model.safetensors").stat().st_size for d in ("full", "int8"))
    assert small < 0.35 * full
    loaded = vitok.load(tmp_path / "int8")
    assert next(loaded.parameters()).dtype == torch.float32
    assert loaded.weights_hash != before
    with safe_open(str(tmp_path / "int8" / "model.safetensors"), framework="pt") as f:
        assert f.metadata()["weights_hash"] == loaded.weights_hash   # the file names what loading rebuilds
    tok.load_state_dict(stored(tok.state_dict(), torch.int8)[2])    # the rounding, done to the live model
    tok.freeze()
    assert tok.weights_hash == loaded.weights_hash   # bit-exact: one formula for saving and loading
    assert torch.equal(tok.encode(video).z, loaded.encode(video).z)
    assert torch.allclose(loaded.encode(video).z, reference, atol=0.05)


def _int8_file(tmp_path):
    torch.manual_seed(0)
    tok = vitok.create_model("vit1d-tiny")
    tok.save_pretrained(tmp_path / "m", dtype=torch.int8)
    path = tmp_path / "m" / "model.safetensors"

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    return path, load_file(str(path)), meta


@pytest.mark.parametrize("damage, message", [
    (lambda t: t.pop(next(k for k in t if k.endswith(".scale"))), "without a valid per-row scale"),
    (lambda t: t.update({k: t[k][:-1] for k in [next(k for k in t if k.endswith(".scale"))]}),
     "without a valid per-row scale"),
    (lambda t: t.update({k: torch.full_like(t[k], float("nan")) for k in [next(k for k in t if k.endswith(".scale"))]}),
     "without a valid per-row scale"),
    (lambda t: t.pop(next(k[:-6] for k in t if k.endswith(".scale"))), "scale .* without its weights"),
])
def test_malformed_int8_files_are_refused(tmp_path, damage, message):
    path, tensors, meta = _int8_file(tmp_path)
    damage(tensors)
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(VitokError, match=f"model.safetensors: corrupt weights file .*{message}"):
        vitok.load(tmp_path / "m")


def test_unknown_storage_is_refused(tmp_path):
    path, tensors, meta = _int8_file(tmp_path)
    save_file(tensors, str(path), metadata={**meta, "storage": "int4"})
    with pytest.raises(VitokError, match="unknown weight storage 'int4'"):
        vitok.load(tmp_path / "m")

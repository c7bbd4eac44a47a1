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


def test_a_matrix_stored_as_a_scalar_is_refused(tmp_path):
    path, tensors, meta = _int8_file(tmp_path)
    name = next(k[:-6] for k in tensors if k.endswith(".scale"))
    tensors[name] = torch.tensor(3, dtype=torch.int8)   # a 0-d int8 tensor with its row scales: an IndexError
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(VitokError, match="without a valid per-row scale"):
        vitok.load(tmp_path / "m")


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.bool, "int8"])
def test_save_refuses_a_dtype_no_file_can_hold(tmp_path, dtype):
    """An integer dtype wrote a file every load refused as 'corrupt or edited'; a string was a RuntimeError after
    the folder was made."""
    with pytest.raises(VitokError, match="weights dtype must be None, a floating dtype or torch.int8"):
        vitok.create_model("vit-tiny").save_pretrained(tmp_path / "m", dtype=dtype)
    assert not (tmp_path / "m").exists()


def test_unknown_storage_is_refused(tmp_path):
    path, tensors, meta = _int8_file(tmp_path)
    save_file(tensors, str(path), metadata={**meta, "storage": "int4"})
    with pytest.raises(VitokError, match="unknown weight storage 'int4'"):
        vitok.load(tmp_path / "m")


@pytest.mark.parametrize("model_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("file_dtype", [None, torch.float16, torch.int8])
def test_a_half_precision_model_saves_a_file_that_loads(tmp_path, model_dtype, file_dtype):
    """load() rebuilds a float32 model, so the file's hash is of that, whatever the saved model's dtype (a bf16
    model's own hash was written, and every load failed as 'corrupt or edited')."""
    torch.manual_seed(0)
    tok = vitok.create_model("vit-tiny").to(model_dtype)
    tok.save_pretrained(tmp_path / "m", dtype=file_dtype)
    back = vitok.load(tmp_path / "m")
    assert next(back.parameters()).dtype == torch.float32
    ref = {k: v.float() for k, v in tok.state_dict().items()}
    tol = {None: 0.0, torch.float16: 1e-3, torch.int8: 0.02}[file_dtype]   # int8 rounds each row
    got = back.state_dict()
    assert all(torch.allclose(got[k], v, atol=tol * max(1.0, float(v.abs().max()))) for k, v in ref.items())


def test_weights_hash_follows_in_place_changes():
    """The hash is cached, but an in-place edit or an optimizer step on the live model changes it (extraction and
    the codec's weights check read it)."""
    torch.manual_seed(0)
    tok = vitok.create_model("vit-tiny").freeze()
    before = tok.weights_hash
    with torch.no_grad():
        next(tok.parameters()).add_(1.0)
    assert tok.weights_hash != before
    from vitok.tokenizer import state_hash

    assert tok.weights_hash == state_hash(tok.state_dict())
    tok.requires_grad_(True)
    opt = torch.optim.SGD(tok.parameters(), lr=0.1)
    after_edit = tok.weights_hash
    tok.encode_whole(torch.rand(1, 3, 8, 32, 32))[0].sum().backward()
    opt.step()
    assert tok.freeze().weights_hash not in (after_edit, before)
    # a fused AdamW step updates in place without bumping versions: a trainable model is hashed afresh each time
    tok.requires_grad_(True)
    fused = torch.optim.AdamW(tok.parameters(), lr=0.1, fused=True)
    stepped = tok.weights_hash
    tok.encode_whole(torch.rand(1, 3, 8, 32, 32))[0].sum().backward()
    fused.step()
    assert tok.weights_hash != stepped and tok.weights_hash == state_hash(tok.state_dict())
    # frozen (hash cached), trained a fused step without asking, frozen again: the cache is not trusted
    tok.freeze()
    cached = tok.weights_hash
    tok.requires_grad_(True)
    tok.encode_whole(torch.rand(1, 3, 8, 32, 32))[0].sum().backward()
    fused.step()
    assert tok.freeze().weights_hash != cached and tok.weights_hash == state_hash(tok.state_dict())

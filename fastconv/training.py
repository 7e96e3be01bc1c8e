"""The training loop of ``python -m fastconv.train`` (its command line: :mod:`fastconv.train`).

Exact resume
------------
A resumed run ends with the same weights and ``history.csv`` as the run left alone, on the
CPU to the bit. Three things make it so:

* Randomness is a function of the position, not of a generator's past. Before training step
  ``s`` of epoch ``e`` on rank ``r``, the global torch generator (dropout) and the
  augmentation generator are seeded from ``(seed, e, s, r)`` through a hash
  (:func:`step_seed`). Whatever ran before (model init, validation, a restart) cannot shift
  what a step draws. The batches of epoch ``e`` are ``DistributedSampler(seed).set_epoch(e)``'s
  order, cut at the step reached; DataLoaders get their own generator, so they never draw
  from the global one.
* A checkpoint holds the whole state: model, optimizer, schedule, GradScaler, the position
  (epochs done, steps done in the next one), and the current epoch's partial sums (loss,
  correct, images), so that a resumed epoch's statistics cover the whole epoch.
* A stop happens between steps. Ctrl-C or SIGTERM sets a flag; the current step finishes, then
  ``last.pt`` is saved at the step reached. A crash or SIGKILL cannot wait, so ``last.pt`` is
  also written every ``--save-every`` seconds inside an epoch (atomically): the resumed run
  repeats only the steps after it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from fastconv import backend
from fastconv.atomic import atomic_write, atomic_write_text
from fastconv.checkpoint import (
    CheckpointError,
    check_state_dict_fits,
    load_checkpoint,
    save_checkpoint,
)
from fastconv.cli import (
    CLIError,
    backend_source,
    resolve_amp,
    resolve_backend_choice,
    resolve_device,
)
from fastconv.data import (
    CLASS_NAMES,
    CachedImages,
    DataNotFoundError,
    ImageCache,
    find_images,
    load_or_build_cache,
    normalize,
    random_crop_flip,
    random_resized_crop,
    stratified_split,
    subsample,
    write_demo_dataset,
)
from fastconv.ema import weight_ema
from fastconv.models import build_model
from fastconv.plots import plot_confusion_matrix, plot_history
from fastconv.train import EXIT_INTERRUPTED, default_shift, merge_resumed_args
from fastconv.tta import class_probabilities

__all__ = [
    "NonFiniteLossError",
    "SetupError",
    "Trainer",
    "build_optimizer",
    "evaluate",
    "run",
    "step_seed",
]

AMP_DTYPES = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}
HISTORY_FIELDS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "images_per_s",
    "data_wait_s",
    "step_s",
    "seconds",
)
# The only fields a resume may change.
WALL_CLOCK_FIELDS = ("images_per_s", "data_wait_s", "step_s", "seconds")
CHECKPOINT_FORMAT = 2  # "resume_format" of the checkpoints this module writes and resumes
RESUME_KEYS = (
    "resume_format",
    "optimizer",
    "scheduler",
    "scaler",
    "epoch",
    "step",
    "epoch_sums",
    "history",
    "best_val_acc",
    "best_confusion",
    "data",
)
EXIT_NON_FINITE = 3
BAR_MININTERVAL = 0.1  # seconds between progress-bar redraws (tqdm's default)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class SetupError(CLIError):
    """The run cannot start as asked (say, a batch larger than the data); the message says why."""


class _Stop(Exception):
    """Raised between steps once a stop was asked for (Ctrl-C, SIGTERM)."""


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Process:
    """This process's place in the run: rank 0 of 1 unless started by torchrun."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all processes."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()


def start_process(device_arg: str) -> Process:
    """Check ``--device``, join torchrun's process group if there is one, pick the device."""
    device = resolve_device(device_arg)  # a CLIError for a bad or absent device
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank if world_size > 1 else 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size == 1:
        return Process(0, 1, device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Process(dist.get_rank(), dist.get_world_size(), device)


def say(proc: Process, message: str) -> None:
    if proc.is_main:
        tqdm.write(message)


# --------------------------------------------------------------------------- randomness


def step_seed(seed: int, stream: str, rank: int, epoch: int, step: int) -> int:
    """The seed of random ``stream`` at (rank, epoch, step) of a run seeded with ``seed``.

    A hash, so that neighbouring positions get unrelated seeds and the value is the same in
    every process and Python version (unlike ``hash()``).
    """
    key = f"fastconv.train|{seed}|{stream}|{rank}|{epoch}|{step}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def _loader_worker_init(worker_id: int) -> None:
    """DataLoader workers ignore Ctrl-C: the main process finishes its step and stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class StopSignals:
    """While active, Ctrl-C and SIGTERM ask the training loop to stop after the current step.

    A second Ctrl-C raises :class:`KeyboardInterrupt` at once. Signal handlers can only be
    set in the main thread; elsewhere this does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: bool = True) -> None:
        self.signum: int | None = None
        self.announce = announce  # say at once that a stop is coming (rank 0 only)
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
            if not self.announce:
                return
            message = "\nstopping after this step and saving last.pt (Ctrl-C again: abort now)\n"
            # os.write: a signal handler must not re-enter a Python stream's write
            with contextlib.suppress(OSError):
                os.write(2, message.encode())

    @property
    def requested(self) -> bool:
        return self.signum is not None


class Saver:
    """When ``last.pt`` is due again inside an epoch: every ``every`` seconds (0: every step)."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.every

    def saved(self) -> None:
        self.last = time.monotonic()


# --------------------------------------------------------------------------- data


def prepare_data(args: argparse.Namespace, proc: Process) -> ImageCache:
    """Rank 0 finds (or generates), extracts and caches the images; then the others load them."""

    def prepare() -> ImageCache:
        data_dir = Path(args.data)
        if args.demo:
            data_dir = write_demo_dataset(data_dir / "demo")
        found = find_images(data_dir)
        name = "train"
        if args.limit:
            found = subsample(found, args.limit, args.seed)
            name = f"train-limit{args.limit}-seed{args.seed}"
        counts = ", ".join(
            f"{n} {c}" for c, n in zip(CLASS_NAMES, found.class_counts(), strict=True)
        )
        say(proc, f"data: {len(found.paths)} images in {found.root} ({found.layout}): {counts}")
        workers = args.workers if proc.is_main else 0
        return load_or_build_cache(found, args.img_size, data_dir / "cache", name, workers)

    if proc.is_main:
        cache = prepare()
    proc.barrier()
    if not proc.is_main:
        cache = prepare()
    say(proc, f"cache: {cache.file} ({len(cache.paths)} decoded, {len(cache.skipped)} skipped)")
    counts = torch.bincount(torch.from_numpy(cache.labels), minlength=len(CLASS_NAMES))
    if counts.min() < 2:
        raise DataNotFoundError(
            f"only {counts.tolist()} readable images per class in {cache.file}; at least 2 of "
            f"each are needed ({len(cache.skipped)} files could not be decoded)"
        )
    return cache


def data_fingerprint(cache: ImageCache) -> str:
    """A hash of the cached images' file names and labels, in order (moving the folder keeps it)."""
    digest = hashlib.sha256()
    for path, label in zip(cache.paths, cache.labels.tolist(), strict=True):
        digest.update(f"{Path(path).name}|{label}\n".encode())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- model, state


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on conv/linear weights only (not on BatchNorm or biases)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr)


def jsonable_args(args: argparse.Namespace) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def write_history(history: list[dict], path: Path) -> None:
    with atomic_write(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)


def load_resume_checkpoint(path: str) -> dict:
    """The checkpoint ``--resume`` names, with everything a resume needs; else a CLIError."""
    try:
        state = load_checkpoint(path)
    except CheckpointError as exc:
        raise CLIError(f"--resume {exc}") from None
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing or state["resume_format"] != CHECKPOINT_FORMAT:
        what = f"missing {', '.join(missing)}" if missing else f"format {state['resume_format']!r}"
        raise CLIError(
            f"--resume {path} holds no training state this fastconv.train can resume ({what}); "
            "start a new run (best.pt and last.pt of older versions still work with predict)"
        )
    position = (state["epoch"], state["step"])
    if not all(type(v) is int and v >= 0 for v in position):
        raise CLIError(f"--resume {path} has an invalid position (epoch, step) = {position}")
    return state


def check_epochs_left(state: dict, args: argparse.Namespace, source: str) -> bool:
    """True if the resumed run has steps left; a CLIError if ``--epochs`` asks for fewer."""
    epoch, step = state["epoch"], state["step"]
    if args.epochs < epoch or (args.epochs == epoch and step > 0):
        done = f"{epoch} epoch(s)" + (f" and {step} step(s)" if step else "")
        raise CLIError(
            f"--epochs {args.epochs} is fewer than {source} has already trained ({done}); "
            f"give --epochs {epoch + 1} or more"
        )
    return not (args.epochs == epoch and step == 0)


def check_same_data(
    state: dict, fingerprint: str, images: int, steps_per_epoch: int, proc: Process, args
) -> None:
    """The resumed run must see the same images with as many processes as the saved one."""
    saved = state["data"]
    if saved.get("world_size") != proc.world_size:
        raise CLIError(
            f"WORLD_SIZE: this run has {proc.world_size} process(es) but {args.resume} was "
            f"trained with {saved.get('world_size')}; resume with as many"
        )
    if saved.get("fingerprint") != fingerprint:
        raise CLIError(
            f"--data {args.data}: its {images} readable images are not the "
            f"{saved.get('images')} that {args.resume} was trained on (files added, removed, "
            "renamed or relabelled); a resume needs the same images"
        )
    if state["step"] > steps_per_epoch or saved.get("steps_per_epoch") != steps_per_epoch:
        raise CLIError(
            f"--resume {args.resume} is at step {state['step']} of epochs of "
            f"{saved.get('steps_per_epoch')} steps, but this run has {steps_per_epoch} per epoch"
        )


# --------------------------------------------------------------------------- loops


def check_finite(loss: Tensor, proc: Process, epoch: int, step: int) -> None:
    """Raise :class:`NonFiniteLossError` if the loss of any process is NaN or infinite."""
    bad = float(not torch.isfinite(loss.detach()).item())
    if proc.all_sum([bad])[0] > 0:
        raise NonFiniteLossError(
            f"the training loss was {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
            "stopping. Try a lower --lr, or --amp bf16/off instead of fp16."
        )


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, args: argparse.Namespace, proc: Process
) -> tuple[float, float, list[list[int]]]:
    """Validation loss, accuracy and confusion matrix ``[true][predicted]`` over all ranks.

    With ``args.tta`` the probabilities are averaged over each image and its mirror image.
    """
    model.eval()
    n_classes = len(CLASS_NAMES)
    loss_sum = torch.zeros((), dtype=torch.float64, device=proc.device)
    confusion = torch.zeros(n_classes * n_classes, dtype=torch.int64, device=proc.device)
    amp_dtype = AMP_DTYPES[args.amp]
    for images, labels in loader:
        images = images.to(proc.device, non_blocking=True)
        labels = labels.to(proc.device, non_blocking=True)
        x = normalize(images, args.channels_last)
        with torch.autocast(proc.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            probs = class_probabilities(model, x, flip=args.tta)
        log_probs = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
        loss_sum += F.nll_loss(log_probs, labels, reduction="sum")
        confusion += torch.bincount(labels * n_classes + probs.argmax(1), minlength=n_classes**2)
    totals = proc.all_sum([loss_sum.item(), *confusion.tolist()])
    matrix = [
        [int(totals[1 + i * n_classes + j]) for j in range(n_classes)] for i in range(n_classes)
    ]
    seen = sum(map(sum, matrix))
    correct = sum(matrix[i][i] for i in range(n_classes))
    return totals[0] / max(seen, 1), correct / max(seen, 1), matrix


@dataclass
class EpochSums:
    """Running sums of the current epoch on this process: loss x images, correct, images.

    The two sums stay on the device, so adding to them never waits for the GPU.
    """

    loss: Tensor  # float64, 0-d
    correct: Tensor  # int64, 0-d
    seen: int

    @classmethod
    def zeros(cls, device: torch.device) -> EpochSums:
        return cls(
            torch.zeros((), dtype=torch.float64, device=device),
            torch.zeros((), dtype=torch.int64, device=device),
            0,
        )

    def add(self, loss: Tensor, logits: Tensor, labels: Tensor) -> None:
        self.loss += loss.detach() * len(labels)
        self.correct += (logits.argmax(1) == labels).sum()
        self.seen += len(labels)

    def totals(self, proc: Process) -> tuple[float, int, int]:
        """(loss x images, correct, images) summed over all processes."""
        loss, correct, seen = proc.all_sum([self.loss.item(), self.correct.item(), self.seen])
        return loss, int(correct), int(seen)

    def state(self, proc: Process) -> dict:
        """The sums of all processes, as a checkpoint stores them (every rank must call it)."""
        loss, correct, seen = self.totals(proc)
        return {
            "loss": torch.tensor(loss, dtype=torch.float64),
            "correct": torch.tensor(correct, dtype=torch.int64),
            "seen": seen,
        }

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> EpochSums:
        return cls(
            state["loss"].to(device, torch.float64),
            state["correct"].to(device, torch.int64),
            int(state["seen"]),
        )


@dataclass
class LoaderTimes:
    """Where an epoch's training time went on this process, in seconds: blocked on the
    DataLoader for the next batch (``data_wait``, starting its workers included) or between
    receiving a batch and asking for the next one (``step``)."""

    data_wait: float = 0.0
    step: float = 0.0

    def batches(self, loader: Iterable) -> Iterator:
        """``loader``'s batches, timing the wait for each and the step that uses it."""
        clock = time.perf_counter
        asked = clock()
        for batch in loader:  # iter(loader), which starts the workers, counts as waiting
            received = clock()
            self.data_wait += received - asked
            yield batch
            asked = clock()
            self.step += asked - received
        self.data_wait += clock() - asked  # the loader telling it has no batch left

    @property
    def wait_share(self) -> float:
        """The share of the training time spent waiting for data."""
        total = self.data_wait + self.step
        return self.data_wait / total if total else 0.0


class ProgressBar(tqdm):
    """A tqdm bar whose postfix is computed only when the bar is redrawn.

    tqdm redraws at most every ``mininterval`` seconds, so reading device values for the
    postfix (a GPU sync) happens at that rate, not at every step. Only the thread that made
    the bar computes it (tqdm's monitor thread may redraw too).
    """

    def __init__(self, *args, postfix_fn, **kwargs) -> None:
        self._postfix_fn = postfix_fn
        self._owner = threading.get_ident()
        super().__init__(*args, **kwargs)

    def refresh(self, *args, **kwargs):
        if not self.disable and threading.get_ident() == self._owner:
            self.set_postfix(self._postfix_fn(), refresh=False)
        return super().refresh(*args, **kwargs)


def _load_weights(module: nn.Module, weights: dict, source: str) -> None:
    """``module.load_state_dict(weights)`` once :func:`check_state_dict_fits` passed; a
    mismatch is one CLIError line naming ``source``."""
    try:
        check_state_dict_fits(module, weights, source)
    except CheckpointError as exc:
        raise CLIError(str(exc)) from None
    module.load_state_dict(weights)


class Trainer:
    """The model, optimizer, schedule and progress of one training process.

    ``position`` is (epochs completed, steps completed in the next epoch): what a checkpoint
    records and where a resumed run starts; ``sums`` are that next epoch's running sums.
    """

    def __init__(self, args: argparse.Namespace, proc: Process, steps_per_epoch: int) -> None:
        self.args, self.proc, self.steps_per_epoch = args, proc, steps_per_epoch
        self.model = build_model(
            args.model, num_classes=len(CLASS_NAMES), activation=args.activation
        )
        layout = torch.channels_last if args.channels_last else torch.contiguous_format
        self.model.to(proc.device, memory_format=layout)
        self.optimizer = build_optimizer(self.model, args.lr, args.weight_decay)
        total_steps = args.epochs * steps_per_epoch
        if args.warmup * total_steps == 1:  # OneCycleLR divides by zero
            raise SetupError(
                f"--warmup {args.warmup} makes the warm-up exactly 1 of the {total_steps} steps; "
                "give another --warmup or --epochs"
            )
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=args.lr, total_steps=total_steps, pct_start=args.warmup
        )
        self.amp_dtype = AMP_DTYPES[args.amp]
        self.scaler = torch.amp.GradScaler(proc.device.type, enabled=args.amp == "fp16")
        self.train_model = self.model
        if proc.distributed:
            device_ids = [proc.device.index] if proc.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=device_ids)
        if args.compile:  # the saved and evaluated model stays self.model, uncompiled
            mode = "reduce-overhead" if proc.device.type == "cuda" else None
            self.train_model = torch.compile(self.train_model, mode=mode)
        self.ema = weight_ema(self.model, args.ema) if args.ema else None
        self.augment_rng = torch.Generator(device=proc.device)
        self.shift = default_shift(args.img_size) if args.shift is None else args.shift
        self.history: list[dict] = []
        self.best_acc, self.best_confusion = -1.0, None
        self.position = (0, 0)
        self.sums = EpochSums.zeros(proc.device)
        self.data_info: dict = {}

    # ----------------------------------------------------------------- checkpoints

    def checkpoint(self) -> dict:
        """A checkpoint: plain tensors, numbers, strings, lists and dicts only.

        With several processes every rank must call this (the epoch sums are summed over
        ranks); rank 0 writes the result.
        """
        return {
            "resume_format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            **self._ema_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.position[0],
            "step": self.position[1],
            "epoch_sums": self.sums.state(self.proc),
            "args": jsonable_args(self.args),
            "class_names": list(CLASS_NAMES),
            "history": self.history,
            "best_val_acc": self.best_acc,
            "best_confusion": self.best_confusion,
            "data": self.data_info,
        }

    def _ema_state(self) -> dict:
        """With ``--ema``: the averaged weights (what predict loads) and the update count."""
        if self.ema is None:
            return {}
        return {"ema_model": self.ema.module.state_dict(), "ema_updates": int(self.ema.n_averaged)}

    @property
    def eval_model(self) -> nn.Module:
        """The weights validation scores and predict uses: the EMA's with ``--ema``."""
        return self.model if self.ema is None else self.ema.module

    def load(self, state: dict, source: str) -> None:
        """Continue from a checkpoint written by :meth:`checkpoint` with the same settings.

        With another ``--epochs`` the one-cycle schedule is rebuilt for the new total and
        continues from the step reached (:meth:`_continue_schedule`).
        """
        _load_weights(self.model, state["model"], f"--resume {source}")
        if self.ema is not None:
            self._load_ema(state, source)
        schedule = state["scheduler"]
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            if schedule["total_steps"] == self.args.epochs * self.steps_per_epoch:
                self.scheduler.load_state_dict(schedule)
            else:
                self._continue_schedule(schedule["last_epoch"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise CLIError(
                f"--resume {source}: its optimizer, schedule or GradScaler state does not fit "
                f"this run ({type(exc).__name__}: {reason})"
            ) from None
        self.position = (state["epoch"], state["step"])
        if self.proc.is_main:
            self.sums = EpochSums.from_state(state["epoch_sums"], self.proc.device)
        self.history = [dict(row) for row in state["history"]]
        self.best_acc, self.best_confusion = state["best_val_acc"], state["best_confusion"]

    def _load_ema(self, state: dict, source: str) -> None:
        updates = state.get("ema_updates")
        if type(updates) is not int or updates < 0 or not isinstance(state.get("ema_model"), dict):
            raise CLIError(f"--resume {source}: its run has --ema but no valid EMA weights")
        _load_weights(self.ema.module, state["ema_model"], f"--resume {source} (EMA)")
        self.ema.n_averaged.fill_(updates)

    def _continue_schedule(self, steps_done: int) -> None:
        """Put the (new, longer or shorter) one-cycle schedule at step ``steps_done``.

        Sets the learning rate and AdamW's beta1 of the new curve at that step, as if the
        schedule had been built for this total from the start.
        """
        self.scheduler.last_epoch = steps_done - 1
        with warnings.catch_warnings():  # step() without optimizer.step(): on purpose here
            warnings.filterwarnings(
                "ignore", message=r".*lr_scheduler\.step\(\)", category=UserWarning
            )
            self.scheduler.step()

    # ----------------------------------------------------------------- training

    def seed_step(self, epoch: int, step: int) -> None:
        """Seed dropout (the global generator) and augmentation for this step (see module doc)."""
        seed, rank = self.args.seed, self.proc.rank
        torch.manual_seed(step_seed(seed, "torch", rank, epoch, step))
        self.augment_rng.manual_seed(step_seed(seed, "augment", rank, epoch, step))

    def _postfix(self) -> dict[str, str]:
        seen = self.sums.seen
        if not seen:
            return {}
        return {
            "loss": f"{self.sums.loss.item() / seen:.4f}",
            "acc": f"{100 * self.sums.correct.item() / seen:.1f}%",
            "lr": f"{self.scheduler.get_last_lr()[0]:.2e}",
        }

    def _control(self, stop: StopSignals, saver: Saver | None) -> tuple[bool, bool]:
        """(stop now, save last.pt now), agreed by all processes (an all-reduce if several).

        A stop or save must happen at the same step on every rank, so with several processes
        this costs a small all-reduce (and a GPU sync) per step; one process pays nothing.
        """
        flags = [float(stop.requested), float(saver is not None and saver.due())]
        if self.proc.distributed:
            flags = self.proc.all_sum(flags)
        return flags[0] > 0, flags[1] > 0

    def stop_agreed(self, stop: StopSignals) -> bool:
        return self._control(stop, None)[0]

    def train_epoch(
        self, epoch: int, loader: DataLoader, skip: int, stop: StopSignals, save: LastCheckpoint
    ) -> LoaderTimes:
        """Train epoch ``epoch`` from step ``skip`` on, adding to :attr:`sums`; returns the
        time spent waiting for batches and in the steps.

        After every step: stop (raise :class:`_Stop`) if asked to, and ``save()`` last.pt
        when ``--save-every`` says it is due.
        """
        args, proc = self.args, self.proc
        self.train_model.train()
        bar = ProgressBar(
            total=self.steps_per_epoch,
            initial=skip,
            desc=f"epoch {epoch + 1}/{args.epochs}",
            unit="batch",
            disable=not proc.is_main,
            dynamic_ncols=True,
            leave=False,
            mininterval=BAR_MININTERVAL,
            postfix_fn=self._postfix,
        )
        self.position = (epoch, skip)
        times = LoaderTimes()
        try:
            for step, (images, labels) in enumerate(times.batches(loader), start=skip):
                self.seed_step(epoch, step)
                images = images.to(proc.device, non_blocking=True)
                labels = labels.to(proc.device, non_blocking=True)
                augmented = random_crop_flip(images, self.shift, self.augment_rng)
                x = normalize(augmented, args.channels_last)
                if args.crop_scale < 1:
                    x = random_resized_crop(x, args.crop_scale, self.augment_rng)
                with torch.autocast(
                    proc.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
                ):
                    logits = self.train_model(x).float()
                loss = F.cross_entropy(logits, labels, label_smoothing=args.label_smoothing)
                if step % 10 == 0 or step == self.steps_per_epoch - 1:  # a GPU sync
                    check_finite(loss, proc, epoch, step)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
                self.sums.add(loss, logits, labels)
                self.position = (epoch, step + 1)
                bar.update(1)
                stop_now, save_now = self._control(stop, save.saver)
                if stop_now:
                    raise _Stop
                if save_now:
                    check_finite(loss, proc, epoch, step)  # never save NaN weights
                    save()
        finally:
            bar.close()
        return times

    def record(self, row: dict, confusion: list[list[int]]) -> bool:
        """Append an epoch's history row; True if its validation accuracy is the best yet."""
        self.history.append(row)
        self.position = (row["epoch"], 0)
        self.sums = EpochSums.zeros(self.proc.device)
        is_best = row["val_acc"] > self.best_acc
        if is_best:
            self.best_acc, self.best_confusion = row["val_acc"], confusion
        return is_best


class LastCheckpoint:
    """Writes ``last.pt`` (rank 0) from :meth:`Trainer.checkpoint` (all ranks)."""

    def __init__(self, trainer: Trainer, path: Path, every: float) -> None:
        self.trainer, self.path = trainer, path
        self.saver = Saver(every)

    def __call__(self) -> dict:
        state = self.trainer.checkpoint()
        if self.trainer.proc.is_main:
            save_checkpoint(state, self.path)
        self.saver.saved()
        return state


# --------------------------------------------------------------------------- run


def run(args: argparse.Namespace, given: set[str]) -> int:
    """Train as ``args`` say (``given``: the flags the command line gave); the exit status."""
    proc = start_process(args.device)
    try:
        return _run(args, given, proc)
    except KeyboardInterrupt:  # before training started, or a second Ctrl-C
        if proc.is_main:
            print("\naborted (Ctrl-C); last.pt, if any, is the last one saved", file=sys.stderr)
        return EXIT_INTERRUPTED
    except DataNotFoundError as exc:
        raise CLIError(str(exc)) from None
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NON_FINITE
    finally:
        if proc.distributed:
            dist.destroy_process_group()


def _run(args: argparse.Namespace, given: set[str], proc: Process) -> int:
    requested, resolved = resolve_backend_choice(args.backend, proc.device)
    source = backend_source(args.backend)
    resumed = None
    if args.resume is not None:
        resumed = load_resume_checkpoint(args.resume)
        args = merge_resumed_args(resumed["args"], args, given, args.resume)
        if not check_epochs_left(resumed, args, args.resume):
            say(
                proc,
                f"nothing left to do: {args.resume} has finished all {resumed['epoch']} "
                f"epochs; give --epochs N with N > {resumed['epoch']} to train longer",
            )
            return 0
    elif args.out is None:
        args.out = str(Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    args.backend, args.backend_resolved = requested, resolved
    amp_requested, args.amp = args.amp, resolve_amp(args.amp, proc.device)
    say(
        proc,
        f"device: {proc.device} x {proc.world_size} process(es); fastconv backend: {resolved} "
        f"(requested {requested}, from {source}); autocast: {args.amp}"
        + (f" (from --amp {amp_requested})" if amp_requested != args.amp else ""),
    )
    with backend.use_backend(requested):
        return _train(args, proc, resumed)


def _train(args: argparse.Namespace, proc: Process, resumed: dict | None) -> int:
    cache = prepare_data(args, proc)
    train_idx, val_idx = stratified_split(cache.labels, args.val_fraction, args.seed)
    train_set = CachedImages(cache, train_idx)
    val_set = CachedImages(cache, val_idx[proc.rank :: proc.world_size])
    sampler = DistributedSampler(
        train_set, num_replicas=proc.world_size, rank=proc.rank, shuffle=True, seed=args.seed
    )
    steps_per_epoch = len(sampler) // args.batch_size
    if steps_per_epoch == 0:
        raise SetupError(
            f"--batch-size {args.batch_size} is larger than the {len(sampler)} training images "
            f"each of the {proc.world_size} process(es) gets; lower it"
        )
    fingerprint = data_fingerprint(cache)
    if resumed is not None:
        check_same_data(resumed, fingerprint, len(cache.paths), steps_per_epoch, proc, args)
    say(proc, f"split: {len(train_idx)} train / {len(val_idx)} validation images")
    loader_options = {
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "pin_memory": proc.device.type == "cuda",
        "worker_init_fn": _loader_worker_init,
    }
    # Own generators: creating a loader's iterator draws a worker seed from its generator,
    # which must not be the global one (the images need no randomness in the workers).
    val_loader = DataLoader(val_set, shuffle=False, generator=torch.Generator(), **loader_options)

    torch.manual_seed(args.seed)  # the initial weights
    trainer = Trainer(args, proc, steps_per_epoch)
    trainer.data_info = {
        "fingerprint": fingerprint,
        "images": len(cache.paths),
        "world_size": proc.world_size,
        "steps_per_epoch": steps_per_epoch,
    }
    n_params = sum(p.numel() for p in trainer.model.parameters())
    say(proc, f"model: {args.model}, {n_params:,} parameters")
    if resumed is not None:
        trainer.load(resumed, args.resume)
        epoch, step = trainer.position
        say(proc, f"resuming {args.resume} at epoch {epoch + 1}, step {step}/{steps_per_epoch}")

    out = Path(args.out)
    if proc.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "args.json", json.dumps(jsonable_args(args), indent=2) + "\n")
    save_last = LastCheckpoint(trainer, out / "last.pt", args.save_every)
    start_epoch, start_step = trainer.position
    with StopSignals(announce=proc.is_main) as stop:
        try:
            for epoch in range(start_epoch, args.epochs):
                started = time.perf_counter()
                skip = start_step if epoch == start_epoch else 0
                sampler.set_epoch(epoch)
                order = list(sampler)[skip * args.batch_size : steps_per_epoch * args.batch_size]
                loader = DataLoader(
                    train_set,
                    sampler=order,
                    drop_last=True,
                    generator=torch.Generator(),
                    **loader_options,
                )
                seen_before = trainer.sums.seen
                times = trainer.train_epoch(epoch, loader, skip, stop, save_last)
                train_seconds = time.perf_counter() - started
                trained_here = (trainer.sums.seen - seen_before) * proc.world_size
                loss_sum, correct, seen = trainer.sums.totals(proc)
                val_loss, val_acc, confusion = evaluate(trainer.eval_model, val_loader, args, proc)
                row = {
                    "epoch": epoch + 1,
                    "train_loss": loss_sum / seen if seen else math.nan,
                    "train_acc": correct / seen if seen else math.nan,
                    "val_loss": val_loss,
                    "val_acc": val_acc,
                    "lr": trainer.scheduler.get_last_lr()[0],
                    "images_per_s": trained_here / train_seconds,
                    "data_wait_s": times.data_wait,
                    "step_s": times.step,
                    "seconds": time.perf_counter() - started,
                }
                is_best = trainer.record(row, confusion)
                say(
                    proc,
                    f"epoch {epoch + 1}/{args.epochs}  train loss {row['train_loss']:.4f} "
                    f"acc {100 * row['train_acc']:.1f}%  val loss {val_loss:.4f} "
                    f"acc {100 * val_acc:.1f}%{' (flip tta)' if args.tta else ''}"
                    f"{' (ema)' if args.ema else ''}  "
                    f"{row['images_per_s']:.0f} img/s  data wait "
                    f"{times.data_wait:.1f} s ({100 * times.wait_share:.0f}%)  "
                    f"{row['seconds']:.1f} s" + ("  (best)" if is_best else ""),
                )
                if proc.is_main:
                    write_history(trainer.history, out / "history.csv")
                state = save_last()
                if proc.is_main and is_best:
                    save_checkpoint(state, out / "best.pt")
                if trainer.stop_agreed(stop):
                    raise _Stop
        except _Stop:
            save_last()
            epoch, step = trainer.position
            if proc.is_main:
                print(
                    f"\nstopped in epoch {epoch + 1} after {step} of {steps_per_epoch} steps: "
                    f"saved {out / 'last.pt'}\n"
                    f"continue with: python -m fastconv.train --resume {out / 'last.pt'}",
                    file=sys.stderr,
                )
            return 128 + (stop.signum or signal.SIGINT)

    if proc.is_main and trainer.history:
        plot_history(trainer.history, out / "curves.png")
        plot_confusion_matrix(
            trainer.best_confusion,
            CLASS_NAMES,
            out / "confusion_matrix.png",
            title=f"validation, best epoch ({100 * trainer.best_acc:.1f}%)",
        )
        say(
            proc,
            f"done: best validation accuracy {100 * trainer.best_acc:.2f}%; "
            f"{len(cache.skipped)} unreadable images skipped; files in {out}/",
        )
    return 0

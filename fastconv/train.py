"""``python -m fastconv.train``: train the dogs-vs-cats classifier on fastconv's kernels.

One process trains on one device; ``torchrun --nproc_per_node=N -m fastconv.train ...``
trains with DistributedDataParallel (nccl on GPUs, gloo on the CPU), each rank on its own
shard of every epoch; only rank 0 prints the progress bar and writes files.

A run directory (``--out``) receives ``args.json``, ``history.csv``, ``last.pt`` (every
epoch, and on Ctrl-C), ``best.pt`` (best validation accuracy), ``curves.png`` and
``confusion_matrix.png``. ``--resume DIR/last.pt`` continues where that run stopped.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from fastconv.atomic import atomic_write, atomic_write_text
from fastconv.backend import BACKENDS, BackendUnavailableError, resolve_backend, use_backend
from fastconv.checkpoint import load_checkpoint, save_checkpoint
from fastconv.data import (
    CLASS_NAMES,
    CachedImages,
    DataNotFoundError,
    ImageCache,
    find_images,
    load_or_build_cache,
    normalize,
    random_crop_flip,
    stratified_split,
    subsample,
    write_demo_dataset,
)
from fastconv.models import MODELS, build_model
from fastconv.plots import plot_confusion_matrix, plot_history

__all__ = ["NonFiniteLossError", "SetupError", "build_parser", "main"]

AMP_DTYPES = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}
# Settings a resumed run takes from this command line; all others come from the checkpoint.
RESUME_OVERRIDES = ("device", "workers", "backend", "out", "resume")
HISTORY_FIELDS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "images_per_s",
    "seconds",
)
EXIT_INTERRUPTED = 130  # the shell's code for a Ctrl-C


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class SetupError(ValueError):
    """The run cannot start as asked (say, a batch larger than the data); the message says why."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fastconv.train",
        description="Train the dogs-vs-cats CNN (fastconv Triton kernels) on Kaggle's images.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--data", default="tmp", help="folder holding the data (any layout; see fastconv.data)")
    add("--epochs", type=int, default=10, help="number of epochs")
    add("--batch-size", type=int, default=64, help="images per step on each process")
    add("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule")
    add("--weight-decay", type=float, default=0.05, help="AdamW weight decay (not on BN/bias)")
    add("--img-size", type=int, default=64, help="training resolution in pixels (square)")
    add("--model", choices=sorted(MODELS), default="catdog", help="network from fastconv.models")
    add("--amp", choices=tuple(AMP_DTYPES), default="off", help="mixed precision autocast dtype")
    add("--channels-last", action="store_true", help="train in the channels_last memory format")
    add("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1")
    add("--seed", type=int, default=0, help="seed for the split, init, shuffling, augmentation")
    add(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="processes decoding images and loading batches (0: none); default min(8, cores)",
    )
    add("--out", default=None, help="run folder; None: runs/<timestamp>, or the resumed run's")
    add("--resume", metavar="PATH", default=None, help="continue the run saved in this last.pt")
    add("--backend", choices=BACKENDS, default="auto", help="fastconv backend (see backend.py)")
    add("--limit", type=int, default=0, metavar="N", help="use at most N images (0: all)")
    add("--val-fraction", type=float, default=0.1, help="share of each class held out")
    add(
        "--demo",
        action="store_true",
        help="generate a synthetic two-class image set in <data>/demo and train on it",
    )
    return parser


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
    """Join torchrun's process group if there is one and pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg == "auto":
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_arg)
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


def resolve_resume(args: argparse.Namespace) -> tuple[argparse.Namespace, dict | None]:
    """On ``--resume``: the saved run's arguments (but this command's device, workers, ...)."""
    if args.resume is None:
        if args.out is None:
            args.out = str(Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))
        return args, None
    try:
        state = load_checkpoint(args.resume)
    except ValueError as exc:
        raise SetupError(f"cannot resume: {exc}") from exc
    merged = dict(state["args"])
    for name in RESUME_OVERRIDES:
        merged[name] = getattr(args, name)
    if merged["out"] is None:
        merged["out"] = str(Path(args.resume).parent)
    return argparse.Namespace(**merged), state


# --------------------------------------------------------------------------- loops


def check_finite(loss: torch.Tensor, proc: Process, epoch: int, step: int) -> None:
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
    """Validation loss, accuracy and confusion matrix ``[true][predicted]`` over all ranks."""
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
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        confusion += torch.bincount(labels * n_classes + logits.argmax(1), minlength=n_classes**2)
    totals = proc.all_sum([loss_sum.item(), *confusion.tolist()])
    matrix = [
        [int(totals[1 + i * n_classes + j]) for j in range(n_classes)] for i in range(n_classes)
    ]
    seen = sum(map(sum, matrix))
    correct = sum(matrix[i][i] for i in range(n_classes))
    return totals[0] / max(seen, 1), correct / max(seen, 1), matrix


class Trainer:
    """The model, optimizer, schedule and progress of one training process.

    ``position`` is (epochs completed, steps completed in the next epoch): what a checkpoint
    records and where a resumed run starts.
    """

    def __init__(self, args: argparse.Namespace, proc: Process, steps_per_epoch: int) -> None:
        self.args, self.proc, self.steps_per_epoch = args, proc, steps_per_epoch
        self.model = build_model(args.model, num_classes=len(CLASS_NAMES))
        layout = torch.channels_last if args.channels_last else torch.contiguous_format
        self.model.to(proc.device, memory_format=layout)
        self.optimizer = build_optimizer(self.model, args.lr, args.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch
        )
        self.amp_dtype = AMP_DTYPES[args.amp]
        self.scaler = torch.amp.GradScaler(proc.device.type, enabled=args.amp == "fp16")
        self.train_model = self.model
        if proc.distributed:
            device_ids = [proc.device.index] if proc.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=device_ids)
        self.augment_rng = torch.Generator(device=proc.device)
        self.padding = max(args.img_size // 8, 1)
        self.history: list[dict] = []
        self.best_acc, self.best_confusion = -1.0, None
        self.position = (0, 0)

    def state(self) -> dict:
        """A checkpoint: plain tensors, numbers, strings, lists and dicts only."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.position[0],
            "step": self.position[1],
            "args": jsonable_args(self.args),
            "class_names": list(CLASS_NAMES),
            "history": self.history,
            "best_val_acc": self.best_acc,
            "best_confusion": self.best_confusion,
        }

    def load(self, state: dict) -> None:
        """Continue from a checkpoint written by :meth:`state` with the same settings."""
        total_steps = self.args.epochs * self.steps_per_epoch
        if state["scheduler"]["total_steps"] != total_steps:
            raise SetupError(
                f"cannot resume: the checkpoint's schedule has {state['scheduler']['total_steps']}"
                f" steps but this run has {total_steps}; resume with as many processes as before"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.position = (state["epoch"], state["step"])
        # rows of completed epochs only (an interrupt can land between a row and the save)
        self.history = [row for row in state["history"] if row["epoch"] <= state["epoch"]]
        self.best_acc, self.best_confusion = state["best_val_acc"], state["best_confusion"]

    def train_epoch(self, epoch: int, loader: DataLoader, skip: int) -> tuple[float, float, int]:
        """One epoch from step ``skip`` on; returns summed loss, correct and images, all ranks."""
        args, proc = self.args, self.proc
        self.augment_rng.manual_seed(args.seed * 100_003 + epoch * 1_009 + proc.rank)
        self.train_model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=proc.device)
        correct = torch.zeros((), dtype=torch.int64, device=proc.device)
        seen = 0
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{args.epochs}",
            total=self.steps_per_epoch,
            initial=skip,
            unit="batch",
            disable=not proc.is_main,
            dynamic_ncols=True,
            leave=False,
        )
        self.position = (epoch, skip)
        for step, (images, labels) in enumerate(bar, start=skip):
            images = images.to(proc.device, non_blocking=True)
            labels = labels.to(proc.device, non_blocking=True)
            augmented = random_crop_flip(images, self.padding, self.augment_rng)
            x = normalize(augmented, args.channels_last)
            with torch.autocast(
                proc.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
            ):
                logits = self.train_model(x).float()
            loss = F.cross_entropy(logits, labels)
            report = step % 10 == 0 or step == self.steps_per_epoch - 1
            if report:  # a GPU sync, so not at every step
                check_finite(loss, proc, epoch, step)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.position = (epoch, step + 1)
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(1) == labels).sum()
            seen += len(labels)
            if report:
                lr = self.scheduler.get_last_lr()[0]
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
        bar.close()
        loss_total, correct_total, seen_total = proc.all_sum(
            [loss_sum.item(), correct.item(), seen]
        )
        return loss_total, correct_total, int(seen_total)

    def record(self, row: dict, confusion: list[list[int]]) -> bool:
        """Append an epoch's history row; True if its validation accuracy is the best yet."""
        self.history.append(row)
        self.position = (row["epoch"], 0)
        is_best = row["val_acc"] > self.best_acc
        if is_best:
            self.best_acc, self.best_confusion = row["val_acc"], confusion
        return is_best


def run(args: argparse.Namespace, proc: Process) -> int:
    args, resumed = resolve_resume(args)
    torch.manual_seed(args.seed)
    backend = resolve_backend(proc.device)  # a forced backend that cannot run raises here
    say(proc, f"device: {proc.device} x {proc.world_size} process(es); fastconv backend: {backend}")

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
    say(proc, f"split: {len(train_idx)} train / {len(val_idx)} validation images")
    loader_options = {
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "pin_memory": proc.device.type == "cuda",
    }
    val_loader = DataLoader(val_set, shuffle=False, **loader_options)

    trainer = Trainer(args, proc, steps_per_epoch)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    say(proc, f"model: {args.model}, {n_params:,} parameters")
    if resumed is not None:
        trainer.load(resumed)
        epoch, step = trainer.position
        say(proc, f"resuming {args.resume} at epoch {epoch + 1}, step {step}")

    out = Path(args.out)
    if proc.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "args.json", json.dumps(jsonable_args(args), indent=2) + "\n")
    try:
        start_epoch, start_step = trainer.position
        for epoch in range(start_epoch, args.epochs):
            started = time.perf_counter()
            sampler.set_epoch(epoch)
            skip = start_step if epoch == start_epoch else 0
            order = list(sampler)[skip * args.batch_size : steps_per_epoch * args.batch_size]
            loader = DataLoader(train_set, sampler=order, drop_last=True, **loader_options)
            loss_sum, correct, seen = trainer.train_epoch(epoch, loader, skip)
            train_seconds = time.perf_counter() - started
            val_loss, val_acc, confusion = evaluate(trainer.model, val_loader, args, proc)
            row = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / seen if seen else math.nan,
                "train_acc": correct / seen if seen else math.nan,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "lr": trainer.scheduler.get_last_lr()[0],
                "images_per_s": seen / train_seconds,
                "seconds": time.perf_counter() - started,
            }
            is_best = trainer.record(row, confusion)
            say(
                proc,
                f"epoch {epoch + 1}/{args.epochs}  train loss {row['train_loss']:.4f} "
                f"acc {100 * row['train_acc']:.1f}%  val loss {val_loss:.4f} "
                f"acc {100 * val_acc:.1f}%  {row['images_per_s']:.0f} img/s  "
                f"{row['seconds']:.1f} s" + ("  (best)" if is_best else ""),
            )
            if proc.is_main:
                write_history(trainer.history, out / "history.csv")
                state = trainer.state()
                save_checkpoint(state, out / "last.pt")
                if is_best:
                    save_checkpoint(state, out / "best.pt")
    except KeyboardInterrupt:
        if proc.is_main:
            save_checkpoint(trainer.state(), out / "last.pt")
            epoch, step = trainer.position
            print(
                f"\ninterrupted in epoch {epoch + 1} after {step} steps: saved {out / 'last.pt'}"
                f"\ncontinue with: python -m fastconv.train --resume {out / 'last.pt'}",
                file=sys.stderr,
            )
        return EXIT_INTERRUPTED

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "img_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    if args.limit and args.limit < 4:
        parser.error(f"--limit must be 0 (all images) or >= 4 (2 per class), got {args.limit}")
    if not 0 < args.val_fraction < 1:
        parser.error(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
    proc = start_process(args.device)
    try:
        with use_backend(args.backend):
            return run(args, proc)
    except (FileNotFoundError, BackendUnavailableError, SetupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    finally:
        if proc.distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())

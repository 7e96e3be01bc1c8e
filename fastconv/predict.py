"""``python -m fastconv.predict``: classify images with a checkpoint from fastconv.train.

Image files get a line each: the path, the class and P(dog). A folder (such as Kaggle's
``test1/``) becomes a submission CSV ``id,label`` with label = P(dog) clipped to
[0.005, 0.995] and ids sorted numerically. Unreadable files are skipped and counted.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from fastconv.atomic import atomic_write
from fastconv.backend import BACKENDS, BackendUnavailableError, resolve_backend, use_backend
from fastconv.checkpoint import load_checkpoint
from fastconv.data import decode_images, list_image_files, normalize
from fastconv.models import build_model

__all__ = ["build_parser", "main", "predict_dog_probabilities"]

CLIP = (0.005, 0.995)  # bounds the log loss of a confident mistake


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fastconv.predict",
        description="Predict cat or dog for image files; write a Kaggle submission for folders.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("paths", nargs="+", metavar="PATH", help="image files and/or folders of images")
    add("--checkpoint", required=True, help="best.pt or last.pt written by fastconv.train")
    add("--out", default="submission.csv", help="submission CSV written for folder inputs")
    add("--batch-size", type=int, default=128, help="images per forward pass")
    add("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1")
    add(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="decoding processes (0: none); default min(8, cores)",
    )
    add("--backend", choices=BACKENDS, default="auto", help="fastconv backend (see backend.py)")
    return parser


def load_model(checkpoint: dict, device: torch.device) -> torch.nn.Module:
    """The trained network of ``checkpoint`` on ``device``, in eval mode."""
    args = checkpoint["args"]
    model = build_model(args["model"], num_classes=len(checkpoint["class_names"]))
    model.load_state_dict(checkpoint["model"])
    memory_format = torch.channels_last if args["channels_last"] else torch.contiguous_format
    return model.to(device, memory_format=memory_format).eval()


@torch.no_grad()
def predict_dog_probabilities(
    model: torch.nn.Module,
    paths: Sequence[Path],
    img_size: int,
    dog_index: int,
    batch_size: int,
    workers: int,
    channels_last: bool = False,
) -> Iterator[tuple[Path, float | None, str | None]]:
    """``(path, P(dog), None)`` per readable file and ``(path, None, reason)`` per bad one."""
    device = next(model.parameters()).device
    batch: list[tuple[Path, np.ndarray]] = []

    def flush() -> list[tuple[Path, float, None]]:
        images = torch.from_numpy(np.stack([array for _, array in batch])).to(device)
        probs = torch.softmax(model(normalize(images, channels_last)).float(), dim=1)
        p_dog = probs[:, dog_index].tolist()
        results = [(path, p, None) for (path, _), p in zip(batch, p_dog, strict=True)]
        batch.clear()
        return results

    decoded = decode_images(paths, img_size, workers, desc="predicting")
    for path, (array, error) in zip(paths, decoded, strict=True):
        if array is None:
            yield path, None, error
            continue
        batch.append((path, array))
        if len(batch) == batch_size:
            yield from flush()
    if batch:
        yield from flush()


def submission_id(path: Path) -> int | str:
    """Kaggle's id: the file name's stem as an int (``test1/123.jpg`` -> 123) when numeric."""
    return int(path.stem) if path.stem.isdigit() else path.stem


def write_submission(rows: list[tuple[int | str, float]], out: Path) -> None:
    """``id,label`` rows sorted numerically (non-numeric ids last), label clipped."""
    rows = sorted(rows, key=lambda r: (0, r[0], "") if isinstance(r[0], int) else (1, 0, r[0]))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label"])
        for image_id, p in rows:
            writer.writerow([image_id, f"{min(max(p, CLIP[0]), CLIP[1]):.6f}"])


def run(args: argparse.Namespace) -> int:
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    resolve_backend(device)  # a forced backend that cannot run raises here
    try:
        checkpoint = load_checkpoint(args.checkpoint)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model = load_model(checkpoint, device)
    class_names = checkpoint["class_names"]
    dog_index = class_names.index("dog")
    train_args = checkpoint["args"]

    paths = [Path(p) for p in args.paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        print(f"error: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    files = [p for p in paths if p.is_file()]
    folder_files = [f for p in paths if p.is_dir() for f in list_image_files(p)]
    predictions = predict_dog_probabilities(
        model,
        files + folder_files,
        train_args["img_size"],
        dog_index,
        args.batch_size,
        args.workers,
        train_args["channels_last"],
    )
    n_files, skipped, rows = len(files), 0, []
    for i, (path, p_dog, error) in enumerate(predictions):
        if p_dog is None:
            print(f"warning: skipping unreadable image {error}", file=sys.stderr)
            skipped += 1
        elif i < n_files:
            label = class_names[dog_index] if p_dog >= 0.5 else class_names[1 - dog_index]
            print(f"{path}\t{label}\tP(dog)={p_dog:.4f}")
        else:
            rows.append((submission_id(path), p_dog))
    if folder_files:
        write_submission(rows, Path(args.out))
        print(f"wrote {args.out} ({len(rows)} images)")
    if skipped:
        print(f"skipped {skipped} unreadable file(s)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with use_backend(args.backend):
            return run(args)
    except (BackendUnavailableError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

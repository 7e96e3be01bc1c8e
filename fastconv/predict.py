"""``python -m fastconv.predict``: classify images with a checkpoint from fastconv.train.

Image files get a line each on stdout: the path, the class and P(dog). A folder (such as
Kaggle's ``test1/``) becomes a submission CSV ``id,label`` with label = P(dog) clipped to
[0.005, 0.995] and ids sorted numerically. Folder images whose names carry their class
(Kaggle's ``cat.N.jpg`` / ``dog.N.jpg``, as in ``train/``) are also scored: the accuracy and
the confusion matrix follow on stdout, with how many images were scored. Unreadable files are
skipped, each named on its own warning line, and counted; when no image at all can be read
the run fails. Ctrl-C stops at once with one line and exit status 130 (no CSV is written).

Every problem a user can cause (a bad flag, a missing GPU, a file that is not a usable
checkpoint, a bad ``$FASTCONV_BACKEND``, inputs with no readable image) ends the run with
one ``error: ...`` line naming the flag, file or variable, and exit status 2. Only the
standard library is imported before the arguments are parsed, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from fastconv.cli import (
    BACKEND_CHOICES,
    EXIT_INTERRUPTED,
    CLIError,
    Parser,
    backend_source,
    exit_on_cli_error,
    first_few,
    int_at_least,
    resolve_backend_choice,
    resolve_device,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "Prediction",
    "build_parser",
    "load_model",
    "main",
    "predict_dog_probabilities",
    "score_report",
]

CLIP = (0.005, 0.995)  # bounds the log loss of a confident mistake
DEFAULT_OUT = "submission.csv"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m fastconv.predict",
        description="Predict cat or dog for image files; write a Kaggle submission for folders.",
    )
    add = parser.add_argument
    add("paths", nargs="+", metavar="PATH", help="image files and/or folders of images")
    add(
        "--checkpoint",
        required=True,
        metavar="FILE",
        help="best.pt or last.pt written by fastconv.train",
    )
    add(
        "--out",
        default=None,
        metavar="CSV",
        help=f"submission CSV written for folder inputs (default: {DEFAULT_OUT})",
    )
    add(
        "--batch-size",
        type=int_at_least(1),
        default=128,
        help="images per forward pass (default: %(default)s)",
    )
    add(
        "--device",
        default="auto",
        help="auto (cuda if available, else cpu), cpu, cuda, cuda:1 (default: %(default)s)",
    )
    add(
        "--workers",
        type=int_at_least(0),
        default=min(8, os.cpu_count() or 1),
        help="decoding processes, 0 for none (default: min(8, cores) = %(default)s)",
    )
    add(
        "--tta",
        default=True,
        action=argparse.BooleanOptionalAction,
        help="average each image's probabilities with its mirror image's: two forward passes, "
        "and the accuracy fastconv.train's validation reports by default (default: %(default)s)",
    )
    add(
        "--backend",
        choices=BACKEND_CHOICES,
        default=None,
        help="fastconv backend (default: $FASTCONV_BACKEND, else auto; see fastconv/backend.py)",
    )
    return parser


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Input:
    """One image to classify: an explicit file (a printed line) or a folder's (a CSV row)."""

    path: Path
    folder: Path | None  # the folder argument it came from; None for a file given by name


def collect_inputs(args: Sequence[str]) -> list[Input]:
    """The images named by the ``PATH`` arguments: files as given, folders' image files.

    Each image appears once per kind (a folder listed twice gives each row once). Missing
    paths, paths that are neither file nor folder, and arguments that hold no image file at
    all are :class:`CLIError`\\ s; a folder without image files among other inputs is a
    warning.
    """
    from fastconv.data import list_image_files

    paths = [Path(arg) for arg in args]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise CLIError(f"no such file or folder: {', '.join(missing)}")
    inputs: list[Input] = []
    seen: set[tuple[Path, bool]] = set()
    empty: list[str] = []
    for path in paths:
        if path.is_dir():
            try:
                files = list_image_files(path)
            except OSError as exc:
                raise CLIError(f"cannot list folder {path}: {exc.strerror or exc}") from None
            if not files:
                empty.append(str(path))
            entries = [Input(f, path) for f in files]
        elif path.is_file():
            entries = [Input(path, None)]
        else:
            raise CLIError(f"{path} is neither a file nor a folder")
        for entry in entries:
            key = (entry.path.resolve(), entry.folder is None)
            if key not in seen:
                seen.add(key)
                inputs.append(entry)
    if not inputs:
        raise CLIError(f"no image files in {', '.join(empty)} (folders are not searched deeper)")
    for folder in empty:
        warn(f"no image files in {folder} (folders are not searched deeper)")
    return inputs


def check_out(out_flag: str | None, inputs: Sequence[Input]) -> Path | None:
    """The submission path when folders were given (checked before any slow work), else None."""
    if not any(entry.folder is not None for entry in inputs):
        if out_flag is not None:
            warn(f"--out {out_flag} ignored: no folder given (files print their predictions)")
        return None
    out = Path(out_flag if out_flag is not None else DEFAULT_OUT)
    if out.is_dir():
        raise CLIError(f"--out {out} is a folder; give a file name such as {out / DEFAULT_OUT}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"--out {out}: cannot create its folder: {exc.strerror or exc}") from None
    return out


def warn(message: str) -> None:
    """One ``warning: ...`` line on stderr that does not tear a progress bar."""
    from tqdm import tqdm

    tqdm.write(f"warning: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- model


def load_model(
    checkpoint: dict, device: torch.device, source: str = "checkpoint"
) -> torch.nn.Module:
    """The trained network of ``checkpoint`` on ``device``, in eval mode: its EMA weights if
    it was trained with ``--ema``.

    Raises :class:`fastconv.checkpoint.CheckpointError` (one line naming ``source``) when
    the checkpoint names an unknown model, classes other than cat and dog, an image size
    the model cannot take, or weights whose names or shapes do not fit the model it names.
    """
    import torch

    from fastconv.checkpoint import CheckpointError, check_state_dict_fits
    from fastconv.models import MODELS, build_model, min_input_size
    from fastconv.train import SETTINGS_BEFORE_THEIR_FLAG

    args = checkpoint["args"]
    name = args["model"]
    if not isinstance(name, str) or name not in MODELS:
        raise CheckpointError(
            f"{source} was trained with model {name!r}, which is not one of this fastconv's "
            f"models ({', '.join(MODELS)})"
        )
    class_names = checkpoint["class_names"]
    if sorted(map(str, class_names)) != ["cat", "dog"]:
        raise CheckpointError(f"{source} has classes {class_names!r}, not cat and dog")
    img_size, smallest = args["img_size"], min_input_size(name)
    if type(img_size) is not int or img_size < smallest:
        raise CheckpointError(
            f"{source} has img_size {img_size!r}; model {name!r} needs an integer >= {smallest}"
        )
    if not isinstance(args["channels_last"], bool):
        raise CheckpointError(f"{source} has channels_last {args['channels_last']!r}, not a bool")
    activation = args.get("activation", SETTINGS_BEFORE_THEIR_FLAG["activation"])
    try:
        model = build_model(name, num_classes=len(class_names), activation=activation)
    except ValueError as error:
        raise CheckpointError(f"{source}: {error}") from None
    which = "ema_model" if "ema_model" in checkpoint else "model"  # --ema: the average
    weights = checkpoint[which]
    check_state_dict_fits(model, weights, f"{source} ({which} of model {name!r} in its args)")
    model.load_state_dict(weights)
    memory_format = torch.channels_last if args["channels_last"] else torch.contiguous_format
    return model.to(device, memory_format=memory_format).eval()


def read_checkpoint(path: str, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The model on ``device`` and the checkpoint at ``--checkpoint``.

    Any problem with the file is a one-line :class:`CLIError` naming it; the model is built
    on the CPU first, so that a problem with the device is not blamed on the file.
    """
    import torch

    from fastconv.checkpoint import CheckpointError, load_checkpoint

    try:
        checkpoint = load_checkpoint(path)
        model = load_model(checkpoint, torch.device("cpu"), source=path)
    except CheckpointError as exc:
        raise CLIError(f"--checkpoint {exc}") from None
    except Exception as exc:  # a foreign file that slips past load_checkpoint's checks
        raise CLIError(
            f"--checkpoint {path} is not a usable fastconv.train checkpoint "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
        ) from None
    return model.to(device), checkpoint  # keeps the channels_last layout load_model chose


# --------------------------------------------------------------------------- prediction


class Prediction(NamedTuple):
    """The result for ``paths[index]``: ``p_dog`` when it was read, else ``error``."""

    index: int
    path: Path
    p_dog: float | None
    error: str | None


def predict_dog_probabilities(
    model: torch.nn.Module,
    paths: Sequence[Path],
    img_size: int,
    dog_index: int,
    batch_size: int,
    workers: int,
    channels_last: bool = False,
    tta: bool = False,
) -> Iterator[Prediction]:
    """One :class:`Prediction` per path, each carrying the index of its path.

    Unreadable files are reported as soon as they are decoded, readable ones when their
    batch has run, so the results do not come in the order of ``paths``: use ``index``.
    With ``tta`` each probability is the mean over the image and its mirror image.
    """
    import numpy as np
    import torch

    from fastconv.data import decode_images, normalize
    from fastconv.tta import class_probabilities

    device = next(model.parameters()).device
    batch: list[tuple[int, np.ndarray]] = []

    def flush() -> list[Prediction]:
        images = torch.from_numpy(np.stack([array for _, array in batch])).to(device)
        with torch.no_grad():
            probs = class_probabilities(model, normalize(images, channels_last), flip=tta)
        p_dog = probs[:, dog_index].tolist()
        results = [Prediction(i, paths[i], p, None) for (i, _), p in zip(batch, p_dog, strict=True)]
        batch.clear()
        return results

    # closing: when this generator is closed, the decoding stops (and its bar closes) at once
    with contextlib.closing(decode_images(paths, img_size, workers, desc="predicting")) as decoded:
        for i, (array, error) in enumerate(decoded):
            if array is None:
                yield Prediction(i, paths[i], None, error)
                continue
            batch.append((i, array))
            if len(batch) == batch_size:
                yield from flush()
    if batch:
        yield from flush()


def submission_id(path: Path) -> int | str:
    """Kaggle's id: the file name's stem as an int (``test1/123.jpg`` -> 123) when numeric."""
    return int(path.stem) if path.stem.isdigit() else path.stem


def write_submission(rows: list[tuple[int | str, float]], out: Path) -> None:
    """``id,label`` rows sorted numerically (non-numeric ids last), label clipped."""
    from fastconv.atomic import atomic_write

    rows = sorted(rows, key=lambda r: (0, r[0], "") if isinstance(r[0], int) else (1, 0, r[0]))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label"])
        for image_id, p in rows:
            writer.writerow([image_id, f"{min(max(p, CLIP[0]), CLIP[1]):.6f}"])


def score_report(pairs: Sequence[tuple[int, int]], predicted: int) -> str:
    """The accuracy and confusion matrix of (true, predicted) label ``pairs``, as a table.

    ``predicted``: how many folder images were predicted, scored or not (the first line says
    how many of them carried a label in their name).
    """
    from fastconv.data import CLASS_NAMES

    matrix = [[0] * len(CLASS_NAMES) for _ in CLASS_NAMES]
    for true, guess in pairs:
        matrix[true][guess] += 1
    right = sum(matrix[i][i] for i in range(len(CLASS_NAMES)))
    corner = "true \\ predicted"
    width = 2 + max(
        len(text) for text in [*CLASS_NAMES, *(f"{n:,}" for row in matrix for n in row)]
    )
    lines = [
        f"scored {len(pairs):,} of {predicted:,} folder images, those named cat.* / dog.* "
        f"({predicted - len(pairs):,} without a label in the name)",
        f"accuracy {100 * right / len(pairs):.2f}% ({right:,} right)",
        corner + "".join(f"{name:>{width}}" for name in CLASS_NAMES),
    ]
    for name, row in zip(CLASS_NAMES, matrix, strict=True):
        lines.append(f"{name:<{len(corner)}}" + "".join(f"{count:>{width},}" for count in row))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    requested, resolved = resolve_backend_choice(args.backend, device)
    model, checkpoint = read_checkpoint(args.checkpoint, device)
    inputs = collect_inputs(args.paths)
    out = check_out(args.out, inputs)
    print(
        f"device: {device}; fastconv backend: {resolved} "
        f"(requested {requested}, from {backend_source(args.backend)})",
        file=sys.stderr,
    )

    import torch
    from tqdm import tqdm

    from fastconv.backend import use_backend
    from fastconv.data import CLASS_NAMES, label_from_name

    class_names = checkpoint["class_names"]
    dog_index = class_names.index("dog")
    cat_index = class_names.index("cat")
    train_args = checkpoint["args"]
    paths = [entry.path for entry in inputs]
    rows: list[tuple[int | str, float]] = []
    row_indices: list[int] = []
    scored: list[tuple[int, int]] = []  # (true, predicted) labels of folder images named so
    skipped: list[str] = []
    with use_backend(requested):
        predictions = predict_dog_probabilities(
            model,
            paths,
            train_args["img_size"],
            dog_index,
            args.batch_size,
            args.workers,
            train_args["channels_last"],
            args.tta,
        )
        try:
            for result in predictions:
                entry = inputs[result.index]
                if result.p_dog is None:
                    warn(f"skipping unreadable image {result.error}")
                    skipped.append(str(result.path))
                elif entry.folder is None:
                    label = class_names[dog_index if result.p_dog >= 0.5 else cat_index]
                    tqdm.write(
                        f"{result.path}\t{label}\tP(dog)={result.p_dog:.4f}", file=sys.stdout
                    )
                else:
                    rows.append((submission_id(result.path), result.p_dog))
                    row_indices.append(result.index)
                    true = label_from_name(result.path.name)
                    if true is not None:
                        guess = CLASS_NAMES.index("dog" if result.p_dog >= 0.5 else "cat")
                        scored.append((true, guess))
        except torch.OutOfMemoryError:
            raise CLIError(
                f"out of memory on {device} at --batch-size {args.batch_size}; try a smaller one"
            ) from None
        finally:
            predictions.close()  # on Ctrl-C: stop decoding and close its progress bar now

    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s)", file=sys.stderr)
    if len(skipped) == len(inputs):
        raise CLIError(
            f"no readable image in {first_few(args.paths)} ({len(skipped)} file(s) skipped)"
        )
    if out is not None:
        folders = list(dict.fromkeys(e.folder for e in inputs if e.folder is not None))
        read = {inputs[i].folder for i in row_indices}
        unread = [str(f) for f in folders if f not in read]
        if not rows:
            raise CLIError(f"no readable image in {first_few(unread)}; {out} not written")
        for folder in unread:
            warn(f"no readable image in {folder}")
        try:
            write_submission(rows, out)
        except OSError as exc:
            raise CLIError(f"--out {out}: cannot write: {exc.strerror or exc}") from None
        print(f"wrote {out} ({len(rows)} images)")
        if scored:
            print(score_report(scored, len(rows)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return exit_on_cli_error(lambda: run(args))
    except KeyboardInterrupt:
        print("\ninterrupted (Ctrl-C)", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

"""``python -m fastconv.train``: train the dogs-vs-cats classifier on fastconv's kernels.

One process trains on one device; ``torchrun --nproc_per_node=N -m fastconv.train ...``
trains with DistributedDataParallel (nccl on GPUs, gloo on the CPU), each rank on its own
shard of every epoch; only rank 0 prints the progress bar and writes files.

A run directory (``--out``) receives ``args.json``, ``history.csv``, ``last.pt`` (every
epoch, every ``--save-every`` seconds inside an epoch, and on Ctrl-C), ``best.pt`` (best
validation accuracy), ``curves.png`` and ``confusion_matrix.png``. ``--resume DIR/last.pt``
continues where that run stopped, exactly (see :mod:`fastconv.training`).

This module only parses and checks the command line; it imports nothing heavy, so that
``--help`` and argument errors answer at once. The training itself lives in
:mod:`fastconv.training`, imported once the arguments are known to be good.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fastconv.cli import (
    BACKEND_CHOICES,
    EXIT_INTERRUPTED,
    CLIError,
    Parser,
    exit_on_cli_error,
    float_above,
    float_at_least,
    int_at_least,
)
from fastconv.models import (
    CATDOG_ACTIVATIONS,
    MODELS,
    activation_for,
    halvings,
    min_input_size,
)

__all__ = [
    "AMP_CHOICES",
    "EXIT_INTERRUPTED",
    "RESUME_MAY_CHANGE",
    "build_parser",
    "main",
    "merge_resumed_args",
    "parse_args",
]

AMP_CHOICES = ("auto", "off", "fp16", "bf16")
# Flags a resumed run may set anew: they change where and how fast it runs, or (--epochs) its
# length, never what a step computes. Every other flag comes from the checkpoint; given again
# on --resume it must repeat the checkpoint's value.
RESUME_MAY_CHANGE = (
    "resume", "epochs", "device", "workers", "backend", "compile", "out", "save_every",
)  # fmt: skip
SEED_LIMIT = 2**63

EPILOG = """\
resume:
  --resume RUN/last.pt continues a run exactly where it stopped (same batches, augmentation,
  dropout and statistics as a run left alone). Only --epochs, --device, --workers, --backend,
  --out and --save-every may take new values; any other flag must be left out or repeat the
  checkpoint's value. A larger --epochs extends the run: the one-cycle schedule is rebuilt for
  the new total number of steps and continues from the step reached (the learning rate moves
  onto the longer run's curve at that step).

interrupting:
  Ctrl-C (or SIGTERM) finishes the current step, saves last.pt with the position reached and
  exits 130; a second Ctrl-C aborts at once. After a crash or SIGKILL, last.pt is at most
  --save-every seconds old.
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help, except for flags whose default (None) the help text explains."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser(defaults: bool = True) -> Parser:
    """The parser; with ``defaults=False`` a flag left out is absent from the result.

    The second form tells which flags a command gave, which ``--resume`` needs: a flag given
    with the same value as its default is still a flag given.
    """
    parser = Parser(
        prog="python -m fastconv.train",
        description="Train the dogs-vs-cats CNN (fastconv Triton kernels) on Kaggle's images.",
        epilog=EPILOG,
        formatter_class=_HelpFormatter,
    )

    def add(flag: str, default=None, **kwargs) -> None:
        parser.add_argument(flag, default=default if defaults else argparse.SUPPRESS, **kwargs)

    add("--data", "tmp", help="folder holding the data (any layout; see fastconv.data)")
    add(
        "--epochs",
        10,
        type=int_at_least(1),
        help="number of epochs; with --resume, the new total (see resume below)",
    )
    add("--batch-size", 16, type=int_at_least(1), help="images per step on each process")
    add("--lr", 1e-3, type=float_above(0.0), help="peak learning rate of the one-cycle schedule")
    add(
        "--warmup",
        0.45,
        type=float_above(0.0, 1.0),
        metavar="FRACTION",
        help="share of the one-cycle schedule's steps that raise the learning rate to --lr "
        "(OneCycleLR's pct_start); the rest lower it to near zero along a cosine",
    )
    add(
        "--weight-decay",
        0.2,
        type=float_at_least(0.0),
        help="AdamW weight decay (not on BN/bias); docs/training-recipe.md, rows U8 and U9",
    )
    add(
        "--img-size",
        64,
        type=int_at_least(1),
        help="training resolution in pixels (square); at least the smallest size --model takes "
        f"({', '.join(f'{name}: {min_input_size(name)}' for name in MODELS)})",
    )
    add(
        "--model",
        "catdog",
        choices=MODELS,
        help="network from fastconv.models: catdog, catdog-wide (1.5x its channels), "
        "catdog-small and catdog-large are the project's VGG-style nets, catdog-res its "
        "residual net (conv-BN-ReLU, two residual blocks); resnet18 is torchvision's (random "
        "init, 3x3 stride-1 stem, no max pool) converted to fastconv layers, to compare against",
    )
    add(
        "--activation",
        None,
        choices=CATDOG_ACTIVATIONS,
        help="activation of the catdog nets' fused convolutions; default: "
        f"{CATDOG_ACTIVATIONS[0]} for them (docs/training-recipe.md, row S1), relu for "
        "catdog-res and resnet18, which have it built in and take no other",
    )
    add(
        "--shift",
        None,
        type=int_at_least(0),
        metavar="PX",
        help="largest random translation of a training image, in pixels, each way (the edge "
        "mirrored in); default: --img-size / 8",
    )
    add(
        "--crop-scale",
        1.0,
        type=_crop_scale,
        metavar="MIN",
        help="random-resized-crop zoom: each training image is cut to a random box covering "
        "MIN to all of its area (aspect ratio 3:4 to 4:3) and resized back; 1: no zoom",
    )
    add(
        "--label-smoothing",
        0.1,
        type=float_at_least(0.0, 1.0),
        help="share of each training target spread evenly over the classes (cross-entropy's "
        "label_smoothing); docs/training-recipe.md, row U9",
    )
    add(
        "--ema",
        0.999,
        type=float_at_least(0.0, 1.0),
        metavar="DECAY",
        help="validate, save and predict with an exponential moving average of the weights, "
        "updated after every step with this decay (warmed up as (1+n)/(10+n) over the first "
        "steps; see fastconv/ema.py); 0: the trained weights themselves",
    )
    add(
        "--tta",
        True,
        action=argparse.BooleanOptionalAction,
        help="validate on the mean of each image's and its mirror image's probabilities (one "
        "more forward pass per validation batch)",
    )
    add(
        "--amp",
        "auto",
        choices=AMP_CHOICES,
        help="mixed precision autocast dtype; auto: bf16 on a CPU with native bf16 (AVX512-BF16 "
        "or AMX), where a step runs about 1.7x faster, else off (float32); a run saves the "
        "resolved value",
    )
    add(
        "--channels-last",
        True,
        action=argparse.BooleanOptionalAction,
        help="train in the channels_last (NHWC) memory format: fastconv's kernels compute in "
        "it, and on a CPU torch's convolutions run about 1.4x faster in it",
    )
    add("--device", "auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1")
    add(
        "--compile",
        False,
        action=argparse.BooleanOptionalAction,
        help="compile the model's training step with torch.compile (on a GPU "
        "mode='reduce-overhead': CUDA graphs replay each step's launches; timm's --torchcompile); "
        "the first steps wait for the compiler",
    )
    add(
        "--seed",
        0,
        type=int_at_least(0, SEED_LIMIT),
        help="seed for the split, init, shuffling, augmentation and dropout",
    )
    add(
        "--workers",
        min(8, os.cpu_count() or 1),
        type=int_at_least(0),
        help="processes decoding images and loading batches (0: none); default min(8, cores)",
    )
    add("--out", None, help="run folder (default: runs/<timestamp>, or the resumed run's)")
    add("--resume", None, metavar="PATH", help="continue the run saved in this last.pt")
    add(
        "--save-every",
        300.0,
        type=float_at_least(0.0),
        metavar="SECONDS",
        help="also save last.pt inside an epoch once this many seconds passed since the last "
        "save (0: after every step); bounds the work a crash or SIGKILL loses",
    )
    add(
        "--backend",
        None,
        choices=BACKEND_CHOICES,
        help="fastconv backend (see fastconv/backend.py); default: $FASTCONV_BACKEND, else auto",
    )
    add(
        "--limit",
        0,
        type=_limit,
        metavar="N",
        help="use at most N images (0: all; else >= 4, 2 per class)",
    )
    add(
        "--val-fraction",
        0.1,
        type=float_above(0.0, 1.0),
        help="share of each class held out for validation",
    )
    add(
        "--demo",
        False,
        action="store_true",
        help="generate a synthetic two-class image set in <data>/demo and train on it",
    )
    return parser


def _limit(text: str) -> int:
    value = int_at_least(0)(text)
    if 0 < value < 4:
        raise argparse.ArgumentTypeError(f"must be 0 (all images) or >= 4, got {value}")
    return value


def _crop_scale(text: str) -> float:
    value = float_above(0.0)(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, set[str]]:
    """The arguments, with defaults filled in, and the names of those the command gave."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    given = set(vars(build_parser(defaults=False).parse_args(argv)))
    return args, given


def default_shift(img_size: int) -> int:
    """The largest random translation (pixels) when ``--shift`` is left out: 1/8 of the image."""
    return max(img_size // 8, 1)


def resolve_activation(args: argparse.Namespace) -> None:
    """Fill in ``--activation`` left out with ``--model``'s default; a CLIError names a
    combination the model cannot be built with."""
    try:
        args.activation = activation_for(args.model, args.activation)
    except ValueError as error:
        raise CLIError(f"--activation {args.activation} does not fit --model: {error}") from None


def check_img_size(args: argparse.Namespace) -> None:
    """``--img-size`` must survive every halving of ``--model``, and ``--shift`` stay inside
    the image: a CLIError names the flag."""
    if args.shift is not None and args.shift >= args.img_size:
        raise CLIError(
            f"--shift {args.shift} must be smaller than --img-size {args.img_size}: the shifted "
            "image is mirrored in from its own edge"
        )
    smallest = min_input_size(args.model)
    if args.img_size < smallest:
        raise CLIError(
            f"--img-size {args.img_size} is too small for --model {args.model}: it halves the "
            f"image {halvings(args.model)} times, so it needs at least {smallest} px"
        )


def _same(name: str, given, saved) -> bool:
    if name == "data":
        return Path(given).resolve() == Path(str(saved)).resolve()
    return given == saved


# Settings added after checkpoints were first written: the value a checkpoint without them
# was trained with (so resuming it keeps its recipe, whatever the flag's default is now).
SETTINGS_BEFORE_THEIR_FLAG = {
    "shift": None,
    "label_smoothing": 0.0,
    "tta": False,
    "ema": 0.0,
    "activation": "relu",
    "crop_scale": 1.0,
    "warmup": 0.3,
}


def merge_resumed_args(
    saved: dict, args: argparse.Namespace, given: set[str], source: str
) -> argparse.Namespace:
    """The resumed run's arguments: the checkpoint's, with the flags of :data:`RESUME_MAY_CHANGE`
    from this command.

    A flag outside that list that this command gave with another value than the checkpoint's
    is a :class:`CLIError` naming it: a resumed run never ignores a flag.
    """
    saved = {**SETTINGS_BEFORE_THEIR_FLAG, **saved}
    merged = dict(vars(args))
    for name, value in saved.items():
        if name in merged and name not in RESUME_MAY_CHANGE:
            merged[name] = value
    for name in sorted(given - set(RESUME_MAY_CHANGE)):
        if name in saved and not _same(name, getattr(args, name), saved[name]):
            flag = "--" + name.replace("_", "-")
            raise CLIError(
                f"{flag} {getattr(args, name)} conflicts with {saved[name]} in {source}: a resumed "
                f"run keeps its settings (leave {flag} out, or start a new run without --resume); "
                "only --epochs, --device, --workers, --backend, --compile, --out and --save-every "
                "may change"
            )
    if "epochs" not in given:
        merged["epochs"] = saved.get("epochs", args.epochs)
    if "save_every" not in given and "save_every" in saved:
        merged["save_every"] = saved["save_every"]
    if args.out is None:
        merged["out"] = str(Path(args.resume).parent)
    resumed = argparse.Namespace(**merged)
    _check_saved_values(resumed, source)
    return resumed


# Flags whose default None a run replaces before it saves (resolve_activation): a checkpoint
# always names their value.
_RESOLVED_BEFORE_SAVING = ("activation",)


def _parser_could_give(action: argparse.Action, value) -> bool:
    """Whether parsing a command line could have given ``value`` for ``action``'s flag: its
    type, range and choices, checked by the flag's own parser (a checkpoint is data from
    elsewhere)."""
    if value is None:
        return action.default is None and action.dest not in _RESOLVED_BEFORE_SAVING
    if action.nargs == 0:  # --flag / --no-flag
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return False
    if action.choices is not None:
        return value in action.choices
    if action.type is None:
        return isinstance(value, str)
    try:
        return action.type(str(value)) == value
    except (argparse.ArgumentTypeError, ValueError):
        return False


def _check_saved_values(args: argparse.Namespace, source: str) -> None:
    for action in build_parser()._actions:
        if action.dest == "help":
            continue
        value = getattr(args, action.dest)
        if not _parser_could_give(action, value):
            raise CLIError(f"--resume {source} holds an invalid {action.dest} setting: {value!r}")
    resolve_activation(args)
    check_img_size(args)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and train; returns the exit status.

    A bad command line exits (SystemExit 2) from the parser; every other problem a user can
    cause is one ``error: ...`` line on stderr and status 2; a NaN loss is status 3, Ctrl-C 130.
    """
    args, given = parse_args(argv)

    def run() -> int:
        if args.resume is None:  # before torch is imported and images are cached
            resolve_activation(args)
            check_img_size(args)
        from fastconv import training

        return training.run(args, given)

    return exit_on_cli_error(run)


_TRAINING_NAMES = ("Trainer", "build_optimizer", "evaluate", "NonFiniteLossError", "SetupError")


def __getattr__(name: str):
    """``fastconv.train.build_optimizer`` etc. still work: they now live in fastconv.training."""
    if name in _TRAINING_NAMES:
        from fastconv import training

        return getattr(training, name)
    raise AttributeError(f"module 'fastconv.train' has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())

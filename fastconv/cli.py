"""What fastconv's command-line tools share: argument checks, device and backend, one-line errors.

``python -m fastconv.train`` and ``python -m fastconv.predict`` build their parsers from
:class:`Parser` and the argument types below, then report every problem a user can cause
(a bad flag value, a missing GPU, an unusable checkpoint, a bad ``$FASTCONV_BACKEND``) as
one ``error: ...`` line naming the flag, file or variable, with exit status 2 and no
traceback.

This module imports only the standard library at import time: ``--help`` and argument
errors must answer before torch (over a second to import) is loaded. The functions that need
torch import it when called.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    import torch

__all__ = [
    "BACKEND_CHOICES",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "CLIError",
    "Parser",
    "backend_source",
    "cpu_has_native_bf16",
    "exit_on_cli_error",
    "first_few",
    "float_above",
    "float_at_least",
    "int_at_least",
    "resolve_amp",
    "resolve_backend_choice",
    "resolve_device",
]

# fastconv.backend.BACKENDS, spelled out because fastconv.backend imports torch (a test checks).
BACKEND_CHOICES = ("auto", "triton", "torch")
EXIT_USAGE = 2  # argparse's status for a bad command line; also ours for any user error
EXIT_INTERRUPTED = 130  # the shell's code for a Ctrl-C


class CLIError(Exception):
    """A problem with what the user asked for; its message is one line naming the culprit."""


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line: ``prog: error: message``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` (and < ``maximum`` when given)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if maximum is not None and value >= maximum:
            raise argparse.ArgumentTypeError(f"must be < {maximum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def float_above(minimum: float, maximum: float = math.inf) -> Callable[[str], float]:
    """An argparse type: a finite float in the open interval (``minimum``, ``maximum``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and minimum < value < maximum):
            bounds = f"> {minimum}" if maximum == math.inf else f"in ({minimum}, {maximum})"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    parse.__name__ = f"number > {minimum}"
    return parse


def float_at_least(minimum: float, maximum: float = math.inf) -> Callable[[str], float]:
    """An argparse type: a finite float >= ``minimum`` (and < ``maximum`` when given)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and minimum <= value < maximum):
            bounds = f">= {minimum}" if maximum == math.inf else f"in [{minimum}, {maximum})"
            raise argparse.ArgumentTypeError(f"must be a finite number {bounds}, got {text}")
        return value

    parse.__name__ = f"number >= {minimum}"
    return parse


def resolve_device(name: str, flag: str = "--device") -> torch.device:
    """The device `--device` names: auto (CUDA when present, else CPU), cpu, cuda or cuda:N."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CLIError(f"{flag} {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise CLIError(f"{flag} {name}: only auto, cpu, cuda and cuda:N are supported")
    if not torch.cuda.is_available():
        raise CLIError(f"{flag} {name}: no CUDA GPU is available here; use --device cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise CLIError(f"{flag} {name}: this machine has {count} CUDA device(s) (cuda:0..)")
    return device


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX: oneDNN's own check)."""
    import torch

    return torch.backends.mkldnn.is_available() and bool(
        torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def resolve_amp(requested: str, device: torch.device) -> str:
    """``--amp`` as a run applies it: ``auto`` is ``bf16`` on a CPU with native bf16, where
    a catdog training step runs 1.7x faster and the measured accuracy stayed within noise
    (docs/training-recipe.md), and ``off`` elsewhere, GPUs included until a GPU run has
    measured fastconv's bf16 kernels; any other value is kept."""
    if requested != "auto":
        return requested
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "off"


def resolve_backend_choice(flag_value: str | None, device: torch.device) -> tuple[str, str]:
    """(requested, resolved) fastconv backend for a CLI run on ``device``.

    ``flag_value`` is ``--backend`` as given, or None when the flag was left out: then
    ``$FASTCONV_BACKEND`` decides, exactly as it does for the library (default ``auto``). A
    bad value and a forced ``triton`` that cannot run on ``device`` are :class:`CLIError`\\ s.
    """
    from fastconv import backend

    if flag_value is None:
        try:
            requested = backend.get_backend()
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    else:
        requested = flag_value
    with backend.use_backend(requested):
        try:
            resolved = backend.resolve_backend(device)
        except backend.BackendUnavailableError as exc:
            source = "--backend" if flag_value is not None else backend.ENV_VAR
            raise CLIError(f"{source}={requested}: {exc}") from None
    return requested, resolved


def backend_source(flag_value: str | None) -> str:
    """Where the requested backend came from, for the start-up line: the flag, the variable or
    the default."""
    import os

    if flag_value is not None:
        return f"--backend {flag_value}"
    value = os.environ.get("FASTCONV_BACKEND")
    return f"$FASTCONV_BACKEND={value}" if value is not None else "the default"


def first_few(names: Sequence[str], n: int = 3) -> str:
    """``a, b, c and 4 more``: a list short enough for a one-line message."""
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def exit_on_cli_error(main: Callable[[], int]) -> int:
    """Run ``main``; a :class:`CLIError` becomes ``error: ...`` on stderr and exit status 2."""
    try:
        return main()
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE

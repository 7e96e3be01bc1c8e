"""What every convolution launcher shares: grid limits, int64 decisions, precision, launch."""

from __future__ import annotations

import torch
import triton
from torch import Tensor

from fastconv.backend import env_flag
from fastconv.kernels.layout import element_span

__all__ = [
    "INTERPRETER_CONFIGS",
    "MAX_GRID",
    "MAX_NUM_WARPS",
    "WIDE_TILES_ENABLED",
    "WIDE_TILES_ENV_VAR",
    "cdiv",
    "checked_grid",
    "dot_kind",
    "input_precision",
    "launch",
    "needs_int64",
    "tile_config",
    "wide_tiles_requested",
]

# Hardware grid limits (CUDA): axis 0 below 2**31, axes 1 and 2 at most 65,535.
MAX_GRID = (2**31 - 1, 65_535, 65_535)

# The convolution main loops walk (tap, channel chunk) steps, the loop shape of the Inductor
# convolution that 8 warps miscompile (pytorch issue 173068; Inductor caps those templates at
# 4 warps): every default conv config uses 4 warps at most (tests/test_autotune_configs.py
# checks it, docs/decisions.md says why).
MAX_NUM_WARPS = 4

# The 8-warp tiles (two warpgroups: 128x256 and 256x128) of the implicit GEMMs (cp.async and
# TMA) and of wgrad. Issue 173068's trigger is division and modulo in the flattened tap loop,
# and fastconv's loops advance by carries instead, but until a GPU run has shown these tiles
# to match torch they join the autotuners' lists only when ``FASTCONV_WIDE_TILES`` is
# ``1``/``true``/``on``/``yes`` at import (the autotuners are built from the lists then). The
# config factories take ``wide=`` so that tests and the compile gate reach them without it.
WIDE_TILES_ENV_VAR = "FASTCONV_WIDE_TILES"


def wide_tiles_requested() -> bool:
    """Whether ``$FASTCONV_WIDE_TILES`` turns the 8-warp tiles on; a ValueError for a value
    that says neither on nor off."""
    return env_flag(WIDE_TILES_ENV_VAR)


# Read once, at import: the autotuners' config lists are fixed when their modules load.
WIDE_TILES_ENABLED = wide_tiles_requested()


def cdiv(numerator: int, denominator: int) -> int:
    """``ceil(numerator / denominator)`` for the host's grid and tile arithmetic: plain Python,
    where ``triton.cdiv`` (a constexpr function) costs about 2 us per call."""
    return -(-numerator // denominator)


def checked_grid(grid: tuple[int, ...], what: str) -> tuple[int, ...]:
    """``grid``, or a ValueError naming the axis that passes its hardware limit."""
    for axis, (size, limit) in enumerate(zip(grid, MAX_GRID, strict=False)):
        if size > limit:
            raise ValueError(
                f"{what}: grid axis {axis} needs {size} programs, past the limit of {limit}"
            )
    return grid


def needs_int64(pixels: int, *tensors: Tensor) -> bool:
    """Whether a kernel must do its pixel and offset math in int64 (``INDEX_64``).

    ``pixels`` is the flattened pixel count the kernel walks (N*P*Q, or N*H*W for dgrad).
    Conservative by a factor of two: a tile or split-K slice past the end (a masked lane, or
    ``row_start + rows_per_split``) stays below 2**31 too, so a masked lane cannot wrap round
    to a negative index that its mask would accept.
    """
    largest = max([pixels, *(element_span(t) for t in tensors)])
    return 2 * largest + 4096 >= 2**31


def input_precision(dtype: torch.dtype) -> str:
    """tf32 for fp32 exactly when cuDNN may use it; fp16/bf16 dots are unaffected."""
    if dtype == torch.float32 and not torch.backends.cudnn.allow_tf32:
        return "ieee"
    return "tf32"


def dot_kind(dtype: torch.dtype) -> str:
    """The autotune config list a dtype uses: "fp16" (fp16, bf16), "tf32" or "ieee" (fp32,
    as :func:`input_precision` decides)."""
    if dtype != torch.float32:
        return "fp16"
    return input_precision(dtype)


def launch(tuned, kernel, config: triton.Config | None, grid, args, meta) -> None:
    """Launch through the autotuner, or with exactly ``config`` (tests run every config)."""
    if config is None:
        tuned[grid](*args, **meta)
    else:
        kernel[grid](
            *args, **meta, **config.kwargs,
            num_warps=config.num_warps, num_stages=config.num_stages,
        )  # fmt: skip


def tile_config(block_m: int, block_n: int, block_k: int, stages: int, warps: int) -> triton.Config:
    """A GEMM-tile autotune config: (BLOCK_M, BLOCK_N, BLOCK_K), pipeline stages, warps."""
    meta = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k}
    return triton.Config(meta, num_stages=stages, num_warps=warps)


# Under the interpreter an autotuner would time configs with CUDA events: one config only.
INTERPRETER_CONFIGS = [tile_config(64, 16, 16, 1, 1)]

"""Compile every Triton kernel of fastconv exactly as a launch would, without a GPU, and report.

Run as a script with ``TRITON_INTERPRET`` unset (under the interpreter ``@triton.jit``
returns interpreter objects that cannot be compiled)::

    python tests/compile_gate.py --cubin-dir DIR REPORT.json [--shapes all|gate] [--targets 90,80]

How a signature is derived (issue 11, item 7): the real launchers (``conv2d_fwd``,
``conv2d_bwd_input``, ``conv2d_bwd_weight`` and the pooling launchers) are called on CPU
tensors of the benchmark shapes (``benchmarks/shapes.py``), in NCHW and channels_last, for
fp32 (tf32 and ieee, via ``torch.backends.cudnn.allow_tf32``), fp16 and bf16, with
``Autotuner.run`` and ``JITFunction.run`` swapped for a recorder: nothing runs, the
``(kernel, args, kwargs)`` of every launch is kept. Each record is then bound the JIT's own
way, per target and per autotune config that the autotuner could launch for those
arguments (its configs after its ``early_config_prune``; ``config.all_kwargs()`` merged as
the autotuner does): ``triton.runtime.jit.create_function_from_signature(fn.signature, fn.params,
backend)`` gives the binder the JIT uses (ints equal to 1 become constexpr, ints divisible
by 16 and 16-byte-aligned pointers get ``tt.divisibility``), and
``JITFunction._pack_args`` turns the binding into ``(options, signature, constexprs,
attrs)``; ``triton.compile(ASTSource(fn, signature, constexprs, attrs),
target=GPUTarget("cuda", cc, 32), options=options.__dict__)`` is what ``_do_compile`` calls.
Identical specializations (same kernel, target, signature, constexprs, attrs, options) are
compiled once; the report lists every benchmark shape that maps to each. The 8-warp tiles
behind ``FASTCONV_WIDE_TILES`` (``fastconv.kernels.launch``) are compiled too: the gate
turns the switch on before fastconv is imported, so a tile is gated before it is enabled.

Each cubin is written to DIR and read with the ``cuobjdump`` shipped in Triton's wheel
(``-res-usage``: registers, stack, local; ``-sass``: the instructions). The main loop is
located in the SASS as the region between a backward branch and its target (a loop) that
holds the most tensor-core instructions (HGMMA/HMMA), then the most instructions; what is
inside it is counted separately (synchronous LDG, LDGSTS, SHFL, wgmma waits).
``tests/test_compile_gate.py`` runs this in a subprocess and asserts on the report;
``benchmarks/static_table.py`` renders its sm_90 entries as a table.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The private Triton API used below (_pack_args, the binder) is pinned to this version.
TRITON_VERSION = "3.8"
TARGETS = (90, 80)
# Compute capability -> (most shared memory one block may use, shared memory per SM, bytes).
SHARED_LIMITS = {80: (163 * 1024, 164 * 1024), 90: (227 * 1024, 228 * 1024)}
REGISTERS_PER_SM = 65536
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32
REGISTER_ALLOCATION_UNIT = 256  # registers per warp are allocated in units of 256
SHARED_RESERVED_PER_BLOCK = 1024  # the driver reserves 1 KB of shared memory per block
DTYPES = ("fp32", "tf32", "fp16", "bf16")
LAYOUTS = ("nchw", "nhwc")
OPS = ("conv_fwd", "conv_fwd_fused", "conv_dgrad", "conv_wgrad", "pool_fwd", "pool_bwd", "act_bwd")
OPS += ("pad_fwd", "pad_bwd")  # reflect/replicate/circular padding (kernels/pad2d.py)
# fastconv.kernels.launch.WIDE_TILES_ENV_VAR, named here so that fastconv is imported after
# it is set.
WIDE_TILES_ENV_VAR = "FASTCONV_WIDE_TILES"


def groups() -> list[tuple[str, str, str, int]]:
    """Every (op, layout, dtype, target) the gate covers; ``tf32`` is conv-only. ``conv_fwd_fused``
    is the forward with the heaviest epilogue (:data:`FUSED_EPILOGUE`), ``act_bwd`` the
    activation backward."""
    return [
        (op, layout, dtype, cc)
        for op in OPS
        for layout in LAYOUTS
        for dtype in DTYPES
        for cc in TARGETS
        if op.startswith("conv") or dtype != "tf32"
    ]


def group_id(op: str, layout: str, dtype: str, cc: int) -> str:
    return f"{op}-{layout}-{dtype}-sm{cc}"


def tools_missing() -> str | None:
    """Why the gate cannot run here (no triton, no cuobjdump), or None."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    if not (tool_dir() / "cuobjdump").exists():
        return f"cuobjdump is missing from {tool_dir()}"
    return None


def version_problem() -> str | None:
    """Why the gate's use of Triton's private JIT API may be wrong here, or None."""
    import triton
    from triton.runtime import jit

    if not triton.__version__.startswith(TRITON_VERSION):
        return (
            f"the gate binds arguments with triton {TRITON_VERSION}'s private JIT API "
            f"(JITFunction._pack_args); found triton {triton.__version__}: re-check and re-pin"
        )
    if not hasattr(jit.JITFunction, "_pack_args") or not hasattr(
        jit, "create_function_from_signature"
    ):
        return "triton's JIT no longer has _pack_args / create_function_from_signature"
    return None


def tool_dir() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


# --------------------------------------------------------------------------- capture


@dataclasses.dataclass
class Launch:
    """One intercepted launch: the kernel object (JITFunction or Autotuner) and its arguments."""

    kernel: object
    args: tuple
    kwargs: dict
    targets: tuple[int, ...] = TARGETS  # the targets on which the launcher makes this launch


@contextlib.contextmanager
def intercept_launches(targets: tuple[int, ...] = TARGETS):
    """Record every ``kernel[grid](...)`` instead of running it (as a launch on ``targets``);
    yields the list of records."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    records: list[Launch] = []

    def record(self, *args, grid=None, warmup=False, **kwargs):
        records.append(Launch(self, args, kwargs, targets))

    saved = Autotuner.run, JITFunction.run
    Autotuner.run = JITFunction.run = record
    try:
        yield records
    finally:
        Autotuner.run, JITFunction.run = saved


TORCH_DTYPES = {"fp32": "float32", "tf32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@contextlib.contextmanager
def _tf32(allowed: bool):
    import torch

    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def _tensor(shape, dtype, layout, device="cpu"):
    import torch

    memory_format = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    return torch.empty(shape, dtype=dtype, device=device).contiguous(memory_format=memory_format)


def _conv_launches(shape, layout: str, dtype_name: str) -> list[tuple[str, Launch]]:
    import torch

    from fastconv.kernels import conv2d
    from fastconv.kernels.epilogue import RELU, Epilogue

    dtype = getattr(torch, TORCH_DTYPES[dtype_name])
    p, q = shape.output_hw
    # Meta tensors: the launchers' layout copies and workspaces (kept alive by the records)
    # take no memory; a meta pointer (0) is 16-byte aligned like a fresh CUDA allocation.
    x = _tensor((shape.n, shape.c, shape.h, shape.w), dtype, layout, "meta")
    w = _tensor((shape.k, shape.c // shape.groups, shape.r, shape.s), dtype, layout, "meta")
    b = torch.empty(shape.k, dtype=dtype, device="meta")
    grad_y = _tensor((shape.n, shape.k, p, q), dtype, layout, "meta")
    geometry = (shape.stride, shape.padding, shape.dilation)
    groups = shape.groups
    fused = Epilogue(  # a BatchNorm folded to (scale, bias), a skip connection, erf GELU
        FUSED_ACTIVATION,
        scale=torch.empty(shape.k, dtype=dtype, device="meta"),
        residual=grad_y,
        save_preact=True,
    )
    calls = [("conv_fwd", lambda: conv2d.conv2d_fwd(x, w, b, *geometry, (p, q), RELU, groups))]
    if shape.name in FUSED_GATE_SHAPES:
        calls.append(
            ("conv_fwd_fused", lambda: conv2d.conv2d_fwd(x, w, b, *geometry, (p, q), fused, groups))
        )
    calls += [
        ("conv_dgrad", lambda: conv2d.conv2d_bwd_input(grad_y, w, x.shape, *geometry, groups)),
        (
            "conv_wgrad",
            lambda: conv2d.conv2d_bwd_weight(grad_y, x, w.shape, *geometry, True, groups),
        ),
    ]
    out = []
    # fp32 runs ieee dots unless tf32 is allowed, exactly as the launchers decide. Each call
    # is captured twice: as on an sm_90 device (where the TMA kernel applies, it runs) and as
    # on an sm_80 device (no TMA).
    with _tf32(dtype_name != "fp32"):
        for op, call in calls:
            for targets, tma in (((90,), True), ((80,), False)):
                with _tma_device(tma), intercept_launches(targets) as records:
                    call()
                out += [(op, record) for record in records]
    return out


@contextlib.contextmanager
def _tma_device(available: bool):
    """Make :mod:`fastconv.kernels.conv2d_tma` see a TMA-capable device (sm_90) or not; the
    launch plans made on the other kind of device are dropped on the way in and out."""
    from fastconv.kernels import conv2d_tma
    from fastconv.kernels.plans import clear_plans

    saved = conv2d_tma._tma_device
    conv2d_tma._tma_device = lambda tensor: available
    clear_plans()
    try:
        yield
    finally:
        conv2d_tma._tma_device = saved
        clear_plans()


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, tuple | list) else (value, value)


def _pool_launches(shape, layout: str, dtype_name: str) -> list[tuple[str, Launch]]:
    import torch
    import torch.nn.functional as F

    from fastconv.kernels import pool2d

    dtype = getattr(torch, TORCH_DTYPES[dtype_name])
    memory_format = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = _tensor((shape.n, shape.c, shape.h, shape.w), dtype, layout)
    opts = shape.kwargs
    meta = torch.empty(x.shape, device="meta")
    out = []
    if shape.op == "adaptive_avg_pool2d":
        size = _pair(opts["output_size"])
        fwd = lambda: pool2d.adaptive_avg_pool2d_fwd(x, size)  # noqa: E731
        grad_y = _tensor((shape.n, shape.c, *size), dtype, layout)
        bwd = lambda: pool2d.adaptive_avg_pool2d_bwd(grad_y, x.shape, memory_format)  # noqa: E731
    else:
        kernel = _pair(opts["kernel_size"])
        stride = _pair(opts.get("stride") or opts["kernel_size"])
        padding = _pair(opts.get("padding", 0))
        pool = getattr(F, shape.op)
        size = tuple(pool(meta, **opts).shape[2:])
        grad_y = _tensor((shape.n, shape.c, *size), dtype, layout)
        if shape.op == "max_pool2d":
            dilation = _pair(opts.get("dilation", 1))
            geometry = (kernel, stride, padding, dilation)
            argmax = _tensor(grad_y.shape, pool2d._argmax_dtype(kernel), layout)
            fwd = lambda: pool2d.max_pool2d_fwd(x, *geometry, size, True)  # noqa: E731
            bwd = lambda: pool2d.max_pool2d_bwd(grad_y, argmax, x.shape, memory_format, *geometry)  # noqa: E731
        else:
            mode = (opts.get("count_include_pad", True), opts.get("divisor_override"))
            fwd = lambda: pool2d.avg_pool2d_fwd(x, kernel, stride, padding, size, *mode)  # noqa: E731
            bwd = lambda: pool2d.avg_pool2d_bwd(  # noqa: E731
                grad_y, x.shape, memory_format, kernel, stride, padding, *mode
            )
    for op, call in (("pool_fwd", fwd), ("pool_bwd", bwd)):
        with intercept_launches() as records:
            call()
        out += [(op, record) for record in records]
    return out


def _activation_launches(layout: str, dtype_name: str) -> list[tuple[str, Launch]]:
    """The activation backward (one elementwise kernel per activation) on a 64-channel 56x56
    output; the kernel is flat, so both layouts give the same cubin."""
    import torch

    from fastconv.activations import ACTIVATIONS
    from fastconv.kernels.epilogue import activation_bwd

    dtype = getattr(torch, TORCH_DTYPES[dtype_name])
    grad_y = _tensor((8, 64, 56, 56), dtype, layout, "meta")
    saved = _tensor((8, 64, 56, 56), dtype, layout, "meta")
    out = []
    for activation in ACTIVATIONS[1:]:  # all but identity, which has no backward kernel
        with intercept_launches() as records:
            activation_bwd(grad_y, saved, activation, 0.01)
        out += [("act_bwd", record) for record in records]
    return out


# The forward with every epilogue operand: erf GELU is the longest activation.
FUSED_ACTIVATION = "gelu"
# Shapes whose forward is also compiled with that epilogue: one per forward kernel (stem,
# implicit GEMM and TMA, 1x1, depthwise).
FUSED_GATE_SHAPES = (
    "catdog64-features.0",
    "resnet-3x3-64@56",
    "resnet-1x1-256to64@56",
    "mobilenet-dw-3x3-144@56",
)

# The shapes compiled by default (``--shapes gate``): one per specialization class of the
# benchmark list. ``--shapes all`` takes every benchmark shape (deduplicated the same way).
GATE_CONV_SHAPES = (
    "catdog64-features.0",  # C=3 stem, 3x3 s1 p1, H=W=64
    "catdog64-features.17",  # C=K=256, H=W=8 (not divisible by 16)
    "resnet-stem-7x7s2",  # C=3, 7x7 stride 2 pad 3: strided dgrad
    "resnet-3x3-64@56",  # the common 3x3 s1 p1 layer, H=W=56
    "resnet-1x1-256to64@56",  # 1x1, no padding
    "resnext-3x3-g32-128@56",  # grouped, 4 channels per group
    "mobilenet-dw-3x3-144@56",  # depthwise
)
GATE_POOL_SHAPES = (
    "catdog64-features.4",  # max 2x2 s2
    "catdog64-head.0",  # adaptive avg 4x4 -> 1
    "resnet-stem-max3x3s2",  # max 3x3 s2 p1 (overlapping windows)
    "densenet-avg2x2@56",  # avg 2x2 s2
    "resnet-global-avg@7",  # adaptive avg 7x7 -> 1
)


# Padding modes (``padding_mode`` of a convolution): name -> ((N, C, H, W), (left, right,
# top, bottom), mode). One shape per mode (the mode is a constexpr): a ResNet layer, an RGB
# image padded for a 7x7 stem.
PAD_GATE_SHAPES = {
    "pad-reflect1-64@56": ((8, 64, 56, 56), (1, 1, 1, 1), "reflect"),
    "pad-circular1-64@56": ((8, 64, 56, 56), (1, 1, 1, 1), "circular"),
    "pad-replicate3-3@224": ((8, 3, 224, 224), (3, 3, 3, 3), "replicate"),
}


def _pad_launches(shape, padding, mode, layout: str, dtype_name: str) -> list[tuple[str, Launch]]:
    """The pad forward (x in ``layout`` -> channels-last) and backward (grad_y and grad_x in
    ``layout``, as a convolution's input gradient hands it over)."""
    import torch

    from fastconv.kernels import pad2d

    dtype = getattr(torch, TORCH_DTYPES[dtype_name])
    memory_format = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    n, c, h, w = shape
    left, right, top, bottom = padding
    x = _tensor(shape, dtype, layout, "meta")
    grad_y = _tensor((n, c, h + top + bottom, w + left + right), dtype, layout, "meta")
    out = []
    for op, call in (
        ("pad_fwd", lambda: pad2d.pad2d_fwd(x, padding, mode)),
        ("pad_bwd", lambda: pad2d.pad2d_bwd(grad_y, shape, padding, mode, memory_format)),
    ):
        with intercept_launches() as records:
            call()
        out += [(op, record) for record in records]
    return out


def _select(shapes, names):
    if names is None:
        return list(shapes)
    by_name = {shape.name: shape for shape in shapes}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise SystemExit(f"compile gate: shapes {missing} are not in benchmarks/shapes.py")
    return [by_name[name] for name in names]


def capture(which: str = "gate") -> list[tuple[str, str, str, str, Launch]]:
    """(op, layout, dtype, shape name, launch) of every launch for the selected shapes, the
    8-warp tiles included."""
    os.environ[WIDE_TILES_ENV_VAR] = "1"  # read when fastconv's kernel modules are imported
    sys.path.insert(0, str(REPO))
    from benchmarks.shapes import CONV_SHAPES, POOL_SHAPES
    from fastconv.kernels import launch

    if not launch.WIDE_TILES_ENABLED:
        raise SystemExit(f"compile gate: fastconv was imported before {WIDE_TILES_ENV_VAR}=1")

    conv = _select(CONV_SHAPES, None if which == "all" else GATE_CONV_SHAPES)
    pool = _select(POOL_SHAPES, None if which == "all" else GATE_POOL_SHAPES)
    out = []
    for layout in LAYOUTS:
        for dtype in DTYPES:
            for shape in conv:
                out += [
                    (op, layout, dtype, shape.name, r)
                    for op, r in _conv_launches(shape, layout, dtype)
                ]
            if dtype == "tf32":
                continue
            out += [
                (op, layout, dtype, "activation-64@56", r)
                for op, r in _activation_launches(layout, dtype)
            ]
            for shape in pool:
                out += [
                    (op, layout, dtype, shape.name, r)
                    for op, r in _pool_launches(shape, layout, dtype)
                ]
            for name, (shape, padding, mode) in PAD_GATE_SHAPES.items():
                out += [
                    (op, layout, dtype, name, r)
                    for op, r in _pad_launches(shape, padding, mode, layout, dtype)
                ]
    return out


# --------------------------------------------------------------------------- binding


def _configs(kernel, args: tuple, kwargs: dict) -> list[tuple[dict, dict]]:
    """(config meta-parameters, keyword arguments merged into the launch) per config the
    autotuner could launch for these arguments: its configs after its ``early_config_prune``,
    applied the way ``Autotuner.run`` applies it."""
    from triton.runtime.autotuner import Autotuner

    if not isinstance(kernel, Autotuner):
        return [({}, {}, args)]
    kernel.nargs = dict(zip(kernel.arg_names, args, strict=False))
    try:
        configs = kernel.prune_configs(kwargs)
    finally:
        kernel.nargs = None
    return [
        (cfg.kwargs, cfg.all_kwargs(), _pre_hooked(kernel, cfg, args, kwargs)) for cfg in configs
    ]


def _pre_hooked(kernel, config, args: tuple, kwargs: dict) -> tuple:
    """``args`` as ``config``'s ``pre_hook`` leaves them (it sets TMA descriptors' block
    shapes per config), applied to copies so the other configs see the originals; the hook
    sees the arguments, the launch's keywords and the config's, as ``Autotuner`` passes them."""
    if config.pre_hook is None:
        return args
    names = kernel.arg_names[: len(args)]
    nargs = {name: copy.copy(arg) for name, arg in zip(names, args, strict=True)}
    config.pre_hook({**kwargs, **config.all_kwargs(), **nargs})
    return tuple(nargs[name] for name in names)


def bind(kernel, args: tuple, kwargs: dict, cc: int) -> list[dict]:
    """The compile jobs of one launch on one target: one per config, bound as the JIT binds."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import create_function_from_signature

    fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
    backend = make_backend(GPUTarget("cuda", cc, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    jobs = []
    for meta, extra, config_args in _configs(kernel, args, kwargs):
        launch_kwargs = {**kwargs, **extra}
        # The two options JITFunction.run adds before binding.
        launch_kwargs["debug"] = launch_kwargs.get("debug", fn.debug) or knobs.runtime.debug
        launch_kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
        bound_args, specialization, options = binder(*config_args, **launch_kwargs)
        options, signature, constexprs, attrs = fn._pack_args(
            backend, launch_kwargs, bound_args, specialization, options
        )
        if not meta:  # a fixed launch: its tuning meta-parameters are the UPPER-case kwargs
            meta = {k: v for k, v in kwargs.items() if k.startswith("BLOCK")}
        names = list(signature)
        jobs.append(
            {
                "module": fn.module,
                "name": fn.fn.__name__,
                "cc": cc,
                "signature": signature,
                "constexprs": constexprs,
                "attrs": attrs,
                "options": options.__dict__,
                "config": {
                    **meta,
                    "num_warps": options.num_warps,
                    "num_stages": options.num_stages,
                },
                "specialized_to_1": [
                    name
                    for name, param in zip(names, fn.params, strict=True)
                    if signature[name] == "constexpr" and not param.is_constexpr
                ],
                "divisible_16": [
                    names[k[0]]
                    for k, v in attrs.items()
                    if ["tt.divisibility", 16] in v and not signature[names[k[0]]].startswith("*")
                ],
            }
        )
    return jobs


def job_key(job: dict) -> str:
    text = repr(
        (
            job["module"],
            job["name"],
            job["cc"],
            sorted(job["signature"].items()),
            sorted(job["constexprs"].items()),
            sorted((k, repr(v)) for k, v in job["attrs"].items()),
            sorted((k, repr(v)) for k, v in job["options"].items()),
        )
    )
    return hashlib.sha1(text.encode()).hexdigest()[:10]


# --------------------------------------------------------------------------- compile + read

_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_BRANCH = re.compile(r"\bBRA\b.*?(0x[0-9a-f]+)")


def parse_sass(sass: str) -> list[tuple[int, str]]:
    """(address, instruction text without predicate) for every SASS instruction."""
    out = []
    for address, text in _LINE.findall(sass):
        text = re.sub(r"^@!?U?P[T0-9]+\s+", "", text)
        out.append((int(address, 16), text))
    return out


def _opcode(text: str) -> str:
    return text.split()[0] if text else ""


def count_instructions(instructions: list[tuple[int, str]]) -> dict:
    ops = [_opcode(text) for _, text in instructions]
    ldg = [op for op in ops if op.startswith("LDG.") or op == "LDG"]
    ldgsts = [op for op in ops if op.startswith("LDGSTS")]

    def width(op: str, default: int) -> int:
        found = re.search(r"\.(128|64|32|16|U16|S16|U8|S8)\b", op)
        if not found:
            return default
        token = found.group(1)
        return {"U16": 16, "S16": 16, "U8": 8, "S8": 8}.get(
            token, int(token) if token.isdigit() else default
        )

    return {
        "instructions": len(ops),
        "hgmma": sum(op.startswith("HGMMA") for op in ops),
        "hmma": sum(op.startswith("HMMA") for op in ops),
        "ldg": len(ldg),
        "ldg_widths": sorted({width(op, 32) for op in ldg}),
        "ldgsts": len(ldgsts),
        "ldgsts_widths": sorted({width(op, 32) for op in ldgsts}),
        "utmaldg": sum(op.startswith("UTMALDG") for op in ops),
        "shfl": sum(op.startswith("SHFL") for op in ops),
        "wgmma_waits": sum(op.startswith("WARPGROUP.DEPBAR") for op in ops),
        "spill_ops": sum(op.startswith(("LDL", "STL")) for op in ops),
    }


def main_loop(instructions: list[tuple[int, str]]) -> tuple[int, int] | None:
    """(first, last) address of the main loop: the smallest backward-branch region among those
    with the most MMAs (a TMA kernel's mbarrier retry branches jump back to the loop head
    from after the epilogue, making larger regions with the same MMAs)."""
    best, best_score = None, None
    for address, text in instructions:
        found = _BRANCH.search(text) if _opcode(text).startswith("BRA") else None
        if not found:
            continue
        target = int(found.group(1), 16)
        if target >= address:  # a forward branch, or the trap loop ending the kernel
            continue
        body = [t for a, t in instructions if target <= a <= address]
        mma = sum(_opcode(t).startswith(("HGMMA", "HMMA")) for t in body)
        score = (mma, -len(body))
        if best_score is None or score > best_score:
            best, best_score = (target, address), score
    return best


def blocks_per_sm(cc: int, registers: int, warps: int, shared: int) -> int:
    """Resident blocks per SM by registers, warps, shared memory and the block limit."""
    per_warp = -(-max(registers, 1) * 32 // REGISTER_ALLOCATION_UNIT) * REGISTER_ALLOCATION_UNIT
    by_registers = (REGISTERS_PER_SM // per_warp) // warps
    by_warps = MAX_WARPS_PER_SM // warps
    by_shared = SHARED_LIMITS[cc][1] // (shared + SHARED_RESERVED_PER_BLOCK)
    return min(by_registers, by_warps, by_shared, MAX_BLOCKS_PER_SM)


def compile_job(job: dict, cubin_path: str) -> dict:
    """Compile one job, write its cubin, and read its resources and SASS."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(job["module"]), job["name"])
    source = ASTSource(fn, job["signature"], job["constexprs"], job["attrs"])
    started = time.perf_counter()
    compiled = triton.compile(
        source, target=GPUTarget("cuda", job["cc"], 32), options=dict(job["options"])
    )
    seconds = time.perf_counter() - started
    Path(cubin_path).write_bytes(compiled.asm["cubin"])
    tool = str(tool_dir() / "cuobjdump")
    usage = subprocess.run(
        [tool, "-res-usage", cubin_path], capture_output=True, text=True, check=True
    ).stdout
    sass = subprocess.run(
        [tool, "-sass", cubin_path], capture_output=True, text=True, check=True
    ).stdout
    resources = {k: int(v) for k, v in re.findall(r"\b([A-Z]+):(\d+)", usage)}
    instructions = parse_sass(sass)
    loop = main_loop(instructions)
    in_loop = [(a, t) for a, t in instructions if loop and loop[0] <= a <= loop[1]]
    shared = compiled.metadata.shared + resources.get("SHARED", 0)
    registers = resources.get("REG", 0)
    return {
        "registers": registers,
        "stack": resources.get("STACK", 0),
        "local": resources.get("LOCAL", 0),
        "shared": shared,
        "max_shared": SHARED_LIMITS[job["cc"]][0],
        "blocks_per_sm": blocks_per_sm(job["cc"], registers, job["options"]["num_warps"], shared),
        "wgmma_ttgir": "warp_group_dot" in compiled.asm["ttgir"],
        "hgmma_shapes": sorted(set(re.findall(r"\bHGMMA\.(\d+x\d+x\d+)", sass))),
        "hmma_shapes": sorted(set(re.findall(r"\bHMMA\.(\d+)", sass))),
        "kernel_sass": count_instructions(instructions),
        "main_loop": {
            "found": loop is not None,
            "range": [f"0x{loop[0]:x}", f"0x{loop[1]:x}"] if loop else None,
            **count_instructions(in_loop),
        },
        "compile_s": round(seconds, 2),
    }


def _worker(job: dict, cubin_path: str) -> dict:
    try:
        return compile_job(job, cubin_path)
    except Exception as error:  # reported per entry; the test fails on it
        return {"error": f"{type(error).__name__}: {error}"}


def build_jobs(which: str, targets) -> dict[str, dict]:
    """key -> entry skeleton (job + metadata + the shapes that launch it)."""
    entries: dict[str, dict] = {}
    for op, layout, dtype, shape, record in capture(which):
        for cc in targets:
            if cc not in record.targets:
                continue
            for job in bind(record.kernel, record.args, record.kwargs, cc):
                key = job_key(job)
                entry = entries.setdefault(
                    key,
                    {
                        "key": key,
                        "job": job,
                        "op": op,
                        "layouts": set(),
                        "dtypes": set(),
                        "shapes": [],
                    },
                )
                entry["layouts"].add(layout)
                entry["dtypes"].add(dtype)
                if shape not in entry["shapes"]:
                    entry["shapes"].append(shape)
    return entries


def config_tag(config: dict) -> str:
    blocks = "x".join(str(v) for k, v in config.items() if k not in ("num_warps", "num_stages"))
    return f"{blocks}-w{config['num_warps']}-s{config['num_stages']}"


def run(out_path: Path, cubin_dir: Path, which: str, targets, workers: int) -> dict:
    started = time.perf_counter()
    entries = build_jobs(which, targets)
    captured_s = time.perf_counter() - started
    cubin_dir.mkdir(parents=True, exist_ok=True)
    report_entries = []
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        futures = {}
        for key, entry in entries.items():
            job = entry["job"]
            layout = entry["layouts"].pop() if len(entry["layouts"]) == 1 else "any"
            dtype = "/".join(sorted(entry["dtypes"]))
            tag = f"{layout}-{dtype.replace('/', '_')}-sm{job['cc']}-{config_tag(job['config'])}"
            name = f"{job['name'].strip('_')}-{tag}-{key}"
            cubin = cubin_dir / f"{name}.cubin"
            meta = {
                "kernel": job["name"],
                "op": entry["op"],
                "layout": layout,
                "dtype": dtype,
                "target": job["cc"],
                "num_warps": job["config"]["num_warps"],
                "num_stages": job["config"]["num_stages"],
                "config": job["config"],
                "config_tag": config_tag(job["config"]),
                "cubin": str(cubin),
                "key": key,
                "shapes": entry["shapes"],
                "specialized_to_1": job["specialized_to_1"],
                "divisible_16": job["divisible_16"],
            }
            futures[pool.submit(_worker, job, str(cubin))] = meta
        for future in concurrent.futures.as_completed(futures):
            report_entries.append({**futures[future], **future.result()})
    report_entries.sort(
        key=lambda e: (
            OPS.index(e["op"]),
            e["layout"],
            e["dtype"],
            -e["target"],
            e["config_tag"],
            e["key"],
        )
    )
    import torch
    import triton

    report = {
        "triton": triton.__version__,
        "torch": torch.__version__,
        "shapes": which,
        "targets": list(targets),
        "workers": workers,
        "capture_s": round(captured_s, 1),
        "total_s": round(time.perf_counter() - started, 1),
        "entries": report_entries,
    }
    out_path.write_text(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="JSON report to write")
    parser.add_argument("--cubin-dir", type=Path, required=True, help="where cubins go")
    parser.add_argument("--shapes", choices=("gate", "all"), default="gate")
    parser.add_argument("--targets", default=",".join(map(str, TARGETS)))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("run the compile gate with TRITON_INTERPRET unset")
    reason = tools_missing() or version_problem()
    if reason is not None:
        raise SystemExit(f"compile gate: {reason}")
    targets = tuple(int(t) for t in args.targets.split(","))
    report = run(args.report, args.cubin_dir, args.shapes, targets, args.workers)
    errors = sum("error" in e for e in report["entries"])
    print(
        f"compile gate: {len(report['entries'])} kernels ({errors} errors) in "
        f"{report['total_s']} s -> {args.report}"
    )


if __name__ == "__main__":
    main()

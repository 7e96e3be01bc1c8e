"""Compile every Triton kernel of fastconv for real GPUs, without a GPU, and report.

Run as a script with ``TRITON_INTERPRET`` unset (under the interpreter ``@triton.jit``
returns interpreter objects that cannot be compiled)::

    python tests/compile_gate.py OUT.json

For every entry of :data:`GATE_KERNELS`, every dtype it lists, every launch config (each
autotune config, or the entry's fixed one) and every target of :data:`TARGETS`, the kernel
is compiled with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` and
the cubin is inspected with the ``cuobjdump`` shipped in Triton's wheel: shared memory,
registers, stack and local memory (spills), and the tensor-core instructions in the SASS.
``tests/test_compile_gate.py`` runs this in a subprocess and asserts on the report.

To gate a new kernel, append a :class:`GateKernel` to :data:`GATE_KERNELS`.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

# Compute capability -> most shared memory one block may use (bytes), from CUDA's tables.
TARGETS = {80: 163 * 1024, 90: 227 * 1024}


@dataclass(frozen=True)
class GateKernel:
    """One kernel to compile, with the arguments its launcher would specialize.

    ``kernel`` is ``"module:attribute"``; pointer arguments (names ending in ``_ptr``) get
    ``*<dtype>`` unless ``pointer_types`` says otherwise; other runtime arguments are i32.
    ``constexprs`` are the non-tuning constexpr arguments. For a kernel without
    ``@triton.autotune``, ``launch(module)`` returns the tuning meta-parameters and
    ``num_warps`` its launcher uses, read from the kernel's module so the gate follows it;
    autotuned kernels are compiled at each of their configs. ``tensor_cores``: the kernel
    has a ``tl.dot`` whose SASS must use tensor cores. ``variant`` names a second entry of
    the same kernel (e.g. runtime ints the JIT specializes to constants).
    """

    kernel: str
    dtypes: tuple[str, ...]
    constexprs: dict
    pointer_types: dict = field(default_factory=dict)
    launch: Callable[[ModuleType], dict] | None = None
    tensor_cores: bool = False
    variant: str = ""

    @property
    def name(self) -> str:
        name = self.kernel.rsplit(":", 1)[1]
        return f"{name}-{self.variant}" if self.variant else name


CONV = "fastconv.kernels.conv2d"
POOL = "fastconv.kernels.pool2d"


def _pool_launch(pool: ModuleType) -> dict:
    """The elementwise-style pooling launches: one BLOCK_SIZE range per program."""
    return {"BLOCK": pool.BLOCK_SIZE, "num_warps": pool.NUM_WARPS}


def _adaptive_pool_fwd_launch(pool: ModuleType) -> dict:
    """The adaptive forward at its widest window tile (BLOCK_K at its cap)."""
    block_k = pool.ADAPTIVE_MAX_BLOCK_K
    return {
        "BLOCK_M": pool.ADAPTIVE_TILE // block_k,
        "BLOCK_K": block_k,
        "num_warps": pool.NUM_WARPS,
    }


WGRAD_WORKSPACES = {"dw_ptr": "*fp32", "db_ptr": "*fp32"}
POOL_COMMON = {"CHANNELS_LAST": False, "INDEX_64": False}
# 3x3 stride 2 windows: 2 candidate outputs per input pixel and axis in the backward.
POOL_WINDOW = {"KH": 3, "KW": 3}
POOL_CANDIDATES = {"CANDIDATES_H": 2, "CANDIDATES_W": 2}

# Every dtype at every config (fp32 runs tf32 dots unless the entry says ieee).
GATE_KERNELS = [
    GateKernel(
        f"{CONV}:_conv2d_fwd_tuned",
        ("fp16", "bf16", "fp32"),
        {"R": 3, "S": 3, "HAS_BIAS": True, "APPLY_RELU": True},
        tensor_cores=True,
    ),
    GateKernel(
        f"{CONV}:_conv2d_dgrad_tuned",
        ("fp16", "bf16", "fp32"),
        {"R": 3, "S": 3, "RELU_MASK": True},
        tensor_cores=True,
    ),
    GateKernel(  # stride 1: the JIT makes stride_h == stride_w == 1 constants
        f"{CONV}:_conv2d_dgrad_tuned",
        ("fp16",),
        {"R": 3, "S": 3, "RELU_MASK": True, "stride_h": 1, "stride_w": 1},
        tensor_cores=True,
        variant="stride1",
    ),
    GateKernel(
        f"{CONV}:_conv2d_wgrad_tuned",
        ("fp16", "bf16", "fp32"),
        {"R": 3, "S": 3, "RELU_MASK": True, "BIAS_GRAD": True},
        pointer_types=WGRAD_WORKSPACES,
        tensor_cores=True,
    ),
    # fp32 with tf32 off: IEEE dots on FMA units, no tensor cores.
    GateKernel(
        f"{CONV}:_conv2d_fwd_tuned_ieee",
        ("fp32",),
        {"R": 3, "S": 3, "HAS_BIAS": True, "APPLY_RELU": True, "INPUT_PRECISION": "ieee"},
    ),
    GateKernel(
        f"{CONV}:_conv2d_dgrad_tuned_ieee",
        ("fp32",),
        {"R": 3, "S": 3, "RELU_MASK": True, "INPUT_PRECISION": "ieee"},
    ),
    GateKernel(
        f"{CONV}:_conv2d_wgrad_tuned_ieee",
        ("fp32",),
        {"R": 3, "S": 3, "RELU_MASK": True, "BIAS_GRAD": True, "INPUT_PRECISION": "ieee"},
        pointer_types=WGRAD_WORKSPACES,
    ),
    GateKernel(
        f"{POOL}:_max_pool2d_fwd_kernel",
        ("fp16",),
        {**POOL_WINDOW, "STORE_ARGMAX": True, **POOL_COMMON},
        pointer_types={"argmax_ptr": "*i8"},
        launch=_pool_launch,
    ),
    GateKernel(
        f"{POOL}:_max_pool2d_bwd_kernel",
        ("fp16",),
        {**POOL_WINDOW, **POOL_CANDIDATES, **POOL_COMMON},
        pointer_types={"argmax_ptr": "*i8"},
        launch=_pool_launch,
    ),
    GateKernel(
        f"{POOL}:_avg_pool2d_fwd_kernel",
        ("fp16",),
        {**POOL_WINDOW, "COUNT_INCLUDE_PAD": True, **POOL_COMMON},
        launch=_pool_launch,
    ),
    GateKernel(
        f"{POOL}:_avg_pool2d_bwd_kernel",
        ("fp16",),
        {**POOL_WINDOW, **POOL_CANDIDATES, "COUNT_INCLUDE_PAD": True, **POOL_COMMON},
        launch=_pool_launch,
    ),
    GateKernel(
        f"{POOL}:_adaptive_avg_pool2d_fwd_kernel",
        ("fp16",),
        POOL_COMMON,
        launch=_adaptive_pool_fwd_launch,
    ),
    GateKernel(
        f"{POOL}:_adaptive_avg_pool2d_bwd_kernel",
        ("fp16",),
        {**POOL_CANDIDATES, **POOL_COMMON},
        launch=_pool_launch,
    ),
]


def case_id(entry: GateKernel, dtype: str, cc: int) -> str:
    return f"{entry.name}-{dtype}-sm{cc}"


def cases() -> list[tuple[GateKernel, str, int]]:
    """Every (kernel, dtype, compute capability) the gate compiles."""
    return [
        (entry, dtype, cc) for entry in GATE_KERNELS for dtype in entry.dtypes for cc in TARGETS
    ]


def tools_missing() -> str | None:
    """Why the gate cannot run here, or None."""
    try:
        import triton
        from triton.compiler import ASTSource
    except ImportError:
        return "triton is not installed"
    if "constexprs" not in inspect.signature(ASTSource).parameters:
        return f"triton {triton.__version__} predates ASTSource(constexprs=...) (triton 3.3)"
    if not (_tool_dir() / "cuobjdump").exists():
        return f"cuobjdump is missing from {_tool_dir()}"
    return None


def _tool_dir() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def _launch_configs(entry: GateKernel, kernel) -> list[dict]:
    """Tuning meta-parameters plus num_warps/num_stages of every config to compile."""
    if entry.launch is not None:
        return [entry.launch(importlib.import_module(entry.kernel.split(":")[0]))]
    return [
        {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
        for cfg in kernel.configs
    ]


def _compile_and_inspect(entry: GateKernel, dtype: str, cc: int, launch: dict) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.autotuner import Autotuner

    kernel = _load(entry)
    fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
    options = {k: v for k, v in launch.items() if k in ("num_warps", "num_stages")}
    meta = {k: v for k, v in launch.items() if k not in options}
    constexprs = {**entry.constexprs, **meta}
    if "INPUT_PRECISION" in fn.arg_names:  # the launchers' choice for fp16/bf16 and tf32
        constexprs.setdefault("INPUT_PRECISION", "tf32")
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = entry.pointer_types.get(name, f"*{dtype}")
        else:
            signature[name] = "i32"
    # Torch allocations are 16-byte aligned, which the JIT would specialize on too.
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(fn.arg_names)
        if signature[name].startswith("*")
    }
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", cc, 32), options=options)

    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        tool = str(_tool_dir() / "cuobjdump")
        usage = subprocess.run(
            [tool, "-res-usage", str(cubin)], capture_output=True, text=True, check=True
        ).stdout
        sass = subprocess.run(
            [tool, "-sass", str(cubin)], capture_output=True, text=True, check=True
        ).stdout
    resources = {k: int(v) for k, v in re.findall(r"\b([A-Z]+):(\d+)", usage)}
    return {
        "config": launch,
        "shared": compiled.metadata.shared,
        "max_shared": TARGETS[cc],
        "registers": resources.get("REG"),
        "stack": resources.get("STACK"),
        "local": resources.get("LOCAL"),
        "wgmma": "warp_group_dot" in compiled.asm["ttgir"],
        "hmma": len(re.findall(r"\bHMMA\.", sass)),
        "hgmma": len(re.findall(r"\bHGMMA\.", sass)),
    }


def _load(entry: GateKernel):
    module_name, attr = entry.kernel.split(":")
    return getattr(importlib.import_module(module_name), attr)


def _run_case(entry: GateKernel, dtype: str, cc: int) -> list[dict]:
    launches = _launch_configs(entry, _load(entry))
    return [_compile_and_inspect(entry, dtype, cc, launch) for launch in launches]


def main(out_path: str) -> None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("run the compile gate with TRITON_INTERPRET unset")
    report = {}
    workers = min(2, os.cpu_count() or 1)
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        futures = {pool.submit(_run_case, *case): case_id(*case) for case in cases()}
        for future in concurrent.futures.as_completed(futures):
            try:
                report[futures[future]] = future.result()
            except Exception as error:  # reported per case by the test, not fatal here
                report[futures[future]] = {"error": repr(error)}
    Path(out_path).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])

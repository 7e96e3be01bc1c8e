"""Compile gate: every kernel, compiled as a real launch specializes it, builds well.

No GPU is needed: ``tests/compile_gate.py`` captures the launchers' real arguments for the
gate's benchmark shapes (both layouts; fp32 tf32/ieee, fp16, bf16), binds them with
Triton's own JIT binder, compiles every autotune config for sm_90 and sm_80 in a subprocess
with ``TRITON_INTERPRET`` unset (conftest sets it for this process), and reads the cubins.
Each test asserts one check on one (op, layout, dtype, target) group of its report:

* ``shared``: shared memory per block fits the target (sm_80: 163 KB, sm_90: 227 KB);
* ``no_spills``: ``cuobjdump -res-usage`` reports STACK:0 and LOCAL:0 and the SASS has no
  LDL/STL;
* ``tensor_cores`` (conv fp16/bf16/tf32): sm_90 lowers the dot to wgmma (``HGMMA`` in the
  SASS), sm_80 to mma.sync (``HMMA``);
* ``async_copies`` (conv fp16/bf16): the main loop moves operands global -> shared
  asynchronously (``LDGSTS`` or TMA ``UTMALDG``);
* ``no_sync_loads`` (conv fp16/bf16): no synchronous global load (``LDG``) in the main loop;
* ``vector_loads`` (direct conv kernels, such as depthwise, where the three checks above do
  not apply): every global load is a 16-byte vector (``LDG.E.128``).

Known failures of today's kernels are listed in :data:`KNOWN_FAILURES` with the issue item
that fixes them, and marked ``xfail(strict=True)``: once a rewrite fixes one, its test
XPASSes, fails, and the entry must be removed.

``FASTCONV_GATE_REPORT=PATH`` keeps the report at PATH (or reuses it if it exists).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import compile_gate
import pytest
from compile_gate import group_id, groups

from fastconv.kernels import conv2d, conv2d_tma, conv2d_wgrad

GATE_SCRIPT = Path(compile_gate.__file__)
GATE_TIMEOUT_S = 1800  # about 7 minutes on 2 idle cores; generous for busy CI runners
# Set to a path: the gate's report is written there (and kept), or read from there if it
# exists, so the assertions can be re-run on a report without compiling again.
REPORT_ENV = "FASTCONV_GATE_REPORT"
CONV_OPS = ("conv_fwd", "conv_fwd_fused", "conv_dgrad", "conv_wgrad")

# (check, group id) -> (reason, config tags it is limited to, or None for the whole group).
# A kernel that cannot pass a check yet is listed here with the issue that fixes it, as a
# strict xfail. Since the issue 11 rewrites only grouped convolutions with 4-channel groups
# (ResNeXt 32x4d: resnext-3x3-g32-128@56, the only gate shape the pruner leaves 64x32x32 for
# in the 16-bit dtypes) fail: 8-byte rows cannot be 16-byte async copies.
KNOWN_FAILURES: dict[tuple[str, str], tuple[str, tuple[str, ...] | None]] = {
    (check, group_id(op, layout, dtype, cc)): (
        "issue 12: 4-channel groups (ResNeXt) have 8-byte rows: synchronous loads",
        ("64x32x32-w4-s4",),
    )
    for check in ("async_copies", "no_sync_loads")
    for op in ("conv_fwd", "conv_dgrad")
    for layout in compile_gate.LAYOUTS
    for dtype in ("fp16", "bf16")
    for cc in compile_gate.TARGETS
}
# Direct (non-GEMM) kernels: memory-bound, no tensor cores; their loads must be 16-byte
# vectors instead (checked by ``vector_loads``).
DIRECT_KERNELS = (
    "_depthwise_fwd_kernel",
    "_depthwise_dgrad_kernel",
    "_depthwise_wgrad_kernel",
    "_activation_bwd_kernel",
)
GEMM_CHECKS = ("tensor_cores", "async_copies", "no_sync_loads")


def _checks(op: str, dtype: str) -> list[str]:
    vector_ops = (*CONV_OPS, "act_bwd")
    checks = ["shared", "no_spills"] + (["vector_loads"] if op in vector_ops else [])
    if op in CONV_OPS and dtype != "fp32":
        checks.append("tensor_cores")
    if op in CONV_OPS and dtype in ("fp16", "bf16"):
        checks += ["async_copies", "no_sync_loads"]
    return checks


def _params() -> list:
    params = []
    for op, layout, dtype, cc in groups():
        gid = group_id(op, layout, dtype, cc)
        for check in _checks(op, dtype):
            known = KNOWN_FAILURES.get((check, gid))
            if known is None:
                params.append(pytest.param(check, gid, "all", id=f"{check}-{gid}"))
                continue
            reason, configs = known
            mark = pytest.mark.xfail(strict=True, reason=reason)
            if configs is None:
                params.append(pytest.param(check, gid, "all", id=f"{check}-{gid}", marks=mark))
            else:
                params.append(pytest.param(check, gid, "rest", id=f"{check}-{gid}-rest"))
                params.append(
                    pytest.param(check, gid, "known", id=f"{check}-{gid}-known", marks=mark)
                )
    return params


@pytest.fixture(scope="module")
def gate_report(tmp_path_factory) -> dict:
    """The gate's report (see ``tests/compile_gate.py`` for its schema)."""
    reason = compile_gate.tools_missing()
    if reason is not None:
        pytest.skip(reason)
    problem = compile_gate.version_problem()  # a Triton upgrade must be looked at, not skipped
    assert problem is None, problem
    out = tmp_path_factory.mktemp("compile_gate")
    report = Path(os.environ.get(REPORT_ENV) or out / "report.json")
    if report.exists():  # a report named by FASTCONV_GATE_REPORT is reused as it is
        return json.loads(report.read_text())
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, str(GATE_SCRIPT), "--cubin-dir", str(out / "cubins")]
    subprocess.run([*command, str(report)], env=env, check=True, timeout=GATE_TIMEOUT_S)
    return json.loads(report.read_text())


def _entries(report: dict, gid: str) -> list[dict]:
    return [
        e
        for e in report["entries"]
        for layout in ((e["layout"],) if e["layout"] != "any" else compile_gate.LAYOUTS)
        for dtype in e["dtype"].split("/")
        if group_id(e["op"], layout, dtype, e["target"]) == gid
    ]


def _violations(check: str, entry: dict) -> list[str]:
    loop = entry["main_loop"]
    direct = entry["kernel"] in DIRECT_KERNELS
    if (check in GEMM_CHECKS and direct) or (check == "vector_loads" and not direct):
        return []  # the check does not apply to this kind of kernel
    if check == "vector_loads":
        widths = entry["kernel_sass"]["ldg_widths"]
        return [] if widths == [128] else [f"global load widths {widths} bits, not only 128"]
    if check == "shared":
        return [f"{entry['shared']} B shared"] if entry["shared"] > entry["max_shared"] else []
    if check == "no_spills":
        spilled = entry["stack"] or entry["local"] or entry["kernel_sass"]["spill_ops"]
        return (
            [f"{entry['registers']} registers, stack {entry['stack']} B, local {entry['local']} B"]
            if spilled
            else []
        )
    if check == "tensor_cores":
        if entry["target"] == 90:
            ok = entry["wgmma_ttgir"] and entry["kernel_sass"]["hgmma"] > 0
            return [] if ok else ["no HGMMA (wgmma) in the sm_90 SASS"]
        return [] if entry["kernel_sass"]["hmma"] > 0 else ["no HMMA in the sm_80 SASS"]
    if check == "async_copies":
        if not loop["found"]:
            return ["no main loop found in the SASS"]
        asynchronous = loop["ldgsts"] + (loop["utmaldg"] if entry["target"] == 90 else 0)
        return [] if asynchronous else ["no LDGSTS/UTMALDG in the main loop"]
    if check == "no_sync_loads":
        if not loop["found"]:
            return ["no main loop found in the SASS"]
        return [f"{loop['ldg']} synchronous LDG in the main loop"] if loop["ldg"] else []
    raise AssertionError(check)


def test_gate_compiled_every_kernel(gate_report):
    errors = [f"{e['cubin']}: {e['error']}" for e in gate_report["entries"] if "error" in e]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(("op", "layout", "dtype", "cc"), groups(), ids=lambda v: str(v))
def test_gate_covers_group(gate_report, op, layout, dtype, cc):
    """Every (op, layout, dtype, target) is compiled, and each known failure still names one."""
    gid = group_id(op, layout, dtype, cc)
    entries = _entries(gate_report, gid)
    assert entries, f"the gate compiled nothing for {gid}"
    tags = {e["config_tag"] for e in entries}
    for (_, known_gid), (_, configs) in KNOWN_FAILURES.items():
        if known_gid == gid and configs is not None:
            assert set(configs) <= tags, f"{gid}: known-failure configs {configs} not in {tags}"


# The kernels with 8-warp tiles behind FASTCONV_WIDE_TILES, by config factory, and the gate
# dtypes of each dot kind: every such tile is compiled for every dtype it serves (the gate
# turns the switch on), so the static checks above cover it.
WIDE_TILE_FACTORIES = {
    "_implicit_gemm_kernel": conv2d.conv_configs,
    "_tma_implicit_gemm_kernel": conv2d_tma.tma_configs,
    "_conv2d_bwd_weight_kernel": conv2d_wgrad.wgrad_configs,
}
WIDE_TILE_DTYPES = {"fp16": ("fp16", "bf16"), "tf32": ("tf32",)}


def _tags(configs) -> set[str]:
    return {
        compile_gate.config_tag({**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages})
        for c in configs
    }


@pytest.mark.parametrize("kernel", WIDE_TILE_FACTORIES)
def test_gate_compiles_every_wide_tile(gate_report, kernel):
    factory = WIDE_TILE_FACTORIES[kernel]
    compiled = {
        (e["config_tag"], dtype)
        for e in gate_report["entries"]
        if e["kernel"] == kernel and "error" not in e
        for dtype in e["dtype"].split("/")
    }
    wide = {
        kind: _tags(factory(kind, False, True)) - _tags(factory(kind, False, False))
        for kind in WIDE_TILE_DTYPES
    }
    assert any(wide.values()), f"{kernel} has no 8-warp tiles"
    missing = [
        (tag, dtype)
        for kind, dtypes in WIDE_TILE_DTYPES.items()
        for tag in sorted(wide[kind])
        for dtype in dtypes
        if (tag, dtype) not in compiled
    ]
    assert not missing, f"{kernel}: 8-warp tiles the gate did not compile: {missing}"


@pytest.mark.parametrize(("check", "gid", "subset"), _params())
def test_static_check(gate_report, check, gid, subset):
    entries = [e for e in _entries(gate_report, gid) if "error" not in e]
    assert entries, f"the gate compiled nothing for {gid}"
    known = KNOWN_FAILURES.get((check, gid))
    if subset != "all":
        configs = set(known[1])
        entries = [e for e in entries if (e["config_tag"] in configs) == (subset == "known")]
    failures = [
        f"{e['config_tag']} ({', '.join(e['shapes'][:2])}): {v}"
        for e in entries
        for v in _violations(check, e)
    ]
    assert not failures, f"{check} fails for {gid}:\n" + "\n".join(failures)


# Padding kernels (ops pad_fwd, pad_bwd; kernels/pad2d.py): a copy and a gather, checked for
# shared memory and spills like every kernel, and here for their load widths where rows are
# 16-byte vectors. Read along the channels (channels_last, 64 channels), every global load
# must be one. The NCHW forward reads W-vectors in its interior blocks and gathers the
# mirrored border columns element by element; the NCHW backward reads padded rows of W + 2
# elements (58 at 56x56), never 16-byte aligned, so it is not listed. 3-channel rows (6
# bytes) cannot be vectors.
PAD_VECTOR_LOADS = {
    ("pad_fwd", "nhwc"): "all",
    ("pad_bwd", "nhwc"): "all",
    ("pad_fwd", "nchw"): "some",
}


@pytest.mark.parametrize(("op", "layout"), PAD_VECTOR_LOADS, ids=map("-".join, PAD_VECTOR_LOADS))
def test_pad_loads_are_vectors(gate_report, op, layout):
    shapes = compile_gate.PAD_GATE_SHAPES
    vector_rows = {name for name, (shape, _, _) in shapes.items() if shape[1] % 8 == 0}
    entries = [
        e
        for e in gate_report["entries"]
        if e["op"] == op and e["layout"] == layout and set(e["shapes"]) <= vector_rows
    ]
    assert entries, f"the gate compiled no {op} {layout} kernel of vector rows"
    expected = PAD_VECTOR_LOADS[op, layout]
    failures = [
        f"{e['dtype']} sm_{e['target']} {e['config_tag']} ({', '.join(e['shapes'])}): "
        f"load widths {e['kernel_sass']['ldg_widths']}"
        for e in entries
        if "error" not in e
        and not (
            e["kernel_sass"]["ldg_widths"] == [128]
            if expected == "all"
            else 128 in e["kernel_sass"]["ldg_widths"]
        )
    ]
    assert not failures, "\n".join(failures)

"""Compile gate: every Triton kernel, at every launch config, builds well for sm_80 and sm_90.

No GPU is needed: ``tests/compile_gate.py`` compiles each kernel with
``triton.compile(..., target=GPUTarget("cuda", cc, 32))`` in a subprocess with
``TRITON_INTERPRET`` unset (conftest sets it for this process) and inspects the cubins.
Each test below asserts on one (kernel, dtype, target) of its report:

* shared memory per block fits the target (sm_80: 163 KB, sm_90: 227 KB);
* no spills: ``cuobjdump -res-usage`` reports STACK:0 and LOCAL:0;
* kernels with a ``tl.dot`` run it on tensor cores: HMMA in the sm_80 SASS; on sm_90 HGMMA
  (wgmma) where Triton lowered the dot to ``warp_group_dot``, else HMMA. Triton picks wgmma
  when a warp group (4 warps) owns at least 64 rows of the tile, which holds for every
  conv config here, so sm_90 is also asserted to use wgmma for them. fp32 inputs count:
  the gate compiles them with tf32 dots, which use the same instructions. The "ieee"
  autotuners (fp32 with tf32 off) run on FMA units and are checked for memory and spills.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import compile_gate
import pytest
from compile_gate import case_id, cases

GATE_SCRIPT = Path(compile_gate.__file__)
GATE_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def gate_report(tmp_path_factory) -> dict:
    """The gate's report: case id -> list of per-config results (or {"error": ...})."""
    reason = compile_gate.tools_missing()
    if reason is not None:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("compile_gate") / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run(
        [sys.executable, str(GATE_SCRIPT), str(out)], env=env, check=True, timeout=GATE_TIMEOUT_S
    )
    return json.loads(out.read_text())


@pytest.mark.parametrize(
    ("entry", "dtype", "cc"),
    [pytest.param(*case, id=case_id(*case)) for case in cases()],
)
def test_kernel_compiles_without_spills(gate_report, entry, dtype, cc):
    results = gate_report[case_id(entry, dtype, cc)]
    assert not isinstance(results, dict), f"compilation failed: {results}"
    assert results, "no config was compiled"
    for result in results:
        config = result["config"]
        assert result["shared"] <= result["max_shared"], (
            f"{config}: {result['shared']} bytes of shared memory, sm_{cc} allows "
            f"{result['max_shared']}"
        )
        assert result["stack"] == 0, f"{config}: {result['stack']} bytes of stack (spills)"
        assert result["local"] == 0, f"{config}: {result['local']} bytes of local memory"
        if not entry.tensor_cores:
            continue
        if cc == 80:
            assert result["hmma"] > 0, f"{config}: no HMMA in the sm_80 SASS"
        else:
            assert result["wgmma"], f"{config}: Triton did not lower the dot to wgmma"
            assert result["hgmma"] > 0, f"{config}: wgmma dot but no HGMMA in the SASS"

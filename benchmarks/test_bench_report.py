"""CPU checks of the benchmark tooling: ``benchmarks/report.py`` and ``gpu_session.sh``'s cases.

These take the ``benchmark`` fixture (each times its one call once) only so that CI's
``pytest benchmarks/ --benchmark-only`` runs them: they assert on what the tools produce.

* The report puts the channels_last tables first and NCHW second, with the summary's
  geometric means per layout, shows a network case's ``same_run`` providers as columns
  (fastconv over torch.compile included) and renders the chart.
* A run from before both layouts ran in one session files its GPU cases under its one layout.
* ``bash benchmarks/gpu_session.sh --collect-only`` selects exactly the bf16 channels_last
  cases of eager and fastconv and every network case, the network cases first and each case's
  providers next to each other.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

from benchmarks import report
from benchmarks.shapes import CONV_SHAPES

ROOT = Path(__file__).resolve().parent.parent


def _case(kind, case, mode, provider, layout, speedup, **extra) -> dict:
    info = {
        "kind": kind,
        "case": case,
        "mode": mode,
        "provider": provider,
        "dtype": "bf16",
        "gpu_ms": 1.0 / speedup,
        "speedup_vs_eager": speedup,
        **extra,
    }
    if layout is not None:
        info["memory_format"] = layout
    return {"extra_info": info, "stats": {"median": 1e-3}}


def _document(cases: list[dict], **info) -> dict:
    machine = {"fastconv": {"device": "NVIDIA H100 80GB HBM3", "cudnn_benchmark": True, **info}}
    return {"machine_info": machine, "datetime": "2026-12-08T00:00:00", "benchmarks": cases}


def _synthetic_run() -> report.Run:
    """NCHW cases listed before channels_last ones, a network case and a CPU data case."""
    cases = []
    for layout, fastconv_speedups in (("nchw", (0.25, 1.0)), ("channels_last", (0.5, 2.0))):
        for shape, speedup in zip(("a", "b"), fastconv_speedups, strict=True):
            cases.append(_case("conv", shape, "fwd", "eager", layout, 1.0, math="bf16"))
            cases.append(_case("conv", shape, "fwd", "fastconv", layout, speedup, math="bf16"))
    same_run = {
        "eager": {"gpu_ms": 2.0, "images_per_s": 32.0, "speedup_vs_eager": 1.0},
        "compile": {"gpu_ms": 1.0, "images_per_s": 64.0, "speedup_vs_eager": 2.0},
    }
    network = _case(
        "network",
        "resnet50@224px",
        "eval forward",
        "fastconv",
        "channels_last",
        0.5,
        images_per_s=16.0,
        speedup_vs_compile=0.25,
        same_run=same_run,
    )
    data = {
        "extra_info": {
            "kind": "data",
            "case": "decode",
            "mode": "read",
            "provider": "eager",
            "images_per_s": 100.0,
        }
    }
    return report.Run.from_json(_document([*cases, network, data], layouts=["channels_last"]))


def test_report_channels_last_first(benchmark):
    run = _synthetic_run()
    text = benchmark.pedantic(report.markdown, args=(run,), rounds=1, iterations=1)
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Summary",
        "## channels_last (headline)",
        "## NCHW",
        "## Cases without a layout (CPU, data pipeline)",
    ]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in text.splitlines()]
    summary = {tuple(r[:2]): r[2:] for r in rows if r and r[0] in ("channels_last", "nchw")}
    # columns: rows, fastconv x eager, torch.compile x eager, fastconv x torch.compile
    assert summary[("channels_last", "Fused conv2d + bias + ReLU, bf16")] == [
        "2",
        f"{math.sqrt(0.5 * 2.0):.2f}x (0.50-2.00)",
        "",
        "",
    ]
    assert summary[("nchw", "Fused conv2d + bias + ReLU, bf16")][1] == "0.50x (0.25-1.00)"
    assert summary[("channels_last", "Whole networks, bf16")] == [
        "1",
        "0.50x (0.50-0.50)",
        "2.00x (2.00-2.00)",
        "0.25x (0.25-0.25)",
    ]
    network_table = text.split("### Whole networks, bf16")[1].split("\n## ")[0]
    header, _, row = [line for line in network_table.splitlines() if line.startswith("|")][:3]
    assert "torch.compile images/s" in header
    assert header.endswith(
        "| fastconv x torch eager | torch.compile x torch eager | fastconv x torch.compile |"
    )
    assert row.endswith("| 0.50x | 2.00x | 0.25x |")
    assert text.index("### Whole networks") < text.index("### Fused conv2d + bias + ReLU")
    assert "layouts: channels_last" in text


def test_report_chart(benchmark, tmp_path):
    run = _synthetic_run()
    path = tmp_path / "run.png"
    benchmark.pedantic(report.chart, args=(run, path), rounds=1, iterations=1)
    assert path.stat().st_size > 0


def test_report_single_layout_run(benchmark):
    """A run from before the layouts were parametrized: its GPU cases take the run's layout."""
    cases = [
        _case("pool", "p", "fwd", "fastconv", None, 0.5),
        _case("pool", "p", "fwd", "eager", None, 1.0),
        {"extra_info": {"kind": "model", "case": "cpu", "mode": "step", "provider": "eager"}},
    ]
    run = report.Run.from_json(_document(cases, channels_last=False))
    parts = benchmark.pedantic(report.sections, args=(run,), rounds=1, iterations=1)
    assert list(parts) == [("nchw", "pool", "bf16"), ("", "model", "")]
    assert "channels_last=False" in report.markdown(run)


def test_gpu_session_cases(benchmark):
    """The case ids that gpu_session.sh's phase 2 selects with -k, in the order they run."""

    def collect() -> list[str]:
        result = subprocess.run(
            ["bash", "benchmarks/gpu_session.sh", "--collect-only"],
            cwd=ROOT,
            env={**os.environ, "PYTHON": sys.executable},
            capture_output=True,
            text=True,
            check=True,
        )
        return [line for line in result.stdout.splitlines() if "::" in line]

    ids = benchmark.pedantic(collect, rounds=1, iterations=1)
    network = [i for i in ids if i.startswith("benchmarks/test_bench_networks.py::")]
    assert network == [
        "benchmarks/test_bench_networks.py::test_resnet50_eval",
        "benchmarks/test_bench_networks.py::test_train_step[catdog]",
        "benchmarks/test_bench_networks.py::test_train_step[resnet18]",
    ]
    assert ids[: len(network)] == network
    ops = ids[len(network) :]
    files = {i.split("::")[0] for i in ops}
    assert files == {
        f"benchmarks/test_bench_{name}.py" for name in ("conv", "pool", "pad", "model")
    }
    for case_id in ops:
        params = case_id.split("[")[1].rstrip("]").split("-")
        assert "bf16" in params and "channels_last" in params, case_id
        assert "nchw" not in params and "compile" not in params, case_id
    # eager and fastconv of each case, one after the other
    pairs = list(zip(ops[::2], ops[1::2], strict=True))
    for eager, fastconv in pairs:
        assert eager.replace("-eager-", "-fastconv-") == fastconv
    conv = [i for i in ops if "test_conv2d_bias_relu" in i]
    assert len(conv) == 2 * 3 * len(CONV_SHAPES)  # eager and fastconv, three modes

"""Render the compile gate's report as the static table of every kernel and config (sm_90).

Regenerate ``benchmarks/results/static-sm90.{json,md}`` (no GPU needed, about 4 minutes on
2 cores) with::

    python benchmarks/static_table.py

which runs ``tests/compile_gate.py --targets 90`` on the gate's shapes (one per
specialization class of ``benchmarks/shapes.py``; ``--shapes all`` for every benchmark
shape), keeps its sm_90 entries as the JSON next to the markdown, and renders them.
``python benchmarks/static_table.py --from REPORT.json`` renders an existing gate report.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
COMMAND = "python benchmarks/static_table.py"
COLUMNS = (
    "op",
    "kernel",
    "layout",
    "dtype",
    "config (MxNxK-warps-stages)",
    "regs",
    "spill B",
    "smem KB",
    "blocks/SM",
    "wgmma",
    "loop: HGMMA",
    "loop: LDGSTS",
    "loop: LDG",
    "loop: SHFL",
    "loop: instr",
    "kernel: LDGSTS / LDG widths",
    "shapes",
)


def _git(*args: str) -> str:
    result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return result.stdout.strip()


def _widths(sass: dict) -> str:
    ldgsts = ",".join(map(str, sass["ldgsts_widths"])) or "-"
    ldg = ",".join(map(str, sass["ldg_widths"])) or "-"
    return f"{ldgsts} / {ldg}"


def _row(e: dict) -> list[str]:
    if "error" in e:
        kernel, error = e["kernel"].strip("_"), "error: " + e["error"][:60]
        return [e["op"], kernel, e["layout"], e["dtype"], e["config_tag"], error]
    loop = e["main_loop"]
    shapes = e["shapes"]
    shown = ", ".join(shapes[:2]) + (f" +{len(shapes) - 2}" if len(shapes) > 2 else "")
    return [
        e["op"],
        e["kernel"].strip("_"),
        e["layout"],
        e["dtype"],
        e["config_tag"],
        str(e["registers"]),
        str(e["stack"] + e["local"]),
        f"{e['shared'] / 1024:.1f}",
        str(e["blocks_per_sm"]),
        ",".join(e["hgmma_shapes"]) or "-",
        str(loop["hgmma"]) if loop["found"] else "no loop",
        str(loop["ldgsts"] + loop["utmaldg"]),
        str(loop["ldg"]),
        str(loop["shfl"]),
        str(loop["instructions"]),
        _widths(e["kernel_sass"]),
        shown,
    ]


def render(report: dict, target: int = 90) -> str:
    entries = [e for e in report["entries"] if e["target"] == target]
    lines = [
        f"# Static figures of every kernel and config, sm_{target}",
        "",
        f"Regenerate (no GPU needed): `{COMMAND}`",
        "",
        f"Generated from `{report.get('source', 'the compile gate report')}` "
        f"(triton {report['triton']}, torch {report['torch']}, git {report.get('git', '?')}, "
        f"kernels diff vs HEAD: {report.get('kernels_dirty', '?')}); shapes: "
        f"`{report['shapes']}` of `benchmarks/shapes.py`, bound with Triton's JIT "
        "specialization (ints == 1 constexpr, ints % 16 and 16-byte pointers divisible).",
        "",
        "Each row is one distinct compiled specialization. `loop:` columns count instructions "
        "inside the main loop (the backward-branch region of the SASS with the most "
        "HGMMA/HMMA); LDG there is a synchronous global load, LDGSTS (+ UTMALDG) an "
        "asynchronous copy. `wgmma` is the HGMMA shape (the middle number is the N-width). "
        "blocks/SM is the occupancy from registers, warps and shared memory (plus 1 KB "
        "reserved per block). `shapes` are the benchmark shapes that launch it.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(_row(e)) + " |" for e in entries]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", type=Path, help="render this gate report")
    parser.add_argument("--out", type=Path, default=RESULTS / "static-sm90")
    parser.add_argument("--shapes", choices=("gate", "all"), default="gate")
    args = parser.parse_args(argv)
    if args.source is not None:
        report = json.loads(args.source.read_text())
    else:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "report.json"
            gate = [sys.executable, str(REPO / "tests" / "compile_gate.py")]
            gate += ["--cubin-dir", str(Path(tmp) / "cubins"), "--shapes", args.shapes]
            gate += ["--targets", "90"]
            subprocess.run([*gate, str(out)], env=env, check=True)
            report = json.loads(out.read_text())
    for entry in report["entries"]:  # cubins are build products: keep their names only
        entry["cubin"] = Path(entry["cubin"]).name
    report["entries"] = [e for e in report["entries"] if e["target"] == 90]
    report["git"] = _git("rev-parse", "--short", "HEAD")
    report["kernels_dirty"] = _git("diff", "--shortstat", "HEAD", "--", "kernels/") or "none"
    report["source"] = f"{args.out.name}.json"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(render(report))
    print(f"static table: {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()

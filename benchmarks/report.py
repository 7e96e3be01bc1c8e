"""Render a ``--benchmark-json`` file as a markdown table and a PNG chart.

    python -m benchmarks.report RESULTS.json          # writes RESULTS.md and RESULTS.png
    python -m benchmarks.report RESULTS.json --save   # saves the run into benchmarks/results/
                                                      # as <device-slug>-<YYYY-MM-DD>.json/.md/.png
    python -m benchmarks.report A.json B.json --save  # a suite run in parts, on one device

One table per kind of case (convolution, fused convolution epilogue, pooling, model training
step, data pipeline) and precision, one row per shape (and epilogue) and mode, one column
group per provider: time, throughput (TFLOP/s, GB/s or images/s) and the speed-up over eager
PyTorch (cuDNN for convolutions) that each case recorded against eager timed in the same
session. Convolutions also show the percentage of the device's dense tensor-core peak for
their math (n/a when the device is not in :data:`PEAK_TFLOPS`).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Dense (no sparsity) peaks in TFLOP/s from NVIDIA's datasheets, by a fragment of
# torch.cuda.get_device_name(); the first matching fragment wins, so variants come first.
# bf16, fp16, tf32: tensor cores; fp32: CUDA cores (float32 convolutions with TF32 off).
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("H100 NVL", {"bf16": 835.0, "fp16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    ("H200 NVL", {"bf16": 835.0, "fp16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    ("H100", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0}),  # SXM
    ("H200", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
)

PROVIDER_LABELS = {
    "fastconv": "fastconv",
    "eager": "eager",
    "compile": "torch.compile",
    "compile-max-autotune": "compile max-autotune",
}
PROVIDER_COLORS = {p: f"C{i}" for i, p in enumerate(PROVIDER_LABELS)}
KINDS = {
    # kind: (section title, throughput key in extra_info, its unit, eager's label)
    "conv": ("Fused conv2d + bias + ReLU", "tflops", "TFLOP/s", "cuDNN eager"),
    "epilogue": ("Fused conv2d epilogues", "tflops", "TFLOP/s", "cuDNN eager"),
    "pool": ("Pooling", "gbps", "GB/s", "torch eager"),
    "pad": ("Padding modes (reflect, replicate, circular)", "gbps", "GB/s", "torch eager"),
    "model": ("Model training step", "images_per_s", "images/s", "torch.nn eager"),
    "data": ("Data pipeline", "images_per_s", "images/s", "eager"),
}
CONV_KINDS = ("conv", "epilogue")  # kinds whose throughput is compared with the tensor-core peak
KIND_NOTES = {
    "epilogue": "Epilogues: `bias+ACT` is ACT(conv2d(x, w) + bias), `bn+ACT` is "
    "ACT(conv2d(x, w) * scale + bias) (an eval BatchNorm as a per-channel scale and bias), "
    "`bn+residual+ACT` adds a residual before ACT. fastconv runs each in one kernel "
    "(`fused_conv2d`); eager runs the convolution (cuDNN), then every step as its own op; "
    "torch.compile compiles that eager code. TFLOP/s count the convolution only.",
}
MODE_ORDER = {"fwd": 0, "bwd": 1, "fwd+bwd": 2}


def peak_tflops(device: str, math: str) -> float | None:
    """The device's dense peak for ``math`` (bf16, fp16, tf32, fp32), or None if unknown."""
    for fragment, peaks in PEAK_TFLOPS:
        if fragment.lower() in device.lower():
            return peaks.get(math)
    return None


def slug(text: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def device_name(data: dict) -> str:
    """The GPU of a ``--benchmark-json`` document, or ``CPU <brand>`` for a run without one."""
    machine = data.get("machine_info", {})
    device = machine.get("fastconv", {}).get("device") or "unknown"
    if device == "cpu":
        return f"CPU {machine.get('cpu', {}).get('brand_raw', '')}".strip()
    return device


def merge(paths: list[Path]) -> dict:
    """One ``--benchmark-json`` document from runs on one device (e.g. a suite run in parts).

    Machine and commit info come from the first file; the cases of all files are kept (a
    case present in several files is shown as the last file has it).
    """
    merged = json.loads(paths[0].read_text())
    for path in paths[1:]:
        data = json.loads(path.read_text())
        if device_name(data) != device_name(merged):
            raise ValueError(
                f"{path} ran on {device_name(data)} but {paths[0]} on {device_name(merged)}: "
                "only runs on the same device can be rendered together"
            )
        merged["benchmarks"] = merged.get("benchmarks", []) + data.get("benchmarks", [])
    return merged


@dataclass
class Run:
    """A ``--benchmark-json`` file: machine info and the cases' extra_info and stats."""

    device: str
    date: str
    info: dict
    cases: list[dict] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict) -> Run:
        info = data.get("machine_info", {}).get("fastconv", {})
        cases = []
        for bench in data.get("benchmarks", []):
            extra = dict(bench.get("extra_info", {}))
            if "kind" not in extra:
                continue
            stats = bench.get("stats") or {}
            extra.setdefault("wall_ms", 1e3 * stats["median"] if "median" in stats else None)
            cases.append(extra)
        return cls(device_name(data), data.get("datetime", "")[:10], info, cases)

    @property
    def stem(self) -> str:
        return f"{slug(self.device)}-{self.date}"


def _precision(case: dict) -> str:
    return case.get("math") or case.get("dtype") or ""


def _time_ms(case: dict) -> float | None:
    return case.get("gpu_ms", case.get("wall_ms"))


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def _row_label(case: dict) -> str:
    """The case's shape name, followed by its epilogue for fused-epilogue cases."""
    return " ".join(filter(None, (case["case"], case.get("epilogue"))))


def sections(run: Run) -> dict[tuple[str, str], dict[tuple[str, str], dict[str, dict]]]:
    """{(kind, precision): {(row label, mode): {provider: extra_info}}}, in a stable order."""
    grouped: dict = defaultdict(lambda: defaultdict(dict))
    for case in run.cases:
        key = (case["kind"], _precision(case))
        grouped[key][(_row_label(case), case["mode"])][case["provider"]] = case
    kind_order = list(KINDS)
    ordered = {}
    for key in sorted(grouped, key=lambda k: (kind_order.index(k[0]), k[1])):
        rows = grouped[key]
        # shapes in the order they ran, modes in fwd, bwd, fwd+bwd order
        first_seen = {case: i for i, (case, _) in reversed(list(enumerate(rows)))}
        ordered[key] = {
            row: rows[row]
            for row in sorted(rows, key=lambda r: (first_seen[r[0]], MODE_ORDER.get(r[1], 9), r[1]))
        }
    return ordered


def _providers(rows: dict[tuple[str, str], dict[str, dict]]) -> list[str]:
    present = {p for providers in rows.values() for p in providers}
    known = [p for p in PROVIDER_LABELS if p in present]
    return known + sorted(present - set(known))


def markdown(run: Run) -> str:
    """The run as markdown: a header with the environment, then one table per section."""
    info = run.info
    lines = [
        f"# fastconv benchmarks: {run.device}, {run.date}",
        "",
        "torch {torch}, triton {triton}, CUDA {cuda}, cuDNN {cudnn}; commit `{commit}`; "
        "cudnn.allow_tf32={tf32}, cudnn.benchmark={bench}, channels_last={cl}; "
        "{threads} CPU threads.".format(
            torch=info.get("torch"),
            triton=info.get("triton"),
            cuda=info.get("cuda"),
            cudnn=info.get("cudnn"),
            commit=info.get("git_commit"),
            tf32=info.get("cudnn_allow_tf32"),
            bench=info.get("cudnn_benchmark"),
            cl=info.get("channels_last"),
            threads=info.get("cpu_threads"),
        ),
        "",
        "GPU times: median CUDA-event time of the timed rounds (inputs refilled with fresh random "
        "numbers and L2 flushed before each, warm-up excluded); the JSON's own pytest-benchmark "
        "stats hold the host wall time of the same synchronized rounds, launch overhead "
        "included. CPU times: median wall time. "
        "`A x B` columns: B's time / A's time, the speed-up of A over eager B timed in the same "
        "session. Conv TFLOP/s count 2*N*K*P*Q*C*R*S per pass "
        "(bwd = 2 passes, fwd+bwd = 3); pooling GB/s count each input read and output "
        "written once.",
    ]
    for (kind, precision), rows in sections(run).items():
        title, metric, unit, eager_label = KINDS[kind]
        providers = _providers(rows)
        peak = peak_tflops(run.device, precision) if kind in CONV_KINDS else None
        heading = f"{title}, {precision}" if precision else title
        if kind in CONV_KINDS:
            heading += f" (peak {_fmt(peak)} TFLOP/s)" if peak else " (device peak n/a)"
        header = ["case", "mode"]
        for p in providers:
            label = eager_label if p == "eager" else PROVIDER_LABELS.get(p, p)
            header += [f"{label} ms", f"{label} {unit}"]
            if kind in CONV_KINDS and p in ("fastconv", "eager"):
                header.append(f"{label} % peak")
        compared = [p for p in providers if p != "eager"] if "eager" in providers else []
        header += [f"{PROVIDER_LABELS.get(p, p)} x {eager_label}" for p in compared]
        lines += ["", f"## {heading}", ""]
        if kind in KIND_NOTES:
            lines += [KIND_NOTES[kind], ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for (case, mode), by_provider in rows.items():
            cells = [case, mode]
            for p in providers:
                entry = by_provider.get(p, {})
                throughput = entry.get(metric)
                cells += [_fmt(_time_ms(entry)), _fmt(throughput)]
                if kind in CONV_KINDS and p in ("fastconv", "eager"):
                    share = None if peak is None or throughput is None else 100 * throughput / peak
                    cells.append(f"{share:.0f}%" if share is not None else "n/a")
            for p in compared:
                speedup = by_provider.get(p, {}).get("speedup_vs_eager")
                cells.append(f"{speedup:.2f}x" if speedup is not None else "n/a")
            lines.append("| " + " | ".join(cells) + " |")
        shapes = {e["case"]: e.get("shape") for by_p in rows.values() for e in by_p.values()}
        described = [f"`{c}`: {s}" for c, s in shapes.items() if s]
        if described:
            lines += ["", "Shapes: " + "; ".join(described) + "."]
    return "\n".join(lines) + "\n"


def chart(run: Run, path: Path) -> None:
    """Throughput per provider as horizontal bars, saved as ``path``.

    One row of panels per section (kind and precision), one panel per mode, one group of
    bars per case. Data-pipeline panels use a log scale (decoding and reading the cache
    differ a hundredfold).
    """
    parts = sections(run)
    if not parts:
        raise ValueError("the JSON holds no fastconv benchmark cases (no extra_info 'kind')")
    layout = []  # (section key, rows, modes, providers, panel height in inches)
    for key, rows in parts.items():
        modes = list(dict.fromkeys(mode for _, mode in rows))
        cases = {case for case, _ in rows}
        providers = _providers(rows)
        layout.append((key, rows, modes, providers, 1.2 + 0.1 * len(cases) * len(providers)))
    columns = max(len(modes) for _, _, modes, _, _ in layout)
    figure, axes = plt.subplots(
        len(layout),
        columns,
        figsize=(5.5 * columns, sum(height for *_, height in layout) + 0.6),
        gridspec_kw={"height_ratios": [height for *_, height in layout]},
        squeeze=False,
    )
    for axes_row, ((kind, precision), rows, modes, providers, _) in zip(axes, layout, strict=True):
        title, metric, unit, eager_label = KINDS[kind]
        for ax in axes_row[len(modes) :]:
            ax.set_visible(False)
        for ax, mode in zip(axes_row, modes, strict=False):
            cases = [case for case, row_mode in rows if row_mode == mode]
            bar = 0.8 / len(providers)
            for i, provider in enumerate(providers):
                values = [rows[(case, mode)].get(provider, {}).get(metric) or 0 for case in cases]
                label = PROVIDER_LABELS.get(provider, provider)
                ax.barh(
                    [r + i * bar for r in range(len(cases))],
                    values,
                    height=bar,
                    label=eager_label if provider == "eager" else label,
                    color=PROVIDER_COLORS.get(provider, "C7"),
                )
            ax.set_yticks([r + 0.4 - bar / 2 for r in range(len(cases))], cases, fontsize=7)
            ax.invert_yaxis()
            if kind == "data":
                ax.set_xscale("log")
            ax.set_xlabel(unit, fontsize=8)
            ax.tick_params(axis="x", labelsize=7)
            heading = f"{title}, {precision}" if precision else title
            ax.set_title(f"{heading}: {mode}", fontsize=9)
            ax.legend(fontsize=6, loc="best")
    figure.suptitle(f"fastconv benchmarks: {run.device}, {run.date}", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "results",
        type=Path,
        nargs="+",
        help="pytest --benchmark-json files of one device (several: rendered together)",
    )
    parser.add_argument(
        "--save",
        action="store_true",
        help=f"save the run into {RESULTS_DIR} as <device-slug>-<date>.json and render it there",
    )
    args = parser.parse_args(argv)
    data = merge(args.results)
    run = Run.from_json(data)
    if args.save:
        RESULTS_DIR.mkdir(exist_ok=True)
        folder, stem = RESULTS_DIR, run.stem
        saved = folder / f"{stem}.json"
        if [p.resolve() for p in args.results] != [saved]:
            saved.write_text(json.dumps(data, indent=4) + "\n")
    elif len(args.results) == 1:
        folder, stem = args.results[0].parent, args.results[0].stem
    else:
        folder, stem = args.results[0].parent, run.stem
    table, figure = folder / f"{stem}.md", folder / f"{stem}.png"
    table.write_text(markdown(run))
    chart(run, figure)
    print(f"wrote {table} and {figure}")


if __name__ == "__main__":
    main()

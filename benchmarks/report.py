"""Render a ``--benchmark-json`` file as a markdown table and a PNG chart.

    python -m benchmarks.report RESULTS.json          # writes RESULTS.md and RESULTS.png
    python -m benchmarks.report RESULTS.json --save   # saves the run into benchmarks/results/
                                                      # as <device-slug>-<YYYY-MM-DD>.json/.md/.png
    python -m benchmarks.report A.json B.json --save  # a suite run in parts, on one device

The tables come by layout: channels_last first (the headline: the layout cuDNN's
tensor-core kernels and fastconv's are fastest in), then NCHW, then the cases that have no
layout (CPU cases, data pipeline). A summary opens the document: per layout and table, the
geometric mean of the rows' speed-ups. Within a layout, one table per kind of case (whole
networks, convolution, fused convolution epilogue, pooling, padding, model training step,
data pipeline) and precision, one row per shape (and epilogue) and mode, one column group per
provider: time, throughput (TFLOP/s, GB/s or images/s) and the speed-up over eager PyTorch
(cuDNN for convolutions) that each case recorded against eager timed in the same session.
A network case times all its providers in one test: the torch providers' numbers come in its
``same_run`` field and are shown as their own columns, with fastconv's speed-up over
torch.compile where the case recorded one. Convolutions also show the percentage of the
device's dense tensor-core peak for their math (n/a when the device is not in
:data:`PEAK_TFLOPS`).
"""

from __future__ import annotations

import argparse
import json
import math
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
    "network": ("Whole networks", "images_per_s", "images/s", "torch eager"),
    "conv": ("Fused conv2d + bias + ReLU", "tflops", "TFLOP/s", "cuDNN eager"),
    "epilogue": ("Fused conv2d epilogues", "tflops", "TFLOP/s", "cuDNN eager"),
    "pool": ("Pooling", "gbps", "GB/s", "torch eager"),
    "pad": ("Padding modes (reflect, replicate, circular)", "gbps", "GB/s", "torch eager"),
    "model": ("Model training step", "images_per_s", "images/s", "torch.nn eager"),
    "data": ("Data pipeline", "images_per_s", "images/s", "eager"),
}
CONV_KINDS = ("conv", "epilogue")  # kinds whose throughput is compared with the tensor-core peak
KIND_NOTES = {
    "network": "Each row is one test that timed every provider on the same tensors: "
    "`eval forward` is a bf16 model (weights and images) under no_grad, fastconv's made by "
    "`fastconv.fusion.convert`, eager and torch.compile run the original; `train step` is "
    "`fastconv.train`'s step (bf16 autocast forward, cross-entropy, backward, AdamW), "
    "torch eager runs the same net in torch.nn with the same weights.",
    "epilogue": "Epilogues: `bias+ACT` is ACT(conv2d(x, w) + bias), `bn+ACT` is "
    "ACT(conv2d(x, w) * scale + bias) (an eval BatchNorm as a per-channel scale and bias), "
    "`bn+residual+ACT` adds a residual before ACT. fastconv runs each in one kernel "
    "(`fused_conv2d`); eager runs the convolution (cuDNN), then every step as its own op; "
    "torch.compile compiles that eager code. TFLOP/s count the convolution only.",
}
MODE_ORDER = {"fwd": 0, "bwd": 1, "fwd+bwd": 2}
# extra_info["memory_format"] -> heading of its tables; the headline layout first, cases
# without a layout (CPU, data pipeline) last
LAYOUT_TITLES = {
    "channels_last": "channels_last (headline)",
    "nchw": "NCHW",
    "": "Cases without a layout (CPU, data pipeline)",
}
# the fields of a case that a ``same_run`` provider shares with the case that timed it
ROW_FIELDS = ("kind", "case", "shape", "dtype", "math", "memory_format", "mode")


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
        # a run from before both layouts ran in one session used one, for all its GPU cases
        run_layout = {True: "channels_last", False: "nchw"}.get(info.get("channels_last"))
        cases = []
        for bench in data.get("benchmarks", []):
            extra = dict(bench.get("extra_info", {}))
            if "kind" not in extra:
                continue
            stats = bench.get("stats") or {}
            extra.setdefault("wall_ms", 1e3 * stats["median"] if "median" in stats else None)
            if run_layout and "gpu_ms" in extra:
                extra.setdefault("memory_format", run_layout)
            row = {key: extra[key] for key in ROW_FIELDS if key in extra}
            for provider, numbers in extra.pop("same_run", {}).items():
                cases.append({**row, **numbers, "provider": provider})
            cases.append(extra)
        return cls(device_name(data), data.get("datetime", "")[:10], info, cases)

    @property
    def stem(self) -> str:
        return f"{slug(self.device)}-{self.date}"


def _precision(case: dict) -> str:
    return case.get("math") or case.get("dtype") or ""


def _layout(case: dict) -> str:
    return case.get("memory_format") or ""


def _time_ms(case: dict) -> float | None:
    return case.get("gpu_ms", case.get("wall_ms"))


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def _row_label(case: dict) -> str:
    """The case's shape name, followed by its epilogue for fused-epilogue cases."""
    return " ".join(filter(None, (case["case"], case.get("epilogue"))))


Section = tuple[str, str, str]  # (layout, kind, precision)
Rows = dict[tuple[str, str], dict[str, dict]]  # {(row label, mode): {provider: extra_info}}


def _section_order(key: Section) -> tuple:
    layout, kind, precision = key
    layouts, kinds = list(LAYOUT_TITLES), list(KINDS)
    return (
        layouts.index(layout) if layout in layouts else len(layouts),
        kinds.index(kind),
        precision,
    )


def sections(run: Run) -> dict[Section, Rows]:
    """{(layout, kind, precision): {(row label, mode): {provider: extra_info}}}: channels_last
    first, then NCHW, then cases without a layout; kinds in :data:`KINDS` order."""
    grouped: dict = defaultdict(lambda: defaultdict(dict))
    for case in run.cases:
        key = (_layout(case), case["kind"], _precision(case))
        grouped[key][(_row_label(case), case["mode"])][case["provider"]] = case
    ordered = {}
    for key in sorted(grouped, key=_section_order):
        rows = grouped[key]
        # shapes in the order they ran, modes in fwd, bwd, fwd+bwd order
        first_seen = {case: i for i, (case, _) in reversed(list(enumerate(rows)))}
        ordered[key] = {
            row: rows[row]
            for row in sorted(rows, key=lambda r: (first_seen[r[0]], MODE_ORDER.get(r[1], 9), r[1]))
        }
    return ordered


def _providers(rows: Rows) -> list[str]:
    present = {p for providers in rows.values() for p in providers}
    known = [p for p in PROVIDER_LABELS if p in present]
    return known + sorted(present - set(known))


def _ratio_columns(rows: Rows) -> list[tuple[str, str, str]]:
    """(provider, baseline, header label) of the section's speed-up columns: each provider
    over eager, then fastconv over any other provider its cases recorded a speed-up over
    (``speedup_vs_<provider>``, a network case's ``speedup_vs_compile``)."""
    providers = _providers(rows)
    columns = []
    if "eager" in providers:
        columns += [(p, "eager", PROVIDER_LABELS.get(p, p)) for p in providers if p != "eager"]
    fastconv_cases = [by_provider.get("fastconv", {}) for by_provider in rows.values()]
    for baseline in providers:
        key = f"speedup_vs_{baseline}"
        if baseline not in ("eager", "fastconv") and any(key in c for c in fastconv_cases):
            columns.append(("fastconv", baseline, "fastconv"))
    return columns


def _speedup(by_provider: dict[str, dict], provider: str, baseline: str) -> float | None:
    return by_provider.get(provider, {}).get(f"speedup_vs_{baseline}")


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _section_title(kind: str, precision: str) -> str:
    title = KINDS[kind][0]
    return f"{title}, {precision}" if precision else title


def _table_head(header: list[str]) -> list[str]:
    """A markdown table's header row and its separator."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]


def summary(run: Run) -> list[str]:
    """Markdown lines: per layout and table, the geometric mean (and range) of its rows'
    speed-ups, one column per (provider, baseline) pair present anywhere."""
    parts = sections(run)
    labels: dict[tuple[str, str], str] = {}
    for rows in parts.values():
        for provider, baseline, _ in _ratio_columns(rows):
            labels.setdefault(
                (provider, baseline),
                f"{PROVIDER_LABELS.get(provider, provider)} x "
                f"{PROVIDER_LABELS.get(baseline, baseline)}",
            )
    if not labels:
        return []
    header = ["layout", "table", "rows", *labels.values()]
    lines = [
        "",
        "## Summary",
        "",
        "Geometric mean over each table's rows of the speed-up of A over B (B's time / A's "
        "time, both timed in the same session; eager is cuDNN for convolutions), with its "
        "range; per layout, channels_last first.",
        "",
        *_table_head(header),
    ]
    for (layout, kind, precision), rows in parts.items():
        cells = [layout or "n/a", _section_title(kind, precision), str(len(rows))]
        for provider, baseline in labels:
            values = [_speedup(by_p, provider, baseline) for by_p in rows.values()]
            values = [v for v in values if v is not None and v > 0]
            cells.append(
                f"{geomean(values):.2f}x ({min(values):.2f}-{max(values):.2f})" if values else ""
            )
        if any(cells[3:]):
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(run: Run) -> str:
    """The run as markdown: a header with the environment, the summary, then the tables of
    each layout (channels_last first), one per section."""
    info = run.info
    # runs before both layouts ran in one session recorded the single layout they used
    layouts = (
        f"channels_last={info['channels_last']}"
        if "channels_last" in info
        else "layouts: " + ", ".join(info.get("layouts") or ["n/a"])
    )
    lines = [
        f"# fastconv benchmarks: {run.device}, {run.date}",
        "",
        "torch {torch}, triton {triton}, CUDA {cuda}, cuDNN {cudnn}; commit `{commit}`; "
        "cudnn.allow_tf32={tf32}, cudnn.benchmark={bench}, {layouts}; "
        "{threads} CPU threads.".format(
            torch=info.get("torch"),
            triton=info.get("triton"),
            cuda=info.get("cuda"),
            cudnn=info.get("cudnn"),
            commit=info.get("git_commit"),
            tf32=info.get("cudnn_allow_tf32"),
            bench=info.get("cudnn_benchmark"),
            layouts=layouts,
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
        *summary(run),
    ]
    current_layout = None
    for (layout, kind, precision), rows in sections(run).items():
        if layout != current_layout:
            current_layout = layout
            lines += ["", f"## {LAYOUT_TITLES.get(layout, layout)}"]
        _, metric, unit, eager_label = KINDS[kind]
        providers = _providers(rows)
        peak = peak_tflops(run.device, precision) if kind in CONV_KINDS else None
        heading = _section_title(kind, precision)
        if kind in CONV_KINDS:
            heading += f" (peak {_fmt(peak)} TFLOP/s)" if peak else " (device peak n/a)"
        header = ["case", "mode"]
        for p in providers:
            label = eager_label if p == "eager" else PROVIDER_LABELS.get(p, p)
            header += [f"{label} ms", f"{label} {unit}"]
            if kind in CONV_KINDS and p in ("fastconv", "eager"):
                header.append(f"{label} % peak")
        ratios = _ratio_columns(rows)
        header += [
            f"{label} x {eager_label if b == 'eager' else PROVIDER_LABELS.get(b, b)}"
            for _, b, label in ratios
        ]
        lines += ["", f"### {heading}", ""]
        if kind in KIND_NOTES:
            lines += [KIND_NOTES[kind], ""]
        lines += _table_head(header)
        for (case, mode), by_provider in rows.items():
            cells = [case, mode]
            for p in providers:
                entry = by_provider.get(p, {})
                throughput = entry.get(metric)
                cells += [_fmt(_time_ms(entry)), _fmt(throughput)]
                if kind in CONV_KINDS and p in ("fastconv", "eager"):
                    share = None if peak is None or throughput is None else 100 * throughput / peak
                    cells.append(f"{share:.0f}%" if share is not None else "n/a")
            for provider, baseline, _ in ratios:
                speedup = _speedup(by_provider, provider, baseline)
                cells.append(f"{speedup:.2f}x" if speedup is not None else "n/a")
            lines.append("| " + " | ".join(cells) + " |")
        shapes = {e["case"]: e.get("shape") for by_p in rows.values() for e in by_p.values()}
        described = [f"`{c}`: {s}" for c, s in shapes.items() if s]
        if described:
            lines += ["", "Shapes: " + "; ".join(described) + "."]
    return "\n".join(lines) + "\n"


def chart(run: Run, path: Path) -> None:
    """Throughput per provider as horizontal bars, saved as ``path``.

    One row of panels per section (layout, kind and precision; channels_last first), one
    panel per mode, one group of bars per case. Data-pipeline panels use a log scale
    (decoding and reading the cache differ a hundredfold).
    """
    parts = sections(run)
    if not parts:
        raise ValueError("the JSON holds no fastconv benchmark cases (no extra_info 'kind')")
    panels = []  # (section key, rows, modes, providers, panel height in inches)
    for key, rows in parts.items():
        modes = list(dict.fromkeys(mode for _, mode in rows))
        cases = {case for case, _ in rows}
        providers = _providers(rows)
        panels.append((key, rows, modes, providers, 1.2 + 0.1 * len(cases) * len(providers)))
    columns = max(len(modes) for _, _, modes, _, _ in panels)
    figure, axes = plt.subplots(
        len(panels),
        columns,
        figsize=(5.5 * columns, sum(height for *_, height in panels) + 0.6),
        gridspec_kw={"height_ratios": [height for *_, height in panels]},
        squeeze=False,
    )
    for axes_row, (key, rows, modes, providers, _) in zip(axes, panels, strict=True):
        layout, kind, precision = key
        _, metric, unit, eager_label = KINDS[kind]
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
            heading = ", ".join(filter(None, (_section_title(kind, precision), layout)))
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

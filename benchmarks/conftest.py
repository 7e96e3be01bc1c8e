"""pytest-benchmark set-up for ``pytest benchmarks/ --benchmark-only``.

Every GPU case runs in both layouts of :data:`benchmarks.environment.LAYOUTS` (ids
``channels_last``, the headline, and ``nchw``; select one with ``-k``), and every case runs
with ``torch.backends.cudnn.benchmark = True`` (cuDNN's own autotuner picks its fastest
algorithm in the warm-up rounds; the flag is restored after each case). Options:
``--max-autotune`` (also time ``torch.compile(mode="max-autotune")``, slow to compile) and
``--no-cudnn-benchmark`` (cuDNN's heuristic choice instead). The session's machine info
records the GPU, torch, triton, CUDA and cuDNN versions, the git commit and these settings.
Each case's providers run one after the other, eager first (see
:func:`pytest_collection_modifyitems`).

This file deliberately shares nothing with ``tests/conftest.py``: the GPU cases time
compiled kernels, never Triton's interpreter, and are skipped (with their reason) where there
is no CUDA GPU or the interpreter is on. CPU cases force the torch backend, except the host
path cases (``test_bench_host.py``), which run fastconv's Python with the launches stubbed:
on a machine without CUDA this file turns the interpreter on before anything imports triton,
as the tests do, so that the Triton backend accepts CPU tensors.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from benchmarks import environment  # noqa: E402
from benchmarks.environment import LAYOUTS  # noqa: E402
from benchmarks.providers import EAGER, provider_names  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parent


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fastconv benchmarks")
    group.addoption(
        "--max-autotune",
        action="store_true",
        help='also time torch.compile(mode="max-autotune") (long compile times)',
    )
    group.addoption(
        "--no-cudnn-benchmark",
        action="store_true",
        help="time cuDNN with torch.backends.cudnn.benchmark = False (its heuristic algorithm "
        "choice) instead of its own autotuner",
    )


def cudnn_benchmark_setting(config: pytest.Config) -> bool:
    """The ``torch.backends.cudnn.benchmark`` every case runs with."""
    return not config.getoption("--no-cudnn-benchmark")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``provider`` (eager first, so the others reuse its timing)."""
    if "provider" in metafunc.fixturenames:
        metafunc.parametrize(
            "provider", provider_names(metafunc.config.getoption("--max-autotune"))
        )


def _case_key(item: pytest.Item) -> tuple:
    """The item's test and parameters but its provider: the case its providers share."""
    callspec = getattr(item, "callspec", None)
    if callspec is None or "provider" not in callspec.params or BENCHMARKS not in item.path.parents:
        return (item.nodeid,)
    others = sorted((name, repr(v)) for name, v in callspec.params.items() if name != "provider")
    return (item.path, item.originalname, *others)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run each case's providers one after another (eager first, as parametrized), not every
    eager case before every fastconv case: a run cut short (``gpu_session.sh``'s time limits)
    keeps whole comparisons, and each side is timed in the same minute."""
    first_seen: dict[tuple, int] = {}
    for position, item in enumerate(items):
        first_seen.setdefault(_case_key(item), position)
    items.sort(key=lambda item: first_seen[_case_key(item)])  # stable: providers keep order


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Tag the run with its device, library versions, git commit and benchmark settings."""
    machine_info["fastconv"] = environment.machine_info(
        {
            "layouts": list(LAYOUTS),
            "cudnn_benchmark": cudnn_benchmark_setting(config),
            "max_autotune": config.getoption("--max-autotune"),
        }
    )


@pytest.fixture(autouse=True)
def cudnn_benchmark(request: pytest.FixtureRequest) -> Iterator[bool]:
    """``torch.backends.cudnn.benchmark`` as :func:`cudnn_benchmark_setting` says, for the
    case (its check, its timed rounds and any eager baseline it times), restored after."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = cudnn_benchmark_setting(request.config)
    try:
        yield torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = before


@pytest.fixture(params=list(LAYOUTS.values()), ids=list(LAYOUTS))
def memory_format(request: pytest.FixtureRequest) -> torch.memory_format:
    """The GPU cases' input layout: each of :data:`LAYOUTS` (channels_last, nchw)."""
    return request.param


class EagerBaseline:
    """The eager provider's time per case, shared by the other providers' speed-ups.

    Times are in whatever unit the case uses (GPU milliseconds, CPU seconds).
    """

    def __init__(self) -> None:
        self._times: dict[str, float] = {}

    def speedup(
        self, case: str, provider: str, time: float, measure_eager: Callable[[], float]
    ) -> tuple[float, float]:
        """(eager time, eager time / ``time``); times eager now if its case has not run yet."""
        if provider == EAGER:
            self._times[case] = time
        elif case not in self._times:
            self._times[case] = measure_eager()
        eager_time = self._times[case]
        return eager_time, eager_time / time


@pytest.fixture(scope="session")
def eager_baseline() -> EagerBaseline:
    return EagerBaseline()

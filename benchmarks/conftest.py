"""pytest-benchmark set-up for ``pytest benchmarks/ --benchmark-only``.

Options: ``--max-autotune`` (also time ``torch.compile(mode="max-autotune")``, slow to
compile), ``--channels-last`` (inputs in channels_last instead of NCHW) and
``--cudnn-benchmark`` (``torch.backends.cudnn.benchmark = True``). The session's machine
info records the GPU, torch, triton, CUDA and cuDNN versions, the git commit and these
settings.

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

from collections.abc import Callable  # noqa: E402

import pytest  # noqa: E402

from benchmarks import environment  # noqa: E402
from benchmarks.providers import EAGER, provider_names  # noqa: E402


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fastconv benchmarks")
    group.addoption(
        "--max-autotune",
        action="store_true",
        help='also time torch.compile(mode="max-autotune") (long compile times)',
    )
    group.addoption(
        "--channels-last",
        action="store_true",
        help="give GPU cases channels_last inputs instead of NCHW",
    )
    group.addoption(
        "--cudnn-benchmark",
        action="store_true",
        help="set torch.backends.cudnn.benchmark = True (cuDNN's own autotuner)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--cudnn-benchmark"):
        torch.backends.cudnn.benchmark = True


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``provider`` (eager first, so the others reuse its timing)."""
    if "provider" in metafunc.fixturenames:
        metafunc.parametrize(
            "provider", provider_names(metafunc.config.getoption("--max-autotune"))
        )


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Tag the run with its device, library versions, git commit and benchmark settings."""
    machine_info["fastconv"] = environment.machine_info(
        {
            "channels_last": config.getoption("--channels-last"),
            "max_autotune": config.getoption("--max-autotune"),
        }
    )


@pytest.fixture
def memory_format(request: pytest.FixtureRequest) -> torch.memory_format:
    """The GPU cases' input layout: NCHW, or channels_last with ``--channels-last``."""
    if request.config.getoption("--channels-last"):
        return torch.channels_last
    return torch.contiguous_format


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

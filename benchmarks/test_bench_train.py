"""CPU training throughput of each ``--model``: fastconv layers vs the same net in torch.nn.

For the models ``fastconv.train`` offers (the project's ``catdog`` and ``catdog-res`` and
torchvision's ``resnet18`` converted by ``fastconv.layers.convert``), one case trains the
fastconv model and its plain torch.nn twin with the same weights (``catdog``, ``catdog-res``:
``benchmarks.twin``;
``resnet18``: the unconverted torchvision net) and reports images/s for both and their ratio
(fastconv / torch.nn: 1.0 or more means fastconv is not slower). The two models take turns,
one step each per round on the same fresh batch, so a change of load on a shared machine hits
both alike: the torch.nn step runs in each round's set-up (timed by hand), the fastconv step
is pytest-benchmark's timed target.

The torch backend runs (no Triton on the CPU), so this measures what fastconv's layers cost
where none of its kernels run. A step is ``fastconv.train``'s (forward, cross-entropy,
backward, AdamW); each model is checked against a float64 copy of the twin first. Quick: a
few steps at batch 8; resnet18 at 32 px, since its stride-1 stem makes it about ten times the
work of catdog per image at the same size.

Each model runs in float32 and under bf16 autocast (``fastconv.train --amp bf16``); the bf16
cases run only where oneDNN has native bf16 on this CPU (AVX512-BF16 or AMX), where they
show what ``--amp bf16`` gains over the float32 case of the same model.
"""

from __future__ import annotations

import copy
import statistics

import pytest
import torch
from torch import nn

from benchmarks.checks import check_model
from benchmarks.environment import DTYPE_NAMES
from benchmarks.test_bench_model import TrainStep, refill
from benchmarks.timing import WallClockRounds, benchmark_cpu
from benchmarks.twin import torch_nn_twin
from fastconv.backend import use_backend
from fastconv.cli import cpu_has_native_bf16
from fastconv.models import RESNETS, build_model

IMAGE_SIZES = {"catdog": 64, "catdog-res": 64, "resnet18": 32}  # model -> px
BATCH = 8
ROUNDS = 5
WARMUP_ROUNDS = 1
NUM_CLASSES = 2
AUTOCAST_DTYPES = [
    pytest.param(None, id="fp32"),
    pytest.param(
        torch.bfloat16,
        id="bf16",
        marks=pytest.mark.skipif(
            not cpu_has_native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)"
        ),
    ),
]


def torch_nn_model(name: str, fastconv_model: nn.Module) -> nn.Module:
    """Model ``name`` built from plain torch.nn layers, with ``fastconv_model``'s weights."""
    if name not in RESNETS:
        return torch_nn_twin(fastconv_model)
    from fastconv.models.resnet import small_image_resnet

    plain = small_image_resnet(name, NUM_CLASSES)
    plain.load_state_dict(fastconv_model.state_dict())
    return plain


@pytest.mark.parametrize("autocast_dtype", AUTOCAST_DTYPES)
@pytest.mark.parametrize("name", IMAGE_SIZES)
def test_train_throughput_cpu(benchmark, name, autocast_dtype):
    size = IMAGE_SIZES[name]
    math = DTYPE_NAMES.get(autocast_dtype, "fp32")
    benchmark.group = f"train step {name}@{size}px cpu {math}, fastconv vs torch.nn"
    torch.manual_seed(0)
    fastconv_model = build_model(name, NUM_CLASSES)
    plain = torch_nn_model(name, fastconv_model)
    images = torch.randn(BATCH, 3, size, size)
    labels = torch.randint(0, NUM_CLASSES, (BATCH,))
    batch = refill(images, labels)
    plain_step = WallClockRounds(TrainStep(plain, autocast_dtype))

    def prepare() -> tuple:
        """The round's batch, after the torch.nn model's step on it."""
        arguments = batch()
        plain_step(*arguments)
        return arguments

    with use_backend("torch"):
        check_model(fastconv_model, copy.deepcopy(plain).double(), images, labels, autocast_dtype)
        seconds = benchmark_cpu(
            benchmark, TrainStep(fastconv_model, autocast_dtype), prepare, ROUNDS, WARMUP_ROUNDS
        )
    timed = plain_step.seconds[WARMUP_ROUNDS:] or plain_step.seconds
    plain_seconds = statistics.median(timed)
    benchmark.extra_info.update(
        kind="model",
        case=f"{name}@{size}px",
        shape=f"batch {BATCH}x3x{size}x{size}",
        dtype=f"cpu {math}",
        mode="train step, interleaved",
        provider="fastconv",
        images_per_s=BATCH / seconds,
        eager_seconds=plain_seconds,
        eager_images_per_s=BATCH / plain_seconds,
        speedup_vs_eager=plain_seconds / seconds,
    )
    print(
        f"\n{name}@{size}px {math} batch {BATCH}: fastconv {BATCH / seconds:.1f} images/s, "
        f"torch.nn {BATCH / plain_seconds:.1f} images/s, ratio {plain_seconds / seconds:.2f}"
    )

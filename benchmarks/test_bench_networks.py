"""Whole networks on the GPU, each case one set of ratios from one run: fastconv vs torch.

* ``test_resnet50_eval``: torchvision's resnet50, eval forward under ``torch.no_grad`` in bf16
  (weights and images), batch 64 at 224 px, channels_last. Providers: ``fastconv`` (the model
  :func:`fastconv.fusion.convert` makes of it, Triton backend forced), ``eager`` (the
  original: cuDNN convolutions and BatchNorms) and ``compile`` (``torch.compile`` of the
  original, default mode). Weights are random, and so are the BatchNorms' statistics and
  affine parameters, so that the check below sees the folded BatchNorms do real work.
* ``test_train_step[catdog]``, ``test_train_step[resnet18]``: one training step as
  ``fastconv.train`` takes it (:class:`benchmarks.test_bench_model.TrainStep`: bf16 autocast
  forward, cross-entropy, backward, AdamW), batch 128 at 128 px, channels_last, of the model
  ``fastconv.train --model NAME`` builds (``fastconv.models.build_model``; resnet18 is
  torchvision's with a 3x3 stride-1 stem and no max pool, converted) against the same net in
  torch.nn with the same weights (:func:`benchmarks.test_bench_train.torch_nn_model`: the
  catdog twin, the unconverted resnet18).

Each case times fastconv as pytest-benchmark's target, then each torch provider on the same
tensors in the same test, all with CUDA events (:mod:`benchmarks.timing`, fewer rounds than
the per-op cases), and records images/s of each and fastconv's speed-up over each
(``speedup_vs_eager``, ``speedup_vs_compile``: above 1, fastconv is faster); ``same_run``
holds the torch providers' numbers, which ``benchmarks/report.py`` shows as their own
columns. Before timing, every provider is checked once against a float64 copy of the
original: the eval logits on the whole batch (:func:`benchmarks.checks.check_logits`), the
training step's logits and gradients on its first :data:`CHECK_IMAGES` images
(:func:`benchmarks.checks.check_model`), under the bf16 bounds of ``MODEL_TOLERANCE``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import nn

from benchmarks.checks import check_logits, check_model
from benchmarks.environment import CUDA, requires_gpu
from benchmarks.modes import mode_rounds
from benchmarks.providers import EAGER, compiled, provider_backend
from benchmarks.test_bench_model import TrainStep, random_batch, refill
from benchmarks.test_bench_train import torch_nn_model
from benchmarks.timing import Prepare, benchmark_gpu, median_gpu_ms
from fastconv.fusion import convert
from fastconv.models import build_model

pytestmark = requires_gpu

LAYOUT = "channels_last"
EVAL_BATCH, EVAL_SIZE = 64, 224
TRAIN_BATCH, TRAIN_SIZE = 128, 128
TRAIN_MODELS = ("catdog", "resnet18")
NUM_CLASSES = 2
CHECK_IMAGES = 32  # the training check's batch (float64 activations of all 128: ~20 GB, estimated)
ROUNDS, WARMUP_ROUNDS = 20, 5  # a round is a whole network: tens of milliseconds


def randomize_batchnorms(model: nn.Module) -> None:
    """Draw every BatchNorm's running statistics and affine parameters at random (mean
    ~ N(0, 0.1), var ~ U(0.5, 2), weight ~ U(0.5, 1.5), bias ~ N(0, 0.1))."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)


def time_providers(
    benchmark, steps: dict[str, Callable[..., object]], prepare: Prepare
) -> dict[str, float]:
    """{provider: median GPU ms of its step}: fastconv's step first, as pytest-benchmark's
    target (Triton backend forced), then the torch providers' on the same tensors."""
    with provider_backend("fastconv"):
        times = {
            "fastconv": benchmark_gpu(benchmark, steps["fastconv"], prepare, ROUNDS, WARMUP_ROUNDS)
        }
    for provider, step in steps.items():
        if provider != "fastconv":
            times[provider] = median_gpu_ms(step, prepare, ROUNDS, WARMUP_ROUNDS)
    return times


def record(
    benchmark, case: str, mode: str, batch: int, size: int, times: dict[str, float], **details
) -> None:
    """extra_info of a network case: fastconv's images/s and speed-ups, the torch providers'
    numbers in ``same_run``."""
    fastconv_ms, torch_ms = times["fastconv"], {p: ms for p, ms in times.items() if p != "fastconv"}
    same_run = {
        provider: {
            "gpu_ms": ms,
            "images_per_s": batch / (ms * 1e-3),
            "speedup_vs_eager": torch_ms[EAGER] / ms,
        }
        for provider, ms in torch_ms.items()
    }
    benchmark.extra_info.update(
        kind="network",
        case=case,
        shape=f"batch {batch}x3x{size}x{size}",
        dtype="bf16",
        memory_format=LAYOUT,
        mode=mode,
        provider="fastconv",
        images_per_s=batch / (fastconv_ms * 1e-3),
        eager_gpu_ms=torch_ms[EAGER],
        same_run=same_run,
        **{f"speedup_vs_{provider}": ms / fastconv_ms for provider, ms in torch_ms.items()},
        **details,
    )


def test_resnet50_eval(benchmark):
    benchmark.group = f"network resnet50@{EVAL_SIZE}px eval forward bf16 {LAYOUT}"
    torch.manual_seed(0)
    original = torchvision.models.resnet50(weights=None).eval()
    randomize_batchnorms(original)
    reference = copy.deepcopy(original).to(CUDA, torch.float64)
    original = original.to(CUDA, torch.bfloat16, memory_format=torch.channels_last)
    fastconv_model, report = convert(original)
    images = torch.randn(EVAL_BATCH, 3, EVAL_SIZE, EVAL_SIZE, device=CUDA, dtype=torch.bfloat16)
    images = images.contiguous(memory_format=torch.channels_last)
    models = {"fastconv": fastconv_model, EAGER: original, "compile": compiled(original, "compile")}
    for provider, model in models.items():
        with provider_backend(provider):
            check_logits(model, reference, images)
    # a forward under no_grad of fresh images each round (a forward: no output gradient)
    no_grad_output = torch.empty(0, device=CUDA)
    rounds = {p: mode_rounds(m, (images,), no_grad_output, "fwd") for p, m in models.items()}
    times = time_providers(
        benchmark, {p: step for p, (step, _) in rounds.items()}, rounds[EAGER][1]
    )
    case = f"resnet50@{EVAL_SIZE}px"
    record(benchmark, case, "eval forward", EVAL_BATCH, EVAL_SIZE, times, converted=report.row())


@pytest.mark.parametrize("name", TRAIN_MODELS)
def test_train_step(benchmark, name):
    benchmark.group = f"network {name}@{TRAIN_SIZE}px train step bf16 {LAYOUT}"
    torch.manual_seed(0)
    fastconv_model = build_model(name, NUM_CLASSES)
    plain = torch_nn_model(name, fastconv_model)
    reference = copy.deepcopy(plain).to(CUDA, torch.float64)
    fastconv_model, plain = (
        model.to(CUDA, memory_format=torch.channels_last) for model in (fastconv_model, plain)
    )
    images, labels = random_batch(TRAIN_SIZE, CUDA, torch.channels_last, TRAIN_BATCH)
    checked = images[:CHECK_IMAGES], labels[:CHECK_IMAGES]
    with provider_backend("fastconv"):
        check_model(fastconv_model, reference, *checked, torch.bfloat16)
    check_model(plain, reference, *checked, torch.bfloat16)
    steps = {
        "fastconv": TrainStep(fastconv_model, torch.bfloat16),
        EAGER: TrainStep(plain, torch.bfloat16),
    }
    times = time_providers(benchmark, steps, refill(images, labels))
    mode = "train step (bf16 autocast)"
    record(benchmark, f"{name}@{TRAIN_SIZE}px", mode, TRAIN_BATCH, TRAIN_SIZE, times)

"""The CNN's training step in images/s: fastconv layers vs the same model in torch.nn.

GPU, at 64 and 128 px, the training batch size, in fp32 (TF32 as cuDNN's flag has it) and
bf16 autocast: ``fastconv`` (the model of ``fastconv.models``, Triton backend forced),
``eager`` (its torch.nn twin with the same weights, cuDNN) and ``compile``
(``torch.compile`` of the twin). CPU, at 64 px in fp32: fastconv's layers on the torch
backend vs the torch.nn twin, i.e. the cost of fastconv's layers where none of its kernels run.

A step is what ``fastconv.train`` does: autocast forward, cross-entropy, backward, AdamW step
(``fastconv.train.build_optimizer``). Before timing, each provider's model is checked once
against the float64 twin (loss and every parameter gradient).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.checks import check_model
from benchmarks.environment import CUDA, conv_math, layout_name, requires_gpu
from benchmarks.providers import EAGER, compiled, provider_backend
from benchmarks.shapes import MODEL_IMAGE_SIZES, MODEL_NAME, TRAINING_BATCH
from benchmarks.timing import benchmark_cpu, benchmark_gpu, median_gpu_ms, median_wall_seconds
from benchmarks.twin import torch_nn_twin
from fastconv.backend import use_backend
from fastconv.models import build_model
from fastconv.train import build_optimizer, build_parser

GPU_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}  # name -> autocast dtype
CPU_IMAGE_SIZE = 64
CPU_ROUNDS = 5
NUM_CLASSES = 2
TRAIN_DEFAULTS = build_parser().parse_args([])  # the step's lr, weight decay, label smoothing


class TrainStep:
    """One optimizer step of ``model`` on a batch, as ``fastconv.train`` takes it."""

    def __init__(self, model: nn.Module, autocast_dtype: torch.dtype | None) -> None:
        self.model = model.train()
        self.autocast_dtype = autocast_dtype
        self.optimizer = build_optimizer(
            model, lr=TRAIN_DEFAULTS.lr, weight_decay=TRAIN_DEFAULTS.weight_decay
        )

    def __call__(self, images: Tensor, labels: Tensor) -> None:
        with torch.autocast(
            images.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        ):
            logits = self.model(images).float()
        loss = F.cross_entropy(logits, labels, label_smoothing=TRAIN_DEFAULTS.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def random_batch(
    size: int,
    device: torch.device,
    memory_format: torch.memory_format,
    batch: int = TRAINING_BATCH,
) -> tuple[Tensor, Tensor]:
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    return images.contiguous(memory_format=memory_format), labels


def refill(images: Tensor, labels: Tensor):
    """The set-up of a round: the same batch tensors refilled with fresh random values."""

    def prepare() -> tuple[Tensor, Tensor]:
        images.normal_()
        labels.random_(0, NUM_CLASSES)
        return images, labels

    return prepare


def provider_model(provider: str, fastconv_model: nn.Module) -> nn.Module:
    """The model ``provider`` trains: fastconv's own, its torch.nn twin, or the compiled twin."""
    if provider == "fastconv":
        return fastconv_model
    twin = torch_nn_twin(fastconv_model)
    return twin if provider == EAGER else compiled(twin, provider)


def record(
    benchmark, size: int, precision: str, provider: str, seconds: float, layout: str | None = None
) -> None:
    benchmark.extra_info.update(
        kind="model",
        case=f"{MODEL_NAME}@{size}px",
        shape=f"batch {TRAINING_BATCH}x3x{size}x{size}",
        dtype=precision,
        mode="train step",
        provider=provider,
        images_per_s=TRAINING_BATCH / seconds,
    )
    if layout is not None:
        benchmark.extra_info["memory_format"] = layout


@requires_gpu
@pytest.mark.parametrize("precision", GPU_PRECISIONS)
@pytest.mark.parametrize("size", MODEL_IMAGE_SIZES, ids=lambda s: f"{s}px")
def test_train_step_gpu(benchmark, eager_baseline, memory_format, size, precision, provider):
    autocast_dtype = GPU_PRECISIONS[precision]
    label = "bf16 autocast" if autocast_dtype else conv_math(torch.float32)
    case = f"model {MODEL_NAME}@{size}px {label} {layout_name(memory_format)}"
    benchmark.group = case
    torch.manual_seed(0)
    fastconv_model = build_model(MODEL_NAME, NUM_CLASSES).to(CUDA, memory_format=memory_format)
    reference = torch_nn_twin(fastconv_model).double()
    images, labels = random_batch(size, CUDA, memory_format)
    with provider_backend(provider):
        model = provider_model(provider, fastconv_model)
        check_model(model, reference, images, labels, autocast_dtype)
        gpu_ms = benchmark_gpu(benchmark, TrainStep(model, autocast_dtype), refill(images, labels))
    eager_ms, speedup = eager_baseline.speedup(
        case,
        provider,
        gpu_ms,
        lambda: median_gpu_ms(
            TrainStep(torch_nn_twin(fastconv_model), autocast_dtype), refill(images, labels)
        ),
    )
    record(benchmark, size, label, provider, gpu_ms * 1e-3, layout_name(memory_format))
    benchmark.extra_info.update(eager_gpu_ms=eager_ms, speedup_vs_eager=speedup)


@pytest.mark.parametrize("cpu_provider", [EAGER, "fastconv"])
def test_train_step_cpu(benchmark, eager_baseline, cpu_provider):
    """One CPU training step: fastconv's layers (torch backend) vs the plain torch.nn twin."""
    case = f"model {MODEL_NAME}@{CPU_IMAGE_SIZE}px cpu fp32"
    benchmark.group = case
    torch.manual_seed(0)
    fastconv_model = build_model(MODEL_NAME, NUM_CLASSES)
    reference = torch_nn_twin(fastconv_model).double()
    model = fastconv_model if cpu_provider == "fastconv" else torch_nn_twin(fastconv_model)
    images, labels = random_batch(CPU_IMAGE_SIZE, torch.device("cpu"), torch.contiguous_format)
    with use_backend("torch"):
        check_model(model, reference, images, labels, None)
        seconds = benchmark_cpu(
            benchmark, TrainStep(model, None), refill(images, labels), CPU_ROUNDS, warmup_rounds=1
        )
    eager_seconds, speedup = eager_baseline.speedup(
        case,
        cpu_provider,
        seconds,
        lambda: median_wall_seconds(
            TrainStep(torch_nn_twin(fastconv_model), None),
            refill(images, labels),
            CPU_ROUNDS,
            warmup_rounds=1,
        ),
    )
    record(benchmark, CPU_IMAGE_SIZE, "cpu fp32", cpu_provider, seconds)
    benchmark.extra_info.update(eager_seconds=eager_seconds, speedup_vs_eager=speedup)

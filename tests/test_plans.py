"""Launch plans (:mod:`fastconv.kernels.plans`): one plan per call signature, reused only by a
call that would have made the same one, and the autotuner's choice reused after the first
launch. A stale plan would launch a kernel with another call's strides, tiles or path: the
cases here change one thing a plan reads at a time and check that a new plan is made and
that the result is torch's."""

import gc

import pytest
import torch
from conftest import DEVICE
from parity import conv_parity, kernel_names

from fastconv import backend
from fastconv import functional as fcf
from fastconv.kernels import alloc, conv2d_wgrad, plans
from fastconv.kernels import conv2d as ck
from fastconv.profiling import record_launches

GEMM = "_implicit_gemm_kernel"
TMA = "_tma_implicit_gemm_kernel"
WGRAD = "_conv2d_bwd_weight_kernel"


def tensor(*shape, dtype=torch.float16, memory_format=torch.channels_last, seed=0):
    generator = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=generator, dtype=torch.float32).to(dtype).to(DEVICE)
    return t.contiguous(memory_format=memory_format) if t.dim() == 4 else t


def forward_plans() -> int:
    return len(ck._FORWARD_PLANS.plans)


def test_a_signature_is_planned_once_and_each_change_plans_again():
    """The same call twice: one plan. Another layout, dtype, epilogue operand or activation:
    a plan each. Launches stubbed."""
    x, weight, bias = tensor(1, 16, 6, 6), tensor(16, 16, 3, 3), tensor(16)
    residual = tensor(1, 16, 6, 6)
    calls = [
        lambda: fcf.fused_conv2d(x, weight, bias, padding=1, activation="relu"),
        lambda: fcf.fused_conv2d(x, weight, bias, padding=1, activation="relu"),
        lambda: fcf.fused_conv2d(x, weight, bias, padding=1, activation="silu"),
        lambda: fcf.fused_conv2d(x, weight, None, padding=1, activation="relu"),
        lambda: fcf.fused_conv2d(x, weight, bias, padding=1, residual=residual),
        lambda: fcf.fused_conv2d(x.contiguous(), weight, bias, padding=1),
        lambda: fcf.fused_conv2d(x.float(), weight.float(), bias.float(), padding=1),
    ]
    counts = []
    with backend.use_backend("triton"), record_launches(run=False):
        for call in calls:
            call()
            counts.append(forward_plans())
    assert counts == [1, 1, 2, 3, 4, 5, 6]


def test_an_unaligned_view_is_planned_apart_and_takes_the_gemm():
    """The 16-byte alignment of a base is part of the signature: a TMA plan made for an
    aligned x is not reused for a view of the same shape and strides 8 bytes further on,
    which the cp.async kernel computes (and matches torch in float64)."""
    x, weight, bias = tensor(1, 16, 3, 3, seed=1), tensor(16, 16, 3, 3, seed=2), tensor(16)
    assert kernel_names(conv_parity(x, weight, bias, padding=1))[0] == TMA
    storage = torch.zeros(x.numel() + 4, dtype=x.dtype, device=DEVICE)
    shifted = storage[4:].view(1, 3, 3, 16).permute(0, 3, 1, 2).copy_(x)
    assert shifted.stride() == x.stride() and shifted.data_ptr() % 16 == 8
    assert kernel_names(conv_parity(shifted, weight, bias, padding=1))[0] == GEMM


def test_tf32_flag_is_part_of_an_fp32_plan():
    """fp32 with TF32 allowed takes the TMA kernel, without it the cp.async kernel: turning
    the flag off after a TF32 call plans again."""
    x, weight, bias = (
        tensor(*s, dtype=torch.float32) for s in ((1, 16, 3, 3), (8, 16, 3, 3), (8,))
    )
    with backend.use_backend("triton"), record_launches(run=False) as launches:
        with torch.backends.cudnn.flags(allow_tf32=True):
            fcf.conv2d(x, weight, bias, padding=1)
        fcf.conv2d(x, weight, bias, padding=1)  # the test's default: IEEE fp32
    assert kernel_names(launches) == [TMA, GEMM]


def test_the_autotuners_choice_is_reused_after_the_first_launch():
    """A plan's first launch goes through the autotuner, which sets its config; the next
    launches the kernel directly with that config's meta-parameters."""
    x, weight = tensor(1, 16, 6, 6, dtype=torch.float32), tensor(16, 16, 3, 3, dtype=torch.float32)
    with backend.use_backend("triton"), record_launches(run=False) as launches:
        for _ in range(3):
            fcf.conv2d(x, weight, padding=1)
    (plan,) = ck._FORWARD_PLANS.plans.values()
    assert plan.gemm.launch.config is not None
    assert isinstance(plan.gemm.launch.grid, tuple)
    assert [launch.meta for launch in launches[1:]] == [launches[0].meta] * 2
    assert launches[0].meta["BLOCK_M"] == plan.gemm.launch.config.kwargs["BLOCK_M"]


@pytest.mark.parametrize(
    ("channels", "split", "direct"),
    [
        pytest.param(16, 1, True, id="unsplit-unpadded-direct"),
        pytest.param(12, 1, False, id="padded-channels-parts"),
        pytest.param(16, 2, False, id="split-parts"),
    ],
)
def test_wgrad_writes_grad_w_itself_when_unsplit_and_unpadded(channels, split, direct):
    """conv2d_wgrad._Wgrad.direct: an unsplit reduction over channels that need no padding
    writes grad_w (channels-last) and grad_b itself; otherwise it goes through parts. Both
    match torch in float64."""
    x = tensor(2, channels, 5, 5, dtype=torch.float32, seed=1)
    grad_y = tensor(2, 16, 5, 5, dtype=torch.float32, seed=2)
    with backend.use_backend("triton"):
        grad_w, grad_b = conv2d_wgrad.conv2d_bwd_weight(
            grad_y, x, (16, channels, 3, 3), (1, 1), (1, 1), (1, 1), True, split=split
        )
    (plan,) = conv2d_wgrad._PLANS.plans.values()
    assert plan.direct is direct
    assert grad_w.is_contiguous(memory_format=torch.channels_last)
    x64, g64 = x.double().cpu(), grad_y.double().cpu()
    expected = torch.nn.grad.conv2d_weight(x64, (16, channels, 3, 3), g64, 1, 1, 1)
    torch.testing.assert_close(grad_w.double().cpu(), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad_b.double().cpu(), g64.sum((0, 2, 3)), rtol=1e-4, atol=1e-4)


def _recording(transposed, read):
    """``_GemmInputGrad._b`` that records whether it handed the weight itself to the kernel."""

    def recorded(self, weight):
        b = transposed(self, weight)
        read.append(b is weight)
        return b

    return recorded


@pytest.mark.parametrize("groups", [1, 2], ids=["groups1", "groups2"])
@pytest.mark.parametrize(
    ("memory_format", "channels", "in_place"),
    [
        pytest.param(torch.channels_last, 16, True, id="channels_last-in-place"),
        pytest.param(torch.channels_last, 4, True, id="channels_last-16B-rows-in-place"),
        pytest.param(torch.channels_last, 3, False, id="channels_last-12B-rows-transposed-copy"),
        pytest.param(torch.contiguous_format, 16, False, id="nchw-transposed-copy"),
    ],
)
def test_gemm_dgrad_reads_a_channels_last_weight_in_place(
    monkeypatch, memory_format, channels, in_place, groups
):
    """conv2d._GemmInputGrad: the cp.async input gradient reads a channels-last weight whose
    C/groups rows are 16-byte multiples as it is, transposed by its strides (per group), and
    any other weight through one transposed copy; output and every gradient match torch in
    float64."""
    read = []
    monkeypatch.setattr(ck._GemmInputGrad, "_b", _recording(ck._GemmInputGrad._b, read))
    x, weight, bias = (
        tensor(1, channels * groups, 3, 3, dtype=torch.float32, seed=1),
        tensor(8, channels, 3, 3, dtype=torch.float32, memory_format=memory_format, seed=2),
        tensor(8, dtype=torch.float32, seed=3),
    )
    launches = conv_parity(x, weight, bias, padding=1, groups=groups)
    assert kernel_names(launches)[1:] == [GEMM, WGRAD]  # (a few channels: the stem forward)
    assert read == [in_place]


def test_plan_cache_drops_its_oldest_plan_when_full():
    cache = plans.PlanCache(limit=2)
    for key in "abc":
        cache.put(key, key.upper())
    assert list(cache.plans) == ["b", "c"] and cache.get("a") is None


def test_weight_cache_remakes_on_a_new_version_and_forgets_a_dead_weight():
    """plans.WeightCache: one make per version of the weight; an in-place update or a new
    storage makes again; an inference tensor is made per call; the entry goes with the
    weight."""
    made = []

    def make(weight, scale):
        made.append(weight._version if not weight.is_inference() else None)
        return weight * scale

    cache = plans.WeightCache()
    weight = torch.ones(4)
    first = cache.get(weight, make, 2.0)
    assert cache.get(weight, make, 2.0) is first and len(made) == 1
    weight.add_(1.0)
    assert torch.equal(cache.get(weight, make, 2.0), torch.full((4,), 4.0)) and len(made) == 2
    weight.data = torch.zeros(4)
    assert torch.equal(cache.get(weight, make, 2.0), torch.zeros(4)) and len(made) == 3
    assert cache.get(weight, make, 3.0) is not first and len(made) == 4  # other arguments
    with torch.inference_mode():
        frozen = torch.ones(4)
    cache.get(frozen, make, 2.0)
    cache.get(frozen, make, 2.0)
    assert made[-2:] == [None, None]
    del weight
    gc.collect()
    assert len(cache.entries) == 0


def test_clear_plans_forgets_every_plan():
    x, weight = tensor(1, 16, 6, 6), tensor(16, 16, 3, 3)
    with backend.use_backend("triton"), alloc.poison_allocations(False), record_launches(False):
        fcf.conv2d(x, weight, padding=1)
    assert forward_plans() == 1
    plans.clear_plans()
    assert forward_plans() == 0

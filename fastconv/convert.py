"""``python -m fastconv.convert MODEL``: convert a model, print the report, check parity.

MODEL is ``torchvision:NAME`` (``torchvision:resnet50``), ``timm:NAME``
(``timm:efficientnet_b0``, made by ``timm.create_model``; timm must be installed) or
``MODULE:FUNCTION`` (``mypkg.models:build``, called with no arguments, returning an
``nn.Module``). The model is built with random weights (``--seed``), its BatchNorm
statistics and affine parameters are made non-trivial (random running mean and variance,
weight and bias: folding an identity BatchNorm would prove nothing), and it is converted with
:func:`fastconv.fusion.convert` in ``--mode``. The converted model runs in ``--dtype`` on a
random input and is compared with the original run in float64: in eval mode the outputs,
in train mode the outputs and every parameter gradient (each model on its own deep copy, so
running-statistics updates do not interfere; dropout and stochastic depth are switched off
in both, being random). Errors are relative, max |converted - original| / max |original|,
and each must be at most the dtype's tolerance or 10x the error of the original model run
in the same dtype (train-mode gradients through BatchNorm are ill-conditioned: the
original's own float32 error reaches 0.3 on resnet50 at 64x64, and a bias gradient that is
0 in exact arithmetic has an unbounded relative error).

Exit status: 0 when parity holds, 1 when it fails, 2 for a bad command line or a model
that cannot be built (one ``error:`` line). ``--help`` answers without importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fastconv.cli import (
    BACKEND_CHOICES,
    CLIError,
    Parser,
    exit_on_cli_error,
    int_at_least,
    resolve_backend_choice,
    resolve_device,
)

__all__ = ["main", "parse_args"]

DTYPES = ("float32", "float16", "bfloat16")
# A tensor passes when its relative error against float64 is at most the dtype's tolerance
# or BASELINE_FACTOR times the original model's own error in that dtype.
TOLERANCES = {"float32": 1e-3, "float16": 2e-2, "bfloat16": 6e-2}
BASELINE_FACTOR = 10
MARKDOWN_HEADER = (
    "| model | mode | method | convs on fastconv | pools on fastconv | BatchNorms folded "
    "| activations fused | adds fused | left to torch | output error | worst error / limit |"
)


def _input_size(text: str) -> tuple[int, int, int, int]:
    """An argparse type: ``NxCxHxW`` with positive integers."""
    parts = text.lower().split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected NxCxHxW with positive integers, got {text!r}")
    return tuple(int(p) for p in parts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(
        prog="python -m fastconv.convert",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model",
        help="torchvision:NAME (torchvision:resnet50), timm:NAME (timm:efficientnet_b0) or "
        "MODULE:FUNCTION (mypkg:build)",
    )
    parser.add_argument(
        "--mode",
        choices=("eval", "train"),
        default="eval",
        help="mode to convert and check in: eval compares outputs, train outputs and every "
        "parameter gradient (default: eval)",
    )
    parser.add_argument(
        "--input-size",
        type=_input_size,
        default=(1, 3, 64, 64),
        metavar="NxCxHxW",
        help="random input's shape (default: 1x3x64x64)",
    )
    parser.add_argument(
        "--seed", type=int_at_least(0), default=0, help="seed of weights and input (default: 0)"
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="dtype the converted model runs in (the reference: the original in float64); "
        "tolerances: " + ", ".join(f"{k} {v:g}" for k, v in TOLERANCES.items()),
    )
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N"
    )
    parser.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default=None,
        help="fastconv backend (default: $FASTCONV_BACKEND, else auto: Triton on CUDA and in "
        "the interpreter with TRITON_INTERPRET=1, the torch reference otherwise)",
    )
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print only a README table row (columns: " + MARKDOWN_HEADER.strip("| ") + ")",
    )
    return parser.parse_args(argv)


def build_model(spec: str):
    """The ``nn.Module`` that ``torchvision:NAME``, ``timm:NAME`` or ``MODULE:FUNCTION``
    builds."""
    from torch import nn

    module_name, sep, function_name = spec.partition(":")
    if not sep or not module_name or not function_name:
        raise CLIError(f"model {spec!r}: expected torchvision:NAME, timm:NAME or MODULE:FUNCTION")
    if module_name == "torchvision":
        import torchvision

        if function_name not in torchvision.models.list_models():
            raise CLIError(f"model {spec!r}: torchvision has no model {function_name!r}")
        build = lambda: torchvision.models.get_model(function_name, weights=None)
    elif module_name == "timm":
        try:
            import timm
        except ImportError as exc:
            message = f"model {spec!r}: cannot import timm ({exc}): pip install timm"
            raise CLIError(message) from None
        if not timm.is_model(function_name):
            raise CLIError(f"model {spec!r}: timm has no model {function_name!r}")
        build = lambda: timm.create_model(function_name, pretrained=False)
    else:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # an ImportError, or the module's own code failing
            raise CLIError(f"model {spec!r}: cannot import {module_name}: {exc}") from None
        build = getattr(module, function_name, None)
        if not callable(build):
            raise CLIError(f"model {spec!r}: {module_name} has no function {function_name!r}")
    try:
        model = build()
    except Exception as exc:
        raise CLIError(f"model {spec!r}: building it failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise CLIError(f"model {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def randomize_batchnorms(model) -> None:
    """Random running mean/var, weight and bias in every BatchNorm, so folding is tested."""
    import torch
    from torch import nn

    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, nn.modules.batchnorm._BatchNorm):
                continue
            if module.running_mean is not None:
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
            if module.weight is not None:
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)


def _disable_randomness(model) -> None:
    """Dropout and stochastic depth (torchvision's StochasticDepth, timm's DropPath and
    DropBlock2d) to eval mode: their masks are random."""
    for module in model.modules():
        name = type(module).__name__
        if "Dropout" in name or name in ("StochasticDepth", "DropPath", "DropBlock2d"):
            module.eval()


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected| (the absolute error if expected is all 0)."""
    error = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item()
    return error / scale if scale > 0 else error


def backend_line(backend: str, device) -> str:
    """Which implementation ran, in words."""
    from fastconv.backend import TRITON_INTERPRETER

    if backend == "torch":
        return "torch reference (F.conv2d, ...; set TRITON_INTERPRET=1 to run the kernels)"
    if device.type == "cpu" and TRITON_INTERPRETER:
        return "triton, in Triton's interpreter on the CPU (TRITON_INTERPRET=1)"
    return f"triton, compiled, on {device}"


def _results(model, x, mode: str, seed: int) -> dict:
    """``model(x)``'s output and, in train mode, the gradients of x and of each parameter
    for a seeded random output gradient."""
    import torch

    if mode == "eval":
        with torch.no_grad():
            return {"output": model(x)}
    x = x.detach().requires_grad_()
    y = model(x)
    generator = torch.Generator().manual_seed(seed)
    y.backward(torch.randn(y.shape, generator=generator).to(y.device, y.dtype))
    grads = {f"grad {name}": p.grad for name, p in model.named_parameters()}
    return {"output": y, "input grad": x.grad, **grads}


def check_parity(model, candidate, x, mode: str, seed: int) -> dict[str, float]:
    """Relative errors of ``candidate`` (run in x's dtype) against ``model`` run in float64:
    the output and, in train mode, the input and every parameter gradient, by name. The
    original failing on ``x`` is a :class:`CLIError`."""
    import copy

    try:
        expected = _results(copy.deepcopy(model).double(), x.double(), mode, seed)
    except Exception as exc:
        size = "x".join(map(str, x.shape))
        raise CLIError(
            f"the original model fails on a {size} input in {mode} mode: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    actual = _results(candidate, x, mode, seed)
    return {
        name: relative_error(actual[name], expected[name])
        for name in actual
        if actual[name] is not None and expected.get(name) is not None
    }


def compare(errors: dict[str, float], baseline: dict[str, float], tolerance: float):
    """``(name, error, limit)`` for the tensor whose error is largest against its limit,
    ``max(tolerance, FACTOR * baseline)``: the original model's own error in the same dtype
    bounds what float rounding alone explains (a gradient that is 0 in exact arithmetic,
    such as a convolution bias before a BatchNorm in train mode, has a huge relative error
    in any dtype)."""
    limits = {name: max(tolerance, BASELINE_FACTOR * baseline.get(name, 0.0)) for name in errors}
    name = max(errors, key=lambda key: errors[key] / limits[key])
    return name, errors[name], limits[name]


def run(args: argparse.Namespace) -> int:
    import copy

    import torch

    from fastconv.backend import use_backend
    from fastconv.fusion import convert

    device = resolve_device(args.device)
    _, backend = resolve_backend_choice(args.backend, device)
    torch.backends.cudnn.allow_tf32 = False  # fp32 kernels in full precision: a strict check
    torch.manual_seed(args.seed)
    model = build_model(args.model)
    randomize_batchnorms(model)
    model = model.to(device).train(args.mode == "train")
    if args.mode == "train":
        _disable_randomness(model)
    dtype = getattr(torch, args.dtype)
    converted, report = convert(model)
    converted = converted.to(dtype)
    x = torch.randn(args.input_size, generator=torch.Generator().manual_seed(args.seed))
    x = x.to(device=device, dtype=dtype)
    with use_backend(backend):
        try:
            errors = check_parity(model, converted, x, args.mode, args.seed)
        except CLIError:
            raise
        except Exception as exc:
            print(f"the converted model failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    try:
        baseline = check_parity(model, copy.deepcopy(model).to(dtype), x, args.mode, args.seed)
    except Exception:  # torch may lack a kernel for this dtype on this device
        baseline = {}
    worst, error, limit = compare(errors, baseline, TOLERANCES[args.dtype])
    torch_error = baseline.get(worst, float("nan"))
    if args.markdown:
        name = args.model.removeprefix("torchvision:")
        ratio = f"{error / limit:.2f}"
        cells = [name, *report.row().values(), f"{errors['output']:.1e}", ratio]
        print("| " + " | ".join(cells) + " |")
    else:
        size = "x".join(map(str, args.input_size))
        print(report)
        print(f"backend: {backend_line(backend, device)}")
        print(
            f"parity ({args.mode} mode, input {size}): relative error against the original in "
            f"float64 of the converted model in {args.dtype} (of the original in {args.dtype})"
        )
        print(f"  output               {errors['output']:.2e} ({baseline.get('output', 0):.2e})")
        if args.mode == "train":
            grads = [name for name in errors if name.startswith("grad ")]
            worst_grad, grad_error, grad_limit = compare(
                {n: errors[n] for n in grads}, baseline, TOLERANCES[args.dtype]
            )
            print(
                f"  input gradient       {errors['input grad']:.2e} "
                f"({baseline.get('input grad', 0):.2e})"
            )
            print(
                f"  {len(grads)} parameter gradients, the closest to its limit: {worst_grad} "
                f"{grad_error:.2e} ({baseline.get(worst_grad, 0):.2e}), "
                f"{grad_error / grad_limit:.2f} of the limit"
            )
    if error > limit:
        print(
            f"parity FAILED: {worst}: relative error {error:.2e} > {limit:.2e} "
            f"(max of {TOLERANCES[args.dtype]:g} and {BASELINE_FACTOR} x the original's "
            f"{torch_error:.2e} in {args.dtype})",
            file=sys.stderr,
        )
        return 1
    if not args.markdown:
        print(
            f"parity ok: every error <= max({TOLERANCES[args.dtype]:g}, "
            f"{BASELINE_FACTOR} x the original's error in {args.dtype})"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), convert and check; returns the exit status."""
    args = parse_args(argv)
    return exit_on_cli_error(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())

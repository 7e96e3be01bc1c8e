"""python -m fastconv.convert: report, backend line, parity in eval and train mode, the
markdown row, exit statuses (parity failure 1, bad model spec or failing model 2), --help
without torch."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from fastconv.convert import main

TINY = ["--input-size", "2x3x8x8"]


class Tiny(nn.Module):
    """conv-BN-ReLU, a residual conv-BN-add-ReLU, pools and a linear head."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)) + y)
        return self.head(self.pool(y))


def tiny_model() -> nn.Module:
    return Tiny()


def failing_model() -> nn.Module:
    raise RuntimeError("no weights here")


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_tiny_model_parity(mode, capsys):
    status = main(["test_convert_cli:tiny_model", "--mode", mode, *TINY])
    out = capsys.readouterr().out
    assert status == 0, out
    assert f"fastconv.convert: fx, model in {mode} mode" in out
    assert "  convs on fastconv      2/2" in out
    assert "  BatchNorms folded      2/2" in out
    assert "  adds fused               1" in out
    expected_backend = "compiled" if torch.cuda.is_available() else "in Triton's interpreter"
    assert f"backend: triton, {expected_backend}" in out
    assert "parity ok" in out
    if mode == "train":
        assert "10 parameter gradients" in out  # conv1, bn1, conv2, bn2, linear: weight, bias


def test_markdown_row(capsys):
    status = main(["test_convert_cli:tiny_model", "--markdown", *TINY])
    out = capsys.readouterr().out.splitlines()
    assert status == 0
    [row] = out
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:10] == [
        "test_convert_cli:tiny_model", "eval", "fx", "2/2", "2/2", "2/2", "2/2", "1", "0",
        cells[9],
    ]  # fmt: skip
    assert float(cells[9]) < 1e-4 and float(cells[10]) <= 1


def test_torchvision_model_on_the_torch_backend(capsys):
    status = main(["torchvision:resnet18", "--backend", "torch", "--input-size", "1x3x32x32"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "convs on fastconv    20/20" in out and "adds fused               8" in out
    assert "backend: torch reference" in out


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_timm_model_on_the_torch_backend(mode, capsys):
    """timm:NAME builds the model with timm.create_model; its BatchNormAct2d layers fold."""
    args = ["timm:resnet10t", "--mode", mode, "--backend", "torch", "--input-size", "2x3x32x32"]
    status = main(args)
    out = capsys.readouterr().out
    assert status == 0, out
    assert "convs on fastconv    14/14" in out and "BatchNorms folded    14/14" in out
    assert "activations fused    11/11" in out and "adds fused               4" in out
    assert "parity ok" in out
    status = main([*args, "--markdown"])
    row = capsys.readouterr().out
    assert status == 0 and row.startswith(
        f"| timm:resnet10t | {mode} | fx | 14/14 | 5/5 | 14/14 | 11/11 | 4 | 0 |"
    )


def test_parity_failure_exits_1(monkeypatch, capsys):
    import fastconv.fusion

    real_convert = fastconv.fusion.convert

    def broken_convert(model):
        converted, report = real_convert(model)
        with torch.no_grad():
            converted.conv1.weight.mul_(1.5)
        return converted, report

    monkeypatch.setattr(fastconv.fusion, "convert", broken_convert)
    status = main(["test_convert_cli:tiny_model", "--backend", "torch", *TINY])
    captured = capsys.readouterr()
    assert status == 1
    assert captured.err.startswith("parity FAILED: output: relative error ")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("resnet18", "model 'resnet18': expected torchvision:NAME, timm:NAME or MODULE:FUNCTION"),
        ("torchvision:resnet19", "torchvision has no model 'resnet19'"),
        ("timm:resnet19", "timm has no model 'resnet19'"),
        ("no_such_module:build", "cannot import no_such_module: No module named"),
        ("test_convert_cli:no_such", "test_convert_cli has no function 'no_such'"),
        ("test_convert_cli:failing_model", "building it failed: RuntimeError: no weights here"),
        ("test_convert_cli:TINY", "test_convert_cli has no function 'TINY'"),
        ("sys:getrecursionlimit", "returned int, not a torch.nn.Module"),
    ],
)
def test_bad_model_is_one_error_line(spec, message, capsys):
    assert main([spec]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_original_failing_on_the_input_is_one_error_line(capsys):
    status = main(["test_convert_cli:tiny_model", "--mode", "train", "--input-size", "1x3x1x1"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert err.startswith("error: the original model fails on a 1x3x1x1 input in train mode: ")


def test_bad_input_size_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["torchvision:resnet18", "--input-size", "3x64x64"])
    assert exit_info.value.code == 2
    assert "expected NxCxHxW" in capsys.readouterr().err


def test_help_does_not_import_torch():
    code = (
        "import sys\nfrom fastconv.convert import parse_args\ntry:\n    parse_args(['--help'])\n"
        "except SystemExit:\n    pass\nprint('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "--markdown" in result.stdout and "--input-size" in result.stdout
    assert result.stdout.strip().endswith("False")

"""python -m fastconv.train end to end on generated images (CPU, torch reference backend).

Most runs are in-process (``train.main(argv)``) on a tiny setting: the small network at
16 px, 80 images (72 train / 8 validation, 4 steps of 16 per epoch), no worker processes.
Subprocesses only where the process itself matters: ``python -m``, ``--help`` without torch,
SIGKILL and torchrun.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import conv_activations
from fake_kaggle import FAST_TRAIN_FLAGS, cli_env, write_bad_files
from torch import nn

from fastconv import backend, cli, predict, train, training
from fastconv.checkpoint import load_checkpoint, save_checkpoint
from fastconv.data import CLASS_NAMES, write_demo_dataset
from fastconv.plots import plot_confusion_matrix

# 40 demo images per class: 72 train / 8 validation, 4 steps of 16 per epoch.
STEPS_PER_EPOCH = 4
EPOCHS = 2
TINY_FLAGS = (
    "--amp=off",  # float32 on every machine: --amp auto would pick bf16 on some CPUs only
    "--img-size=16",
    "--model=catdog-small",
    "--batch-size=16",
    "--lr=0.003",
    "--workers=0",
    "--backend=torch",
)
WALL_CLOCK = set(training.WALL_CLOCK_FIELDS)


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    """Kaggle layout: 80 synthetic images (cats blue circles, dogs orange squares), 4 bad files."""
    root = write_demo_dataset(tmp_path_factory.mktemp("data") / "demo", per_class=40)
    write_bad_files(root / "train")
    (root / "train" / "cat.9005.jpg").unlink()  # a good PNG: keep 80 images
    return root


def run_flags(data: Path, out: Path, *extra: str) -> list[str]:
    """The flags of the reference run (plus ``extra``)."""
    return [f"--data={data}", f"--epochs={EPOCHS}", f"--out={out}", *TINY_FLAGS, *extra]


def skip_figures(monkeypatch) -> None:
    """Drawing the two PNGs takes about a second per run: only the end-to-end run draws them."""
    monkeypatch.setattr(training, "plot_history", lambda *args, **kwargs: None)
    monkeypatch.setattr(training, "plot_confusion_matrix", lambda *args, **kwargs: None)


@pytest.fixture(autouse=True)
def no_figures(monkeypatch) -> None:
    skip_figures(monkeypatch)


@pytest.fixture(scope="module")
def reference_run(demo_data, tmp_path_factory) -> Path:
    """The run left alone that every interrupted-and-resumed run must reproduce exactly."""
    out = tmp_path_factory.mktemp("reference") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        skip_figures(monkeypatch)
        assert train.main(run_flags(demo_data, out)) == 0
    return out


def call_main(argv: list[str]) -> int:
    """``train.main(argv)``'s exit status, also when the parser exits."""
    try:
        return train.main(argv)
    except SystemExit as exc:
        return exc.code


def read_history(run: Path) -> list[dict[str, float]]:
    with open(run / "history.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def assert_same_value(a, b, where: str = "state") -> None:
    """Exact equality of nested dicts/lists of tensors and numbers (tensors via torch.equal)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert (a.dtype, a.shape) == (b.dtype, b.shape), where
        assert torch.equal(a.cpu(), b.cpu()), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same_value(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_value(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_run(run: Path, reference: Path) -> None:
    """Bit-identical weights, optimizer and schedule, identical history but wall-clock columns."""
    got, want = load_checkpoint(run / "last.pt"), load_checkpoint(reference / "last.pt")
    assert got.keys() == want.keys()
    for key in ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "best_val_acc"):
        assert_same_value(got[key], want[key], key)
    if "ema_model" in want:  # --ema (the default)
        for key in ("ema_model", "ema_updates"):
            assert_same_value(got[key], want[key], key)
    rows, want_rows = read_history(run), read_history(reference)
    assert len(rows) == len(want_rows) == EPOCHS
    for row, want_row in zip(rows, want_rows, strict=True):
        assert {k: v for k, v in row.items() if k not in WALL_CLOCK} == {
            k: v for k, v in want_row.items() if k not in WALL_CLOCK
        }


def patch_training_forward(monkeypatch, on_call, mode: str = "train") -> list[int]:
    """Make the models call ``on_call(n)`` on their n-th forward in ``mode``; returns the count."""
    calls = [0]
    build = training.build_model

    def build_with_hook(*args, **kwargs):
        model = build(*args, **kwargs)

        def hook(module, inputs):
            if module.training == (mode == "train"):
                calls[0] += 1
                on_call(calls[0])

        model.register_forward_pre_hook(hook)
        return model

    monkeypatch.setattr(training, "build_model", build_with_hook)
    return calls


def ctrl_c_at(n: int, times: int = 1, signum: int = signal.SIGINT):
    """An ``on_call`` that sends this process ``signum`` (Ctrl-C) during its n-th forward."""

    def on_call(call: int) -> None:
        if call == n:
            for _ in range(times):
                signal.raise_signal(signum)

    return on_call


# --------------------------------------------------------------------------- help, startup


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as info:
        train.main(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # as wide as the terminal: unwrap
    for flag in (
        "--data", "--epochs", "--batch-size", "--lr", "--weight-decay", "--img-size", "--model",
        "--amp", "--channels-last", "--device", "--seed", "--workers", "--out", "--resume",
        "--save-every", "--backend", "--limit", "--val-fraction", "--demo", "--activation",
        "--warmup",
    ):  # fmt: skip
        assert flag in text
    assert "{auto,off,fp16,bf16}" in text and "{auto,triton,torch}" in text
    assert "{silu,relu,gelu}" in text and "relu for catdog-res and resnet18" in text
    assert "(default: tmp)" in text and "(default: 0.1)" in text
    assert "$FASTCONV_BACKEND" in text
    assert "one-cycle schedule is rebuilt" in text  # how --epochs extends a resumed run
    assert "Only --epochs, --device, --workers, --backend, --out and --save-every" in text


NO_TORCH_SCRIPT = """
import runpy, sys
for argv in (["--help"], ["--lr=0"], ["--img-size=8", "--model=catdog"],
             ["--activation=silu", "--model=catdog-res"]):
    sys.argv = ["fastconv.train", *argv]
    try:
        runpy.run_module("fastconv.train", run_name="__main__")
    except SystemExit as exc:
        print("exit", exc.code, flush=True)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "numpy", "triton"))
print("heavy:", heavy)
"""


def test_help_and_argument_errors_import_no_torch():
    """--help and bad arguments answer before torch, numpy or triton are imported."""
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH_SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("exit 2") == 3 and "exit 0" in result.stdout
    assert "usage: python -m fastconv.train" in result.stdout
    assert "argument --lr: must be > 0.0, got 0" in result.stderr
    assert "--img-size 8 is too small for --model catdog" in result.stderr
    assert "--activation silu does not fit --model: model catdog-res can be built" in result.stderr
    assert "heavy: []" in result.stdout


def test_importing_functional_does_not_import_dynamo():
    """Registering the torch.library ops does not import torch._dynamo (1-2 s of start-up)."""
    code = "import sys, fastconv.layers; print('torch._dynamo' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# --------------------------------------------------------------------------- runs


@pytest.mark.slow
def test_demo_run_end_to_end(tmp_path):
    run = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable, "-m", "fastconv.train", "--demo", f"--data={tmp_path}", "--epochs=2",
            "--limit=96", f"--out={run}", "--channels-last", *FAST_TRAIN_FLAGS,
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "demo" / "train" / "cat.0.jpg").is_file()
    assert "parameters" in result.stdout
    assert result.stdout.count("epoch 1/2  train loss") == 1
    for name in ("args.json", "history.csv", "last.pt", "best.pt", "curves.png"):
        assert (run / name).stat().st_size > 0, name
    assert (run / "confusion_matrix.png").stat().st_size > 0
    history = read_history(run)
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert history[1]["val_acc"] >= 0.8  # blue circles vs orange squares
    state = load_checkpoint(run / "last.pt")  # weights_only=True
    assert state["epoch"] == 2 and state["step"] == 0
    assert state["class_names"] == ["cat", "dog"]
    assert state["args"] == json.loads((run / "args.json").read_text())
    assert state["args"]["channels_last"] is True


def test_no_data_exits_2_with_instructions(tmp_path, capsys):
    assert train.main([f"--data={tmp_path}", *TINY_FLAGS]) == 2
    captured = capsys.readouterr()
    assert "https://www.kaggle.com/c/dogs-vs-cats" in captured.err
    assert "kaggle competitions download -c dogs-vs-cats" in captured.err
    assert "Traceback" not in captured.err + captured.out


def test_nan_loss_stops_the_run(demo_data, tmp_path, monkeypatch, capsys):
    build = training.build_model

    def build_nan_model(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_hook(lambda module, inputs, output: output * float("nan"))
        return model

    monkeypatch.setattr(training, "build_model", build_nan_model)
    flags = [f"--data={demo_data}", f"--out={tmp_path / 'run'}", "--save-every=0", *TINY_FLAGS]
    assert train.main(flags) == 3
    assert "training loss was nan at epoch 1, step 1" in capsys.readouterr().err
    assert not (tmp_path / "run" / "last.pt").exists()


# --------------------------------------------------------------------------- resume


def test_resume_restores_every_part_of_the_state(demo_data, tmp_path, monkeypatch):
    """Change each part of a checkpoint; a resumed Trainer holds exactly the changed values.

    (fp16, so that the GradScaler has a state, and --ema; the Trainer is inspected right after
    loading.)
    """
    run = tmp_path / "run"
    flags = [f"--data={demo_data}", "--epochs=2", f"--out={run}", "--ema=0.9", *TINY_FLAGS]
    flags.append("--amp=fp16")
    patch_training_forward(monkeypatch, ctrl_c_at(2))
    assert train.main(flags) == train.EXIT_INTERRUPTED
    monkeypatch.undo()
    state = load_checkpoint(run / "last.pt")
    assert (state["epoch"], state["step"]) == (0, 2)
    assert state["scaler"], "fp16 runs have GradScaler state"

    for tensor in state["model"].values():
        tensor.add_(3)
    for tensor in state["ema_model"].values():
        tensor.add_(5)
    state["ema_updates"] += 10
    for buffers in state["optimizer"]["state"].values():
        buffers["exp_avg"].add_(0.5)
        buffers["step"].add_(1)
    state["optimizer"]["param_groups"][0]["lr"] = 1.5e-3
    state["scheduler"]["last_epoch"] -= 1
    state["scheduler"]["_last_lr"] = [2.5e-4, 2.5e-4]
    state["scaler"]["scale"] = 1234.0
    state["scaler"]["_growth_tracker"] = 7
    state["epoch"], state["step"] = 1, 3
    state["epoch_sums"] = {
        "loss": torch.tensor(12.5, dtype=torch.float64),
        "correct": torch.tensor(21),
        "seen": 48,
    }
    state["history"] = [{field: 0.25 for field in training.HISTORY_FIELDS} | {"epoch": 1}]
    state["best_val_acc"], state["best_confusion"] = 0.456, [[1, 2], [3, 4]]
    save_checkpoint(state, run / "changed.pt")

    class Restored(Exception):
        pass

    restored = {}
    load = training.Trainer.load

    def load_and_capture(self, *args, **kwargs):
        load(self, *args, **kwargs)
        restored.update(self.checkpoint())
        raise Restored

    skip_figures(monkeypatch)
    monkeypatch.setattr(training.Trainer, "load", load_and_capture)
    with pytest.raises(Restored):
        train.main([f"--resume={run / 'changed.pt'}", "--workers=0", "--backend=torch"])
    for key in (
        "model", "ema_model", "ema_updates", "optimizer", "scheduler", "scaler", "epoch", "step",
        "epoch_sums", "history", "best_val_acc", "best_confusion",
    ):  # fmt: skip
        assert_same_value(restored[key], state[key], key)


@pytest.mark.parametrize(
    ("where", "mode", "at", "position"),
    [
        ("mid-epoch", "train", STEPS_PER_EPOCH + 2, (1, 2)),
        ("last step of an epoch", "train", STEPS_PER_EPOCH, (0, STEPS_PER_EPOCH)),
        ("during validation (epoch boundary)", "eval", 1, (1, 0)),
    ],
)
def test_ctrl_c_then_resume_equals_the_run_left_alone(
    where, mode, at, position, demo_data, reference_run, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    patch_training_forward(monkeypatch, ctrl_c_at(at), mode)
    assert train.main(run_flags(demo_data, run)) == train.EXIT_INTERRUPTED
    state = load_checkpoint(run / "last.pt")
    assert (state["epoch"], state["step"]) == position  # the interrupted step was finished
    assert "continue with: python -m fastconv.train --resume" in capsys.readouterr().err

    monkeypatch.undo()
    calls = patch_training_forward(monkeypatch, lambda n: None)
    assert train.main([*run_flags(demo_data, run), f"--resume={run / 'last.pt'}"]) == 0
    done = position[0] * STEPS_PER_EPOCH + position[1]
    assert calls[0] == EPOCHS * STEPS_PER_EPOCH - done  # no step repeated or skipped
    assert_same_run(run, reference_run)


def test_second_ctrl_c_aborts_at_once(demo_data, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    flags = [f"--data={demo_data}", f"--out={run}", "--epochs=2", *TINY_FLAGS]
    patch_training_forward(monkeypatch, ctrl_c_at(STEPS_PER_EPOCH + 2, times=2))
    assert train.main(flags) == train.EXIT_INTERRUPTED
    assert "aborted (Ctrl-C)" in capsys.readouterr().err
    state = load_checkpoint(run / "last.pt")  # the end of epoch 1; the abort did not save
    assert (state["epoch"], state["step"]) == (1, 0)


def test_sigterm_stops_after_the_step_like_ctrl_c(demo_data, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    patch_training_forward(monkeypatch, ctrl_c_at(2, signum=signal.SIGTERM))
    assert train.main(run_flags(demo_data, run)) == 128 + signal.SIGTERM
    state = load_checkpoint(run / "last.pt")
    assert (state["epoch"], state["step"]) == (0, 2)
    assert state["epoch_sums"]["seen"] == 2 * 16
    assert "stopped in epoch 1 after 2 of 4 steps" in capsys.readouterr().err


SLEEP_AT_STEP = """
import pathlib, sys, time
from fastconv import train, training
marker, at = pathlib.Path(sys.argv[1]), int(sys.argv[2])
build, calls = training.build_model, [0]

def build_with_pause(*args, **kwargs):
    model = build(*args, **kwargs)

    def hook(module, inputs):
        if module.training:
            calls[0] += 1
            if calls[0] == at:
                marker.touch()
                time.sleep(600)  # killed here, in the middle of a step

    model.register_forward_pre_hook(hook)
    return model

training.build_model = build_with_pause
sys.exit(train.main(sys.argv[3:]))
"""


@pytest.mark.slow
def test_sigkill_then_resume_repeats_only_the_lost_steps(
    demo_data, reference_run, tmp_path, monkeypatch
):
    run, marker = tmp_path / "run", tmp_path / "in-step-6"
    kill_at = STEPS_PER_EPOCH + 2  # epoch 2, step 2: last.pt was saved after step 1
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SLEEP_AT_STEP,
            str(marker),
            str(kill_at),
            *run_flags(demo_data, run, "--save-every=0"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env(),
    )
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert proc.poll() is None, "training ended before reaching the step"
            assert time.monotonic() < deadline, "step not reached after 180 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # no chance to clean up or save
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state = load_checkpoint(run / "last.pt")
    assert (state["epoch"], state["step"]) == (1, 1)  # saved inside the epoch (--save-every 0)

    calls = patch_training_forward(monkeypatch, lambda n: None)
    resume = [*run_flags(demo_data, run, "--save-every=0"), f"--resume={run / 'last.pt'}"]
    assert train.main(resume) == 0
    assert calls[0] == EPOCHS * STEPS_PER_EPOCH - (kill_at - 1)  # only the lost steps again
    assert_same_run(run, reference_run)


def test_resume_with_more_epochs_extends_the_schedule(
    demo_data, reference_run, tmp_path, monkeypatch
):
    """--epochs 3 on a finished 2-epoch run: one more epoch on the rebuilt one-cycle curve."""
    run = tmp_path / "run"
    after_load = {}
    load = training.Trainer.load

    def load_and_look(self, *args, **kwargs):
        load(self, *args, **kwargs)
        group = self.optimizer.param_groups[0]
        after_load.update(lr=group["lr"], beta1=group["betas"][0], total=self.scheduler.total_steps)

    monkeypatch.setattr(training.Trainer, "load", load_and_look)
    flags = [f"--resume={reference_run / 'last.pt'}", f"--out={run}", "--workers=0"]
    assert train.main([*flags, f"--epochs={EPOCHS + 1}", "--backend=torch"]) == 0

    # The lr and beta1 of a one-cycle schedule for 3 epochs after the 8 steps already taken.
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=3e-3)
    total = (EPOCHS + 1) * STEPS_PER_EPOCH
    warmup = load_checkpoint(reference_run / "last.pt")["args"]["warmup"]
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=3e-3, total_steps=total, pct_start=warmup
    )
    for _ in range(EPOCHS * STEPS_PER_EPOCH):
        optimizer.step()
        schedule.step()
    assert after_load == {
        "lr": optimizer.param_groups[0]["lr"],
        "beta1": optimizer.param_groups[0]["betas"][0],
        "total": total,
    }
    rows, reference_rows = read_history(run), read_history(reference_run)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert rows[:EPOCHS] == reference_rows
    state = load_checkpoint(run / "last.pt")
    assert (state["epoch"], state["step"]) == (EPOCHS + 1, 0)
    assert state["scheduler"]["last_epoch"] == state["scheduler"]["total_steps"] == total
    assert state["args"]["epochs"] == EPOCHS + 1


@pytest.mark.parametrize("warmup", [0.25, 0.75])
def test_warmup_is_the_share_of_steps_that_raise_the_learning_rate(
    warmup, demo_data, tmp_path, monkeypatch
):
    lrs = []
    seed_step = training.Trainer.seed_step

    def record_lr(self, *args):
        lrs.append(self.optimizer.param_groups[0]["lr"])
        seed_step(self, *args)

    monkeypatch.setattr(training.Trainer, "seed_step", record_lr)
    run = tmp_path / "run"
    assert train.main(run_flags(demo_data, run, f"--warmup={warmup}")) == 0
    total = EPOCHS * STEPS_PER_EPOCH
    peak = round(warmup * total) - 1  # the step OneCycleLR reaches --lr at
    assert len(lrs) == total and lrs[peak] == pytest.approx(3e-3)
    assert lrs[: peak + 1] == sorted(lrs[: peak + 1]) and lrs[peak:] == sorted(lrs[peak:])[::-1]
    assert load_checkpoint(run / "last.pt")["args"]["warmup"] == warmup


def test_a_warmup_of_exactly_one_step_is_a_one_line_error(demo_data, tmp_path, capsys):
    run = tmp_path / "run"
    warmup = 1 / (EPOCHS * STEPS_PER_EPOCH)  # OneCycleLR cannot build this schedule
    assert train.main(run_flags(demo_data, run, f"--warmup={warmup}")) == 2
    err = capsys.readouterr().err
    assert f"error: --warmup {warmup} makes the warm-up exactly 1 of the 8 steps" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("epochs", [[], [f"--epochs={EPOCHS}"]])
def test_resuming_a_finished_run_has_nothing_to_do(epochs, reference_run, capsys):
    last = reference_run / "last.pt"
    before = last.read_bytes()
    assert train.main([f"--resume={last}", "--workers=0", "--backend=torch", *epochs]) == 0
    out = capsys.readouterr().out
    assert f"nothing left to do: {last} has finished all {EPOCHS} epochs" in out
    assert f"--epochs N with N > {EPOCHS}" in out
    assert last.read_bytes() == before


def test_resume_accepts_repeated_flags_and_new_allowed_ones(reference_run, tmp_path, capsys):
    """Flags equal to the checkpoint's, and --device/--workers/--out/--save-every, are fine."""
    last = reference_run / "last.pt"
    flags = [
        f"--resume={last}", "--model=catdog-small", "--img-size=16", "--lr=0.003", "--seed=0",
        "--device=cpu", "--workers=1", "--save-every=60", f"--out={tmp_path}", "--backend=torch",
    ]  # fmt: skip
    assert train.main(flags) == 0
    assert "nothing left to do" in capsys.readouterr().out


# --------------------------------------------------------------------------- bad input


def early_error_cases() -> list:
    """(flags, env, name the one error line must hold): errors found before any data is read."""
    gpu = torch.cuda.is_available()
    cuda = f"cuda:{torch.cuda.device_count()}" if gpu else "cuda"
    cases = [
        (["--lr=0"], {}, "--lr"),
        (["--lr=-1"], {}, "--lr"),
        (["--lr=nan"], {}, "--lr"),
        (["--lr=fast"], {}, "--lr"),
        (["--epochs=0"], {}, "--epochs"),
        (["--epochs=-2"], {}, "--epochs"),
        (["--batch-size=0"], {}, "--batch-size"),
        (["--batch-size=1.5"], {}, "--batch-size"),
        (["--img-size=8"], {}, "--img-size"),
        (["--img-size=15"], {}, "--img-size"),
        (["--device=foo"], {}, "--device"),
        ([f"--device={cuda}"], {}, "--device"),
        (["--workers=-1"], {}, "--workers"),
        (["--val-fraction=1"], {}, "--val-fraction"),
        (["--limit=3"], {}, "--limit"),
        (["--seed=-1"], {}, "--seed"),
        (["--weight-decay=-0.1"], {}, "--weight-decay"),
        (["--save-every=-1"], {}, "--save-every"),
        (["--model=resnet"], {}, "--model"),
        (["--amp=fp8"], {}, "--amp"),
        (["--shift=-1"], {}, "--shift"),
        (["--shift=64"], {}, "--shift"),
        (["--crop-scale=0"], {}, "--crop-scale"),
        (["--crop-scale=1.5"], {}, "--crop-scale"),
        (["--crop-scale=nan"], {}, "--crop-scale"),
        (["--label-smoothing=1"], {}, "--label-smoothing"),
        (["--label-smoothing=-0.1"], {}, "--label-smoothing"),
        (["--ema=1"], {}, "--ema"),
        (["--warmup=0"], {}, "--warmup"),
        (["--warmup=1"], {}, "--warmup"),
        (["--ema=-0.1"], {}, "--ema"),
        (["--activation=tanh"], {}, "--activation"),
        (["--model=catdog-res", "--activation=silu"], {}, "--activation silu does not fit --model"),
        (["--backend=bogus"], {}, "--backend"),
        ([], {"FASTCONV_BACKEND": "bogus"}, "FASTCONV_BACKEND"),
    ]
    return [pytest.param(*case, id=" ".join(case[0]) or str(case[1])) for case in cases]


@pytest.mark.parametrize(("flags", "env", "named"), early_error_cases())
def test_bad_argument_exits_2_with_one_line_before_reading_data(
    flags, env, named, tmp_path, monkeypatch, capsys
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    data = write_demo_dataset(tmp_path / "data", per_class=2)
    base = [f"--data={data}", f"--out={tmp_path / 'run'}", "--workers=0"]
    base += [] if any(f.startswith("--backend") for f in flags) or env else ["--backend=torch"]
    code = call_main([*base, "--model=catdog-small", *flags])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert named in lines[0]
    assert "Traceback" not in err
    assert not (data / "cache").exists()  # refused before any image was decoded


@pytest.mark.parametrize(
    ("variable", "flags"), [("FASTCONV_BACKEND", []), ("--backend", ["--backend=triton"])]
)
def test_forced_triton_that_cannot_run_exits_2(variable, flags, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(backend, "TRITON_INTERPRETER", False)  # as on a CPU-only machine
    monkeypatch.setenv("FASTCONV_BACKEND", "triton")
    code = call_main([f"--data={tmp_path}", "--device=cpu", *flags])
    err = capsys.readouterr().err
    assert code == 2
    (line,) = err.strip().splitlines()
    assert f"{variable}=triton" in line and "Triton's interpreter is off" in line
    assert "Traceback" not in err


def write_file(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def foreign_checkpoints(folder: Path, last: Path) -> dict[str, Path]:
    """Files that are not resumable checkpoints, by kind."""
    good = last.read_bytes()
    state = load_checkpoint(last)
    other_model = dict(state, args=dict(state["args"], model="catdog"))
    predict_only = {k: state[k] for k in ("model", "args", "class_names")}
    bad_setting = dict(state, args=dict(state["args"], model="resnet9", img_size="16"))
    (folder / "a-folder.pt").mkdir()
    torch.save({"weight": torch.zeros(3)}, folder / "state_dict.pt")
    torch.save([1, 2, 3], folder / "list.pt")
    with open(folder / "object.pt", "wb") as f:
        pickle.dump(argparse.Namespace(model="catdog"), f)  # an object, not plain data
    torch.save(other_model, folder / "other_model.pt")
    torch.save(predict_only, folder / "predict_only.pt")
    torch.save(bad_setting, folder / "bad_setting.pt")
    return {
        "missing": folder / "missing.pt",
        "empty": write_file(folder / "empty.pt", b""),
        "truncated": write_file(folder / "truncated.pt", good[: len(good) // 2]),
        "random bytes": write_file(folder / "random.pt", os.urandom(4096)),
        "text": write_file(folder / "text.pt", b"not a checkpoint\n"),
        "folder": folder / "a-folder.pt",
        "a plain state_dict": folder / "state_dict.pt",
        "a list": folder / "list.pt",
        "a pickled object": folder / "object.pt",
        "weights of another model": folder / "other_model.pt",
        "no training state": folder / "predict_only.pt",
        "an unknown model": folder / "bad_setting.pt",
    }


RESUME_FILE_CASES = (
    "missing", "empty", "truncated", "random bytes", "text", "folder", "a plain state_dict",
    "a list", "a pickled object", "weights of another model", "no training state",
    "an unknown model",
)  # fmt: skip


@pytest.mark.parametrize("kind", RESUME_FILE_CASES)
def test_unusable_resume_checkpoint_exits_2_with_one_line(kind, reference_run, tmp_path, capsys):
    path = foreign_checkpoints(tmp_path, reference_run / "last.pt")[kind]
    # --epochs 3: the reference run finished its 2, so a good file would train a 3rd.
    with warnings.catch_warnings(record=True) as caught:  # a warning is a 2nd stderr line
        warnings.simplefilter("always")
        code = call_main([f"--resume={path}", "--workers=0", "--backend=torch", "--epochs=3"])
    assert [str(w.message) for w in caught] == []
    err = capsys.readouterr().err
    assert code == 2
    (line,) = err.strip().splitlines()
    assert f"--resume {path}" in line
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("flag", "named"),
    [
        ("--model=catdog", "--model catdog conflicts with catdog-small"),
        ("--img-size=32", "--img-size 32 conflicts with 16"),
        ("--batch-size=8", "--batch-size 8 conflicts with 16"),
        ("--lr=0.01", "--lr 0.01 conflicts with 0.003"),
        ("--seed=1", "--seed 1 conflicts with 0"),
        ("--amp=bf16", "--amp bf16 conflicts with off"),
        ("--no-channels-last", "--channels-last False conflicts with True"),
        ("--label-smoothing=0.2", "--label-smoothing 0.2 conflicts with 0.1"),
        ("--crop-scale=0.5", "--crop-scale 0.5 conflicts with 1.0"),
        ("--no-tta", "--tta False conflicts with True"),
        ("--ema=0.9", "--ema 0.9 conflicts with 0.999"),
        ("--warmup=0.3", "--warmup 0.3 conflicts with 0.45"),
        ("--activation=relu", "--activation relu conflicts with silu"),
        ("--data=elsewhere", "--data elsewhere conflicts with"),
        ("--epochs=1", "--epochs 1 is fewer than"),
    ],
)
def test_resume_flag_that_conflicts_with_the_checkpoint_exits_2(flag, named, reference_run, capsys):
    code = call_main([f"--resume={reference_run / 'last.pt'}", flag, "--backend=torch"])
    err = capsys.readouterr().err
    assert code == 2
    (line,) = err.strip().splitlines()
    assert named in line
    assert "Traceback" not in err


def test_img_size_check_follows_the_model_downsampling():
    def check(size: int, model: str) -> None:
        train.check_img_size(argparse.Namespace(img_size=size, model=model, shift=None))

    # 4 stages of 2x2 pooling each
    for model in ("catdog", "catdog-wide", "catdog-small", "catdog-large"):
        check(16, model)
        with pytest.raises(train.CLIError, match=f"--img-size 15 is too small for --model {model}"):
            check(15, model)
    check(8, "resnet18")  # three strided stages: no stride-2 stem, no max pool
    with pytest.raises(train.CLIError, match="resnet18: it halves the image 3 times, so it needs"):
        check(7, "resnet18")


def test_batch_larger_than_the_data_exits_2(demo_data, tmp_path, capsys):
    flags = [f"--data={demo_data}", f"--out={tmp_path / 'run'}", *TINY_FLAGS, "--batch-size=500"]
    assert train.main(flags) == 2
    err = capsys.readouterr().err
    (line,) = err.strip().splitlines()
    assert "--batch-size 500 is larger than the 72 training images" in line


def test_resume_on_other_images_exits_2(reference_run, tmp_path, capsys):
    """The same --data folder with an image fewer is not the data the checkpoint saw."""
    state = load_checkpoint(reference_run / "last.pt")
    data = write_demo_dataset(tmp_path / "data", per_class=40)
    (data / "train" / "dog.3.jpg").unlink()
    state["args"]["data"] = str(data)
    save_checkpoint(state, tmp_path / "last.pt")
    code = call_main(
        [f"--resume={tmp_path / 'last.pt'}", "--workers=0", "--backend=torch", "--epochs=3"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"--data {data}: its 79 readable images are not the 80" in err.strip().splitlines()[-1]


# --------------------------------------------------------------------------- backend


@pytest.mark.parametrize(
    ("env", "flags", "requested", "resolved", "source"),
    [
        # Under pytest TRITON_INTERPRET=1, so auto would pick triton: the variable must decide.
        ("torch", [], "torch", "torch", "$FASTCONV_BACKEND=torch"),
        ("triton", [], "triton", "triton", "$FASTCONV_BACKEND=triton"),
        ("triton", ["--backend=torch"], "torch", "torch", "--backend torch"),
        ("torch", ["--backend=auto"], "auto", "triton", "--backend auto"),
    ],
)
def test_backend_variable_is_honoured_and_the_backend_that_runs_is_printed_and_stored(
    env, flags, requested, resolved, source, demo_data, tmp_path, monkeypatch, capsys
):
    """Checked inside the first training step, then stopped (the interpreter is slow)."""
    assert backend.TRITON_INTERPRETER

    class FirstStep(Exception):
        pass

    seen = []

    def at_first_step(n):
        seen.append(backend.resolve_backend(torch.device("cpu")))
        raise FirstStep

    patch_training_forward(monkeypatch, at_first_step)
    monkeypatch.setenv("FASTCONV_BACKEND", env)
    run = tmp_path / "run"
    with pytest.raises(FirstStep):
        train.main([f"--data={demo_data}", f"--out={run}", *TINY_FLAGS[:-1], *flags])
    assert seen == [resolved]
    out = capsys.readouterr().out
    assert f"fastconv backend: {resolved} (requested {requested}, from {source})" in out
    args = json.loads((run / "args.json").read_text())
    assert (args["backend"], args["backend_resolved"]) == (requested, resolved)


# --------------------------------------------------------------------------- resnet18, data wait


def test_resnet18_trains_and_saves_torchvision_weights(tmp_path, capsys):
    """--model resnet18: torchvision's net converted to fastconv layers, trained, saved with
    torchvision's state_dict keys (they load into the plain torch.nn net), resumable."""
    from fastconv.models.resnet import small_image_resnet

    data = write_demo_dataset(tmp_path / "data", per_class=8)
    run = tmp_path / "run"
    flags = [f"--data={data}", f"--out={run}", "--epochs=1", "--img-size=8", "--model=resnet18"]
    flags += ["--batch-size=4", "--val-fraction=0.25", "--workers=0", "--backend=torch"]
    assert train.main(flags) == 0
    out = capsys.readouterr().out
    assert "model: resnet18, 11,169,858 parameters" in out
    state = load_checkpoint(run / "last.pt")
    assert state["args"]["model"] == "resnet18"
    plain = small_image_resnet("resnet18")
    assert list(state["model"]) == list(plain.state_dict())  # conv1.weight, ..., fc.bias
    plain.load_state_dict(state["model"])
    assert plain.conv1.stride == (1, 1) and isinstance(plain.maxpool, nn.Identity)
    resume = [f"--resume={run / 'last.pt'}", "--epochs=2", "--workers=0", "--backend=torch"]
    assert train.main(resume) == 0
    assert [row["epoch"] for row in read_history(run)] == [1, 2]


def test_history_and_epoch_line_report_the_wait_for_data(demo_data, reference_run, capsys):
    for row in read_history(reference_run):
        assert row["data_wait_s"] >= 0 and row["step_s"] > 0
        assert row["data_wait_s"] + row["step_s"] <= row["seconds"]
    run = reference_run.parent / "wait"
    assert train.main([f"--data={demo_data}", f"--out={run}", "--epochs=1", *TINY_FLAGS]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "epoch 1/1 " in line]
    (row,) = read_history(run)
    assert f"data wait {row['data_wait_s']:.1f} s (" in line


def test_loader_times_split_waiting_for_batches_from_the_steps():
    def slow_loader():
        for batch in range(3):
            time.sleep(0.05)  # the loader takes 50 ms per batch
            yield batch

    times = training.LoaderTimes()
    for _ in times.batches(slow_loader()):
        time.sleep(0.02)  # a 20 ms step
    assert 0.15 <= times.data_wait < 0.15 + 0.5
    assert 0.06 <= times.step < 0.06 + 0.5
    assert times.wait_share == pytest.approx(times.data_wait / (times.data_wait + times.step))


# --------------------------------------------------------------------------- inside a step


@pytest.mark.parametrize(
    ("amp", "native_bf16", "channels_last", "applied"),
    [
        ("off", True, False, "off"),
        ("bf16", False, True, "bf16"),
        ("fp16", True, True, "fp16"),
        ("auto", True, True, "bf16"),
        ("auto", False, True, "off"),
    ],
)
def test_amp_and_channels_last_take_effect_inside_a_training_step(
    amp, native_bf16, channels_last, applied, demo_data, tmp_path, monkeypatch
):
    """--amp auto is bf16 on a CPU with native bf16 only; the checkpoint saves what applied."""
    records = []
    build = training.build_model

    def build_with_probe(*args, **kwargs):
        model = build(*args, **kwargs)

        def probe(module, inputs, output):
            if module.training:
                records.append(
                    (
                        torch.is_autocast_enabled("cpu"),
                        torch.get_autocast_dtype("cpu"),
                        output.dtype,
                        inputs[0].is_contiguous(memory_format=torch.channels_last),
                        output.is_contiguous(memory_format=torch.channels_last),
                    )
                )

        for conv in (model.features[0], model.features[2]):  # the first two fused convs
            conv.register_forward_hook(probe)
        return model

    monkeypatch.setattr(training, "build_model", build_with_probe)
    monkeypatch.setattr(cli, "cpu_has_native_bf16", lambda: native_bf16)
    run = tmp_path / "run"
    flags = [f"--data={demo_data}", f"--out={run}", "--epochs=1", *TINY_FLAGS, f"--amp={amp}"]
    layout = "--channels-last" if channels_last else "--no-channels-last"
    assert train.main([*flags, layout]) == 0
    dtype = training.AMP_DTYPES[applied]
    want = (dtype is not None, dtype or torch.get_autocast_dtype("cpu"), dtype or torch.float32)
    assert len(records) == 2 * STEPS_PER_EPOCH
    for record in records:
        assert record[:3] == want
        assert record[3:] == (channels_last, channels_last)
    state = load_checkpoint(run / "last.pt")
    assert state["args"]["amp"] == applied  # a resume repeats it on any machine
    assert bool(state["scaler"]) == (applied == "fp16")  # GradScaler on


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_amp_auto_stays_float32_on_a_gpu(device, monkeypatch):
    monkeypatch.setattr(cli, "cpu_has_native_bf16", lambda: True)
    assert cli.resolve_amp("auto", torch.device(device)) == "off"
    assert cli.resolve_amp("bf16", torch.device(device)) == "bf16"


def test_progress_bar_shows_running_loss_and_accuracy_every_step(demo_data, tmp_path, monkeypatch):
    shown = []
    refresh = training.ProgressBar.refresh

    def record(self, *args, **kwargs):
        result = refresh(self, *args, **kwargs)
        shown.append((self.desc, self.n, self.postfix))
        return result

    monkeypatch.setattr(training.ProgressBar, "refresh", record)
    monkeypatch.setattr(training, "BAR_MININTERVAL", 0)  # redraw at every step
    run = tmp_path / "run"
    assert train.main([f"--data={demo_data}", f"--out={run}", "--epochs=1", *TINY_FLAGS]) == 0
    by_step = {n: postfix for desc, n, postfix in shown if desc == "epoch 1/1" and n > 0}
    assert sorted(by_step) == list(range(1, STEPS_PER_EPOCH + 1))
    losses = [by_step[n].split(",")[0] for n in sorted(by_step)]  # "loss=0.6931"
    assert all(loss.startswith("loss=") for loss in losses)
    assert len(set(losses)) == STEPS_PER_EPOCH  # a new running loss at every step
    (row,) = read_history(run)
    last = by_step[STEPS_PER_EPOCH]  # running values after the last step: the epoch's
    assert f"loss={row['train_loss']:.4f}" in last
    assert f"acc={100 * row['train_acc']:.1f}%" in last


# --------------------------------------------------------------------------- confusion matrix


class PixelOracle(nn.Module):
    """Predicts dog for white images and cat for black ones."""

    def forward(self, x):
        dog = (x.mean(dim=(1, 2, 3)) > 0).float()
        return torch.stack([1 - dog, dog], dim=1) * 10


def test_evaluate_confusion_matrix_rows_are_true_columns_predicted():
    black = torch.zeros(8, 8, 3, dtype=torch.uint8)
    white = torch.full((8, 8, 3), 255, dtype=torch.uint8)
    cat, dog = CLASS_NAMES.index("cat"), CLASS_NAMES.index("dog")
    samples = [(white, cat)] * 3 + [(black, cat)] + [(white, dog)] * 2  # 3 cats called dogs
    loader = torch.utils.data.DataLoader(samples, batch_size=4)
    args = argparse.Namespace(amp="off", channels_last=False, tta=False)
    proc = training.Process(0, 1, torch.device("cpu"))
    loss, acc, matrix = training.evaluate(PixelOracle(), loader, args, proc)
    assert matrix == [[1, 3], [0, 2]]  # [true cat: 1 cat, 3 dog], [true dog: 0 cat, 2 dog]
    assert acc == 3 / 6
    assert math.isclose(loss, 3 * 10 / 6, rel_tol=1e-4)  # 3 confident mistakes of ~10 nats


def test_confusion_matrix_plot_puts_true_classes_on_rows(tmp_path):
    matrix = [[1, 3], [0, 2]]
    fig = plot_confusion_matrix(matrix, ["cat", "dog"], tmp_path / "cm.png", title="t")
    assert (tmp_path / "cm.png").stat().st_size > 0
    (ax, _colorbar) = fig.axes
    assert (ax.get_ylabel(), ax.get_xlabel()) == ("true", "predicted")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat", "dog"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog"]
    assert ax.images[0].get_array().tolist() == matrix  # row i drawn at y = i
    for text in ax.texts:  # each count written in its cell: x = predicted, y = true
        x, y = text.get_position()
        assert text.get_text() == str(matrix[round(y)][round(x)])
    assert len(ax.texts) == 4


# --------------------------------------------------------------------------- torchrun


@pytest.mark.slow
def test_torchrun_two_processes_gloo(demo_data, tmp_path):
    run = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "fastconv.train", f"--data={demo_data}", "--epochs=2", f"--out={run}",
            "--device=cpu", *TINY_FLAGS,
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 process(es)" in result.stdout
    assert result.stdout.count("epoch 2/2  train loss") == 1  # rank 0 prints, rank 1 does not
    # 72 training images over 2 ranks: 36 each, 2 steps of 16 per rank and epoch.
    state = load_checkpoint(run / "last.pt")
    assert state["scheduler"]["last_epoch"] == 2 * 2
    assert state["data"]["world_size"] == 2
    assert not any(key.startswith("module.") for key in state["model"])
    assert [row["epoch"] for row in read_history(run)] == [1, 2]


class LeftSideOracle(nn.Module):
    """Says dog, 10 nats sure, when the left half of the image is brighter than the right."""

    def forward(self, x):
        half = x.shape[3] // 2
        margin = x[..., :half].mean(dim=(1, 2, 3)) - x[..., half:].mean(dim=(1, 2, 3))
        dog = (margin > 0).float()
        return torch.stack([1 - dog, dog], dim=1) * 10


def test_tta_validates_on_the_mean_of_the_image_and_its_mirror():
    left_white = torch.zeros(8, 8, 3, dtype=torch.uint8)
    left_white[:, :4] = 255
    dog = CLASS_NAMES.index("dog")
    loader = torch.utils.data.DataLoader([(left_white, dog)] * 4, batch_size=4)
    proc = training.Process(0, 1, torch.device("cpu"))
    plain = argparse.Namespace(amp="off", channels_last=False, tta=False)
    loss, acc, _ = training.evaluate(LeftSideOracle(), loader, plain, proc)
    assert acc == 1 and loss < 1e-4
    # the mirror image says cat just as surely: the mean is 1/2 each, a loss of log 2
    flipped = argparse.Namespace(amp="off", channels_last=True, tta=True)
    loss, _, _ = training.evaluate(LeftSideOracle(), loader, flipped, proc)
    assert math.isclose(loss, math.log(2), rel_tol=1e-5)


def record_calls(monkeypatch, owner, name: str, pick) -> list:
    """Wrap ``owner.<name>`` so that each call appends ``pick(*args, **kwargs)`` to the list
    returned, then runs the original."""
    calls = []
    original = getattr(owner, name)

    def spy(*args, **kwargs):
        calls.append(pick(*args, **kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


def test_label_smoothing_reaches_the_training_loss(demo_data, tmp_path, monkeypatch):
    smoothing = record_calls(
        monkeypatch, training.F, "cross_entropy", lambda *_, **kw: kw.get("label_smoothing", 0.0)
    )
    flags = run_flags(demo_data, tmp_path / "run", "--epochs=1", "--label-smoothing=0.25")
    assert train.main(flags) == 0
    assert smoothing == [0.25] * STEPS_PER_EPOCH
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["args"]
    assert saved["label_smoothing"] == 0.25 and saved["tta"] is True and saved["ema"] == 0.999


@pytest.mark.parametrize(("flags", "shift"), [([], 2), (["--shift=5"], 5), (["--shift=0"], 0)])
def test_shift_sets_the_largest_random_translation(flags, shift, demo_data, tmp_path, monkeypatch):
    shifts = record_calls(monkeypatch, training, "random_crop_flip", lambda _, padding, __: padding)
    assert train.main(run_flags(demo_data, tmp_path / "run", "--epochs=1", *flags)) == 0
    assert shifts == [shift] * STEPS_PER_EPOCH  # the default: 16 px / 8


@pytest.mark.parametrize(
    ("flags", "zooms"), [([], []), (["--crop-scale=0.4"], [0.4] * STEPS_PER_EPOCH)]
)
def test_crop_scale_zooms_every_training_batch(flags, zooms, demo_data, tmp_path, monkeypatch):
    """--crop-scale below 1 runs the random-resized crop on every training batch (after the
    shift and flip), and the checkpoint records it; left out, no batch is zoomed."""
    scales = record_calls(monkeypatch, training, "random_resized_crop", lambda _, scale, __: scale)
    assert train.main(run_flags(demo_data, tmp_path / "run", "--epochs=1", *flags)) == 0
    assert scales == zooms
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["args"]
    assert saved["crop_scale"] == (zooms[0] if zooms else 1.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("epochs", 2.0),
        ("lr", "0.001"),
        ("lr", float("nan")),
        ("seed", -1),
        ("shift", True),
        ("crop_scale", 1.5),
        ("label_smoothing", 1.0),
        ("model", "resnet9"),
        ("activation", "tanh"),
        ("activation", None),
        ("tta", 1),
        ("data", 7),
        ("batch_size", [16]),
    ],
)
def test_a_checkpoint_setting_the_parser_would_refuse_is_named(name, value):
    """Each setting a checkpoint brings is checked by its own flag's parser: type, range and
    choices; an invalid one is a CLIError naming it."""
    args, given = train.parse_args(["--resume=x/last.pt"])
    good = dict(vars(args), activation="silu")  # a run saves its activation resolved
    train.merge_resumed_args(good, args, given, "good.pt")
    saved = dict(good, **{name: value})
    with pytest.raises(
        train.CLIError, match=re.escape(f"holds an invalid {name} setting: {value!r}")
    ):
        train.merge_resumed_args(saved, args, given, "old.pt")


def test_resuming_a_checkpoint_older_than_a_flag_keeps_its_recipe(reference_run, tmp_path):
    """A checkpoint written before --label-smoothing/--tta/--ema/--activation existed trained
    without them (and with ReLU)."""
    state = load_checkpoint(reference_run / "last.pt")
    for name in train.SETTINGS_BEFORE_THEIR_FLAG:
        del state["args"][name]
    args, given = train.parse_args(["--resume=x/last.pt", "--label-smoothing=0.1"])
    with pytest.raises(train.CLIError, match="--label-smoothing 0.1 conflicts with 0.0"):
        train.merge_resumed_args(state["args"], args, given, "old.pt")
    args, given = train.parse_args(["--resume=x/last.pt"])
    merged = train.merge_resumed_args(state["args"], args, given, "old.pt")
    assert merged.label_smoothing == 0.0 and merged.tta is False and merged.shift is None
    assert merged.ema == 0.0 and merged.activation == "relu" and merged.crop_scale == 1.0


def test_activation_is_built_saved_and_predicted_with(reference_run, demo_data, tmp_path):
    """catdog nets train with SiLU unless --activation says otherwise; the checkpoint records
    it, and predict builds what the weights were trained with (ReLU for older checkpoints)."""
    state = load_checkpoint(reference_run / "last.pt")  # --activation left out
    assert state["args"]["activation"] == "silu"
    assert conv_activations(predict.load_model(state, torch.device("cpu"))) == {"silu"}
    run = tmp_path / "run"
    assert train.main(run_flags(demo_data, run, "--epochs=1", "--activation=relu")) == 0
    state = load_checkpoint(run / "last.pt")
    assert state["args"]["activation"] == "relu"
    assert conv_activations(predict.load_model(state, torch.device("cpu"))) == {"relu"}
    del state["args"]["activation"]  # written before --activation: a ReLU net
    assert conv_activations(predict.load_model(state, torch.device("cpu"))) == {"relu"}


def record_validated_weights(monkeypatch) -> list[dict]:
    """A copy of the weights each validation (``training.evaluate``) scores, in order."""
    validated = []
    evaluate = training.evaluate

    def spy(model, *args, **kwargs):
        validated.append({k: v.clone() for k, v in model.state_dict().items()})
        return evaluate(model, *args, **kwargs)

    monkeypatch.setattr(training, "evaluate", spy)
    return validated


def test_ema_is_validated_saved_and_predicted_with(demo_data, tmp_path, monkeypatch):
    """--ema: validation scores the averaged weights, last.pt holds them beside the trained
    ones, and predict loads them."""
    validated = record_validated_weights(monkeypatch)
    run = tmp_path / "run"
    assert train.main(run_flags(demo_data, run, "--ema=0.8")) == 0
    state = load_checkpoint(run / "last.pt")
    assert state["args"]["ema"] == 0.8
    assert state["ema_updates"] == EPOCHS * STEPS_PER_EPOCH
    assert len(validated) == EPOCHS
    assert_same_value(validated[-1], state["ema_model"], "validated weights")
    assert not torch.equal(state["ema_model"]["head.3.weight"], state["model"]["head.3.weight"])
    model = predict.load_model(state, torch.device("cpu"))
    assert_same_value(model.state_dict(), state["ema_model"], "predicted weights")


def test_ema_0_validates_saves_and_predicts_the_trained_weights(demo_data, tmp_path, monkeypatch):
    validated = record_validated_weights(monkeypatch)
    run = tmp_path / "run"
    assert train.main(run_flags(demo_data, run, "--epochs=1", "--ema=0")) == 0
    state = load_checkpoint(run / "last.pt")
    assert "ema_model" not in state and "ema_updates" not in state
    assert_same_value(validated[-1], state["model"], "validated weights")
    model = predict.load_model(state, torch.device("cpu"))
    assert_same_value(model.state_dict(), state["model"], "predicted weights")


@pytest.mark.slow
def test_compile_trains_through_torch_compile(demo_data, tmp_path, monkeypatch):
    """--compile runs the training steps through torch.compile (the inductor backend on the
    CPU; mode="reduce-overhead", CUDA graphs, on a GPU), saves the plain model's weights,
    and a resumed run may turn it off."""
    modes = record_calls(monkeypatch, torch, "compile", lambda model, **kw: kw.get("mode"))
    run = tmp_path / "run"
    assert train.main(run_flags(demo_data, run, "--epochs=1", "--compile")) == 0
    assert modes == [None]  # the CPU: no CUDA graphs
    saved = load_checkpoint(run / "last.pt")
    assert saved["args"]["compile"] is True
    assert not any(key.startswith("_orig_mod") for key in saved["model"])
    flags = [f"--resume={run / 'last.pt'}", "--epochs=2", "--no-compile", "--workers=0"]
    assert train.main([*flags, "--backend=torch"]) == 0
    assert modes == [None]

"""python -m fastconv.train end to end on generated images (CPU, torch reference backend)."""

from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fake_kaggle import FAST_TRAIN_FLAGS, cli_env, write_bad_files

from fastconv import backend, train
from fastconv.checkpoint import load_checkpoint
from fastconv.data import write_demo_dataset

# 40 demo images per class: 72 train / 8 validation, 4 steps of 16 per epoch.
STEPS_PER_EPOCH = 4


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    """Kaggle layout: 80 synthetic images (cats blue circles, dogs orange squares), 4 bad files."""
    root = write_demo_dataset(tmp_path_factory.mktemp("data") / "demo", per_class=40)
    write_bad_files(root / "train")
    (root / "train" / "cat.9005.jpg").unlink()  # a good PNG: keep 80 images
    return root


def read_history(run: Path) -> list[dict[str, float]]:
    with open(run / "history.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fastconv.train", *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=timeout,
    )


def patch_training_forward(monkeypatch, on_call) -> list[int]:
    """Make train's models call ``on_call(n)`` on their n-th training forward; returns the count."""
    calls = [0]
    build = train.build_model

    def build_with_hook(*args, **kwargs):
        model = build(*args, **kwargs)

        def hook(module, inputs):
            if module.training:
                calls[0] += 1
                on_call(calls[0])

        model.register_forward_pre_hook(hook)
        return model

    monkeypatch.setattr(train, "build_model", build_with_hook)
    return calls


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as info:
        train.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--data", "--epochs", "--batch-size", "--lr", "--img-size", "--amp", "--channels-last",
        "--device", "--seed", "--workers", "--out", "--resume", "--backend", "--limit",
        "--val-fraction", "--demo",
    ):  # fmt: skip
        assert flag in text
    assert "{off,fp16,bf16}" in text and "{auto,triton,torch}" in text
    assert "(default: tmp)" in text and "(default: 0.1)" in text


@pytest.mark.slow
def test_demo_run_end_to_end(tmp_path):
    run = tmp_path / "run"
    result = run_cli(
        "--demo", f"--data={tmp_path}", "--epochs=2", "--limit=96", f"--out={run}",
        "--channels-last", *FAST_TRAIN_FLAGS,
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


def test_no_data_exits_2_with_instructions(tmp_path):
    result = run_cli(f"--data={tmp_path}", *FAST_TRAIN_FLAGS, timeout=60)
    assert result.returncode == 2
    assert "https://www.kaggle.com/c/dogs-vs-cats" in result.stderr
    assert "kaggle competitions download -c dogs-vs-cats" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_interrupt_saves_last_then_resume_continues(demo_data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    flags = [f"--data={demo_data}", "--epochs=3", f"--out={run}", *FAST_TRAIN_FLAGS]

    def interrupt_in_second_step_of_epoch_2(n):
        if n == STEPS_PER_EPOCH + 2:
            raise KeyboardInterrupt

    patch_training_forward(monkeypatch, interrupt_in_second_step_of_epoch_2)
    assert train.main(flags) == train.EXIT_INTERRUPTED
    state = load_checkpoint(run / "last.pt")
    assert (state["epoch"], state["step"]) == (1, 1)
    assert state["scheduler"]["last_epoch"] == STEPS_PER_EPOCH + 1
    assert [row["epoch"] for row in state["history"]] == [1]

    monkeypatch.undo()
    calls = patch_training_forward(monkeypatch, lambda n: None)
    assert train.main([f"--resume={run / 'last.pt'}", "--workers=0", "--backend=torch"]) == 0
    assert calls[0] == 2 * STEPS_PER_EPOCH - 1  # the rest of epoch 2, then epoch 3
    state = load_checkpoint(run / "last.pt")
    assert (state["epoch"], state["step"]) == (3, 0)
    assert state["scheduler"]["last_epoch"] == 3 * STEPS_PER_EPOCH
    assert [row["epoch"] for row in read_history(run)] == [1, 2, 3]


def test_nan_loss_stops_the_run(demo_data, tmp_path, monkeypatch, capsys):
    build = train.build_model

    def build_nan_model(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_hook(lambda module, inputs, output: output * float("nan"))
        return model

    monkeypatch.setattr(train, "build_model", build_nan_model)
    code = train.main([f"--data={demo_data}", f"--out={tmp_path / 'run'}", *FAST_TRAIN_FLAGS])
    assert code == 3
    assert "training loss was nan at epoch 1, step 1" in capsys.readouterr().err
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.slow
def test_sigkill_leaves_a_loadable_last_checkpoint(demo_data, tmp_path):
    run = tmp_path / "run"
    flags = [f"--data={demo_data}", "--epochs=4", f"--out={run}", *FAST_TRAIN_FLAGS]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastconv.train", *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env(),
    )
    try:
        deadline = time.monotonic() + 180
        while not (run / "last.pt").exists():  # written at the end of epoch 1
            assert proc.poll() is None, "training ended before writing last.pt"
            assert time.monotonic() < deadline, "no last.pt after 180 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # now in epoch 2 (or saving): no chance to clean up
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] >= 1 and state["step"] == 0
    assert train.main([f"--resume={run / 'last.pt'}", "--workers=0", "--backend=torch"]) == 0
    assert [row["epoch"] for row in read_history(run)] == [1, 2, 3, 4]


@pytest.mark.slow
def test_torchrun_two_processes_gloo(demo_data, tmp_path):
    run = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "fastconv.train", f"--data={demo_data}", "--epochs=2", f"--out={run}",
            "--device=cpu", *FAST_TRAIN_FLAGS,
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
    assert not any(key.startswith("module.") for key in state["model"])
    assert [row["epoch"] for row in read_history(run)] == [1, 2]


def test_bf16_autocast_channels_last_run(demo_data, tmp_path, capsys):
    run = tmp_path / "run"
    flags = [f"--data={demo_data}", "--epochs=1", f"--out={run}", *FAST_TRAIN_FLAGS]
    assert train.main([*flags, "--amp=bf16", "--channels-last", "--img-size=16"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("warning: skipping unreadable image") == 4  # cache built here
    assert "(80 decoded, 4 skipped)" in captured.out
    assert "4 unreadable images skipped" in captured.out
    (row,) = read_history(run)
    assert all(math.isfinite(value) for value in row.values())


def test_forced_triton_without_a_way_to_run_it_exits_2(demo_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(backend, "TRITON_INTERPRETER", False)  # as on a CPU-only machine
    flags = [f"--data={demo_data}", f"--out={tmp_path / 'run'}", "--device=cpu"]
    assert train.main([*flags, "--backend=triton"]) == 2
    assert "fastconv backend 'triton' was forced" in capsys.readouterr().err


def test_setup_errors_exit_2_without_traceback(demo_data, tmp_path, capsys):
    flags = [f"--data={demo_data}", f"--out={tmp_path / 'run'}", *FAST_TRAIN_FLAGS]
    assert train.main([*flags, "--batch-size=500"]) == 2
    assert train.main([f"--resume={tmp_path / 'missing.pt'}", "--backend=torch"]) == 2
    err = capsys.readouterr().err
    assert "--batch-size 500 is larger than the 72 training images" in err
    assert "missing.pt does not exist" in err

"""python -m fastconv.predict: per-file predictions and Kaggle submission CSVs."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_kaggle import FAST_TRAIN_FLAGS, cli_env, write_bad_files

from fastconv import predict, train
from fastconv.backend import use_backend
from fastconv.checkpoint import load_checkpoint
from fastconv.data import load_image, normalize, write_demo_dataset

N_TEST = 12  # ids 1..12: numeric order differs from text order (1, 10, 11, 12, 2, ...)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """best.pt of a 2-epoch run on synthetic cats (blue circles) and dogs (orange squares)."""
    root = tmp_path_factory.mktemp("predict")
    data = write_demo_dataset(root / "demo", per_class=40, seed=1)
    run = root / "run"
    flags = [f"--data={data}", "--epochs=2", f"--out={run}", *FAST_TRAIN_FLAGS]
    assert train.main(flags) == 0
    return run / "best.pt"


@pytest.fixture
def test1(tmp_path) -> tuple[Path, dict[int, int]]:
    """A Kaggle-like test1/ folder: ``<id>.jpg`` demo images and bad files; ids -> labels."""
    demo = write_demo_dataset(tmp_path / "demo", per_class=N_TEST // 2, seed=2) / "train"
    folder = tmp_path / "test1"
    folder.mkdir()
    labels = {}
    for i in range(N_TEST // 2):
        for label, name in enumerate(("cat", "dog")):
            image_id = 2 * i + label + 1
            shutil.copy(demo / f"{name}.{i}.jpg", folder / f"{image_id}.jpg")
            labels[image_id] = label
    write_bad_files(folder, prefix=False)  # 9001-9004 are unreadable, 9005 is a fine PNG
    return folder, labels


def dog_probability(checkpoint_path: Path, image: Path) -> float:
    """P(dog) computed directly, for comparison with the CLI."""
    state = load_checkpoint(checkpoint_path)
    model = predict.load_model(state, torch.device("cpu"))
    array = load_image(image, state["args"]["img_size"])
    with use_backend("torch"), torch.no_grad():
        logits = model(normalize(torch.from_numpy(array[None])))
    return torch.softmax(logits, dim=1)[0, 1].item()


def test_folder_gives_sorted_clipped_submission(checkpoint, test1, tmp_path, capsys):
    folder, labels = test1
    out = tmp_path / "submission.csv"
    args = [f"--checkpoint={checkpoint}", str(folder), f"--out={out}", "--workers=0"]
    assert predict.main([*args, "--backend=torch"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: skipping unreadable image") == 4
    assert "skipped 4 unreadable file(s)" in err
    with open(out) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "label"]
    ids = [int(r[0]) for r in rows[1:]]
    assert ids == [*range(1, N_TEST + 1), 9005]
    probs = np.array([float(r[1]) for r in rows[1:]])
    assert ((probs >= 0.005) & (probs <= 0.995)).all()
    expected = np.clip(dog_probability(checkpoint, folder / "3.jpg"), 0.005, 0.995)
    assert probs[2] == pytest.approx(expected, abs=1e-5)
    predicted = (probs[:N_TEST] > 0.5).astype(int)
    truth = np.array([labels[i] for i in range(1, N_TEST + 1)])
    assert (predicted == truth).mean() >= 0.8


def test_files_print_class_and_probability(checkpoint, test1, capsys):
    folder, labels = test1
    files = [folder / "1.jpg", folder / "2.jpg", folder / "9002.jpg"]
    args = [f"--checkpoint={checkpoint}", *map(str, files), "--workers=0", "--backend=torch"]
    assert predict.main(args) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 2  # the truncated 9002.jpg is skipped
    for line, path in zip(lines, files, strict=False):
        name, label, p_dog = line.split("\t")
        assert name == str(path)
        assert label == ("dog" if float(p_dog.split("=")[1]) >= 0.5 else "cat")
        assert float(p_dog.split("=")[1]) == pytest.approx(dog_probability(checkpoint, path), 1e-3)
    assert "skipped 1 unreadable file(s)" in captured.err


def test_missing_path_and_bad_checkpoint_exit_2(checkpoint, tmp_path, capsys):
    assert predict.main([f"--checkpoint={checkpoint}", str(tmp_path / "nope.jpg")]) == 2
    not_a_checkpoint = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(1)}, not_a_checkpoint)
    assert predict.main([f"--checkpoint={not_a_checkpoint}", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no such file or folder" in err and "not a fastconv.train checkpoint" in err


def test_cli_module_runs(checkpoint, test1, tmp_path):
    folder, _ = test1
    out = tmp_path / "sub.csv"
    result = subprocess.run(
        [sys.executable, "-m", "fastconv.predict", "--checkpoint", str(checkpoint), str(folder)]
        + ["--out", str(out), "--workers=2"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {out} ({N_TEST + 1} images)" in result.stdout
    assert len(out.read_text().splitlines()) == N_TEST + 2

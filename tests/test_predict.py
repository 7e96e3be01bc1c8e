"""python -m fastconv.predict: per-file predictions and Kaggle submission CSVs."""

from __future__ import annotations

import csv
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_kaggle import FAST_TRAIN_FLAGS, cli_env, write_bad_files

from fastconv import backend, data, predict, train
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
    return write_test1(tmp_path)


def write_test1(root: Path) -> tuple[Path, dict[int, int]]:
    """A Kaggle-like test1/ folder: ``<id>.jpg`` demo images and bad files; ids -> labels."""
    demo = write_demo_dataset(root / "demo", per_class=N_TEST // 2, seed=2) / "train"
    folder = root / "test1"
    folder.mkdir()
    labels = {}
    for i in range(N_TEST // 2):
        for label, name in enumerate(("cat", "dog")):
            image_id = 2 * i + label + 1
            shutil.copy(demo / f"{name}.{i}.jpg", folder / f"{image_id}.jpg")
            labels[image_id] = label
    write_bad_files(folder, prefix=False)  # 9001-9004 are unreadable, 9005 is a fine PNG
    return folder, labels


def dog_probability(checkpoint_path: Path, image: Path, tta: bool = True) -> float:
    """P(dog) computed directly, to compare with the CLI: with ``tta`` (predict's default) the
    mean over the image and its mirror image."""
    state = load_checkpoint(checkpoint_path)
    model = predict.load_model(state, torch.device("cpu"))
    array = load_image(image, state["args"]["img_size"])
    views = [array, np.ascontiguousarray(array[:, ::-1])] if tta else [array]
    with use_backend("torch"), torch.no_grad():
        logits = model(normalize(torch.from_numpy(np.stack(views))))
    return torch.softmax(logits, dim=1)[:, 1].mean().item()


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
    assert "scored" not in capsys.readouterr().out  # no label in names like 3.jpg


def test_folder_with_labelled_names_reports_accuracy_and_confusion(checkpoint, tmp_path, capsys):
    """cat.N / dog.N names are scored; other names are predicted but not scored."""
    folder = write_demo_dataset(tmp_path / "demo", per_class=6, seed=4) / "train"
    shutil.copy(folder / "dog.0.jpg", folder / "42.jpg")  # a dog without a label in its name
    (folder / "cat.99.jpg").write_bytes(b"")  # unreadable: skipped, not scored
    out_csv = tmp_path / "sub.csv"
    argv = [f"--checkpoint={checkpoint}", folder, f"--out={out_csv}", "--workers=0"]
    code, out, err = run_cli([*argv, "--backend=torch"], capsys)
    assert code == 0, err
    with open(out_csv) as f:
        p_dog = {row["id"]: float(row["label"]) for row in csv.DictReader(f)}
    assert len(p_dog) == 13 and "42" in p_dog
    matrix = [[0, 0], [0, 0]]
    for image_id, p in p_dog.items():
        if image_id != "42":
            matrix[image_id.startswith("dog")][p >= 0.5] += 1
    right = matrix[0][0] + matrix[1][1]
    lines = out.splitlines()
    assert lines[0] == f"wrote {out_csv} (13 images)"
    assert lines[1] == (
        "scored 12 of 13 folder images, those named cat.* / dog.* (1 without a label in the name)"
    )
    assert lines[2] == f"accuracy {100 * right / 12:.2f}% ({right} right)"
    assert lines[3].split() == ["true", "\\", "predicted", "cat", "dog"]
    assert lines[4].split() == ["cat", *map(str, matrix[0])]
    assert lines[5].split() == ["dog", *map(str, matrix[1])]
    assert len(lines) == 6


def test_score_report_table():
    pairs = [(0, 0)] * 1200 + [(0, 1)] * 3 + [(1, 1)] * 7 + [(1, 0)] * 2
    assert predict.score_report(pairs, 1215).splitlines() == [
        "scored 1,212 of 1,215 folder images, those named cat.* / dog.* (3 without a label in "
        "the name)",
        "accuracy 99.59% (1,207 right)",
        "true \\ predicted    cat    dog",
        "cat               1,200      3",
        "dog                   2      7",
    ]


@pytest.fixture
def default_ctrl_c():
    """SIGINT handled as in a Python process started from a terminal (KeyboardInterrupt);
    restored afterwards. A pytest started in the background by a non-interactive shell
    (``.ci/run &``) inherits SIGINT ignored, and Python then keeps it ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_exits_130_with_one_line_and_writes_nothing(
    checkpoint, test1, tmp_path, monkeypatch, capsys, default_ctrl_c
):
    load_image, calls = data.load_image, [0]

    def ctrl_c_on_the_third(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            signal.raise_signal(signal.SIGINT)
        return load_image(*args, **kwargs)

    monkeypatch.setattr(data, "load_image", ctrl_c_on_the_third)
    folder, _ = test1
    out_csv = tmp_path / "sub.csv"
    argv = [f"--checkpoint={checkpoint}", folder, f"--out={out_csv}", "--workers=0"]
    code, out, err = run_cli([*argv, "--backend=torch"], capsys)
    assert code == 130
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "interrupted (Ctrl-C)"
    assert not out_csv.exists() and out == ""


def test_resnet18_checkpoint_is_rebuilt_for_prediction(tmp_path, capsys):
    """A --model resnet18 checkpoint: predict rebuilds the converted torchvision net, whose
    P(dog) is the plain torchvision net's with the same weights."""
    from fastconv.models.resnet import small_image_resnet

    demo = write_demo_dataset(tmp_path / "demo", per_class=6, seed=6)
    run = tmp_path / "run"
    flags = [f"--data={demo}", "--epochs=1", f"--out={run}", "--img-size=8", "--batch-size=4"]
    assert train.main([*flags, "--model=resnet18", "--workers=0", "--backend=torch"]) == 0
    image = demo / "train" / "dog.1.jpg"
    argv = [f"--checkpoint={run / 'last.pt'}", image, "--workers=0", "--backend=torch"]
    code, out, err = run_cli([*argv, "--no-tta"], capsys)
    assert code == 0, err
    plain = small_image_resnet("resnet18")
    plain.load_state_dict(load_checkpoint(run / "last.pt")["ema_model"])  # --ema's default
    with torch.no_grad():
        logits = plain.eval()(normalize(torch.from_numpy(load_image(image, 8)[None])))
    expected = torch.softmax(logits, dim=1)[0, 1].item()
    assert float(out.strip().split("P(dog)=")[1]) == pytest.approx(expected, abs=1e-4)


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


@pytest.mark.parametrize("tta", [True, False])
def test_tta_averages_each_probability_with_the_mirror_images(tta, checkpoint, test1, capsys):
    folder, _ = test1
    files = [folder / "1.jpg", folder / "2.jpg"]
    args = [f"--checkpoint={checkpoint}", *map(str, files), "--workers=0", "--backend=torch"]
    assert predict.main([*args, "--tta" if tta else "--no-tta"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    printed = 6e-5  # P(dog) is printed with 4 decimals; the mirror moves it by more here
    for line, path in zip(lines, files, strict=True):
        p_dog = float(line.split("\t")[2].split("=")[1])
        assert p_dog == pytest.approx(dog_probability(checkpoint, path, tta), abs=printed)
        assert p_dog != pytest.approx(dog_probability(checkpoint, path, not tta), abs=printed)


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
    assert "fastconv backend: " in result.stderr
    assert f"wrote {out} ({N_TEST + 1} images)" in result.stdout
    assert len(out.read_text().splitlines()) == N_TEST + 2


# --------------------------------------------------------------------------- bad input


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``predict.main(argv)`` in this process: (exit status, stdout, stderr)."""
    try:
        code = predict.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error(code: int, err: str, *culprits: str) -> str:
    """Exit status 2, no traceback, exactly one ``error:`` line, naming every culprit."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    for culprit in culprits:
        assert str(culprit) in errors[0], errors[0]
    assert code == 2, err
    return errors[0]


@pytest.fixture(scope="module")
def one_image(tmp_path_factory) -> Path:
    """A single readable image file (a demo dog)."""
    demo = write_demo_dataset(tmp_path_factory.mktemp("one") / "demo", per_class=1, seed=3)
    return demo / "train" / "dog.0.jpg"


def edit_checkpoint(good: Path, path: Path, edit) -> None:
    """Save ``good`` changed by ``edit(state)`` (in place) to ``path``."""
    state = torch.load(good, weights_only=True)
    edit(state)
    torch.save(state, path)


def torchvision_reference_checkpoint(good: Path, path: Path) -> None:
    """What torchvision's reference train.py saves: args as an argparse.Namespace."""
    import argparse

    import torchvision

    model = torchvision.models.resnet18(weights=None)
    args = argparse.Namespace(model="resnet18", lr=0.1)
    torch.save({"model": model.state_dict(), "epoch": 3, "args": args}, path)


def torchvision_weights_with_fastconv_args(good: Path, path: Path) -> None:
    import torchvision

    resnet = torchvision.models.resnet18(weights=None).state_dict()

    def paste(state: dict) -> None:  # a hand-made checkpoint: torchvision's weights only
        state.pop("ema_model")
        state.update(model=resnet)

    edit_checkpoint(good, path, paste)


def set_arg(key, value):
    return lambda good, path: edit_checkpoint(good, path, lambda s: s["args"].update({key: value}))


# name -> (writes a bad checkpoint at ``path`` given the good one, what the error says).
BAD_CHECKPOINTS = {
    "missing": (lambda good, path: None, "does not exist"),
    "folder": (lambda good, path: path.mkdir(), "is a folder"),
    "empty": (lambda good, path: path.write_bytes(b""), "is empty"),
    "truncated": (
        lambda good, path: path.write_bytes(good.read_bytes()[: good.stat().st_size // 2]),
        "cannot be read",
    ),
    "random bytes": (
        lambda good, path: path.write_bytes(np.random.default_rng(0).bytes(4096)),
        "cannot be read",
    ),
    "text": (lambda good, path: path.write_text("best model ever\n"), "cannot be read"),
    "pickled module": (
        lambda good, path: torch.save(torch.nn.Linear(2, 2), path),
        "cannot be read",
    ),
    "plain state_dict": (
        lambda good, path: torch.save(torch.load(good, weights_only=True)["model"], path),
        "not a fastconv.train checkpoint",
    ),
    "torchvision reference checkpoint": (torchvision_reference_checkpoint, "cannot be read"),
    "torchvision weights": (
        torchvision_weights_with_fastconv_args,
        "58 missing: features.0.weight",
    ),
    # catdog-small's weights under the name of the wider catdog
    "another model's shapes": (
        set_arg("model", "catdog"),
        "another shape: features.0.weight (16, 3, 3, 3) (model: (32, 3, 3, 3))",
    ),
    "unknown model": (set_arg("model", "resnet50"), "'resnet50'"),
    "img_size too small": (set_arg("img_size", 8), "img_size 8"),
    "img_size not an int": (set_arg("img_size", "32"), "img_size '32'"),
    "channels_last not a bool": (set_arg("channels_last", "yes"), "channels_last 'yes'"),
    "missing weight": (
        lambda good, path: edit_checkpoint(
            good, path, lambda s: s["ema_model"].pop("head.3.weight")
        ),
        "1 missing: head.3.weight",
    ),
    "extra weight": (
        lambda good, path: edit_checkpoint(
            good, path, lambda s: s["ema_model"].update({"head.4.weight": torch.zeros(2)})
        ),
        "1 unexpected: head.4.weight",
    ),
    "weights not tensors": (
        lambda good, path: edit_checkpoint(
            good, path, lambda s: s["ema_model"].update({"head.3.bias": [0.0, 0.0]})
        ),
        "not tensors: head.3.bias",
    ),
    "ema weights not a dict": (
        lambda good, path: edit_checkpoint(good, path, lambda s: s.update(ema_model=[1.0])),
        "its weights are a list, not a dict of tensors",
    ),
    "other classes": (
        lambda good, path: edit_checkpoint(
            good, path, lambda s: s.update(class_names=["bird", "plane"])
        ),
        "['bird', 'plane']",
    ),
    "args not a dict": (
        lambda good, path: edit_checkpoint(good, path, lambda s: s.update(args=5)),
        "checkpoint",
    ),
}


@pytest.mark.parametrize("kind", BAD_CHECKPOINTS)
def test_bad_checkpoint_is_one_error_line_naming_the_file(
    checkpoint, one_image, tmp_path, kind, capsys
):
    bad = tmp_path / "bad.pt"
    write, reason = BAD_CHECKPOINTS[kind]
    write(checkpoint, bad)
    argv = [f"--checkpoint={bad}", one_image, "--workers=0", "--backend=torch"]
    code, out, err = run_cli(argv, capsys)
    line = assert_one_error(code, err, "--checkpoint", bad, reason)
    assert "\x1b" not in line  # no terminal colour codes from torch's message
    assert out == ""


@pytest.mark.parametrize(
    "flags, culprit",
    [
        (["--device=foo"], "--device"),
        (["--device=cuda"], "--device"),
        (["--device=cuda:3"], "--device"),
        (["--device=mps"], "--device"),
        (["--batch-size=0"], "--batch-size"),
        (["--batch-size=-4"], "--batch-size"),
        (["--batch-size=two"], "--batch-size"),
        (["--workers=-1"], "--workers"),
        (["--workers=1.5"], "--workers"),
        (["--backend=fast"], "--backend"),
        (["--checkpoint"], "--checkpoint"),
    ],
)
def test_bad_flag_is_one_error_line_naming_it(
    checkpoint, one_image, flags, culprit, capsys, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU
    code, out, err = run_cli([f"--checkpoint={checkpoint}", one_image, *flags], capsys)
    assert_one_error(code, err, culprit)
    assert out == ""


def test_missing_checkpoint_flag_is_named(one_image, capsys):
    code, _, err = run_cli([one_image], capsys)
    assert_one_error(code, err, "--checkpoint")


@pytest.mark.parametrize(
    "flag, env, culprit",
    [
        (None, "bogus", ("FASTCONV_BACKEND", "'bogus'")),
        (None, "triton", ("FASTCONV_BACKEND=triton", "forced")),  # but it cannot run here
        ("triton", None, ("--backend=triton", "forced")),
        ("triton", "torch", ("--backend=triton", "forced")),  # the flag wins over the variable
    ],
)
def test_bad_backend_is_one_error_line_naming_its_source(
    checkpoint, one_image, flag, env, culprit, capsys, monkeypatch
):
    monkeypatch.setattr(backend, "TRITON_INTERPRETER", False)  # Triton cannot run on the CPU
    monkeypatch.delenv("FASTCONV_BACKEND", raising=False)
    if env is not None:
        monkeypatch.setenv("FASTCONV_BACKEND", env)
    argv = [f"--checkpoint={checkpoint}", one_image, "--device=cpu", "--workers=0"]
    argv += [f"--backend={flag}"] if flag else []
    code, out, err = run_cli(argv, capsys)
    assert_one_error(code, err, *culprit)
    assert out == ""


@pytest.mark.parametrize(
    "flag, env, source",
    [
        (None, "torch", "$FASTCONV_BACKEND=torch"),
        ("torch", "triton", "--backend torch"),
        ("torch", "bogus", "--backend torch"),
    ],
)
def test_backend_that_ran_is_printed_and_honours_the_variable(
    checkpoint, one_image, flag, env, source, capsys, monkeypatch, record_aten_ops
):
    monkeypatch.setenv("FASTCONV_BACKEND", env)
    argv = [f"--checkpoint={checkpoint}", one_image, "--workers=0"]
    argv += [f"--backend={flag}"] if flag else []
    with record_aten_ops() as recorder:
        code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert f"fastconv backend: torch (requested torch, from {source})" in err
    assert any("convolution" in op for op in recorder.ops)  # torch's conv really ran
    assert out.startswith(f"{one_image}\t")


# --------------------------------------------------------------------------- bad images


@pytest.fixture
def bad_only(tmp_path) -> Path:
    """A folder whose image files are all unreadable."""
    folder = tmp_path / "bad_only"
    files = write_bad_files(folder, prefix=False)
    (folder / "9005.jpg").unlink()  # the one good PNG
    return folder, sorted(files.values())


def test_empty_folder_is_an_error_naming_it(checkpoint, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    code, out, err = run_cli([f"--checkpoint={checkpoint}", empty, "--backend=torch"], capsys)
    assert_one_error(code, err, empty, "no image files")
    assert out == ""


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="needs /dev/null")
def test_path_that_is_no_file_or_folder_is_an_error_naming_it(checkpoint, capsys):
    code, _, err = run_cli([f"--checkpoint={checkpoint}", "/dev/null", "--backend=torch"], capsys)
    assert_one_error(code, err, "/dev/null")


def test_missing_path_is_an_error_naming_it(checkpoint, one_image, tmp_path, capsys):
    nope = tmp_path / "nope.jpg"
    code, _, err = run_cli([f"--checkpoint={checkpoint}", one_image, nope], capsys)
    assert_one_error(code, err, nope, "no such file or folder")


@pytest.mark.parametrize("given", ["folder", "files"])
def test_no_readable_image_is_an_error_and_names_each_skipped_file(
    checkpoint, bad_only, tmp_path, given, capsys
):
    folder, bad_files = bad_only
    out_csv = tmp_path / "sub.csv"
    paths = [folder] if given == "folder" else bad_files
    argv = [f"--checkpoint={checkpoint}", *paths, f"--out={out_csv}", "--workers=0"]
    code, out, err = run_cli([*argv, "--backend=torch"], capsys)
    assert_one_error(code, err, "no readable image")
    warnings = [line for line in err.splitlines() if line.startswith("warning: skipping")]
    assert [line.split()[4].rstrip(":") for line in warnings] == list(map(str, bad_files))
    assert "skipped 4 unreadable file(s)" in err
    assert out == "" and not out_csv.exists()


def test_folder_with_no_readable_image_beside_good_files_is_an_error(
    checkpoint, bad_only, one_image, tmp_path, capsys
):
    folder, _ = bad_only
    out_csv = tmp_path / "sub.csv"
    argv = [f"--checkpoint={checkpoint}", one_image, folder, f"--out={out_csv}", "--workers=0"]
    code, out, err = run_cli([*argv, "--backend=torch"], capsys)
    assert_one_error(code, err, folder, "not written")
    assert out.startswith(f"{one_image}\t")  # the file's prediction is still printed
    assert not out_csv.exists()


def test_out_that_is_a_folder_is_an_error_before_any_work(checkpoint, test1, tmp_path, capsys):
    folder, _ = test1
    argv = [f"--checkpoint={checkpoint}", folder, f"--out={tmp_path}", "--backend=torch"]
    code, out, err = run_cli(argv, capsys)
    assert_one_error(code, err, "--out", tmp_path)
    assert "predicting" not in err  # nothing was decoded


def test_out_without_a_folder_is_a_warning(checkpoint, one_image, tmp_path, capsys):
    argv = [f"--checkpoint={checkpoint}", one_image, f"--out={tmp_path / 's.csv'}"]
    code, out, err = run_cli([*argv, "--workers=0", "--backend=torch"], capsys)
    assert code == 0 and "warning: --out" in err and "ignored" in err
    assert not (tmp_path / "s.csv").exists()


# --------------------------------------------------------------------------- results by input


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> dict[str, Path]:
    """Explicit good and bad files outside the folders; two folders with unreadable images.

    Shared by the tests of this module, which only read them.
    """
    tmp_path = tmp_path_factory.mktemp("mixed")
    folder, _ = write_test1(tmp_path)  # ids 1..12 + good 9005.png-as-jpg, bad 9001..9004
    singles = tmp_path / "singles"
    singles.mkdir()
    demo = write_demo_dataset(tmp_path / "demo2", per_class=2, seed=5) / "train"
    for name in ("cat.0", "dog.0", "cat.1", "dog.1"):
        shutil.copy(demo / f"{name}.jpg", singles / f"{name}.jpg")
    (singles / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(demo / "dog.1.jpg", other / "101.jpg")
    shutil.copy(demo / "cat.1.jpg", other / "102.jpg")
    (other / "100.jpg").write_bytes(b"")  # sorts first: unreadable before the good ones
    return {
        "test1": folder,
        "other": other,
        **{p.stem: p for p in singles.iterdir()},
        "test1/3.jpg": folder / "3.jpg",  # a file given by name and inside a given folder
    }


ORDERS = [
    ["cat.0", "test1"],
    ["test1", "cat.0"],
    ["cat.0", "broken", "dog.0", "test1", "other", "cat.1"],
    ["other", "broken", "dog.1", "test1", "cat.0", "test1/3.jpg"],
    ["broken", "test1/3.jpg", "other", "dog.0", "dog.1", "cat.0", "cat.1", "test1", "test1"],
]


@pytest.mark.parametrize("batch_size", [3, 64])  # 1 would keep every result in order
@pytest.mark.parametrize("order", ORDERS, ids=["+".join(o) for o in ORDERS])
def test_every_result_goes_to_its_own_input(
    checkpoint, mixed, tmp_path, order, batch_size, capsys, expected_p_dog
):
    out_csv = tmp_path / "sub.csv"
    paths = [mixed[name] for name in order]
    argv = [f"--checkpoint={checkpoint}", *paths, f"--out={out_csv}", f"--batch-size={batch_size}"]
    code, out, err = run_cli([*argv, "--workers=0", "--backend=torch", "--device=cpu"], capsys)
    assert code == 0, err

    readable = [p for p in paths if p.is_file() and p.name != "broken.jpg"]
    lines = [line for line in out.splitlines() if not line.startswith("wrote ")]
    assert [line.split("\t")[0] for line in lines] == list(map(str, readable))
    for line, path in zip(lines, readable, strict=True):
        _, label, p_dog = line.split("\t")
        p = float(p_dog.removeprefix("P(dog)="))
        assert p == pytest.approx(expected_p_dog(path), abs=1e-4), path
        assert label == ("dog" if p >= 0.5 else "cat")

    folders = list(dict.fromkeys(p for p in paths if p.is_dir()))
    good = [f for d in folders for f in sorted(d.iterdir()) if f.stat().st_size > 0]
    good = [f for f in good if f.name not in {f"900{i}.jpg" for i in range(1, 5)}]
    with open(out_csv) as f:
        rows = list(csv.reader(f))[1:]
    assert [int(r[0]) for r in rows] == sorted(int(f.stem) for f in good)
    by_id = {int(f.stem): f for f in good}
    for image_id, label in rows:
        expected = np.clip(expected_p_dog(by_id[int(image_id)]), *predict.CLIP)
        assert float(label) == pytest.approx(expected, abs=1e-4), image_id
    assert f"wrote {out_csv} ({len(good)} images)" in out

    n_bad = ("broken" in order) + 4 * ("test1" in order) + ("other" in order)
    warned = [line for line in err.splitlines() if line.startswith("warning: skipping")]
    assert len(warned) == n_bad
    assert (f"skipped {n_bad} unreadable file(s)" in err) == (n_bad > 0)


@pytest.fixture(scope="module")
def expected_p_dog(checkpoint):
    """P(dog) of one image computed directly (:func:`dog_probability`), memoized."""
    cache: dict[Path, float] = {}

    def p_dog(path: Path) -> float:
        if path not in cache:
            cache[path] = dog_probability(checkpoint, path)
        return cache[path]

    return p_dog


# --------------------------------------------------------------------------- fast --help

IMPORT_CHECK = """
import runpy, sys
sys.argv = ["fastconv.predict", *sys.argv[1:]]
try:
    runpy.run_module("fastconv.predict", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "numpy", "PIL", "triton", "tqdm") if m in sys.modules)
print("status", code, "heavy", heavy, file=sys.stderr)
"""


@pytest.mark.parametrize(
    "argv",
    [["--help"], [], ["--batch-size=0", "x.jpg"], ["--checkpoint=a.pt", "x", "--workers=-2"]],
    ids=["help", "no arguments", "bad batch size", "bad workers"],
)
def test_help_and_argument_errors_import_nothing_heavy(argv):
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK, *argv],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
    )
    assert "heavy []" in result.stderr, result.stderr  # no torch, numpy, PIL, ...
    assert "Traceback" not in result.stderr
    if argv == ["--help"]:
        assert "status 0" in result.stderr
        assert "--checkpoint" in result.stdout and "FASTCONV_BACKEND" in result.stdout
    else:
        assert "status 2" in result.stderr
        assert len([line for line in result.stderr.splitlines() if "error:" in line]) == 1

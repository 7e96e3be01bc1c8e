"""fastconv.cli (argument types, device, backend, one-line errors) and fastconv.checkpoint."""

from __future__ import annotations

import argparse
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from fastconv import backend, cli
from fastconv.checkpoint import (
    CheckpointError,
    check_state_dict_fits,
    load_checkpoint,
    save_checkpoint,
)

# --------------------------------------------------------------------------- Parser, types


def parse(argv: list[str], **kwargs) -> argparse.Namespace:
    parser = cli.Parser(prog="tool")
    parser.add_argument("--n", **kwargs)
    return parser.parse_args(argv)


def test_parser_error_is_one_line_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as info:
        parse(["--n=x"], type=cli.int_at_least(1))
    assert info.value.code == cli.EXIT_USAGE == 2
    err = capsys.readouterr().err
    assert err == "tool: error: argument --n: expected an integer, got 'x' (see --help)\n"


@pytest.mark.parametrize(
    ("make", "good", "bad"),
    [
        (lambda: cli.int_at_least(1), {"1": 1, "64": 64}, ["0", "-1", "1.5", "x", ""]),
        (lambda: cli.int_at_least(0, 10), {"0": 0, "9": 9}, ["-1", "10", "1e3"]),
        (
            lambda: cli.float_above(0.0),
            {"3e-3": 3e-3, "1": 1.0},
            ["0", "-1", "nan", "inf", "-inf", "x"],
        ),
        (lambda: cli.float_above(0.0, 1.0), {"0.1": 0.1, "0.99": 0.99}, ["0", "1", "1.5"]),
        (lambda: cli.float_at_least(0.0), {"0": 0.0, "0.05": 0.05}, ["-0.1", "nan", "inf"]),
    ],
)
def test_argument_types_accept_the_range_and_refuse_the_rest(make, good, bad):
    parse_value = make()
    for text, value in good.items():
        assert parse_value(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=repr(text)[1:-1] or "expected"):
            parse_value(text)


# --------------------------------------------------------------------------- device


def test_resolve_device_accepts_cpu_and_auto():
    assert cli.resolve_device("cpu") == torch.device("cpu")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert cli.resolve_device("auto").type == want


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("foo", "--device 'foo' is not a device"),
        ("cuda:x", "--device 'cuda:x' is not a device"),
        ("mps", "--device mps: only auto, cpu, cuda and cuda:N are supported"),
        ("cuda:64", "--device cuda:64"),
    ],
)
def test_resolve_device_names_the_flag(name, message):
    with pytest.raises(cli.CLIError, match=message):
        cli.resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine with no GPU")
def test_resolve_device_cuda_without_a_gpu():
    with pytest.raises(cli.CLIError, match="--gpu cuda: no CUDA GPU is available here"):
        cli.resolve_device("cuda", flag="--gpu")


# --------------------------------------------------------------------------- backend


CPU = torch.device("cpu")


@pytest.fixture
def no_interpreter(monkeypatch):
    """As on a CPU-only machine without TRITON_INTERPRET: Triton cannot run CPU tensors."""
    monkeypatch.setattr(backend, "TRITON_INTERPRETER", False)


@pytest.mark.parametrize(
    ("env", "flag", "want"),
    [
        (None, None, ("auto", "torch")),
        ("torch", None, ("torch", "torch")),
        ("auto", None, ("auto", "torch")),
        (" Torch ", None, ("torch", "torch")),
        ("triton", "torch", ("torch", "torch")),  # the flag wins over the variable
        ("bogus", "auto", ("auto", "torch")),  # as set_backend wins over it in the library
    ],
)
def test_backend_choice_follows_flag_then_variable(env, flag, want, no_interpreter, monkeypatch):
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    if env is not None:
        monkeypatch.setenv(backend.ENV_VAR, env)
    assert cli.resolve_backend_choice(flag, CPU) == want


def test_backend_variable_forces_triton_where_it_can_run(monkeypatch):
    monkeypatch.setattr(backend, "TRITON_INTERPRETER", True)
    monkeypatch.setenv(backend.ENV_VAR, "triton")
    assert cli.resolve_backend_choice(None, CPU) == ("triton", "triton")


@pytest.mark.parametrize(
    ("env", "flag", "message"),
    [
        ("bogus", None, "FASTCONV_BACKEND must be one of auto, triton, torch, got 'bogus'"),
        ("triton", None, "FASTCONV_BACKEND=triton: fastconv backend 'triton' was forced"),
        (None, "triton", "--backend=triton: fastconv backend 'triton' was forced"),
    ],
)
def test_bad_or_impossible_backend_is_a_cli_error(env, flag, message, no_interpreter, monkeypatch):
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    if env is not None:
        monkeypatch.setenv(backend.ENV_VAR, env)
    with pytest.raises(cli.CLIError, match=message.replace("(", r"\(")) as info:
        cli.resolve_backend_choice(flag, CPU)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- exit_on_cli_error


def test_exit_on_cli_error_prints_one_line_and_returns_2(capsys):
    def fails() -> int:
        raise cli.CLIError("--x 3: too many")

    assert cli.exit_on_cli_error(fails) == 2
    assert capsys.readouterr().err == "error: --x 3: too many\n"
    assert cli.exit_on_cli_error(lambda: 7) == 7
    with pytest.raises(ZeroDivisionError):  # a bug is not a user error: it keeps its traceback
        cli.exit_on_cli_error(lambda: 1 // 0)


# --------------------------------------------------------------------------- checkpoints


def good_state() -> dict:
    model = nn.Linear(2, 2)
    args = {"model": "catdog", "img_size": 64, "channels_last": False}
    return {"model": model.state_dict(), "args": args, "class_names": ["cat", "dog"]}


class NotData:
    """A pickled object: ``weights_only=True`` refuses to build it."""


def bad_checkpoints(folder: Path) -> dict[str, tuple[Path, str]]:
    """(file, what the error says) by kind."""
    save_checkpoint(good_state(), folder / "good.pt")
    good = (folder / "good.pt").read_bytes()
    (folder / "folder.pt").mkdir()
    files = {
        "missing": (folder / "missing.pt", "does not exist"),
        "folder": (folder / "folder.pt", "is a folder"),
        "empty": (folder / "empty.pt", "is empty"),
        "truncated": (folder / "truncated.pt", "cannot be read as a checkpoint"),
        "random": (folder / "random.pt", "cannot be read as a checkpoint"),
        "text": (folder / "text.pt", "cannot be read as a checkpoint"),
        "pickled object": (folder / "object.pt", "cannot be read as a checkpoint"),
        "list": (folder / "list.pt", "is not a fastconv.train checkpoint (holds a"),
        "state_dict": (folder / "state_dict.pt", "missing keys ['model', 'args', 'class_names']"),
        "no args": (folder / "no_args.pt", "missing training arguments ['img_size'"),
        "args not a dict": (folder / "args_int.pt", "missing keys ['args']"),
    }
    (folder / "empty.pt").write_bytes(b"")
    (folder / "truncated.pt").write_bytes(good[: len(good) // 2])
    (folder / "random.pt").write_bytes(os.urandom(2048))
    (folder / "text.pt").write_text("hello\n")
    with open(folder / "object.pt", "wb") as f:
        pickle.dump(NotData(), f)  # protocol 4+: torch.load warns about it, as well as failing
    torch.save([1, 2], folder / "list.pt")
    torch.save(nn.Linear(2, 2).state_dict(), folder / "state_dict.pt")
    torch.save(dict(good_state(), args={"model": "catdog"}), folder / "no_args.pt")
    torch.save(dict(good_state(), args=5), folder / "args_int.pt")
    return files


@pytest.mark.parametrize(
    "kind",
    [
        "missing", "folder", "empty", "truncated", "random", "text", "pickled object", "list",
        "state_dict", "no args", "args not a dict",
    ],
)  # fmt: skip
def test_unusable_checkpoint_is_one_line_naming_the_file(kind, tmp_path):
    path, says = bad_checkpoints(tmp_path)[kind]
    with pytest.raises(CheckpointError) as info, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # a CLI would print a warning as a second line
        load_checkpoint(path)
    assert [str(w.message) for w in caught] == []
    message = str(info.value)
    assert message.startswith(str(path))
    assert says in message
    assert "\n" not in message


def test_checkpoint_round_trip(tmp_path):
    state = good_state()
    save_checkpoint(state, tmp_path / "a.pt")
    loaded = load_checkpoint(tmp_path / "a.pt")
    assert loaded["args"] == state["args"] and loaded["class_names"] == state["class_names"]
    for key, tensor in state["model"].items():
        assert torch.equal(loaded["model"][key], tensor)
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]  # no temporary file left


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda sd: sd.pop("bias"), "1 missing: bias"),
        (lambda sd: sd.update(extra=torch.zeros(1)), "1 unexpected: extra"),
        (lambda sd: sd.update(weight=torch.zeros(3, 2)), "1 of another shape: weight (3, 2)"),
        (lambda sd: sd.update(bias=[0.0, 0.0]), "1 not tensors: bias"),
    ],
)
def test_state_dict_that_does_not_fit_is_one_line(change, says):
    model = nn.Linear(2, 2)
    state_dict = model.state_dict()
    check_state_dict_fits(model, state_dict, "run/last.pt")  # fits
    change(state_dict)
    with pytest.raises(CheckpointError) as info:
        check_state_dict_fits(model, state_dict, "run/last.pt")
    message = str(info.value)
    assert message.startswith("run/last.pt: its weights do not fit the model Linear")
    assert says in message and "\n" not in message


def test_backend_choices_are_the_backend_modules():
    # spelled out in cli.py so that --help need not import torch through fastconv.backend
    assert cli.BACKEND_CHOICES == backend.BACKENDS


@pytest.mark.parametrize(
    ("flag", "env", "expected"),
    [
        ("triton", "torch", "--backend triton"),
        (None, "torch", "$FASTCONV_BACKEND=torch"),
        (None, None, "the default"),
    ],
)
def test_backend_source_names_what_decided(flag, env, expected, monkeypatch):
    if env is None:
        monkeypatch.delenv("FASTCONV_BACKEND", raising=False)
    else:
        monkeypatch.setenv("FASTCONV_BACKEND", env)
    assert cli.backend_source(flag) == expected

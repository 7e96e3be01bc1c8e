"""Backend selection: which implementation runs, and forced choices that cannot run."""

import pytest
import torch

from fastconv import backend

CPU = torch.device("cpu")


def test_env_var_forces_torch(monkeypatch):
    monkeypatch.setenv("FASTCONV_BACKEND", "torch")
    assert backend.get_backend() == "torch"
    assert backend.resolve_backend(CPU) == "torch"


def test_bad_env_var_names_the_variable(monkeypatch):
    monkeypatch.setenv("FASTCONV_BACKEND", "cudnn")
    with pytest.raises(ValueError, match="FASTCONV_BACKEND must be one of auto, triton, torch"):
        backend.get_backend()


def test_set_backend_wins_over_env_and_is_restored(monkeypatch):
    monkeypatch.setenv("FASTCONV_BACKEND", "torch")
    with backend.use_backend("triton"):
        assert backend.get_backend() == "triton"
        with backend.use_backend("auto"):
            assert backend.get_backend() == "auto"
        assert backend.get_backend() == "triton"
    assert backend.get_backend() == "torch"


def test_set_backend_rejects_unknown_name():
    with pytest.raises(ValueError, match="backend must be one of"):
        backend.set_backend("fast")


def test_auto_on_cpu_follows_the_interpreter(monkeypatch):
    monkeypatch.delenv("FASTCONV_BACKEND", raising=False)
    monkeypatch.setattr(backend, "TRITON_INTERPRETER", True)
    assert backend.resolve_backend(CPU) == "triton"
    monkeypatch.setattr(backend, "TRITON_INTERPRETER", False)
    assert backend.resolve_backend(CPU) == "torch"


def test_forced_triton_without_interpreter_raises(monkeypatch):
    monkeypatch.setattr(backend, "TRITON_INTERPRETER", False)
    with (
        backend.use_backend("triton"),
        pytest.raises(backend.BackendUnavailableError, match="TRITON_INTERPRET=1"),
    ):
        backend.resolve_backend(CPU)


def test_forced_triton_without_triton_raises(monkeypatch):
    monkeypatch.setattr(backend, "TRITON_AVAILABLE", False)
    with (
        backend.use_backend("triton"),
        pytest.raises(backend.BackendUnavailableError, match="triton is not installed"),
    ):
        backend.resolve_backend(torch.device("cuda"))


def test_cuda_tensors_run_triton_under_auto(monkeypatch):
    monkeypatch.delenv("FASTCONV_BACKEND", raising=False)
    monkeypatch.setattr(backend, "TRITON_AVAILABLE", True)
    assert backend.resolve_backend(torch.device("cuda")) == "triton"

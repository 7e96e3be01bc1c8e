"""A convolution followed by a BatchNorm (and an activation, and a residual add) as one module.

:class:`Conv2dBatchNormAct` is what :func:`fastconv.fusion.convert` puts where a
``conv -> BatchNorm2d [-> activation]`` or ``conv -> BatchNorm2d -> add(., residual)
[-> activation]`` chain was. It holds the convolution's parameters at the convolution's
name and receives the BatchNorm module as an argument of each call, so the BatchNorm stays
registered at its own name in the enclosing model: the ``state_dict`` keys are the original
model's, and ``.to()``, ``deepcopy``, pickling and ``load_state_dict`` treat the BatchNorm
exactly as before.

Eval mode (the BatchNorm not training) folds the BatchNorm into the convolution's epilogue
at call time, with ``mu``/``var`` the running statistics, ``gamma``/``beta`` the affine
parameters (1 and 0 when not affine) and ``b`` the convolution's bias (0 if none)::

    scale = gamma / sqrt(var + eps)
    bias  = beta + (b - mu) * scale
    y     = act(conv2d(x, w) * scale + bias [+ residual])       # one fastconv kernel

which equals ``act(BN(conv2d(x, w) + b) [+ residual])``; gradients reach ``w``, ``b``,
``gamma`` and ``beta`` through ``scale`` and ``bias``. Folding at call time (rather than
rewriting ``w`` once) keeps the original parameters, so the model still trains and saves
the original checkpoint. Train mode cannot fold (the statistics are the batch's): the
convolution runs on fastconv, then the BatchNorm module itself (batch statistics, running
statistics and ``num_batches_tracked`` updated exactly as before), the residual add and
the activation run in torch.

The BatchNorm may be a norm-act layer (timm's ``BatchNormAct2d``: ``act(drop(BN(z)))`` with
``drop`` and ``act`` its submodules, ``norm_act=True``); its ``act`` is then the fused
activation (``activation_in_norm=True``), or, one the epilogue does not compute, runs after
the kernel. Modules that are the identity in eval mode (dropout, stochastic depth) between
the BatchNorm and the add or activation are passed as ``identities``: skipped while they
are in eval mode, run where they were otherwise. Whatever cannot be fused at a call (a
dropout in train mode after a BatchNorm in eval mode) runs in torch after the folded
kernel, in the original order.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastconv import functional as fcf
from fastconv import ops
from fastconv.activations import reference_activation
from fastconv.layers import Conv2dAct

__all__ = ["Conv2dBatchNormAct", "fold_batch_norm"]


def fold_batch_norm(conv_bias: Tensor | None, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """``(scale, bias)`` such that ``BN(z + conv_bias) == z * scale + bias`` in eval mode.

    ``scale = gamma * rsqrt(running_var + eps)``, ``bias = beta + (conv_bias - running_mean)
    * scale``; computed in at least float32 and returned in ``running_var``'s dtype.
    Differentiable in ``conv_bias``, ``gamma`` and ``beta``.
    """
    var, mean = bn.running_var, bn.running_mean
    compute = torch.promote_types(var.dtype, torch.float32)
    scale = torch.rsqrt(var.to(compute) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(compute)
    shift = -mean.to(compute) if conv_bias is None else conv_bias.to(compute) - mean.to(compute)
    bias = shift * scale
    if bn.bias is not None:
        bias = bias + bn.bias.to(compute)
    return scale.to(var.dtype), bias.to(var.dtype)


def _active(module: nn.Module) -> bool:
    """Whether an eval identity (or ``nn.Identity``) may compute something now."""
    return module.training and type(module) is not nn.Identity


class Conv2dBatchNormAct(Conv2dAct):
    """``act(ids(BN(conv2d(x) + b)) [+ residual])``: a convolution, the BatchNorm after it,
    optional eval identities, an optional residual add and an activation (``"identity"`` for
    none).

    Same constructor and parameters as :class:`fastconv.layers.Conv2dAct` (``activation``
    defaults to ``"identity"``) plus ``norm_act`` (the BatchNorm is a norm-act layer whose
    ``forward`` ends with ``act(drop(.))``) and ``activation_in_norm`` (``activation`` is
    that ``act``: the BatchNorm module applies it in train mode). ``forward(input, batchnorm,
    residual=None, identities=())`` takes the BatchNorm (with running statistics) whose
    output the original model fed on, and the modules that are the identity in eval mode
    which that output passed through before the add (or activation). Eval mode
    (``batchnorm.training`` false) folds it into the kernel's epilogue (module docstring);
    train mode runs it as the original module did. Any ``padding_mode``: as
    :class:`fastconv.layers.Conv2d`, other than zeros pads the input first.
    """

    def __init__(
        self,
        *args,
        activation: str = "identity",
        norm_act: bool = False,
        activation_in_norm: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(*args, activation=activation, **kwargs)
        if activation_in_norm and not norm_act:
            raise ValueError("activation_in_norm=True needs norm_act=True")
        self.norm_act = norm_act
        self.activation_in_norm = activation_in_norm
        self._fold_cache: tuple | None = None  # (key, scale, bias), see _folded

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.norm_act:
            text += f", norm_act=True, activation_in_norm={self.activation_in_norm}"
        return text

    def _folded(self, batchnorm: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
        """The eval-mode ``(scale, bias)`` in the weight's dtype.

        Computed once per state of the BatchNorm and the convolution's bias (their tensors,
        each by storage and ``_version``, which every in-place update bumps) when no gradient
        flows through them, as in inference: a call then runs the kernel and nothing else.
        With gradients, or while a graph is traced, they are computed at every call. A
        change made through ``.data`` bypasses the version counter (as it bypasses
        autograd's checks): after one, call ``clear_fold_cache()``.
        """
        tensors = [
            t
            for t in (batchnorm.running_mean, batchnorm.running_var, batchnorm.weight,
                      batchnorm.bias, self.bias)
            if t is not None
        ]  # fmt: skip
        differentiable = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        if differentiable or ops.traced(tensors):
            return self._fold(batchnorm)
        key = (id(batchnorm), batchnorm.eps, self.weight.dtype, self.weight.device,
               *((t.data_ptr(), t._version) for t in tensors))  # fmt: skip
        cached = getattr(self, "_fold_cache", None)  # a module pickled before it had one
        if cached is None or cached[0] != key:
            self._fold_cache = (key, *self._fold(batchnorm))
        return self._fold_cache[1:]

    def _fold(self, batchnorm: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
        scale, bias = fold_batch_norm(self.bias, batchnorm)
        return scale.to(self.weight.dtype), bias.to(self.weight.dtype)

    def clear_fold_cache(self) -> None:
        """Forget the cached eval-mode fold (see :meth:`_folded`)."""
        self._fold_cache = None

    def _fuses_all(self, batchnorm: nn.Module, identities: tuple[nn.Module, ...]) -> bool:
        """Whether, the BatchNorm folded, the kernel computes everything up to the output:
        no identity active now and no norm-act ``drop`` or unfused ``act`` to run."""
        if any(_active(module) for module in identities):
            return False
        if not self.norm_act:
            return True
        if _active(batchnorm.drop):
            return False
        return self.activation_in_norm or type(batchnorm.act) is nn.Identity

    def _after_norm(
        self, z: Tensor, identities: tuple[nn.Module, ...], residual: Tensor | None
    ) -> Tensor:
        """The original ops after the BatchNorm module's output ``z``, in torch."""
        for module in identities:
            z = module(z)
        if residual is not None:
            z = z + residual
        if self.activation_in_norm:  # the BatchNorm module applied it
            return z
        return reference_activation(z, self.activation, self.negative_slope)

    def forward(
        self,
        input: Tensor,
        batchnorm: nn.BatchNorm2d,
        residual: Tensor | None = None,
        identities: tuple[nn.Module, ...] = (),
    ) -> Tensor:
        if batchnorm.running_mean is None or batchnorm.running_var is None:
            raise ValueError(
                f"{type(self).__name__}: the BatchNorm has no running statistics "
                "(track_running_stats=False), so it cannot be folded"
            )
        features = batchnorm.running_mean.shape[0]
        if features != self.out_channels:
            raise ValueError(
                f"{type(self).__name__}: BatchNorm over {features} features "
                f"after a convolution with {self.out_channels} output channels"
            )
        if batchnorm.training:
            z = batchnorm(self._conv(fcf.conv2d, input))
            return self._after_norm(z, identities, residual)
        scale, bias = self._folded(batchnorm)

        def folded(x, weight, conv_bias, *args, **kwargs):  # conv_bias is inside ``bias``
            return fcf.fused_conv2d(x, weight, bias, *args, scale=scale, **kwargs)

        if (not identities and not self.norm_act) or self._fuses_all(batchnorm, identities):
            return self._conv(
                folded, input,
                activation=self.activation, negative_slope=self.negative_slope,
                residual=residual,
            )  # fmt: skip
        # Something between the BatchNorm and the epilogue's add computes now: the kernel
        # applies the fold alone, torch the rest (the norm-act's drop and act included).
        z = self._conv(folded, input, activation="identity")
        if self.norm_act:
            z = batchnorm.act(batchnorm.drop(z))
        return self._after_norm(z, identities, residual)

""":class:`ConversionReport`: what :func:`fastconv.fusion.convert` did to a model."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ConversionReport"]


@dataclass
class ConversionReport:
    """Counts of what runs on fastconv after :func:`fastconv.fusion.convert`, and why the rest
    does not.

    ``method`` is ``"fx"`` (a ``torch.fx`` graph rewrite) or ``"module swap"`` (module by
    module inside ``nn.Sequential``; ``fallback_reason`` says why FX was not used). ``mode``
    is the model's mode at conversion (``"train"`` or ``"eval"``); the graph is traced in
    it, but folding happens at call time whenever the BatchNorm is in eval mode, in either
    case. Each count is over call sites in the traced graph (module-swap: over modules):
    ``convs_fastconv`` of ``convs`` convolutions and ``pools_fastconv`` of ``pools`` poolings
    run on fastconv, ``batchnorms_folded`` of ``batchnorms`` BatchNorms follow a convolution
    they fold into, ``activations_fused`` of ``activations`` activations and ``adds_fused``
    residual adds moved into a convolution's epilogue; ``identities_skipped`` modules that
    are the identity in eval mode (dropout, stochastic depth) joined a fused chain (skipped
    while in eval mode, run while training; ``notes`` names them). ``fused`` lists (module
    name, the chain it replaced); ``left_to_torch`` lists (node or module name, why it stays
    torch); ``notes`` holds caveats (a forward whose ``self.training`` branch the trace froze)
    and what else changed.
    """

    method: str = "fx"
    mode: str = "eval"
    fallback_reason: str | None = None
    convs: int = 0
    convs_fastconv: int = 0
    pools: int = 0
    pools_fastconv: int = 0
    batchnorms: int = 0
    batchnorms_folded: int = 0
    activations: int = 0
    activations_fused: int = 0
    adds_fused: int = 0
    identities_skipped: int = 0
    fused: list[tuple[str, str]] = field(default_factory=list)
    left_to_torch: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self) -> dict[str, str]:
        """The counts as one table row: column title -> cell text."""
        return {
            "mode": self.mode,
            "method": self.method,
            "convs on fastconv": f"{self.convs_fastconv}/{self.convs}",
            "pools on fastconv": f"{self.pools_fastconv}/{self.pools}",
            "BatchNorms folded": f"{self.batchnorms_folded}/{self.batchnorms}",
            "activations fused": f"{self.activations_fused}/{self.activations}",
            "adds fused": str(self.adds_fused),
            "left to torch": str(len(self.left_to_torch)),
        }

    def __str__(self) -> str:
        method = self.method
        if self.fallback_reason:
            method += f" ({self.fallback_reason})"
        lines = [f"fastconv.convert: {method}, model in {self.mode} mode"]
        row = self.row()
        notes = {
            "BatchNorms folded": "into the conv epilogue whenever the model is in eval mode",
            "activations fused": "into the conv epilogue (after a BatchNorm: in eval mode)",
        }
        for title in list(row)[2:]:
            note = notes.get(title)
            lines.append(f"  {title:18} {row[title]:>7}" + (f"   {note}" if note else ""))
            if title == "adds fused" and self.identities_skipped:
                lines.append(
                    f"  {'eval identities':18} {self.identities_skipped:>7}   in fused chains: "
                    "skipped while in eval mode, run while training"
                )
        lines += [f"  torch  {name}: {reason}" for name, reason in self.left_to_torch]
        lines += [f"  note   {note}" for note in self.notes]
        return "\n".join(lines)

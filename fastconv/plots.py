"""Training figures: loss/accuracy curves and the confusion matrix, as PNG files.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot), so they render
with the Agg canvas whatever backend the process uses, and no global state changes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["plot_confusion_matrix", "plot_history"]


def plot_history(history: Sequence[dict[str, float]], path: str | os.PathLike) -> Figure:
    """Loss (left) and accuracy (right) per epoch, train and validation, saved to ``path``.

    Returns the figure (already saved), for a caller that wants to inspect or re-save it.
    """
    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for split in ("train", "val"):
        ax_loss.plot(epochs, [row[f"{split}_loss"] for row in history], "o-", label=split)
        ax_acc.plot(epochs, [100 * row[f"{split}_acc"] for row in history], "o-", label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=120)
    return fig


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | os.PathLike, title: str
) -> Figure:
    """``matrix[true][predicted]`` counts as an annotated heat map, saved to ``path``.

    Rows (the y axis, labelled "true") are the true classes and columns (the x axis,
    "predicted") the predicted ones, in ``class_names`` order. Returns the saved figure.
    """
    n = len(class_names)
    fig = Figure(figsize=(4.5, 4), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    top = max(max(row) for row in matrix) or 1
    for i in range(n):
        for j in range(n):
            color = "white" if matrix[i][j] > top / 2 else "black"
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center", color=color)
    ax.set(
        xticks=range(n),
        yticks=range(n),
        xticklabels=class_names,
        yticklabels=class_names,
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    fig.savefig(path, dpi=120)
    return fig

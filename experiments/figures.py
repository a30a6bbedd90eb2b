"""The studies' figures: a figure of panels (`new_figure`) and the grid of each class's
highest- and lowest-scoring examples (`example_figure`)."""
from __future__ import annotations

import numpy as np

from memjax.data import Split
from memjax.results import RunDir


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def new_figure(ncols: int = 1, width: float = 5.0, height: float = 3.6):
    fig, axes = _pyplot().subplots(1, ncols, figsize=(width * ncols, height), squeeze=False,
                             layout="constrained")  # colorbars and labels never overlap
    return fig, axes[0]


def example_figure(run_dir: RunDir, name: str, split: Split, score: np.ndarray, title: str,
                   per_class: int = 6) -> None:
    """The `per_class` highest- and lowest-scoring examples of each class (by label as
    trained), one row per class, like the C-score paper's figures. NaN scores are left out."""
    classes = np.unique(split.y)
    # in inches: a row of images with their score above, and one band for the title
    row_inches, title_inches = 0.8, 0.4
    height = row_inches * len(classes) + title_inches
    fig, rows = _pyplot().subplots(len(classes), 2 * per_class + 1, squeeze=False,
                                   figsize=(0.7 * (2 * per_class + 1), height))
    # matplotlib's default margins leave a blank band of about an inch under the title
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.01, top=1 - title_inches / height,
                        wspace=0.1, hspace=0.3)
    for row, c in zip(rows, classes):
        ids = np.flatnonzero((split.y == c) & np.isfinite(score))
        ranked = ids[np.argsort(-score[ids], kind="stable")]
        shown = list(ranked[:per_class]) + [None] + list(ranked[::-1][:per_class][::-1])
        for ax, i in zip(row, shown):
            ax.axis("off")
            if i is None or i >= len(split):
                continue
            image = np.asarray(split.x[i]).squeeze()  # (uint8 or floats in [0, 1]: RGB as is)
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
            ax.set_title(f"{score[i]:.2f}", fontsize=6)
        row[0].text(-0.3, 0.5, str(c), transform=row[0].transAxes, ha="right", va="center")
    fig.suptitle(f"{title}: highest (left) and lowest (right) per class", fontsize=9,
                 y=1 - 0.08 / height, va="top")
    run_dir.save_figure(fig, name)

"""What several studies share: the rows of a sweep (`grid`, `width_buckets`), its seeds,
figures, and per-example score files (`write_example_scores`, `example_figure`) with the
statistics that judge them (`detection_auc`, `spearman`)."""
from __future__ import annotations

from typing import Any

import numpy as np

from memjax.data import Split
from memjax.errors import MemjaxError
from memjax.results import RunDir


def own_accuracy_due(epoch: int, every: int, epochs: int) -> bool:
    """Whether training accuracy is measured after `epoch` (1-based) when it is measured
    every `every` epochs and always after the last (a full pass over the training set)."""
    return epoch % every == 0 or epoch == epochs


def own_accuracy_runs(every: int, epochs: int) -> int:
    """How many epochs `own_accuracy_due` measures after."""
    return sum(own_accuracy_due(e, every, epochs) for e in range(1, epochs + 1))


def own_accuracy_every(runner: Any, epoch: int, every: int, epochs: int) -> np.ndarray:
    """Runner.own_accuracy after the epochs `own_accuracy_due` says, NaN after the others."""
    if own_accuracy_due(epoch, every, epochs):
        return runner.own_accuracy()
    return np.full(runner.members, np.nan, np.float32)


def measured(curve) -> tuple[np.ndarray, np.ndarray]:
    """(1-based epochs, values) of a per-epoch curve where it was measured (not NaN)."""
    curve = np.asarray(curve, float)
    at = np.flatnonzero(np.isfinite(curve))
    return at + 1, curve[at]


def check_sweep_members(config: Any) -> None:
    """A sweep's ensemble is its cells x `seeds` members, so train.members must stay 1."""
    trains = [getattr(config, n) for n in ("train", "cnn_train") if hasattr(config, n)]
    if any(t.members != 1 for t in trains):
        raise MemjaxError("a sweep trains one member per cell and seed: set seeds "
                          "(--seeds N), not train.members")


def width_buckets(widths: np.ndarray, limits: tuple[int, ...]) -> list[tuple[int, np.ndarray]]:
    """Group members by width so that cheap members don't pay for the widest one: bucket
    b holds the widths in (limits[b-1], limits[b]] and runs as a masked MLP of its largest
    member width. Returns [(model width, member indices)], non-empty buckets only."""
    widths = np.asarray(widths)
    edges = sorted(limits)
    if widths.max() > edges[-1]:
        edges.append(int(widths.max()))
    out, lower = [], 0
    for upper in edges:
        rows = np.flatnonzero((widths > lower) & (widths <= upper))
        if rows.size:
            out.append((int(widths[rows].max()), rows))
        lower = upper
    return out


def grid(**axes: Any) -> dict[str, np.ndarray]:
    """Cartesian product of named axes, one row per member: grid(a=[1, 2], b=[x, y]) ->
    {"a": [1, 1, 2, 2], "b": [x, y, x, y]}."""
    names = list(axes)
    mesh = np.meshgrid(*[np.arange(len(axes[n])) for n in names], indexing="ij")
    return {n: np.asarray(axes[n], dtype=object)[m.ravel()] for n, m in zip(names, mesh)}


def first_epoch_at_least(curve: np.ndarray, threshold: float) -> int | None:
    """1-based epoch at which a per-epoch curve first reaches threshold (None: never)."""
    hits = np.flatnonzero(np.asarray(curve) >= threshold)
    return int(hits[0]) + 1 if hits.size else None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def new_figure(ncols: int = 1, width: float = 5.0, height: float = 3.6):
    fig, axes = _pyplot().subplots(1, ncols, figsize=(width * ncols, height), squeeze=False,
                             layout="constrained")  # colorbars and labels never overlap
    return fig, axes[0]


def write_example_scores(run_dir: RunDir, name: str, split: Split, order: str,
                         scores: dict[str, np.ndarray]) -> None:
    """<name>.npz and <name>.csv, one row per example of `split`: `index` (its place in
    `order`, the data set's original order), `label` (as trained, noisy ones included),
    `image_sha1` (joins the rows to the same images in any other order) and each [N]
    score. The npz also holds `order`."""
    columns = {"index": split.index, "label": split.y, "image_sha1": split.image_sha1(),
               **{k: np.asarray(v) for k, v in scores.items()}}
    run_dir.write_npz(f"{name}.npz", {**columns, "order": np.array(order)})
    run_dir.write_csv(f"{name}.csv", columns)


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
            image = np.asarray(split.x[i], np.float32).squeeze()
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
            ax.set_title(f"{score[i]:.2f}", fontsize=6)
        row[0].text(-0.3, 0.5, str(c), transform=row[0].transAxes, ha="right", va="center")
    fig.suptitle(f"{title}: highest (left) and lowest (right) per class", fontsize=9,
                 y=1 - 0.08 / height, va="top")
    run_dir.save_figure(fig, name)


def spread(values: np.ndarray, percentiles: tuple[int, ...]) -> dict[str, float]:
    """mean, std and the given percentiles (`qNN`) of a per-example score, NaN left out."""
    return {"mean": float(np.nanmean(values)), "std": float(np.nanstd(values)),
            **{f"q{q:02d}": float(np.nanpercentile(values, q)) for q in percentiles}}


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse]


def detection_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `score` flagging the `positive` examples: the
    probability that a random positive scores above a random negative, ties counting half
    (the Mann-Whitney statistic). NaN scores are left out; NaN if a class is empty."""
    score, positive = np.asarray(score, float), np.asarray(positive, bool)
    keep = np.isfinite(score)
    score, positive = score[keep], positive[keep]
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    rank_sum = _ranks(score)[positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation over the pairs where both are finite (ties: mean ranks)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 2:
        return float("nan")
    ra, rb = _ranks(a[keep]), _ranks(b[keep])
    return float(np.corrcoef(ra, rb)[0, 1])

"""Per-example scores: their order-safe files (`write_example_scores`) and the statistics
that judge them (`spread`, `detection_auc`, `spearman`)."""
from __future__ import annotations

import numpy as np

from memjax.data import Split
from memjax.results import RunDir


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

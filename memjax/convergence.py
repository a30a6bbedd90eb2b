"""Time to convergence (E4): the first epoch each member reaches a training accuracy, and
members that hit the epoch cap reported as censored. `memjax.runner.Runner.run(...,
converge_at=threshold)` records these epochs and stops training converged members."""
from __future__ import annotations

import numpy as np

NOT_CONVERGED = -1


def first_epochs(first_epoch: np.ndarray, accuracy: np.ndarray, epoch: int,
                 threshold: float) -> np.ndarray:
    """[M] int32: `epoch` (1-based) for members whose accuracy [M] (fraction in [0, 1])
    reached threshold for the first time; earlier records kept, NOT_CONVERGED (-1) else."""
    first_epoch = np.asarray(first_epoch, np.int32)
    newly = (first_epoch == NOT_CONVERGED) & (np.asarray(accuracy) >= threshold)
    return np.where(newly, np.int32(epoch), first_epoch).astype(np.int32)


def epochs_to_converge(first_epoch: np.ndarray, cap: int) -> dict[str, np.ndarray]:
    """Host-side result: {"epochs": [M] float (NaN where censored), "censored": [M] bool
    (hit the cap of `cap` epochs without converging; never counted as converged)}."""
    first_epoch = np.asarray(first_epoch)
    censored = first_epoch == NOT_CONVERGED
    return {"epochs": np.where(censored, np.nan, first_epoch.astype(float)),
            "censored": censored, "cap": np.full(first_epoch.shape, cap)}

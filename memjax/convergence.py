"""Time to convergence (E4): the first epoch each member reaches a training accuracy, and
members that hit the epoch cap reported as censored. `memjax.runner.Runner.run(...,
converge_at=threshold)` records these epochs and stops training converged members, in a
smaller program once it pays (`program_size`)."""
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


def program_size(size: int, active: int, devices: int, epochs_left: int | None,
                 epoch_seconds: float, compile_seconds: float) -> int:
    """Members in the next epoch's program, now `size` with `active` of them still training
    on `devices`: the smallest of size / 2, size / 4, ... that holds the active ones and
    splits evenly over the devices, where the epochs left (`epochs_left`, this one
    included; None: an epoch outside a run, always shrink) would save more time than
    compiling it costs, at `epoch_seconds` an epoch now; else `size`."""
    smaller = size
    while smaller // 2 >= active and smaller // 2 % devices == 0:
        smaller //= 2
    if smaller == size or epochs_left is None:
        return smaller
    saved = (epochs_left - 1) * epoch_seconds * (1 - smaller / size)
    return smaller if saved > compile_seconds else size

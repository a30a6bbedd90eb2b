"""experiments/common.py: grouping members into width buckets."""
import numpy as np


def test_width_buckets_group_by_cost():
    from memjax.experiments.common import width_buckets

    widths = np.array([16, 512, 64, 4096, 128, 2048])
    buckets = width_buckets(widths, (128, 1024))
    assert [(w, rows.tolist()) for w, rows in buckets] == [(128, [0, 2, 4]), (512, [1]),
                                                           (4096, [3, 5])]

"""experiments/common.py: grouping members into width buckets, training accuracy every few
epochs."""
import numpy as np


def test_width_buckets_group_by_cost():
    from memjax.experiments.common import width_buckets

    widths = np.array([16, 512, 64, 4096, 128, 2048])
    buckets = width_buckets(widths, (128, 1024))
    assert [(w, rows.tolist()) for w, rows in buckets] == [(128, [0, 2, 4]), (512, [1]),
                                                           (4096, [3, 5])]


def test_own_accuracy_every_few_epochs_and_after_the_last():
    from memjax.experiments.common import (measured, own_accuracy_due, own_accuracy_every,
                                           own_accuracy_runs)

    assert [e for e in range(1, 11) if own_accuracy_due(e, 4, 10)] == [4, 8, 10]
    assert own_accuracy_runs(4, 10) == 3 and own_accuracy_runs(1, 10) == 10
    assert own_accuracy_runs(100, 100) == 1

    class Runner:  # what own_accuracy_every uses of a memjax.runner.Runner
        members = 3

        def own_accuracy(self):
            return np.array([0.5, 0.6, 0.7])

    assert np.isnan(own_accuracy_every(Runner(), 3, 4, 10)).all()
    np.testing.assert_array_equal(own_accuracy_every(Runner(), 10, 4, 10), [0.5, 0.6, 0.7])
    epochs, values = measured([np.nan, 0.2, np.nan, 0.4])
    assert epochs.tolist() == [2, 4] and values.tolist() == [0.2, 0.4]

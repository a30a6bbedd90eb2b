"""experiments/sweeps.py: grouping members into width buckets, curves measured every few
epochs."""
import numpy as np


def test_width_buckets_group_by_cost():
    from memjax.experiments.sweeps import width_buckets

    widths = np.array([16, 512, 64, 4096, 128, 2048])
    buckets = width_buckets(widths, (128, 1024))
    assert [(w, rows.tolist()) for w, rows in buckets] == [(128, [0, 2, 4]), (512, [1]),
                                                           (4096, [3, 5])]


def test_measured_keeps_the_epochs_a_curve_was_measured_at():
    from memjax.experiments.sweeps import measured

    epochs, values = measured([np.nan, 0.2, np.nan, 0.4])
    assert epochs.tolist() == [2, 4] and values.tolist() == [0.2, 0.4]


def test_width_sweeps_keep_the_models_other_settings():
    """capacity's and convergence's bucket models are config.model at the bucket's width:
    its input normalization kept (they used to build a bare MLP and drop it)."""
    import dataclasses

    from memjax.experiments import capacity, convergence

    for study in (capacity, convergence):
        config = study.PRESETS["smoke"]
        config = dataclasses.replace(config, model=dataclasses.replace(
            config.model, input_mean=(0.5,), input_std=(0.25,)))
        models = [phase.model for phase in study.phases(config)]
        assert all(m.kind == "mlp" for m in models)
        assert all(m.input_mean == (0.5,) and m.input_std == (0.25,)
                   and len(m.hidden) == len(config.model.hidden) for m in models)
        assert study is convergence or len({m.hidden for m in models}) == 2  # capacity's buckets

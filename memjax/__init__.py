"""memjax: memorization studies (Arpit et al., ICML 2017) on vmapped ensembles in JAX.

The public face:

    import memjax
    data = memjax.load_dataset(memjax.DataConfig(train_size=2048))
    phase = memjax.Phase("real", memjax.ModelConfig(hidden=(64,)),
                         memjax.TrainConfig(members=4, epochs=2),
                         memjax.Data(memjax.DataConfig(train_size=2048)),
                         measurements=(memjax.Evaluation("validation_accuracy"),))
    outcome = memjax.Runner.of(phase, data).execute()   # history: {"train_loss": [2, 4], ...}
    runner = outcome.runner
    s = memjax.metrics.loss_sensitivity(runner.apply, runner.member_state().variables,
                                        data.validation.x, data.validation.y)  # [4, N]

Names are imported on first use, so `memjax --help` does not wait for jax.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> (module, attribute)
_PUBLIC = {
    "Runner": ("memjax.runner", "Runner"),
    "Members": ("memjax.members", "Members"),
    "Phase": ("memjax.phase", "Phase"),
    "Data": ("memjax.phase", "Data"),
    "Outcome": ("memjax.phase", "Outcome"),
    "Measurement": ("memjax.measurements", "Measurement"),
    "AtTheEnd": ("memjax.measurements", "AtTheEnd"),
    "Evaluation": ("memjax.measurements", "Evaluation"),
    "OwnAccuracy": ("memjax.measurements", "OwnAccuracy"),
    "CriticalSamples": ("memjax.measurements", "CriticalSamples"),
    "Convergence": ("memjax.measurements", "Convergence"),
    "Dynamics": ("memjax.measurements", "Dynamics"),
    "build_ensemble": ("memjax.members", "build_ensemble"),
    "register_model": ("memjax.models.registry", "register_model"),
    "load_dataset": ("memjax.data", "load_dataset"),
    "DataConfig": ("memjax.config", "DataConfig"),
    "ModelConfig": ("memjax.config", "ModelConfig"),
    "TrainConfig": ("memjax.config", "TrainConfig"),
    "MemjaxError": ("memjax.errors", "MemjaxError"),
    "enable_compilation_cache": ("memjax.compilation_cache", "enable"),
}
__all__ = sorted([*_PUBLIC, "metrics"])


def __getattr__(name: str):
    if name == "metrics":
        return importlib.import_module("memjax.metrics")
    if name in _PUBLIC:
        module, attribute = _PUBLIC[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'memjax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__

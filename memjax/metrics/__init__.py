"""The paper's per-example measurements as jitted functions over [members, examples].

    import memjax.metrics as mm
    s = mm.loss_sensitivity(network.apply, state.variables, x, y)      # [M, N]
    mm.gini(s)                                                         # [M]
    found = mm.lass(network.apply, state.variables, x, key, **mm.PAPER_LASS)
    mm.critical_sample_ratio(found.critical)                           # [M]

`apply_fn` is `Network.apply` (variables of one member, x [B, H, W, C] in [0, 1] -> logits);
`variables` is the stacked ensemble pytree [M, ...].
"""
from memjax.metrics.consistency import (binomial_reference, class_binomial_reference,
                                        misclassification_rate)
from memjax.metrics.gini import gini
from memjax.metrics.lass import PAPER_LASS, LassResult, critical_sample_ratio, lass, lass_search
from memjax.metrics.sensitivity import input_gradients, loss_sensitivity, per_example_norm
from memjax.metrics.unrolled import (UnrolledSensitivity, trainer_order,
                                     unrolled_loss_sensitivity)

__all__ = ["PAPER_LASS", "LassResult", "UnrolledSensitivity", "binomial_reference",
           "class_binomial_reference", "critical_sample_ratio", "gini", "input_gradients",
           "lass", "lass_search", "loss_sensitivity", "misclassification_rate",
           "per_example_norm", "trainer_order", "unrolled_loss_sensitivity"]

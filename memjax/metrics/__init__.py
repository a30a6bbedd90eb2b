"""The paper's per-example measurements as jitted functions over [members, examples].

`apply_fn` is `Network.apply` (variables of one member, x [B, H, W, C] in [0, 1] -> logits);
`variables` is the stacked ensemble pytree [M, ...]; every result has a leading member axis.

>>> import jax, numpy as np
>>> import memjax.metrics as mm
>>> from memjax.config import ModelConfig
>>> from memjax.ensemble import init_ensemble, make_optimizer
>>> from memjax.models import build_network
>>> net = build_network(ModelConfig(hidden=(32,)), num_classes=10)
>>> state = init_ensemble(net, make_optimizer(), np.zeros((1, 28, 28, 1)), seed=0,
...                       member_ids=np.arange(4), learning_rate=0.1)
>>> x = np.random.default_rng(0).integers(0, 256, (64, 28, 28, 1), dtype=np.uint8)
>>> y = np.arange(64, dtype=np.int32) % 10
>>> s = mm.loss_sensitivity(net.apply, state.variables, x, y, chunk=32)  # ||dl_i/dx_i||_1
>>> s.shape, mm.gini(s).shape
((4, 64), (4,))
>>> found = mm.lass(net.apply, state.variables, x, jax.random.key(0), **mm.PAPER_LASS)
>>> found.critical.shape, mm.critical_sample_ratio(found.critical).shape
((4, 64), (4,))
>>> order, weight = mm.trainer_order(0, np.arange(4), num_examples=64, batch_size=16, epochs=2)
>>> u = mm.unrolled_loss_sensitivity(net.apply, state.variables, x, y, order, weight,
...                                  learning_rate=0.1, every=2, num_classes=10)
>>> u.per_step.shape, u.mean.shape, u.per_class.shape  # 8 SGD steps, g_x^t at t = 2, 4, 6
((4, 3, 64), (4, 64), (4, 10, 10))
"""
from memjax.metrics.consistency import (binomial_reference, class_binomial_reference,
                                        misclassification_rate)
from memjax.metrics.gini import gini
from memjax.metrics.grand import grand
from memjax.metrics.lass import (PAPER_LASS, PROTOCOLS, LassResult, authors_scale,
                                 critical_sample_ratio, lass, lass_search, validation_search)
from memjax.metrics.scores import (ForgettingEvents, TopInfluence, aum, balanced_masks,
                                   cartography, cscore, el2n, first_learned_epoch,
                                   forgetting_events, holdout_consistency, influence,
                                   learned_for_good_epoch, margin, members_holding,
                                   memorization)
from memjax.metrics.sensitivity import input_gradients, loss_sensitivity, per_example_norm
from memjax.metrics.unrolled import (UnrolledSensitivity, trainer_order,
                                     unrolled_loss_sensitivity)

__all__ = ["PAPER_LASS", "PROTOCOLS", "ForgettingEvents", "LassResult", "TopInfluence", "UnrolledSensitivity",
           "aum", "authors_scale", "balanced_masks", "binomial_reference", "cartography",
           "class_binomial_reference", "critical_sample_ratio", "cscore", "el2n",
           "first_learned_epoch", "forgetting_events", "gini", "grand", "holdout_consistency",
           "influence", "input_gradients", "lass", "lass_search", "learned_for_good_epoch",
           "loss_sensitivity", "margin", "members_holding", "memorization", "misclassification_rate",
           "per_example_norm", "trainer_order", "unrolled_loss_sensitivity", "validation_search"]

"""Where adversarial training gets its examples (E7's dropout + adversarial training).

The train step calls `adversarial_examples(apply_fn, variables, x, y, key)` for one member
and trains on loss = (1 - w) * clean + w * adversarial, w per member (see
`memjax.members.MemberView.adversarial_weight`). The paper's examples come from LASS
(`memjax.metrics.lass_search`); until that is wired in, asking for them is an error.
"""
from __future__ import annotations

import jax

from memjax.errors import MemjaxError


def lass_adversarial_examples(apply_fn, variables, x: jax.Array, y: jax.Array,
                              key: jax.Array) -> jax.Array:
    """LASS points around one member's minibatch.

    apply_fn(variables, x) -> logits; variables: ONE member's; x: [B, H, W, C] float32 in
    [0, 1]; y: [B] int labels; key: this step's ATTACK-stream key.
    Returns [B, H, W, C] float32 in [0, 1] (gradients are stopped by the caller).
    """
    raise MemjaxError("adversarial training needs memjax.metrics.lass_search")

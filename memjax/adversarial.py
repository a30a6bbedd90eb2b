"""Where adversarial training gets its examples (E7's dropout + adversarial training).

The train step calls `adversarial_examples(apply_fn, variables, x, y, key)` for one member
and trains on loss = (1 - w) * clean + w * adversarial, w per member (see
`memjax.members.MemberView.adversarial_weight`). The paper's examples come from LASS.
"""
from __future__ import annotations

import jax


# LASS inside every training step multiplies the step's cost by its iterations, so training
# searches 10 iterations (ours; the paper's limit of 100 is for measuring CSR). The search
# stops earlier once every example in the batch has changed class.
TRAINING_LASS = dict(radius=0.3 / 255, step_size=0.25 / 255, noise_scale=0.2 / 255,
                     max_iterations=10)  # memjax.metrics.PAPER_LASS, fewer iterations


def lass_adversarial_examples(apply_fn, variables, x: jax.Array, y: jax.Array,
                              key: jax.Array) -> jax.Array:
    """LASS points around one member's minibatch (PAPER.md E5 with TRAINING_LASS settings).

    apply_fn(variables, x) -> logits; variables: ONE member's; x: [B, H, W, C] float32 in
    [0, 1]; y: [B] int labels (unused: LASS moves away from the predicted class); key: this
    step's ATTACK-stream key. Returns [B, H, W, C] float32 in [0, 1] within the L-infinity
    radius of x (gradients are stopped by the caller).
    """
    from memjax.metrics.lass import lass_search  # memjax.metrics imports the trainer

    return lass_search(apply_fn, variables, x, key, **TRAINING_LASS).points

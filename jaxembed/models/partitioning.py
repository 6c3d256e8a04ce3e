"""Parameter initialisers with logical axis names, shared by every model family.

Names on parameters are what jaxembed/parallel/sharding.py maps to mesh axes;
the initial values only matter for tests and `jax.eval_shape`.
"""

from __future__ import annotations

import flax.linen as nn

with_axes = nn.with_logical_partitioning
KERNEL_INIT = nn.initializers.lecun_normal()
ZEROS = nn.initializers.zeros_init()
ONES = nn.initializers.ones_init()

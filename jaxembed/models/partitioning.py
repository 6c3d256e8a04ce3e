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


def dense(
    features: int, axes: tuple[str, str], name: str, *, dtype, param_dtype, bias: bool = True
) -> nn.Dense:
    """A biased (by default) Dense whose kernel carries `axes` (input, output) and whose bias
    carries the output axis: the projection every family's MLP and heads are built from."""
    return nn.Dense(
        features,
        use_bias=bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=with_axes(KERNEL_INIT, axes),
        bias_init=with_axes(ZEROS, axes[1:]),
        name=name,
    )

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


def projection(
    features: int | tuple[int, ...],
    axes: tuple[str, ...],
    name: str,
    *,
    dtype,
    param_dtype,
    bias: bool = False,
    **kwargs,
) -> nn.DenseGeneral:
    """A DenseGeneral (q/k/v heads, fused qkv, output) whose kernel carries `axes` and whose
    bias, if any, carries the output axes; bias-free by default, as most modern encoders."""
    out_axes = axes[-len(features) :] if isinstance(features, tuple) else axes[-1:]
    return nn.DenseGeneral(
        features,
        use_bias=bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=with_axes(KERNEL_INIT, axes),
        bias_init=with_axes(ZEROS, out_axes),
        name=name,
        **kwargs,
    )


def layer_norm(eps: float, name: str, *, dtype, param_dtype, bias: bool = True) -> nn.LayerNorm:
    """A LayerNorm over the `embed` axis."""
    return nn.LayerNorm(
        epsilon=eps,
        use_bias=bias,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=with_axes(ONES, ("embed",)),
        bias_init=with_axes(ZEROS, ("embed",)),
        name=name,
    )


def scan_layers(layer: type[nn.Module], length: int, in_axes: tuple) -> type[nn.Module]:
    """`layer` stacked `length` times with `nn.scan`: one compiled body for every layer, each
    parameter with a leading `layers` axis; `in_axes` says which extra inputs are per layer (0)
    and which are shared (`nn.broadcast`)."""
    return nn.scan(
        layer,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=in_axes,
        length=length,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )


def embedding(rows: int, features: int, axis: str, name: str, *, dtype, param_dtype) -> nn.Embed:
    """A lookup table whose rows carry logical axis `axis` (vocab, position, token_type)."""
    return nn.Embed(
        rows,
        features,
        dtype=dtype,
        param_dtype=param_dtype,
        embedding_init=with_axes(nn.linear.default_embed_init, (axis, "embed")),
        name=name,
    )

"""The engine of every softmax-type (angular) loss: one margin, four layouts.

This is the public extension point of the library: a new margin loss is a few lines
on ``margin_softmax`` (normalized x and W, the target ``s·f(cos θ_y)``) or, for a loss
that is not normalized, on ``raw_margin_softmax`` (any target logit).

Every angular loss of the library is a cross-entropy over class logits in which only
the target logit is changed by a margin. Writing ``t_i`` for the target logit and
``z_ij`` for the unchanged logits of the other classes,

    loss_i = log(exp(t_i) + Σ_{j≠y_i} exp(z_ij)) − t_i
           = logaddexp(t_i, LSE_{j≠y_i} z_ij) − t_i,

with ``z_ij = s·(x̃_i · w̃_j) + b_j``, where x̃ and w̃ are the embedding and class
centre, each L2-normalized or not according to the loss. The target logit is a
function of ``x_i`` and its own column ``w_{y_i}`` only, so it costs O(B·d) and is
differentiated by plain autodiff. The non-target log-sum-exp is the only part that
touches all C classes, and it is computed in one of these layouts, all equal:

- dense: the B×C logits at once (the reference);
- chunked (``chunk_size``): W streamed in blocks of classes with an online
  log-sum-exp, under a ``jax.custom_vjp`` whose backward pass recomputes each
  block, so neither pass holds the B×C logits (Milakov & Gimelshein, 2018,
  "Online normalizer calculation for softmax");
- class-sharded (``class_axis_name``): each device holds a contiguous block of W's
  columns, computes its local log-sum-exp, and the normalizer is combined with
  ``pmax``/``psum`` across the axis (the Partial FC layout, An et al., 2021);
  combinable with chunking;
- data-parallel (``axis_name``): embeddings and labels are all-gathered so every
  device scores the global batch, and each device returns its own examples' losses.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from faceloss_jax.losses import _validation

# Below this norm an embedding or class centre is treated as having this norm, so that
# normalization and its gradient stay finite for zero vectors.
MIN_NORM = 1e-6
# Below this value a square root has gradient 0: sqrt's derivative is infinite at 0.
_SQRT_FLOOR = 1e-12


class Logits(NamedTuple):
    """How the non-target logits ``z = scale·(x̃·w̃) + b`` are formed.

    Attributes:
      normalize_embeddings: whether x is L2-normalized before the product.
      normalize_weights: whether each column of W is L2-normalized.
      scale: the constant s multiplying the product.
    """

    normalize_embeddings: bool
    normalize_weights: bool
    scale: float | jax.Array = 1.0


def acc_dtype(*arrays: jax.Array) -> jnp.dtype:
    """The dtype of logits and accumulations: float32, or float64 for float64 inputs."""
    return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def as_float(x: ArrayLike) -> jax.Array:
    """`x` as a float array of at least float32 precision."""
    x = jnp.asarray(x)
    return x.astype(acc_dtype(x))


def safe_sqrt(x: jax.Array) -> jax.Array:
    """sqrt(max(x, 0)), exact in value, with gradient 0 instead of inf where x ≤ 1e-12.

    For distances (‖a − b‖ at a = b) and for sin θ = sqrt(1 − cos²θ) at θ = 0 or π.
    """
    positive = x > _SQRT_FLOOR
    return jnp.where(
        positive,
        jnp.sqrt(jnp.where(positive, x, 1.0)),
        lax.stop_gradient(jnp.sqrt(jnp.maximum(x, 0.0))),
    )


def safe_norm(x: jax.Array, axis: int, keepdims: bool = True) -> jax.Array:
    """The L2 norm in ``acc_dtype``, at least ``MIN_NORM``, finite gradient at 0."""
    x = x.astype(acc_dtype(x))
    sq = jnp.sum(x * x, axis=axis, keepdims=keepdims)
    return jnp.sqrt(jnp.maximum(sq, MIN_NORM**2))


def l2_normalize(x: ArrayLike, axis: int = -1) -> jax.Array:
    """``x / max(‖x‖, 1e-6)`` along ``axis``, in ``acc_dtype``: the one normalization
    of the library (embeddings, class centres, sub-centres), finite at x = 0."""
    x = jnp.asarray(x)
    return x.astype(acc_dtype(x)) / safe_norm(x, axis=axis)


def cosine(x: jax.Array, w: jax.Array) -> jax.Array:
    """Row-wise cosine of two (B, d) arrays in ``acc_dtype``, 0 when either is zero."""
    dtype = acc_dtype(x, w)
    x, w = x.astype(dtype), w.astype(dtype)
    cos = jnp.sum(x * w, axis=-1) / (safe_norm(x, -1, False) * safe_norm(w, -1, False))
    return jnp.clip(cos, -1.0, 1.0)


def safe_arccos(cos: jax.Array, eps: float = 1e-6) -> jax.Array:
    """arccos, exact in value, with the exact gradient −1/sin θ wherever sin θ > eps.

    arccos has an infinite derivative at ±1; where 1 − cos² ≤ eps² (θ within eps of 0
    or π) the gradient is 0 instead. A clip of cos to ±(1 − eps) would also zero it at
    θ < √(2·eps) ≈ 1.4e-3, the gradient of well-classified samples (issue 18).
    """
    cos = jnp.clip(cos, -1.0, 1.0)
    steep = 1.0 - cos * cos <= eps * eps
    return jnp.where(
        steep, lax.stop_gradient(jnp.arccos(cos)), jnp.arccos(jnp.where(steep, 0.0, cos))
    )


def _prepare_embeddings(x: jax.Array, spec: Logits) -> jax.Array:
    if spec.normalize_embeddings:
        return l2_normalize(x, axis=1).astype(x.dtype)
    return x


def _block_logits(
    x_prepared: jax.Array, w_block: jax.Array, b_block: jax.Array | None, spec: Logits
) -> jax.Array:
    """Logits (B, c) of one block of classes, accumulated in float32."""
    if spec.normalize_weights:
        w_block = l2_normalize(w_block, axis=0).astype(w_block.dtype)
    dtype = jnp.promote_types(x_prepared.dtype, w_block.dtype)
    z = jnp.matmul(
        x_prepared.astype(dtype), w_block.astype(dtype), preferred_element_type=acc_dtype(dtype)
    )
    z = spec.scale * z
    if b_block is not None:
        z = z + b_block.astype(z.dtype)
    return z


def _is_target(labels: jax.Array, offset: jax.Array | int, width: int) -> jax.Array:
    return labels[:, None] == offset + jnp.arange(width)[None, :]


# ----------------------------------------------------------------------------------
# Non-target log-sum-exp: dense (autodiff) and chunked (custom_vjp).
# ----------------------------------------------------------------------------------


def _dense_lse(x, w, b, labels, offset, spec):
    z = _block_logits(_prepare_embeddings(x, spec), w, b, spec)
    z = jnp.where(_is_target(labels, offset, w.shape[1]), -jnp.inf, z)
    return jax.nn.logsumexp(z, axis=1)


def _vma(a) -> frozenset:
    """The manual mesh axes that ``a`` varies over (empty outside ``shard_map``)."""
    manual = getattr(jax.typeof(a), "manual_axis_type", None)
    return frozenset() if manual is None else manual.varying


def _varying_like(init: jax.Array, *refs) -> jax.Array:
    """Marks a fresh scan carry as varying over the manual axes its inputs vary over.

    Inside ``shard_map`` a constant is device-invariant while the blocks it is
    combined with vary across the mesh axes; scan needs one type for both.
    """
    axes = frozenset().union(*(_vma(r) for r in refs if r is not None)) - _vma(init)
    return lax.pcast(init, tuple(sorted(axes)), to="varying") if axes else init


def _chunks(num_classes: int, chunk_size: int) -> tuple[int, int]:
    """Number of full chunks and the width of the remainder block."""
    return num_classes // chunk_size, num_classes % chunk_size


def _as_bits(a: jax.Array) -> jax.Array:
    """16-bit floats viewed as uint16, for slicing and updating in place.

    XLA:CPU has no bfloat16 dynamic-slice / dynamic-update-slice: it converts the whole
    operand to float32 around each one, which costs a float32 copy of W and, in the
    backward loop, a full pass over dW per block (time quadratic in C). Integers are
    sliced natively; the bitcast is free on every backend.
    """
    return lax.bitcast_convert_type(a, jnp.uint16) if a.dtype.itemsize == 2 else a


def _from_bits(bits: jax.Array, dtype) -> jax.Array:
    return bits if bits.dtype == dtype else lax.bitcast_convert_type(bits, dtype)


def _slice_cols(a: jax.Array | None, start, width: int, axis: int):
    if a is None:
        return None
    return _from_bits(lax.dynamic_slice_in_dim(_as_bits(a), start, width, axis=axis), a.dtype)


def _chunked_stats(x, w, b, labels, offset, spec, chunk_size):
    """Running (max, sum of exp) over the non-target logits, block by block."""
    xp = _prepare_embeddings(x, spec)
    batch, dtype = x.shape[0], acc_dtype(x, w)
    num_full, rem = _chunks(w.shape[1], chunk_size)

    def absorb(carry, start, width):
        m, s = carry
        z = _block_logits(
            xp, _slice_cols(w, start, width, 1), _slice_cols(b, start, width, 0), spec
        )
        mask = _is_target(labels, offset + start, width)
        m_new = jnp.maximum(m, jnp.max(jnp.where(mask, -jnp.inf, z), axis=1))
        s = s * jnp.exp(m - m_new) + jnp.sum(
            jnp.where(mask, 0.0, jnp.exp(z - m_new[:, None])), axis=1
        )
        return m_new, s

    # A large finite floor rather than -inf, so that exp(m - m_new) is never nan.
    carry = tuple(
        _varying_like(c, x, w, b, labels, offset)
        for c in (jnp.full((batch,), -1e30, dtype), jnp.zeros((batch,), dtype))
    )
    if num_full:
        carry, _ = lax.scan(
            lambda c, i: (absorb(c, i * chunk_size, chunk_size), None), carry, jnp.arange(num_full)
        )
    if rem:
        carry = absorb(carry, num_full * chunk_size, rem)
    return carry


def _combine_shards(m, s, class_axis_name):
    """Merges per-device (max, sum) pairs of the log-sum-exp across the class axis."""
    if class_axis_name is not None:
        m_all = lax.pmax(m, class_axis_name)
        s = lax.psum(s * jnp.exp(m - m_all), class_axis_name)
        m = m_all
    return m + jnp.log(s)


def _make_chunked_lse(spec: Logits, chunk_size: int, class_axis_name: str | None):
    """A custom_vjp non-target LSE(x, w, b, labels, offset) streaming W in blocks."""

    @jax.custom_vjp
    def lse_fn(x, w, b, labels, offset):
        m, s = _chunked_stats(x, w, b, labels, offset, spec, chunk_size)
        return _combine_shards(m, s, class_axis_name)

    def fwd(x, w, b, labels, offset):
        lse = lse_fn(x, w, b, labels, offset)
        return lse, (x, w, b, labels, offset, lse)

    def bwd(res, g):
        x, w, b, labels, offset, lse = res
        num_full, rem = _chunks(w.shape[1], chunk_size)

        def block_grads(start, width):
            w_blk = _slice_cols(w, start, width, 1)
            b_blk = _slice_cols(b, start, width, 0)
            z, vjp = jax.vjp(
                lambda x_, w_, b_: _block_logits(_prepare_embeddings(x_, spec), w_, b_, spec),
                x,
                w_blk,
                b_blk,
            )
            mask = _is_target(labels, offset + start, width)
            p = jnp.where(mask, 0.0, jnp.exp(z - lse[:, None]))
            return vjp(g[:, None].astype(p.dtype) * p)

        def step(carry, start, width):
            dx, dw, db = carry
            dx_blk, dw_blk, db_blk = block_grads(start, width)
            dw = lax.dynamic_update_slice_in_dim(
                dw, _as_bits(dw_blk.astype(w.dtype)), start, axis=1
            )
            if db is not None:
                db = lax.dynamic_update_slice_in_dim(
                    db, _as_bits(db_blk.astype(b.dtype)), start, axis=0
                )
            return dx + dx_blk.astype(dx.dtype), dw, db

        carry = (
            jnp.zeros(x.shape, acc_dtype(x, w)),
            _as_bits(jnp.zeros_like(w)),
            None if b is None else _as_bits(jnp.zeros_like(b)),
        )
        carry = tuple(
            None if c is None else _varying_like(c, x, w, b, labels, offset, g) for c in carry
        )
        if num_full:
            carry, _ = lax.scan(
                lambda c, i: (step(c, i * chunk_size, chunk_size), None),
                carry,
                jnp.arange(num_full),
            )
        if rem:
            carry = step(carry, num_full * chunk_size, rem)
        dx, dw, db = carry
        # dx is this device's partial sum over its classes; the broadcast that x went
        # through on entry (see ``_Collectives``) sums the partials across devices.
        db = None if db is None else _from_bits(db, b.dtype)
        return dx.astype(x.dtype), _from_bits(dw, w.dtype), db, None, None

    lse_fn.defvjp(fwd, bwd)
    return lse_fn


# ----------------------------------------------------------------------------------
# The head.
# ----------------------------------------------------------------------------------


def _psum_of_replicated(axis_name):
    """psum whose backward is the identity: for sums whose cotangent every device holds.

    Under legacy ``pmap`` (no varying-axis types) ``lax.psum`` transposes to another
    psum, which would count the replicated cotangent of a replicated loss once per
    device; under ``shard_map`` JAX's own transpose of psum is already the identity.
    """

    @jax.custom_vjp
    def psum(v):
        return lax.psum(v, axis_name)

    psum.defvjp(lambda v: (psum(v), None), lambda _, g: (g,))
    return psum


def _broadcast_to_devices(axis_name):
    """Identity whose backward sums over ``axis_name``: a replicated value used by every
    device for a different part of the work (what shard_map's implicit pvary does)."""

    @jax.custom_vjp
    def broadcast(v):
        return v

    broadcast.defvjp(lambda v: (v, None), lambda _, g: (lax.psum(g, axis_name),))
    return broadcast


class _Collectives(NamedTuple):
    """The two collectives of the class-sharded head, right for pmap and shard_map.

    ``typed`` is True under shard_map's varying-axis types, where JAX inserts the
    broadcasts itself; False under legacy pmap, where they are explicit.
    """

    psum: Callable[[jax.Array], jax.Array]
    broadcast: Callable[[jax.Array], jax.Array]
    typed: bool


def _collectives(axis_name: str, weights: jax.Array) -> _Collectives:
    if axis_name in _vma(weights):  # shard_map with varying-axis types

        def broadcast(v):
            return v if axis_name in _vma(v) else lax.pcast(v, (axis_name,), to="varying")

        return _Collectives(lambda v: lax.psum(v, axis_name), broadcast, typed=True)
    return _Collectives(
        _psum_of_replicated(axis_name), _broadcast_to_devices(axis_name), typed=False
    )


def _target_logits(target_fn, x, w, b, labels, offset, extra, comm):
    """Target logits t (B,), each computed on the device that owns the label's column.

    Non-owners contribute zeros, so the gradient of t reaches x and w_y exactly once.
    """
    local = labels - offset
    owned = (local >= 0) & (local < w.shape[1])
    idx = jnp.clip(local, 0, w.shape[1] - 1)
    w_y = jnp.take(w, idx, axis=1).T
    b_y = None if b is None else jnp.take(b, idx)
    t = target_fn(x, w_y, b_y, *extra)
    t = jnp.where(owned, t, 0.0)
    return t if comm is None else comm.psum(t)


def check_chunk_size(chunk_size: int | None) -> None:
    """Raises ValueError unless ``chunk_size`` is None or a positive int."""
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")


def raw_margin_softmax(
    embeddings: ArrayLike,
    weights: ArrayLike,
    labels: ArrayLike,
    *,
    spec: Logits,
    target_fn: Callable[..., jax.Array],
    bias: ArrayLike | None = None,
    per_example: tuple[jax.Array, ...] = (),
    chunk_size: int | None = None,
    axis_name: str | None = None,
    class_axis_name: str | None = None,
    name: str = "margin_softmax",
) -> jax.Array:
    """Per-example ``logaddexp(t, LSE_{j≠y} z_j) − t`` for any target logit ``t``.

    The raw form, for losses whose logits are not all scaled cosines (softmax,
    L-Softmax, SphereFace); a normalized loss is simpler on ``margin_softmax``.

    Args:
      embeddings: (B, d) embeddings; under ``axis_name`` this device's part of the batch.
      weights: (d, C) class centres; under ``class_axis_name`` this device's contiguous
        block of columns, block index = ``axis_index(class_axis_name)``.
      labels: (B,) global integer class ids.
      spec: how the non-target logits are formed.
      target_fn: ``(x, w_y, b_y, *per_example) -> t`` the target logit of each
        example, from its embedding (B, d), its class centre (B, d), its bias (B,) or
        None, and the ``per_example`` arrays.
      bias: optional (C,) bias, sharded like the columns of ``weights``.
      per_example: arrays with a leading batch axis that ``target_fn`` needs (per-example
        margins, say); gathered with the embeddings under ``axis_name``.
      chunk_size: stream W in blocks of this many classes (per device when sharded).
      axis_name: data-parallel axis; the global batch is scored on every device.
      class_axis_name: axis over which the columns of W are sharded.
      name: the loss, as input errors name it (a loss built on the engine passes its own).

    Returns:
      Per-example losses (B,) in float32 (float64 for float64 inputs), for this
      device's examples.

    Example:
      >>> import jax.numpy as jnp
      >>> spec = Logits(normalize_embeddings=False, normalize_weights=False)
      >>> loss = raw_margin_softmax(jnp.eye(2), 2 * jnp.eye(2), jnp.array([0, 1]), spec=spec,
      ...                           target_fn=lambda x, w_y, b_y: jnp.sum(x * w_y, -1))
      >>> [round(float(v), 4) for v in loss]  # = softmax_cross_entropy
      [0.1269, 0.1269]
    """
    check_chunk_size(chunk_size)
    _validation.check_head_inputs(name, embeddings, weights, labels, bias, class_axis_name)
    embeddings, weights, labels = (jnp.asarray(a) for a in (embeddings, weights, labels))
    bias = None if bias is None else jnp.asarray(bias)
    if axis_name is not None:
        local_batch = embeddings.shape[0]
        index = axis_index(axis_name)
        embeddings, labels, *per_example = (
            lax.all_gather(a, axis_name, tiled=True) for a in (embeddings, labels, *per_example)
        )

    comm, offset = None, 0
    if class_axis_name is not None:
        offset = axis_index(class_axis_name) * weights.shape[1]
        comm = _collectives(class_axis_name, weights)
        if class_axis_name != axis_name:
            # Every device scores x against its own classes; gathered over this same axis,
            # x already has the all_gather whose transpose sums those partial gradients.
            embeddings, *per_example = (comm.broadcast(a) for a in (embeddings, *per_example))

    if chunk_size is None or chunk_size >= weights.shape[1]:
        lse = _dense_lse(embeddings, weights, bias, labels, offset, spec)
        if comm is not None:
            # The max only stabilizes the sum; no gradient flows through it.
            m = lax.stop_gradient(lax.pmax(lax.stop_gradient(lse), class_axis_name))
            lse = m + jnp.log(comm.psum(jnp.exp(lse - m)))
    else:
        lse = _make_chunked_lse(spec, chunk_size, class_axis_name)(
            embeddings, weights, bias, labels, offset
        )

    t = _target_logits(
        target_fn, embeddings, weights, bias, labels, offset, per_example, comm
    ).astype(lse.dtype)
    loss = jnp.logaddexp(t, lse) - t

    if axis_name is not None:
        if comm is not None and not comm.typed:
            # Legacy pmap: the global-batch loss is replicated, so the slice's cotangent
            # must reach every device's classes (shard_map's types do this implicitly).
            loss = _broadcast_to_devices(axis_name)(loss)
        loss = lax.dynamic_slice_in_dim(loss, index * local_batch, local_batch)
    return loss


def margin_softmax(
    embeddings: ArrayLike,
    weights: ArrayLike,
    labels: ArrayLike,
    *,
    scale: float | jax.Array,
    margin_fn: Callable[..., jax.Array],
    per_example: tuple[jax.Array, ...] = (),
    chunk_size: int | None = None,
    axis_name: str | None = None,
    class_axis_name: str | None = None,
    name: str = "margin_softmax",
) -> jax.Array:
    """A normalized margin loss: logits ``s·cos θ_j``, target ``s·f(cos θ_y)``.

    ``loss_i = −log(e^{s·f(cos θ_y)} / (e^{s·f(cos θ_y)} + Σ_{j≠y} e^{s·cos θ_j}))``,
    with x and W L2-normalized: NormFace (f = id), CosFace (f = cos θ − m), ArcFace
    (f = cos(θ + m)) and their successors are each one ``margin_fn``. The scale is
    applied here, once: ``margin_fn`` returns f(cos θ_y), not s·f.

    Args:
      embeddings: (B, d) embeddings (this device's part under ``axis_name``).
      weights: (d, C) class centres (this device's block under ``class_axis_name``).
      labels: (B,) global integer class ids.
      scale: s, a float or a scalar array (AdaCos's adaptive scale).
      margin_fn: ``(cos θ_y (B,), *per_example) -> f(cos θ_y) (B,)``.
      per_example: arrays with a leading batch axis that ``margin_fn`` needs
        (MagFace's and AdaFace's per-example margins, say); gathered like the
        embeddings under ``axis_name``.
      chunk_size, axis_name, class_axis_name: the layout, see ``raw_margin_softmax``.
      name: the loss, as input errors name it.

    Returns:
      Per-example losses (B,), float32 (float64 for float64 inputs).

    Example:
      >>> import jax.numpy as jnp
      >>> x, w, y = jnp.eye(2), jnp.eye(2), jnp.array([0, 1])
      >>> loss = margin_softmax(x, w, y, scale=1.0, margin_fn=lambda cos: cos - 0.0)
      >>> [round(float(v), 4) for v in loss]  # = cosface(x, w, y, scale=1, margin=0)
      [0.3133, 0.3133]
    """

    def target_fn(x, w_y, b_y, *extra):
        del b_y
        return scale * margin_fn(cosine(x, w_y), *extra)

    return raw_margin_softmax(
        embeddings,
        weights,
        labels,
        spec=Logits(normalize_embeddings=True, normalize_weights=True, scale=scale),
        target_fn=target_fn,
        per_example=per_example,
        chunk_size=chunk_size,
        axis_name=axis_name,
        class_axis_name=class_axis_name,
        name=name,
    )


def axis_index(axis_name: str) -> jax.Array:
    """``lax.axis_index``, with an error that says how to bind an unbound axis."""
    try:
        return lax.axis_index(axis_name)
    except NameError as e:
        raise ValueError(
            f"axis name {axis_name!r} is not bound: call the loss inside jax.pmap or "
            f"jax.shard_map over a mesh with that axis ({e})"
        ) from None

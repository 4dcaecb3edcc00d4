"""Generated inputs for the checks: logits clear of kinks, targets, extreme logits."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np

from ..activations import ACTIVATIONS, Activation, Identity
from ..head import Head
from ..losses import LOSSES
from ..numerics.memo import scoped_table
from ..testing.loops import ClassView
from .report import _readonly, _safe_call

#: generated inputs keep every entry this far from a known kink (see the module docstring)
KINK_MARGIN = 1e-2

#: shape of generated inputs when none is given
DEFAULT_SHAPE = (6, 5)

#: magnitude of the extreme logits of :func:`check_extreme`
EXTREME = 1e4

#: what ``loss.target_kind`` may say, and the targets generated for it
TARGET_KINDS = {
    "class": "integer class indices (...,) in [0, K)",
    "probability": "values of a's shape, uniform in [0, 1]",
    "real": "values of a's shape, standard normal",
}

# logits are drawn N(0, 1.5²) and clipped to this range
_Z_SCALE = 1.5
_Z_CLIP = 6.0
_MAX_RESAMPLE = 200


def _old_kinks(cls, fn):
    """An old ``KINKS`` entry as the class's ``kinks``: a loss's ``fn(loss, a, y)`` is
    the method as it is; an activation's ``fn(act, z, y)`` (called with y=None) is
    wrapped into ``kinks(self, z, a=None)``."""
    if not issubclass(cls, Activation):
        return fn

    def kinks(self, z, a=None):
        return fn(self, z, None)

    return kinks


#: registered class -> its ``kinks``: each entry's distance ``(..., K)`` to its nearest kink,
#: ``kinks(act, z, a=None)`` for an activation (in ``z``; ``a = act(z)`` when known) and
#: ``kinks(loss, a, y)`` for a loss (in its input): a view of the classes (see
#: :class:`~jacobians.Activation` and :class:`~jacobians.Loss`), which the checks read;
#: ``KINKS[cls] = fn`` (the old entry, ``fn(act, z, y)`` or ``fn(loss, a, y)``) sets it
KINKS: Mapping = ClassView("kinks", ACTIVATIONS, LOSSES, name="KINKS", adapt=_old_kinks)


def _kink_fn(obj):
    """``(type(obj).kinks, name of the class that defines it)``, or (None, None)."""
    fn = getattr(type(obj), "kinks", None)
    if fn is None:
        return None, None
    return fn, next(cls.__name__ for cls in type(obj).__mro__ if "kinks" in vars(cls))


def _row_distance(obj, x, y=None, a=None) -> tuple[np.ndarray | None, str | None]:
    """Per-row minimum distance ``(...,)`` of ``x`` to ``obj``'s kinks, or (None, None).
    ``y``: a loss's targets; ``a``: an activation's output at ``x`` when known."""
    fn, where = _kink_fn(obj)
    if fn is None:
        return None, None
    with np.errstate(all="ignore"):
        if isinstance(obj, Activation):
            d = fn(obj, x) if a is None else fn(obj, x, a)
        else:
            d = fn(obj, x, y)
        d = np.broadcast_to(np.asarray(d, dtype=np.float64), x.shape)
    return np.nan_to_num(d, nan=0.0).min(axis=-1), where


def _head_distance(head: Head, z64, y) -> tuple[np.ndarray, list[str]]:
    """Per-row distance of ``(z, y)`` to the head's kinks (activation in z, loss in its input)."""
    return _head_distance_and_input(head, z64, y)[:2]


def _loss_input(head: Head, z64):
    """What the head's loss sees at float64 logits: ``z64`` itself (a loss of the logits) or
    the activation's output (None when it raises)."""
    return z64 if head.logits_loss else _safe_call(head.activation, z64)


def _head_distance_and_input(head: Head, z64, y):
    """``(distance, names, x)``: :func:`_head_distance` and the loss's input ``x`` at ``z64``
    (:func:`_loss_input`) it measured the loss's kinks at."""
    dist = np.full(z64.shape[:-1], np.inf)
    names = []
    x = _loss_input(head, z64)
    # the activation's output, when x is it (not the logits a Fenchel–Young loss sees)
    d, name = _row_distance(head.activation, z64, a=None if head.logits_loss else x)
    if d is not None:
        dist, names = np.minimum(dist, d), [name]
    if x is not None:
        yl = y.astype(np.float64) if np.asarray(y).dtype.kind == "f" else y
        d, name = _row_distance(head.loss_fn, x, yl)
        if d is not None:
            dist, names = np.minimum(dist, d), names + [name]
    return dist, names, x


def _target_kind(loss) -> str:
    kind = getattr(loss, "target_kind", "real")
    if kind not in TARGET_KINDS:
        raise ValueError(
            f"{type(loss).__name__}.target_kind must be one of {sorted(TARGET_KINDS)} to generate targets; "
            f"got {kind!r} (or pass y yourself)"
        )
    return kind


def make_targets(loss, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """Targets for ``loss`` and logits of ``shape``: the loss's own ``example_targets(shape,
    rng)`` where it has one (targets shaped unlike its input: rankings, a mean and variance
    input with a mean's targets, counts), else from ``loss.target_kind`` (float64 or int)."""
    own = getattr(loss, "example_targets", None)
    if own is not None:
        return own(tuple(shape), rng)
    kind = _target_kind(loss)
    if kind == "class":
        y = rng.integers(0, shape[-1], size=shape[:-1])
        ignore = getattr(loss, "ignore_index", None)
        if ignore is not None and y.size > 1:  # every third sample ignored, never all of them
            y.reshape(-1)[1::3] = ignore
        return y
    if kind == "probability":
        return rng.uniform(0.0, 1.0, size=shape)
    return rng.normal(size=shape)


def _draw_logits(shape, rng):
    return np.clip(rng.normal(scale=_Z_SCALE, size=shape), -_Z_CLIP, _Z_CLIP)


def _check_shape(shape) -> tuple:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"shape must be a tuple of ints, (..., K); got {shape!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive ints, (..., K); got {shape}")
    return shape


def fit_width(obj, shape: tuple) -> tuple:
    """``shape`` with its last axis rounded up to the multiple ``obj`` needs: an activation's
    or a loss's ``width_multiple`` (2 for ``[means | variances]``: MeanVariance, GaussianNLL),
    the larger of the two for a Head; ``shape`` itself for every other object."""
    parts = (obj.activation, obj.loss_fn) if isinstance(obj, Head) else (obj,)
    m = max(int(getattr(p, "width_multiple", 1)) for p in parts)
    K = shape[-1]
    return shape if K % m == 0 else shape[:-1] + (K + m - K % m,)


def _check_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64; got {dt}")
    return dt


def example_inputs(obj, shape=DEFAULT_SHAPE, dtype=np.float64, seed=0, *, y=None):
    """Generated inputs for a check, clear of kinks.

    Logits are drawn from N(0, 1.5²) (clipped to ±6); targets follow
    ``loss.target_kind``: ``'class'`` → integer indices, ``'probability'`` → uniform in
    [0, 1], ``'real'`` (also what a loss that declares nothing gets) → standard normal.
    Rows whose entries lie within :data:`KINK_MARGIN` of a kink of the activation (in
    ``z``) or of the loss (in its input) are drawn again.

    Parameters
    ----------
    obj : Activation or Head
    shape : tuple of int
        Shape ``(..., K)`` of ``z``.
    dtype : {float64, float32}
    seed : int, SeedSequence or Generator
        Passed to ``np.random.default_rng``.
    y : array_like, optional
        Targets to keep (a Head only): only ``z`` is drawn, clear of the kinks for them.

    Returns
    -------
    z : ndarray of ``shape`` and ``dtype`` (an Activation), or ``(z, y)`` (a Head), with
        ``y`` integer indices ``shape[:-1]`` or floats of ``shape`` in ``dtype``.

    Examples
    --------
    >>> import numpy as np
    >>> import jacobians as jac
    >>> z = example_inputs(jac.ReLU(), shape=(100, 10))
    >>> bool(np.abs(z).min() >= KINK_MARGIN)
    True
    >>> z, y = example_inputs(jac.Head(jac.Softmax(), jac.CrossEntropy()), shape=(4, 3), dtype=np.float32)
    >>> z.dtype, y.shape, y.dtype.kind
    (dtype('float32'), (4,), 'i')
    """
    z, y, _ = _generate(obj, shape, dtype, seed, y)
    return z if y is None else (z, y)


_REUSE = threading.local()


def reuse_inputs():
    """Within the block, on this thread, inputs generated again for the same object, shape,
    dtype, targets and generator state are the earlier draw's (copies), and the generator
    is left in the state the draw left it in: every call sees what it would have drawn.
    The check command checks one row's first and second order on the same inputs."""
    return scoped_table(_REUSE)


def _copies(drawn):
    return tuple(None if x is None else x.copy() for x in drawn)


def _generate(obj, shape, dtype, seed, y):
    """:func:`example_inputs` as ``(z, y, x)``: y None for an activation, ``x`` what a
    head's loss sees at ``z`` promoted to float64 (:func:`_loss_input`; None for an activation)."""
    shape, dt = fit_width(obj, _check_shape(shape)), _check_dtype(dtype)
    rng = np.random.default_rng(seed)
    table = getattr(_REUSE, "table", None)
    if table is None or y is not None:
        return _draw(obj, shape, dt, rng, y)
    # the object itself is kept in the entry: its id cannot be reused within the block
    key = (id(obj), shape, dt.str, repr(rng.bit_generator.state))
    hit = table.get(key)
    if hit is None:
        drawn = _draw(obj, shape, dt, rng, y)
        table[key] = hit = (obj, _copies(drawn), rng.bit_generator.state)
        return drawn
    rng.bit_generator.state = hit[2]
    return _copies(hit[1])


def _draw(obj, shape, dt, rng, y):
    """:func:`_generate`'s draw from ``rng`` (``shape`` and ``dt`` checked)."""
    is_head = isinstance(obj, Head)
    if not (is_head or isinstance(obj, Activation)):
        raise TypeError(f"obj must be a jacobians.Activation or jacobians.Head instance; got {type(obj).__name__}")
    z = _draw_logits(shape, rng)
    own = getattr(obj.loss_fn, "example_input", None) if is_head else None
    if own is not None and isinstance(obj.activation, Identity):  # z is the loss's input
        z = np.asarray(own(shape, rng), dtype=np.float64)
    keep_y = y is not None
    if is_head:
        y = np.array(y, copy=True) if keep_y else make_targets(obj.loss_fn, shape, rng)
    elif keep_y:
        raise TypeError("y is for a Head; an activation takes no targets")
    for _ in range(_MAX_RESAMPLE):
        zc = z.astype(dt).astype(np.float64)  # what the check will see
        yc = y.astype(dt) if y is not None and y.dtype.kind == "f" else y
        if is_head:
            dist, _, x = _head_distance_and_input(obj, zc, yc)
        else:
            dist, _ = _row_distance(obj, zc)
        bad = np.zeros(shape[:-1], dtype=bool) if dist is None else ~(dist >= KINK_MARGIN)
        if not bad.any():
            break
        n_bad = int(bad.sum())
        z[bad] = _draw_logits((n_bad, shape[-1]), rng)
        if y is not None and not keep_y:
            y[bad] = make_targets(obj.loss_fn, (n_bad, shape[-1]), rng)
    else:
        raise RuntimeError(
            f"could not draw inputs of shape {shape} at least {KINK_MARGIN} from the kinks of {obj!r}; "
            "pass inputs yourself"
        )
    z = z.astype(dt)
    if not is_head:
        return z, None, None
    return z, (y.astype(dt) if y.dtype.kind == "f" else y), x


def extreme_inputs(obj, shape=(2, 3, 5), dtype=np.float64, seed=0):
    """Logits of ±1e4 (and targets for a Head) where every fused rule has a closed form.

    Each row has one maximum, ``+1e4`` (or ``0``), every other entry lies ``1e4`` or
    more below it (entries in ``{−1e4, 0, 1e4}``), so softmax, sparsemax and 1.5-entmax
    are exactly one-hot. Targets as in :func:`example_inputs`.

    Examples
    --------
    >>> import jacobians as jac
    >>> z = extreme_inputs(jac.Softmax(), shape=(3, 4))
    >>> sorted(set(z.ravel().tolist())) <= [-1e4, 0.0, 1e4]
    True
    """
    shape, dt = fit_width(obj, _check_shape(shape)), _check_dtype(dtype)
    if shape[-1] < 2:
        raise ValueError(f"extreme inputs need K >= 2 classes; got shape {shape}")
    rng = np.random.default_rng(seed)
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    K = shape[-1]
    z = np.empty((rows, K))
    for r in range(rows):
        top = rng.integers(K)
        if r % 2 == 0:  # max +1e4, others in {0, −1e4}
            z[r] = rng.choice([0.0, -EXTREME], size=K)
            z[r, top] = EXTREME
        else:  # max 0, others −1e4
            z[r] = -EXTREME
            z[r, top] = 0.0
    z = z.reshape(shape) * (extreme_magnitude(obj, dt) / EXTREME)  # ±1e4, or less where a class says
    z = z.astype(dt)
    if not isinstance(obj, Head):
        return z
    own = getattr(obj.loss_fn, "example_input", None)
    if own is not None and isinstance(obj.activation, Identity):  # the loss's own draw, times 1e4
        z = (np.asarray(own(shape, rng), dtype=np.float64) * EXTREME).astype(dt)
    y = make_targets(obj.loss_fn, shape, rng)
    return z, (y.astype(dt) if y.dtype.kind == "f" else y)


def extreme_magnitude(obj, dtype) -> float:
    """The magnitude of the extreme logits for ``obj`` (an activation or a head): 1e4, or less
    where its activation or loss says so with ``extreme_magnitude(dtype, head)`` (a float, or
    None for no bound): a class whose outputs overflow there as torch's do (``Exp``: ``e^{1e4}``
    is ``inf``)."""
    head = obj if isinstance(obj, Head) else None
    bound = EXTREME
    for part in (obj.activation, obj.loss_fn) if head is not None else (obj,):
        own = getattr(part, "extreme_magnitude", None)
        b = None if own is None else own(np.dtype(dtype), head)
        bound = bound if b is None else min(bound, float(b))
    return bound


def _kink_note(names, dist) -> str:
    if dist is None or not np.any(dist < KINK_MARGIN):
        return ""
    return (
        f"the inputs lie within {KINK_MARGIN:g} of a kink of {'/'.join(names)}, where finite differences "
        "are unreliable (use generated inputs, or move them)"
    )




def prepare_targets(y, z: np.ndarray) -> np.ndarray:
    """A read-only copy of the targets, floating ones in z's dtype."""
    y = np.array(y, copy=True)
    if y.dtype.kind == "f" or y.dtype.kind == "b":
        y = y.astype(z.dtype)
    y.flags.writeable = False
    return y


def head_inputs(head, z, y, *, shape, dtype, rng) -> tuple[np.ndarray, np.ndarray, str]:
    """``(z, y, kink note)`` for a head check, both arrays read-only (:func:`prepare_targets`):
    generated clear of kinks when z is None (y kept when given: its shape sets the batch),
    else z as given (cast to ``dtype``) with targets generated when y is None, and a note
    when the inputs sit near a kink."""
    return _head_inputs(head, z, y, shape=shape, dtype=dtype, rng=rng)[:3]


def _head_inputs(head, z, y, *, shape, dtype, rng) -> tuple:
    """:func:`head_inputs` and, fourth, what the loss sees at ``z`` promoted to float64
    (:func:`_loss_input`, read-only; None when the activation raised), computed on the way."""
    from ..numerics.validation import as_float_array

    if z is None:
        dt = np.dtype(np.float64) if dtype is None else _check_dtype(dtype)
        if y is not None:
            ya = np.asarray(y)
            shape = ya.shape + (_check_shape(shape)[-1],) if ya.dtype.kind in "iu" else ya.shape
        z, y, x = _generate(head, shape, dt, rng, y)
        kink = ""
    else:
        z = as_float_array(z, "z")
        if dtype is not None:
            z = z.astype(_check_dtype(dtype))
        if y is None:
            y = make_targets(head.loss_fn, z.shape, rng)
        dist, names, x = _head_distance_and_input(head, z.astype(np.float64), np.asarray(y))
        kink = _kink_note(names, dist)
    z = _readonly(z)
    return z, prepare_targets(y, z), kink, (None if x is None else _readonly(x))

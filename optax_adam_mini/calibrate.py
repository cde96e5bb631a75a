"""A partition chosen from a short warm-up: SlimAdam's signal-to-noise rule.

SlimAdam (Kalra, Kirchenbauer, Barkeshli and Goldstein, 2025, "When Can You
Get Away with Low Memory Adam?", arXiv 2503.01843) asks, of a leaf's Adam
second moment ``v`` after a short run, how well the entries along an axis
``K`` are described by their mean:

.. math::

   \\mathrm{SNR}_K(v) = \\mathbb{E}_{K'}\\!\\left[
     \\frac{(\\mathbb{E}_K v)^2}{\\mathrm{Var}_K v} \\right]

(``K'`` the other axes; the variance is the population variance). A high
SNR means one ``v`` per slice along ``K`` loses little. The rule here:
compress each leaf along its axis of highest SNR when that SNR exceeds
``threshold`` (1), that is share one ``v`` along it and keep every other
axis (``Block.along(<the others>)``); leave it elementwise otherwise. Norm
scales (by name, :func:`~optax_adam_mini.classify`), biases and leaves of
rank < 2 are never compressed.

Slices whose ``v`` is all zero (rows of an embedding no token in the
warm-up used) say nothing and are left out of the mean; a slice that is
constant and non-zero has infinite SNR.

The warm-up is yours to run (SlimAdam's, and this project's study's: plain
AdamW for a few hundred steps of the real run); its cost is those steps.
The result is a pytree of :class:`~optax_adam_mini.Block`, to pass as
``partition=``; the state stays reduced and every block static.

>>> import jax.numpy as jnp, optax
>>> from optax_adam_mini import adam_mini
>>> from optax_adam_mini.calibrate import snr_partition
>>> params = {'mlp': {'kernel': jnp.ones((4, 3))}, 'norm': {'scale': jnp.ones(3)}}
>>> nu = {'mlp': {'kernel': jnp.array([[1.0, 2, 4]] * 4)},
...       'norm': {'scale': jnp.array([1.0, 5, 9])}}
>>> partition = snr_partition(nu)
>>> partition
{'mlp': {'kernel': Block.along(1)}, 'norm': {'scale': Block.elementwise()}}
>>> tx = adam_mini(1e-3, partition=partition)
>>> state = tx.init(params)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import numpy as np
import optax

from optax_adam_mini.block import Block
from optax_adam_mini.default_partition import classify
from optax_adam_mini.layout import Role
from optax_adam_mini.partition import Path, leaves_with_paths, path_str


def adam_second_moments(opt_state):
  """Adam's ``v`` (``nu``) from an ``optax.adam``/``adamw`` state, chained or not."""
  return optax.tree_utils.tree_get(opt_state, 'nu')


def snr(v, axis: int) -> float:
  """SlimAdam's SNR of ``v`` along ``axis`` (see the module doc).

  >>> snr(np.array([[1.0, 1.0], [2.0, 4.0]]), axis=1)  # rows: inf, 9 / 1
  inf
  >>> float(snr(np.array([[1.0, 3.0], [2.0, 4.0]]), axis=1))  # 4, 9
  6.5
  """
  v = np.asarray(v, dtype=np.float64)
  mean = v.mean(axis=axis)
  var = v.var(axis=axis)
  with np.errstate(divide='ignore', invalid='ignore'):
    ratio = mean**2 / var
  ratio = ratio[~np.isnan(ratio)]  # 0 / 0: a slice of zeros says nothing
  if ratio.size == 0:
    return 0.0
  if np.isinf(ratio).any():
    return math.inf
  return float(ratio.mean())


class SNRDecision(NamedTuple):
  """One leaf: its SNR along each axis, the axis compressed, the block.

  ``axis`` is ``None`` where the leaf stays elementwise; ``snrs`` is empty
  for leaves never compressed (norms, biases, rank < 2).
  """

  path: Path
  shape: tuple[int, ...]
  snrs: tuple[float, ...]
  axis: int | None
  block: Block

  def __str__(self) -> str:
    snrs = ', '.join(f'{s:.3g}' for s in self.snrs) or '-'
    return f'{path_str(self.path)} {self.shape}: SNR per axis [{snrs}] -> {self.block!r}'


def snr_decisions(second_moments, threshold: float = 1.0) -> list[SNRDecision]:
  """Each leaf's SNRs and block, in ``jax.tree.leaves`` order.

  Args:
    second_moments: Adam's ``v``, a pytree of arrays shaped like the params
      (:func:`adam_second_moments` of an ``optax.adamw`` state).
    threshold: compress only along an axis whose SNR exceeds this.
  """
  if not threshold >= 0:
    raise ValueError(f'threshold must be >= 0, got {threshold!r}.')
  leaves, _ = leaves_with_paths(second_moments)
  out = []
  for path, v in leaves:
    shape = tuple(int(d) for d in np.shape(v))
    if len(shape) < 2 or classify(path) in (Role.NORM, Role.BIAS):
      out.append(SNRDecision(path, shape, (), None, Block.elementwise()))
      continue
    host = np.asarray(jax.device_get(v))
    snrs = tuple(snr(host, axis) for axis in range(len(shape)))
    best = int(np.argmax(snrs))
    if snrs[best] > threshold:
      kept = tuple(a for a in range(len(shape)) if a != best)
      out.append(SNRDecision(path, shape, snrs, best, Block.along(*kept)))
    else:
      out.append(SNRDecision(path, shape, snrs, None, Block.elementwise()))
  return out


def snr_partition(second_moments, threshold: float = 1.0):
  """SlimAdam's partition from Adam's ``v``: a pytree of blocks (module doc)."""
  decisions = snr_decisions(second_moments, threshold)
  treedef = jax.tree.structure(second_moments)
  return jax.tree.unflatten(treedef, [d.block for d in decisions])

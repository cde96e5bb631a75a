"""optax_adam_mini.calibrate: SlimAdam's SNR rule (arXiv 2503.01843).

Expected SNRs are worked out by hand from the paper's definition,
SNR_K(v) = mean over the other axes of (mean_K v)^2 / Var_K v, with the
population variance; the rule is the issue's reading of SlimAdam: compress
along the highest-SNR axis when it exceeds 1, never a norm.
"""

import doctest
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_adam_mini import Block, adam_mini, calibrate
from optax_adam_mini.calibrate import (
  adam_second_moments,
  snr,
  snr_decisions,
  snr_partition,
)

V = np.array([[1.0, 3.0], [2.0, 4.0]])


def test_snr_by_hand():
  # Along axis 1 (each row): [1, 3] mean 2, var 1 -> 4; [2, 4] mean 3,
  # var 1 -> 9; mean over rows 6.5.
  assert snr(V, axis=1) == pytest.approx(6.5)
  # Along axis 0 (each column): [1, 2] mean 1.5, var 0.25 -> 9; [3, 4] mean
  # 3.5, var 0.25 -> 49; mean 29.
  assert snr(V, axis=0) == pytest.approx(29.0)
  # A constant slice: infinite SNR. Slices of zeros (unused embedding rows)
  # are left out; all zeros says nothing: 0.
  assert snr(np.array([[2.0, 2.0], [1.0, 3.0]]), axis=1) == math.inf
  assert snr(np.array([[0.0, 0.0], [1.0, 3.0]]), axis=1) == pytest.approx(4.0)
  assert snr(np.zeros((3, 2)), axis=0) == 0.0
  # Three axes: along axis 2, the mean over the 2 x 2 other indices.
  cube = np.stack([V, 2 * V])  # (2, 2, 2): scaling a slice keeps its SNR
  assert snr(cube, axis=2) == pytest.approx(6.5)


def test_rule_compresses_the_highest_snr_axis_above_threshold():
  nu = {
    'mlp': {'kernel': V},  # SNR 29 along 0 > 6.5 along 1: share along 0
    'attn': {'q_proj': {'kernel': V.T}},  # the transpose: along 1
    'rows': {'kernel': np.array([[1.0, 1.0], [3.0, 3.0]])},
    'sparse': {'kernel': np.array([[0.0, 0.0, 9.0], [9.0, 0.0, 0.0]])},
    'final_norm': {'scale': np.ones(4)},  # a norm: never compressed
    'bias_like': np.ones(4),  # rank 1: never compressed
    'ln_2': {'weight': np.ones((2, 2))},  # named a norm: never compressed
  }
  decisions = {'/'.join(d.path): d for d in snr_decisions(nu)}
  mlp = decisions['mlp/kernel']
  assert mlp.snrs == pytest.approx((29.0, 6.5))
  assert (mlp.axis, mlp.block) == (0, Block.along(1))
  q = decisions['attn/q_proj/kernel']
  assert (q.axis, q.block) == (1, Block.along(0))
  # [[1, 1], [3, 3]]: along 0 each column [1, 3] has mean 2, var 1 -> 4;
  # along 1 each row is constant -> inf: shared along axis 1.
  rows = decisions['rows/kernel']
  assert rows.snrs[0] == pytest.approx(4.0) and rows.snrs[1] == math.inf
  assert rows.block == Block.along(0)
  # [[0, 0, 9], [9, 0, 0]]: along 0 the columns [0, 9] and [9, 0] have mean
  # 4.5, var 20.25 -> 1 ([0, 0] says nothing); along 1 each row has mean 3,
  # var 18 -> 0.5. Neither exceeds 1: elementwise.
  sparse = decisions['sparse/kernel']
  assert sparse.snrs == pytest.approx((1.0, 0.5))
  assert (sparse.axis, sparse.block) == (None, Block.elementwise())
  for path in ('final_norm/scale', 'bias_like', 'ln_2/weight'):
    assert decisions[path].block == Block.elementwise(), path
    assert decisions[path].snrs == () and decisions[path].axis is None
  # A threshold above every finite SNR leaves a leaf elementwise.
  strict = {'/'.join(d.path): d for d in snr_decisions(nu, threshold=30.0)}
  assert strict['mlp/kernel'].block == Block.elementwise()
  assert strict['rows/kernel'].block == Block.along(0)  # inf > 30
  with pytest.raises(ValueError, match='threshold'):
    snr_decisions(nu, threshold=-1.0)
  # The partition is the decisions' blocks in the tree's structure.
  partition = snr_partition(nu)
  assert partition['mlp']['kernel'] == Block.along(1)
  assert partition['final_norm']['scale'] == Block.elementwise()


def test_partition_from_an_adamw_warmup_trains_with_adam_mini():
  rng = np.random.default_rng(0)
  params = {
    'embed': {'embedding': rng.normal(size=(16, 8)).astype(np.float32)},
    'mlp': {'kernel': rng.normal(size=(8, 12)).astype(np.float32)},
    'norm': {'scale': np.ones(8, np.float32)},
  }

  def loss(p, x):
    h = p['embed']['embedding'][x] * p['norm']['scale'][None, :]
    return jnp.mean(jnp.tanh(h @ p['mlp']['kernel']) ** 2)

  warmup = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2))
  tokens = np.arange(16) % 5  # rows 5..15 of the embedding never used

  @jax.jit
  def warmup_step(params):
    grads = jax.grad(loss)(params, tokens)
    _, state = warmup.update(grads, warmup.init(params), params)
    return grads, state

  grads, state = warmup_step(params)
  nu = adam_second_moments(state)
  # Adam's v after one step is (1 - b2) g^2, optax's default b2 0.999.
  np.testing.assert_allclose(
    nu['mlp']['kernel'], 0.001 * grads['mlp']['kernel'] ** 2, rtol=1e-5
  )
  partition = snr_partition(nu)
  assert partition['norm']['scale'] == Block.elementwise()
  compressed = [d for d in snr_decisions(nu) if d.block != Block.elementwise()]
  assert compressed
  tx = adam_mini(1e-3, partition=partition)
  updates, mini_state = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(
    grads, params
  )
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  assert all(bool(jnp.isfinite(u).all()) for u in jax.tree.leaves(updates))
  # Fewer numbers in the state than AdamW's, as some leaves share a v.
  size = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  adamw_state = jax.eval_shape(optax.adamw(1e-3).init, params)
  assert size(mini_state) < size(adamw_state)


def test_docstring_examples_run():
  result = doctest.testmod(calibrate, optionflags=doctest.ELLIPSIS)
  assert result.attempted and not result.failed

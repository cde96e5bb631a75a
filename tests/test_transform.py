"""The update math: equivalences, references, dtypes, state and composition."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from _support.trees import (
  assert_same_shapes_and_dtypes,
  assert_trees_close,
  assert_trees_equal,
)
from optax_adam_mini import (
  Block,
  ScaleByAdamMiniState,
  adam_mini,
  default_weight_decay_mask,
  scale_by_adam_mini,
)

B1, B2, EPS = 0.9, 0.95, 1e-8


def _params(seed=0):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  return {
    'layer': {
      'kernel': jax.random.normal(k1, (6, 12)),
      'bias': jax.random.normal(k2, (12,)),
    },
    'stack': jax.random.normal(k3, (2, 4, 8)),
    'scalar': jnp.asarray(0.5, jnp.float32),
  }


def _per_last_axis(params):
  """A label function: one v per index of the last axis (whole for scalars)."""
  return jax.tree.map(
    lambda x: Block.along(-1) if x.ndim else Block.whole(), params
  )


def _grads(params, step):
  """Deterministic gradients whose scale varies across rows and columns."""

  def one(x):
    n = x.size
    ramp = jnp.linspace(0.1, 3.0, n).reshape(x.shape)
    return jnp.sin(x * (step + 1.3) + ramp) * ramp

  return jax.tree.map(one, params)


def _run(tx, params, steps=5):
  """`steps` jitted steps of `tx` on the gradients of `_grads`."""

  @jax.jit
  def step(params, state, step):
    updates, state = tx.update(_grads(params, step), state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for i in range(steps):
    params, state = step(params, state, i)
  return params, state


def test_elementwise_blocks_are_adamw():
  params = _params()
  ours, _ = _run(
    adam_mini(
      1e-2,
      B1,
      B2,
      EPS,
      weight_decay=0.1,
      partition=Block.elementwise(),
      mask=default_weight_decay_mask,
    ),
    params,
  )
  theirs, _ = _run(
    optax.adamw(
      1e-2, B1, B2, EPS, weight_decay=0.1, mask=default_weight_decay_mask
    ),
    params,
  )
  assert_trees_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_defaults_are_adamw_defaults():
  # Every default (b1, b2, eps, weight decay 1e-4) is optax.adamw's.
  params = _params(3)
  ours, _ = _run(adam_mini(1e-2, partition=Block.elementwise()), params)
  mask = default_weight_decay_mask
  theirs, _ = _run(optax.adamw(1e-2, mask=mask), params)
  assert_trees_close(ours, theirs, rtol=1e-6, atol=1e-7)
  no_decay, _ = _run(optax.adamw(1e-2, weight_decay=0.0, mask=mask), params)
  assert not np.allclose(
    no_decay['layer']['kernel'], theirs['layer']['kernel'], rtol=0, atol=1e-6
  )


def test_elementwise_blocks_are_adam():
  params = _params(1)
  ours, _ = _run(
    optax.chain(
      scale_by_adam_mini(B1, B2, EPS, partition=Block.elementwise()),
      optax.scale(-3e-3),
    ),
    params,
  )
  theirs, _ = _run(optax.adam(3e-3, B1, B2, EPS), params)
  assert_trees_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_eps_root_as_optax():
  # eps_root goes inside the square root, as in optax.scale_by_adam; large
  # enough here (against v_hat of order 1) to move the update well past rtol.
  params, eps_root = _params(2), 1e-2
  ours, _ = _run(
    optax.chain(
      scale_by_adam_mini(
        B1, B2, EPS, eps_root=eps_root, partition=Block.elementwise()
      ),
      optax.scale(-3e-3),
    ),
    params,
  )
  theirs, _ = _run(optax.adam(3e-3, B1, B2, EPS, eps_root=eps_root), params)
  assert_trees_close(ours, theirs, rtol=1e-6, atol=1e-7)
  # adam_mini passes it on, in optax.adamw's positional order.
  mask = default_weight_decay_mask
  ours, _ = _run(
    adam_mini(
      1e-2,
      B1,
      B2,
      EPS,
      eps_root,
      None,
      0.1,
      mask,
      partition=Block.elementwise(),
    ),
    params,
  )
  theirs, _ = _run(
    optax.adamw(1e-2, B1, B2, EPS, eps_root, None, 0.1, mask), params
  )
  assert_trees_close(ours, theirs, rtol=1e-6, atol=1e-7)
  without, _ = _run(
    optax.adamw(1e-2, B1, B2, EPS, 0.0, None, 0.1, mask), params
  )
  assert not np.allclose(
    without['layer']['kernel'], theirs['layer']['kernel'], rtol=1e-4
  )


def _numpy_reference(param, grads, view_shape, reduce_axes, lr, wd=0.0):
  """Adam-mini on one leaf in NumPy float64, blocks given by a reshaped view."""
  p = np.asarray(param, np.float64)
  m = np.zeros_like(p)
  v = None
  for t, g in enumerate(grads, start=1):
    g = np.asarray(g, np.float64)
    m = B1 * m + (1 - B1) * g
    mean_sq = np.mean(
      (g**2).reshape(view_shape), axis=reduce_axes, keepdims=True
    )
    v = (1 - B2) * mean_sq + B2 * (0 if v is None else v)
    denom = np.sqrt(v / (1 - B2**t)) + EPS
    u = ((m / (1 - B1**t)).reshape(view_shape) / denom).reshape(p.shape)
    p = p - lr * (u + wd * p)
  return p


@pytest.mark.parametrize(
  'block, view_shape, reduce_axes',
  [
    # (D=6, H*Dh=12): 3 heads of 4 along the output axis.
    (Block.heads(-1, 4), (6, 3, 4), (0, 2)),
    # One v per output neuron.
    (Block.along(1), (6, 12), (0,)),
    # One v per input row.
    (Block.along(0), (6, 12), (1,)),
    (Block.whole(), (6, 12), (0, 1)),
  ],
  ids=['heads', 'neuron', 'row', 'whole'],
)
def test_blocks_match_numpy_reference(block, view_shape, reduce_axes):
  param = _params()['layer']['kernel']
  steps = 6
  grads = [_grads({'w': param}, s)['w'] for s in range(steps)]
  tx = adam_mini(1e-2, B1, B2, EPS, weight_decay=0.05, partition=block)
  state = tx.init({'w': param})
  p = {'w': param}
  for g in grads:
    updates, state = tx.update({'w': g}, state, p)
    p = optax.apply_updates(p, updates)
  expected = _numpy_reference(param, grads, view_shape, reduce_axes, 1e-2, 0.05)
  np.testing.assert_allclose(p['w'], expected, rtol=2e-5, atol=2e-6)
  v_shape = tuple(
    1 if a in reduce_axes else d for a, d in enumerate(view_shape)
  )
  assert state[0].v['w'].shape == v_shape
  assert state[0].v['w'].dtype == jnp.float32


def test_fused_concat_matches_separate_leaves():
  key = jax.random.PRNGKey(3)
  fused = jax.random.normal(key, (8, 24))
  parts = [(8, Block.heads(1, 4)), (8, Block.heads(1, 4)), (8, Block.along(1))]
  ours, _ = _run(
    adam_mini(1e-2, weight_decay=0.0, partition=Block.concat(1, parts)),
    {'w': fused},
  )
  separate = {'q': fused[:, :8], 'k': fused[:, 8:16], 'v': fused[:, 16:]}
  blocks = {'q': parts[0][1], 'k': parts[1][1], 'v': parts[2][1]}

  tx = adam_mini(1e-2, weight_decay=0.0, partition=blocks)
  state = tx.init(separate)
  p = separate
  for step in range(5):
    current = jnp.concatenate([p['q'], p['k'], p['v']], axis=1)
    g = _grads({'w': current}, step)['w']
    g = {'q': g[:, :8], 'k': g[:, 8:16], 'v': g[:, 16:]}
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
  np.testing.assert_allclose(
    ours['w'], jnp.concatenate([p['q'], p['k'], p['v']], axis=1), rtol=1e-6
  )


def test_state_types_are_stable_and_jit_compiles_once():
  params = _params()
  tx = adam_mini(1e-3, partition=_per_last_axis)
  state = tx.init(params)
  grads = _grads(params, 0)
  updates, new_state = tx.update(grads, state, params)
  assert_same_shapes_and_dtypes(state, new_state)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params, state = step(params, state, grads)
  # The second step, fed the first step's outputs, must compile nothing.
  before = step._cache_size()
  params, state = step(params, state, _grads(params, 1))
  assert step._cache_size() == before == 1


def test_state_is_stable_under_lax_cond():
  params = _params()
  tx = adam_mini(1e-3, mu_dtype=jnp.bfloat16)
  state = tx.init(params)

  def maybe_update(pred, state):
    return jax.lax.cond(
      pred,
      lambda s: tx.update(_grads(params, 0), s, params)[1],
      lambda s: s,
      state,
    )

  out = jax.jit(maybe_update)(True, state)
  assert_same_shapes_and_dtypes(state, out)


def test_init_under_eval_shape_on_shape_dtype_structs():
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _params()
  )
  tx = adam_mini(1e-3, partition=_per_last_axis)
  state = jax.eval_shape(tx.init, abstract)
  concrete = tx.init(_params())
  assert_same_shapes_and_dtypes(state, concrete)


def test_state_fields_and_count():
  tx = scale_by_adam_mini(partition=Block.whole())
  state = tx.init({'w': jnp.ones((3, 4))})
  assert isinstance(state, ScaleByAdamMiniState)
  assert state.count.dtype == jnp.int32 and state.count.shape == ()
  assert state.v['w'].shape == (1, 1)
  _, state = tx.update({'w': jnp.ones((3, 4))}, state)
  assert int(state.count) == 1
  # The count saturates instead of overflowing.
  state = state._replace(count=jnp.array(jnp.iinfo(jnp.int32).max, jnp.int32))
  _, state = tx.update({'w': jnp.ones((3, 4))}, state)
  assert int(state.count) == jnp.iinfo(jnp.int32).max


@pytest.mark.parametrize('mu_dtype', [None, jnp.bfloat16, jnp.float32])
def test_bf16_params_and_mu_dtype(mu_dtype):
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _params())
  tx = adam_mini(1e-3, mu_dtype=mu_dtype, partition=_per_last_axis)
  state = tx.init(params)
  grads = jax.tree.map(lambda g: g.astype(jnp.bfloat16), _grads(params, 0))
  updates, new_state = tx.update(grads, state, params)
  adam_state = new_state[0]
  expected_mu = jnp.bfloat16 if mu_dtype is None else mu_dtype
  for mu in jax.tree.leaves(adam_state.mu):
    assert mu.dtype == expected_mu
  for v in jax.tree.leaves(adam_state.v):
    assert v.dtype == jnp.float32
  for u in jax.tree.leaves(updates):
    assert u.dtype == jnp.bfloat16
  assert_same_shapes_and_dtypes(state, new_state)


def test_bf16_reduction_is_float32():
  # 4096 equal bf16 squares: a bf16 accumulation would lose most of the sum.
  g = jnp.full((4096,), 0.1, jnp.bfloat16)
  tx = scale_by_adam_mini(b2=0.0, partition=Block.whole())
  state = tx.init({'w': g})
  _, state = tx.update({'w': g}, state)
  expected = float(jnp.asarray(0.1, jnp.bfloat16).astype(jnp.float32)) ** 2
  np.testing.assert_allclose(state.v['w'][0], expected, rtol=1e-6)


def test_empty_scalar_and_none_leaves():
  tx = adam_mini(1e-3)
  state = tx.init({})
  updates, _ = tx.update({}, state, {})
  assert updates == {}
  params = {'s': jnp.array(1.0), 'n': None, 'w': jnp.ones((2, 2))}
  state = tx.init(params)
  updates, _ = tx.update(
    {'s': jnp.array(0.1), 'n': None, 'w': jnp.ones((2, 2))}, state, params
  )
  assert updates['n'] is None
  assert updates['s'].shape == ()


def test_learning_rate_schedule_and_extra_args():
  schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 10)
  tx = adam_mini(schedule)
  params = _params()
  state = tx.init(params)
  updates, state = tx.update(_grads(params, 0), state, params, loss=1.0)
  # Warm-up starts at zero: the first update is zero.
  for u in jax.tree.leaves(updates):
    np.testing.assert_array_equal(u, 0)
  updates, state = tx.update(_grads(params, 1), state, params, loss=1.0)
  assert any(float(jnp.abs(u).max()) > 0 for u in jax.tree.leaves(updates))


def test_inject_hyperparams():
  params = {'model': {'q_proj': {'kernel': jnp.ones((8, 8))}}}
  tx = optax.inject_hyperparams(adam_mini, static_args=('num_heads',))(
    learning_rate=1e-2, num_heads=2
  )
  plain = adam_mini(1e-2, num_heads=2)
  got, state = _run(tx, params, steps=3)
  expected, _ = _run(plain, params, steps=3)
  assert_trees_close(got, expected, rtol=1e-6)
  state.hyperparams['learning_rate'] = jnp.asarray(0.0)
  assert float(state.hyperparams['b1']) == pytest.approx(0.9)


def test_multi_steps_accumulates():
  params = _params()
  tx = optax.MultiSteps(
    adam_mini(1e-2, partition=_per_last_axis), every_k_schedule=2
  )
  state = tx.init(params)
  updates, state = tx.update(_grads(params, 0), state, params)
  for u in jax.tree.leaves(updates):
    np.testing.assert_array_equal(u, 0)
  updates, state = tx.update(_grads(params, 0), state, params)
  assert any(float(jnp.abs(u).max()) > 0 for u in jax.tree.leaves(updates))


def test_masked_and_partition_wrappers():
  params = _params()
  mask = {
    'layer': {'kernel': True, 'bias': False},
    'stack': True,
    'scalar': False,
  }
  tx = optax.masked(adam_mini(1e-2, partition=_per_last_axis), mask)
  params_out, _ = _run(tx, params, steps=2)
  # Masked-out leaves pass their raw gradients through, whatever the inner
  # transform is.
  raw, _ = _run(optax.masked(optax.sgd(1.0), mask), params, steps=2)
  np.testing.assert_allclose(params_out['layer']['bias'], raw['layer']['bias'])
  assert not np.allclose(params_out['stack'], params['stack'])

  labels = {
    'layer': {'kernel': 'mini', 'bias': 'sgd'},
    'stack': 'mini',
    'scalar': 'sgd',
  }
  tx = optax.partition(
    {'mini': adam_mini(1e-2, partition=_per_last_axis), 'sgd': optax.sgd(1e-2)},
    labels,
  )
  params_out, state = _run(tx, params, steps=2)
  assert all(jnp.isfinite(x).all() for x in jax.tree.leaves(params_out))


def test_masked_with_a_block_tree():
  params = _params()
  blocks = {
    'layer': {'kernel': Block.heads(1, 4), 'bias': Block.elementwise()},
    'stack': Block.along(0),
    'scalar': Block.whole(),
  }
  mask = {
    'layer': {'kernel': True, 'bias': False},
    'stack': True,
    'scalar': False,
  }
  tx = optax.masked(adam_mini(1e-2, partition=blocks), mask)
  params_out, state = _run(tx, params, steps=2)
  raw, _ = _run(optax.masked(optax.sgd(1.0), mask), params, steps=2)
  np.testing.assert_allclose(params_out['scalar'], raw['scalar'])
  inner = state.inner_state[0]
  assert inner.v['layer']['kernel'].shape == (1, 3, 1)


def test_apply_if_finite_skips_bad_steps():
  params = _params()
  tx = optax.apply_if_finite(adam_mini(1e-2, partition=_per_last_axis), 3)
  state = tx.init(params)
  bad = jax.tree.map(lambda g: g.at[...].set(jnp.nan), _grads(params, 0))
  updates, new_state = tx.update(bad, state, params)
  for u in jax.tree.leaves(updates):
    np.testing.assert_array_equal(u, 0)
  assert_trees_equal(new_state.inner_state, state.inner_state)


def test_chain_with_clipping_and_weight_decay_mask():
  params = _params()
  tx = optax.chain(
    optax.clip_by_global_norm(1.0), adam_mini(1e-2, weight_decay=0.5)
  )
  out, _ = _run(tx, params, steps=2)
  assert all(jnp.isfinite(x).all() for x in jax.tree.leaves(out))
  mask = default_weight_decay_mask(
    {
      'mlp': {'kernel': 0, 'bias': 0},
      'ln_f': {'scale': 0},
      'wte': {'embedding': 0},
    }
  )
  assert mask == {
    'mlp': {'kernel': True, 'bias': False},
    'ln_f': {'scale': False},
    'wte': {'embedding': True},
  }


def test_tree_map_params_over_the_state():
  # optax.tree_map_params traces init on a placeholder tree with no leaves
  # and matches its state against the real one: the block tables must agree.
  params = _params()
  tx = adam_mini(1e-2, partition=_per_last_axis)
  state = tx.init(params)
  halved = optax.tree_map_params(tx, lambda p: p / 2, state)
  assert jax.tree.structure(halved) == jax.tree.structure(state)

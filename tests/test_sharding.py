"""Sharded training: meshes (Auto and Explicit), state shardings, pmap, shard_map.

Every mesh layout of `sharded_lm.LAYOUTS` (data parallel, FSDP, tensor
parallel and their products; stacked layers too) trains a tiny GQA Llama for a
few steps and must match the one-device trajectory, keep the state's types,
compile once, and compile an optimizer update with no all-gather of a
parameter-sized array. Run with ``-s`` to print the per-layout table.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from _support import sharded_lm as lm
from optax_adam_mini import ScaleByAdamMiniState, adam_mini, state_shardings

STEPS = 3
# float32 round-off: XLA sums the sharded reductions in another order.
RTOL, ATOL = 2e-4, 2e-5

_TABLE: list[tuple] = []


@pytest.fixture(scope='module', autouse=True)
def _print_table():
  yield
  if _TABLE:
    print(
      '\n\nlayout          mode      max |diff| vs 1 device   all-gathers in update'
    )
    for layout, mode, diff, gathers in _TABLE:
      shown = ', '.join(str(s) for s in gathers) or '-'
      print(f'{layout:<15} {mode:<9} {diff:<24.2e} {len(gathers)}: {shown}')


def _set_mesh(mesh):
  set_mesh = getattr(jax, 'set_mesh', None) or jax.sharding.use_mesh
  return set_mesh(mesh)


@functools.cache
def _reference(stacked: bool, name: str = 'adam_mini'):
  """The one-device trajectory: (params, state, loss) after each step."""
  return lm.one_device_trajectory(STEPS, stacked, name)


def _max_diff(a, b) -> float:
  diffs = jax.tree.map(
    lambda x, y: float(
      np.max(np.abs(np.asarray(x, np.float64) - y), initial=0)
    ),
    a,
    b,
  )
  return max(jax.tree.leaves(diffs))


def _assert_close(actual, expected):
  jax.tree.map(
    lambda x, y: np.testing.assert_allclose(
      np.asarray(x), y, rtol=RTOL, atol=ATOL
    ),
    actual,
    expected,
  )


def _types(tree):
  return jax.tree.map(
    lambda x: (x.shape, x.dtype, x.weak_type, str(jax.typeof(x))), tree
  )


def _assert_laid_out(tree, shardings):
  def check(x, s):
    assert x.sharding.is_equivalent_to(s, x.ndim), (x.shape, x.sharding, s)

  jax.tree.map(check, tree, shardings)


def test_stacked_layers_train_as_the_per_layer_tree():
  """The harness scans stacked layers and runs per-layer ones one after the
  other: the same model, so the same trajectory from the same values."""
  for (params, _, loss), (stacked, _, stacked_loss) in zip(
    _reference(False), _reference(True)
  ):
    assert jax.tree.structure(stacked) == jax.tree.structure(
      lm.init_params(stacked=True)
    )
    _assert_close((lm.stack_layers(params), loss), (stacked, stacked_loss))


# One-axis meshes, then all three products at once; 'tp' puts 8 shards on 4
# query heads and 2 key/value heads, so shards cut through heads.
CASES = [
  ('dp', False),
  ('fsdp', False),
  ('tp', False),
  ('dp_fsdp_tp', False),
  ('dp_fsdp_tp', True),
]


@pytest.mark.parametrize('explicit', [False, True], ids=['auto', 'explicit'])
@pytest.mark.parametrize(
  'layout,stacked',
  CASES,
  ids=[f'{layout}{"-stacked" if stacked else ""}' for layout, stacked in CASES],
)
def test_mesh_training_matches_one_device(layout, stacked, explicit):
  _train_on_mesh(layout, stacked, explicit)


@pytest.mark.parametrize('stacked', [False, True], ids=['per-layer', 'stacked'])
def test_slim_blocks_train_on_a_mesh_as_on_one_device(stacked):
  # SlimAdam's blocks average over other axes (fan-out for v, o and the
  # MLP), which the mesh shards too: same trajectory, no large gathers.
  _train_on_mesh('dp_fsdp_tp', stacked, explicit=False, name='adam_mini_slim')


def _train_on_mesh(layout, stacked, explicit, name='adam_mini'):
  tx = lm.make_tx(name=name)
  host_params = lm.init_params(stacked)
  reference = _reference(stacked, name)
  mesh = lm.make_mesh(layout, explicit)
  with _set_mesh(mesh):
    params = lm.shard(host_params, lm.param_specs(host_params, layout), mesh)
    tokens = jax.device_put(
      lm.make_batch(), NamedSharding(mesh, lm.batch_spec(layout))
    )
    param_sh = jax.tree.map(lambda x: x.sharding, params)
    state_sh = state_shardings(tx, params)
    state = jax.jit(tx.init, out_shardings=state_sh)(params)
    _assert_laid_out(state, state_sh)
    init_types = _types(state)
    if explicit:  # the types carry the layout
      step = lm.make_train_step(tx)
    else:
      step = lm.make_train_step(tx, param_sh, state_sh)
    diff = 0.0
    for expected in reference:
      params, state, loss = step(params, state, tokens)
      assert _types(state) == init_types
      _assert_laid_out(state, state_sh)
      _assert_laid_out(params, param_sh)
      _assert_close((params, state, loss), expected)
      diff = max(diff, _max_diff((params, state, loss), expected))
    if hasattr(step, '_cache_size'):
      assert step._cache_size() == 1  # the later steps compiled nothing

    # The optimizer update alone: block means over sharded axes must be
    # small all-reduces, never a gather of a gradient or moment.
    if explicit:
      update = lm.make_update(tx)
    else:
      update = lm.make_update(tx, param_sh, state_sh)
    hlo = update.lower(params, state, params).compile().as_text()
  gathers = lm.all_gathers(hlo)
  smallest = min(  # the smallest kernel or embedding
    x.size
    for path, x in jax.tree_util.tree_leaves_with_path(params)
    if getattr(path[-1], 'key', None) in ('kernel', 'embedding')
  )
  assert all(math.prod(s) < smallest for s in gathers), gathers
  case = f'{layout}{"-stacked" if stacked else ""}'
  if name != 'adam_mini':
    case += f' ({name})'
  _TABLE.append((case, 'explicit' if explicit else 'auto', diff, gathers))


def _abstract_params(layout: str, explicit: bool = False):
  params = lm.init_params()
  mesh = lm.make_mesh(layout, explicit)
  specs = lm.param_specs(params, layout)
  abstract = jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=NamedSharding(mesh, s)
    ),
    params,
    specs,
  )
  return mesh, specs, abstract


def _adam_mini_states(state):
  return [
    s
    for s in jax.tree.leaves(
      state, is_leaf=lambda x: isinstance(x, ScaleByAdamMiniState)
    )
    if isinstance(s, ScaleByAdamMiniState)
  ]


def test_state_shardings_reduced_v_and_map_params_is_wrong():
  mesh, specs, params = _abstract_params('fsdp_tp')
  tx = lm.make_tx()
  shardings = state_shardings(tx, params)
  (adam,) = _adam_mini_states(shardings)
  abstract = jax.eval_shape(tx.init, params)
  assert jax.tree.structure(shardings) == jax.tree.structure(abstract)

  def spec(x):
    return tuple(x.spec) + (None,) * 4

  layer = adam.v['model']['layers']['0']
  # mu: the param's spec; count: replicated.
  assert jax.tree.map(lambda s: s.spec, adam.mu) == specs
  assert adam.count.spec == P()
  # v: the param's axes on kept axes, none on reduced ones.
  assert spec(layer['self_attn']['q_proj']['kernel'])[:3] == (None, 'tp', None)
  # k_proj: 2 kv heads over 4 tp shards: a shard holds half a head.
  assert spec(layer['self_attn']['k_proj']['kernel'])[:3] == (None, None, None)
  assert spec(layer['self_attn']['v_proj']['kernel'])[:2] == (None, 'tp')
  assert spec(layer['self_attn']['o_proj']['kernel'])[:2] == (None, 'fsdp')
  assert spec(layer['mlp']['down_proj']['kernel'])[:2] == (None, 'fsdp')
  assert spec(adam.v['model']['embed_tokens']['embedding'])[:2] == ('tp', None)
  assert spec(layer['input_layernorm']['scale'])[:1] == (None,)
  for s, x in zip(jax.tree.leaves(shardings), jax.tree.leaves(abstract)):
    s.shard_shape(x.shape)  # valid for the leaf's shape

  # optax.tree.map_params copies the param's spec onto v, which mirrors the
  # param tree: 'fsdp' on an axis of size 1, a rank-2 spec on rank-3 heads.
  mapped = optax.tree.map_params(
    tx,
    lambda _, s: s,
    abstract,
    specs,
    transform_non_params=lambda _: P(),
    is_leaf=lambda x: isinstance(x, P),
  )
  (mapped_adam,) = _adam_mini_states(mapped)
  wrong = mapped_adam.v['model']['layers']['0']['mlp']['up_proj']['kernel']
  assert wrong == P('fsdp', 'tp')
  v_shape = abstract[0].v['model']['layers']['0']['mlp']['up_proj']['kernel']
  with pytest.raises(ValueError):
    NamedSharding(mesh, wrong).shard_shape(v_shape.shape)


@pytest.mark.parametrize(
  'wrap',
  ['chain', 'inject_hyperparams', 'multi_steps', 'masked'],
)
def test_state_shardings_inside_wrappers(wrap):
  mesh, specs, params = _abstract_params('fsdp_tp')
  kwargs = dict(num_heads=lm.CONFIG.n_heads, num_kv_heads=lm.CONFIG.n_kv_heads)
  if wrap == 'chain':
    tx = optax.chain(optax.clip_by_global_norm(1.0), adam_mini(1e-3, **kwargs))
  elif wrap == 'inject_hyperparams':
    tx = optax.inject_hyperparams(
      adam_mini, static_args=('num_heads', 'num_kv_heads')
    )(1e-3, **kwargs)
  elif wrap == 'multi_steps':
    tx = optax.MultiSteps(adam_mini(1e-3, **kwargs), every_k_schedule=2)
  else:
    mask = jax.tree.map(lambda _: True, params)
    mask['lm_head']['kernel'] = False
    tx = optax.masked(adam_mini(1e-3, **kwargs), mask)
  shardings = state_shardings(tx, params)
  abstract = jax.eval_shape(tx.init, params)
  assert jax.tree.structure(shardings) == jax.tree.structure(abstract)
  (adam,) = _adam_mini_states(shardings)
  q = adam.v['model']['layers']['1']['self_attn']['q_proj']['kernel']
  assert tuple(q.spec)[:2] == (None, 'tp')
  host = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), params)
  with _set_mesh(mesh):
    sharded = lm.shard(host, specs, mesh)
    state = jax.jit(tx.init, out_shardings=shardings)(sharded)
    _assert_laid_out(state, shardings)
    if wrap == 'multi_steps':  # the deepest nesting: also run an update
      update = jax.jit(tx.update, out_shardings=(None, shardings))
      _assert_laid_out(update(sharded, state, sharded)[1], shardings)


def test_state_shardings_from_shardings_argument():
  mesh, specs, params = _abstract_params('tp')
  tx = lm.make_tx()
  host = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  by_arg = state_shardings(tx, host, jax.tree.map(lambda x: x.sharding, params))
  with _set_mesh(mesh):
    by_spec = state_shardings(tx, host, specs)
  expected = state_shardings(tx, params)
  for shardings in (by_arg, by_spec):
    assert jax.tree.map(lambda s: tuple(s.spec), shardings) == jax.tree.map(
      lambda s: tuple(s.spec), expected
    )


def test_state_shardings_rejects_two_meshes():
  mesh, specs, params = _abstract_params('tp')
  other = jax.make_mesh((2, 4), ('a', 'b'))
  params['lm_head']['kernel'] = jax.ShapeDtypeStruct(
    params['lm_head']['kernel'].shape,
    jnp.float32,
    sharding=NamedSharding(other, P()),
  )
  with pytest.raises(ValueError, match='different meshes'):
    state_shardings(lm.make_tx(), params)


def _data_parallel_step(tx):
  def step(params, state, tokens):
    loss, grads = jax.value_and_grad(lm.loss_fn)(params, tokens)
    grads, loss = jax.lax.pmean((grads, loss), 'dp')
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  return step


def test_pmap_data_parallel():
  tx = lm.make_tx()
  n = jax.device_count()
  reference = _reference(False)
  params = lm.init_params()
  state = jax.jit(tx.init)(params)
  # Replicated params and state, the batch split: a leading axis of size n.
  mesh = jax.sharding.Mesh(jax.devices(), ('dp',))
  stack = lambda x: np.stack([np.asarray(x)] * n)  # noqa: E731
  params, state = jax.device_put(
    jax.tree.map(stack, (params, state)), NamedSharding(mesh, P('dp'))
  )
  tokens = np.asarray(lm.make_batch())
  tokens = jax.device_put(
    tokens.reshape(n, -1, tokens.shape[-1]), NamedSharding(mesh, P('dp'))
  )
  step = jax.pmap(_data_parallel_step(tx), axis_name='dp')
  for expected in reference:
    params, state, loss = step(params, state, tokens)
    replica = jax.tree.map(lambda x: x[n - 1], (params, state, loss))
    _assert_close(replica, expected)


@pytest.mark.skipif(not hasattr(jax, 'shard_map'), reason='needs jax.shard_map')
def test_shard_map_data_parallel():
  tx = lm.make_tx()
  mesh = jax.make_mesh((8,), ('dp',))
  params = lm.init_params()
  state = tx.init(params)
  tokens = jax.device_put(lm.make_batch(), NamedSharding(mesh, P('dp')))

  def step(params, state, tokens):
    # Params and state are replicated (invariant over 'dp'); the loss is
    # averaged over the shards, so its gradient is already the global one.
    def loss(params):
      return jax.lax.pmean(lm.loss_fn(params, tokens), 'dp')

    loss, grads = jax.value_and_grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  step = jax.jit(
    jax.shard_map(
      step,
      mesh=mesh,
      in_specs=(P(), P(), P('dp')),
      out_specs=(P(), P(), P()),
    )
  )
  for expected in _reference(False):
    params, state, loss = step(params, state, tokens)
    _assert_close((params, state, loss), expected)

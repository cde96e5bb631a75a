"""Flax with sharding annotations: NNX `Optimizer` and Linen `TrainState`.

Flax copies each param's sharding names onto the optimizer-state leaves that
mirror the param tree. Adam-mini's ``v`` mirrors the tree with reduced leaves
(and an extra axis where heads are split), so it must carry names of its own:
these tests train on a 2x4 ('fsdp', 'tp') mesh in Auto and Explicit mode and
match a one-device run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from optax_adam_mini import adam_mini

flax = pytest.importorskip('flax')
from flax import linen as nn  # noqa: E402
from flax import nnx  # noqa: E402
from flax.training import train_state  # noqa: E402

D, H, K, DH, F = 16, 4, 2, 8, 32
STEPS = 3
# Physical names on the (fsdp, tp) mesh, and logical ones with their rules.
NAMES = {
  'q_proj': ('fsdp', 'tp'),  # 4 heads over tp=4: one head per shard
  'k_proj': ('fsdp', 'tp'),  # 2 kv heads over tp=4: shards split heads
  'up_proj': ('tp', 'fsdp'),
  'norm': ('fsdp',),
}
LOGICAL = {
  'q_proj': ('embed', 'heads'),
  'k_proj': ('embed', 'heads'),
  'up_proj': ('heads', 'mlp'),
  'norm': ('mlp',),
}
RULES = (('embed', 'fsdp'), ('heads', 'tp'), ('mlp', 'fsdp'))


def _tx():
  return adam_mini(1e-2, num_heads=H, num_kv_heads=K)


def _mesh(explicit: bool, shape=(2, 4)):
  kind = (
    jax.sharding.AxisType.Explicit if explicit else jax.sharding.AxisType.Auto
  )
  return jax.make_mesh(
    shape,
    ('fsdp', 'tp'),
    axis_types=(kind,) * 2,
    devices=jax.devices()[: np.prod(shape)],
  )


def _set_mesh(mesh):
  set_mesh = getattr(jax, 'set_mesh', None) or jax.sharding.use_mesh
  return set_mesh(mesh)


def _gather(w):
  """Replicates a weight for the forward pass under Explicit sharding."""
  mesh = getattr(getattr(jax.typeof(w), 'sharding', None), 'mesh', None)
  if jax.sharding.AxisType.Explicit in tuple(getattr(mesh, 'axis_types', ())):
    return jax.sharding.reshard(w, P())
  return w


def _forward(w, x):
  q = x @ _gather(w['q_proj'])
  k = x @ _gather(w['k_proj'])
  h = jnp.tanh(q) * jnp.concatenate([k, k], axis=-1)
  h = h @ _gather(w['up_proj']) + _gather(w['up_bias'])[None]
  return jnp.sum(h * _gather(w['norm'])[None], axis=-1)


def _data():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(8, D)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(8,)), jnp.float32)
  return x, y


def _spec(x):
  spec = tuple(x.sharding.spec)
  return spec + (None,) * (x.ndim - len(spec))


# ----------------------------------------------------------------------------
# NNX


class NnxWeights(nnx.Module):
  def __init__(self, rngs, **leaves):
    for leaf, (names, shape, init) in leaves.items():
      boxed = nnx.with_partitioning(init, names)(rngs.params(), shape)
      setattr(self, leaf, nnx.Param(boxed))


class NnxModel(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    normal, ones, zeros = (
      nnx.initializers.normal(0.3),
      nnx.initializers.ones,
      nnx.initializers.zeros,
    )
    self.q_proj = NnxWeights(
      rngs, kernel=(NAMES['q_proj'], (D, H * DH), normal)
    )
    self.k_proj = NnxWeights(
      rngs, kernel=(NAMES['k_proj'], (D, K * DH), normal)
    )
    self.up_proj = NnxWeights(
      rngs,
      kernel=(NAMES['up_proj'], (H * DH, F), normal),
      bias=(NAMES['norm'], (F,), zeros),
    )
    self.norm = NnxWeights(rngs, scale=(NAMES['norm'], (F,), ones))

  def __call__(self, x):
    return _forward(
      {
        'q_proj': self.q_proj.kernel[...],
        'k_proj': self.k_proj.kernel[...],
        'up_proj': self.up_proj.kernel[...],
        'up_bias': self.up_proj.bias[...],
        'norm': self.norm.scale[...],
      },
      x,
    )


def _sharding_names(variable):
  metadata = variable.get_metadata()
  for key in ('out_sharding', 'sharding_names', 'sharding'):
    if key in metadata:
      return metadata[key]
  return None


def _nnx_run(mesh):
  x, y = _data()
  with _set_mesh(mesh):

    @nnx.jit
    def create():
      model = NnxModel(nnx.Rngs(0))
      return model, nnx.Optimizer(model, _tx(), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
      def loss_fn(model):
        return jnp.mean((model(x) - y) ** 2)

      loss, grads = nnx.value_and_grad(loss_fn)(model)
      optimizer.update(model, grads)
      return loss

    model, optimizer = create()
    types = jax.tree.map(
      lambda a: (a.shape, a.dtype, a.sharding), nnx.state(optimizer)
    )
    losses = []
    for _ in range(STEPS):
      losses.append(float(step(model, optimizer, x, y)))
      after = jax.tree.map(
        lambda a: (a.shape, a.dtype, a.sharding), nnx.state(optimizer)
      )
      assert after == types
    return jax.device_get(nnx.state(model)), nnx.state(optimizer), losses


@pytest.mark.parametrize('explicit', [False, True], ids=['auto', 'explicit'])
def test_nnx_optimizer_on_annotated_model(explicit):
  expected_params, _, expected_losses = _nnx_run(_mesh(explicit, (1, 1)))
  params, opt_state, losses = _nnx_run(_mesh(explicit))
  np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
    params,
    expected_params,
  )
  adam = opt_state['opt_state'][0]
  v = {name: adam.v[name]['kernel'] for name in ('q_proj', 'k_proj', 'up_proj')}
  assert _spec(v['q_proj'][...]) == (None, 'tp', None)  # one v per head
  assert _spec(v['k_proj'][...]) == (None, None, None)  # shards split heads
  assert _spec(v['up_proj'][...]) == (None, 'fsdp')
  assert _spec(adam.mu['q_proj']['kernel'][...]) == ('fsdp', 'tp')
  # The Variables around v carry v's names, not the param's.
  assert _sharding_names(v['q_proj']) == (None, 'tp', None)
  assert _sharding_names(v['up_proj']) == (None, 'fsdp')


# ----------------------------------------------------------------------------
# Linen


class LinenWeights(nn.Module):
  leaves: tuple  # (name, names, shape, init) for each leaf
  logical: bool = False

  @nn.compact
  def __call__(self):
    box = nn.with_logical_partitioning if self.logical else nn.with_partitioning
    return [
      self.param(leaf, box(init, names), shape)
      for leaf, names, shape, init in self.leaves
    ]


class LinenModel(nn.Module):
  logical: bool = False

  @nn.compact
  def __call__(self, x):
    n = LOGICAL if self.logical else NAMES
    normal, ones, zeros = (
      nn.initializers.normal(0.3),
      nn.initializers.ones,
      nn.initializers.zeros,
    )

    def weights(name, *leaves):
      return LinenWeights(leaves, self.logical, name=name)()

    (q,) = weights('q_proj', ('kernel', n['q_proj'], (D, H * DH), normal))
    (k,) = weights('k_proj', ('kernel', n['k_proj'], (D, K * DH), normal))
    up, bias = weights(
      'up_proj',
      ('kernel', n['up_proj'], (H * DH, F), normal),
      ('bias', n['norm'], (F,), zeros),
    )
    (scale,) = weights('norm', ('scale', n['norm'], (F,), ones))
    w = {
      'q_proj': q,
      'k_proj': k,
      'up_proj': up,
      'up_bias': bias,
      'norm': scale,
    }
    return _forward(w, x)


def _linen_run(mesh, logical: bool):
  x, y = _data()
  model = LinenModel(logical=logical)
  tx = _tx()

  def create():
    params = model.init(jax.random.key(0), x)['params']
    return train_state.TrainState.create(
      apply_fn=model.apply, params=params, tx=tx
    )

  def step(state):
    def loss_fn(params):
      return jnp.mean((state.apply_fn({'params': params}, x) - y) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss

  def on(mesh, specs):
    return jax.tree.map(
      lambda spec: NamedSharding(mesh, spec),
      specs,
      is_leaf=lambda x: isinstance(x, P),
    )

  with nn.logical_axis_rules(RULES):
    # Linen's init constrains each param to its names, which asserts under
    # Explicit axes: create the state on the Auto twin of the mesh, then
    # place it on the Explicit mesh.
    auto = jax.sharding.Mesh(mesh.devices, mesh.axis_names)
    with _set_mesh(auto):
      specs = nn.get_partition_spec(jax.eval_shape(create))
      if logical:
        specs = nn.logical_to_mesh(specs, RULES)
      state = jax.jit(create, out_shardings=on(auto, specs))()
    with _set_mesh(mesh):
      shardings = on(mesh, specs)
      state = jax.device_put(state, shardings)
      jit_step = jax.jit(step, out_shardings=(shardings, None))
      losses = []
      for _ in range(STEPS):
        state, loss = jit_step(state)
        losses.append(float(loss))
      if hasattr(jit_step, '_cache_size'):
        assert jit_step._cache_size() == 1
  return state, shardings, losses


@pytest.mark.parametrize('logical', [False, True], ids=['names', 'logical'])
@pytest.mark.parametrize('explicit', [False, True], ids=['auto', 'explicit'])
def test_linen_train_state_with_boxed_params(explicit, logical):
  expected, _, expected_losses = _linen_run(_mesh(explicit, (1, 1)), logical)
  state, shardings, losses = _linen_run(_mesh(explicit), logical)
  np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
    nn.unbox(state.params),
    jax.device_get(nn.unbox(expected.params)),
  )
  adam = state.opt_state[0]
  v = {name: adam.v[name]['kernel'] for name in ('q_proj', 'k_proj', 'up_proj')}
  # v is boxed with names of its own: kept axes named, reduced axes None.
  box_type = nn.LogicallyPartitioned if logical else nn.Partitioned
  assert isinstance(v['q_proj'], box_type)
  names = LOGICAL if logical else NAMES
  assert v['q_proj'].names == (None, names['q_proj'][1], None)
  assert v['up_proj'].names == (None, names['up_proj'][1])
  assert _spec(v['q_proj'].value) == (None, 'tp', None)
  assert _spec(v['up_proj'].value) == (None, 'fsdp')
  assert _spec(adam.mu['q_proj']['kernel'].value) == ('fsdp', 'tp')
  for leaf, sharding in zip(
    jax.tree.leaves(state.opt_state), jax.tree.leaves(shardings.opt_state)
  ):
    assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)


def test_plain_params_keep_a_plain_v_tree():
  params = {'q_proj': {'kernel': jnp.ones((D, H * DH))}}
  state = _tx().init(params)
  assert isinstance(state[0].v['q_proj']['kernel'], jax.Array)
  assert state[0].v['q_proj']['kernel'].shape == (1, H, 1)
  updates, state = _tx().update(params, state, params)
  assert optax.tree.norm(updates) > 0

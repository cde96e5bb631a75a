"""Quantized first moment (``mu_dtype=jnp.int8`` / ``jnp.int4``).

The codes against their definitions (nearest level by brute force, unbiased
stochastic rounding), the whole update against a NumPy reference, the layout
rules, and everything that works with a float ``m``: optax wrappers, meshes
(8 CPU devices) with a clear error where groups would cross shards,
``state_shardings``, Flax metadata, Orbax restarts, bf16 params, the report,
the state bytes of Llama-2-7B, and a compiled update with no float32 copy of
``m`` in its temporary buffers.
"""

from __future__ import annotations

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optax_adam_mini as am
import test_checkpoint as checkpoint_tests
import test_sharding as sharding_tests
from _support import sharded_lm as lm
from _support import trees
from optax_adam_mini import (
  Block,
  MomentQuantization,
  QuantizedArray,
  adam_mini,
  quantize,
  scale_by_adam_mini,
  state_shardings,
)
from optax_adam_mini import block as block_lib

worker = checkpoint_tests.worker

B1, B2, EPS = 0.9, 0.95, 1e-8


def _quantized_states(state):
  return sharding_tests._adam_mini_states(state)


# Codes -------------------------------------------------------------------------


def _levels(bits: int, code: str) -> np.ndarray:
  """The code's values in [-1, 1], built from the documented rule."""
  if code == 'linear':
    top = 2 ** (bits - 1) - 1
    return np.arange(-top, top + 1) / top
  magnitudes = [0.0]
  m = bits - 1
  for e in reversed(range(m)):  # decade e: (10^-(e+1), 10^-e], bottom from 0
    low, high = (10.0 ** -(e + 1) if e < m - 1 else 0.0), 10.0**-e
    n = 2 ** (m - 1 - e)
    magnitudes += [low + (high - low) * k / n for k in range(1, n + 1)]
  magnitudes = np.array(magnitudes)
  return np.concatenate([-magnitudes[:0:-1], magnitudes])


@pytest.mark.parametrize('bits', [8, 4])
@pytest.mark.parametrize('code', ['linear', 'dynamic'])
def test_codes_round_to_the_nearest_level(bits, code):
  levels = _levels(bits, code)
  assert len(levels) == 2**bits - 1  # symmetric, zero included
  rng = np.random.default_rng(0)
  u = np.concatenate(
    [
      rng.uniform(-1, 1, 4000),
      rng.uniform(-1, 1, 2000) * 10.0 ** -rng.integers(1, 8, 2000),
      levels,
      [0.0, 1.0, -1.0],
    ]
  ).astype(np.float32)
  codes = quantize._encoder(code)(jnp.asarray(u), bits, None)
  values = np.asarray(quantize._decoder(code)(codes, bits), np.float64)
  # The decoded value is a level, and no level is nearer (up to f32 ties).
  np.testing.assert_allclose(
    values, levels[np.searchsorted(levels, values - 1e-7)], rtol=1e-6
  )
  best = np.min(np.abs(u[:, None] - levels[None, :]), axis=1)
  assert np.all(np.abs(u - values) <= best + 1e-6)
  # Each level round-trips to itself.
  back = quantize._encoder(code)(jnp.asarray(levels, jnp.float32), bits, None)
  np.testing.assert_allclose(
    quantize._decoder(code)(back, bits), levels, rtol=1e-6, atol=1e-12
  )
  assert np.max(np.abs(np.asarray(codes))) <= 2 ** (bits - 1) - 1


def test_dynamic_magnitudes_follow_the_decade_rule():
  for bits in (4, 8):
    levels = _levels(bits, 'dynamic')
    np.testing.assert_allclose(
      quantize.dynamic_magnitudes(bits), levels[levels >= 0], rtol=1e-6
    )
  # 8 bits: 64 magnitudes in (0.1, 1], 32 in (0.01, 0.1], ..., 1 in (0, 1e-6].
  magnitudes = quantize.dynamic_magnitudes(8)
  for e, n in enumerate([64, 32, 16, 8, 4, 2, 1]):
    low = 10.0 ** -(e + 1) if e < 6 else 0.0  # float32: compare loosely
    inside = (magnitudes > low * (1 + 1e-6)) & (
      magnitudes <= 10.0**-e * (1 + 1e-6)
    )
    assert inside.sum() == n


@pytest.mark.parametrize('code', ['linear', 'dynamic'])
def test_stochastic_rounding_is_unbiased_between_neighbours(code):
  bits = 4
  levels = _levels(bits, code)
  u = np.array([0.03, -0.2, 0.5, 0.9, -0.004, 0.7], np.float32)
  draws = 20000
  noise = jax.random.uniform(jax.random.key(0), (draws, u.size))
  codes = quantize._encoder(code)(
    jnp.broadcast_to(jnp.asarray(u), (draws, u.size)), bits, noise
  )
  values = np.asarray(quantize._decoder(code)(codes, bits), np.float64)
  for i, x in enumerate(u):
    below = np.flatnonzero(levels <= x).max()
    above = np.flatnonzero(levels >= x).min()
    chosen = np.argmin(np.abs(values[:, i, None] - levels), axis=1)
    assert set(np.unique(chosen)) <= {below, above}, x
    # The mean is x to within 4 standard errors of the draw.
    spread = (levels[above] - levels[below]) / 2 / math.sqrt(draws)
    assert abs(values[:, i].mean() - x) < 4 * spread + 1e-7, x


def test_rounding_noise_is_uniform_and_new_per_coordinate_and_key():
  """The stochastic-rounding noise (a hash of index and key): uniform on
  [0, 1), and uncorrelated between seeds, steps and leaves, and between
  coordinates that share an index sum (i, j) and (j, i)."""
  like = jnp.zeros((512, 512))

  def noise(seed, step, leaf):
    key = quantize.step_keys(seed, step, leaf + 1)[leaf]
    return np.asarray(quantize._uniform(key, like), np.float64)

  u1 = noise(seed=1, step=1, leaf=0)
  others = (noise(2, 1, 0), noise(1, 2, 0), noise(1, 1, 1), noise(0, 0, 0))
  n = u1.size
  assert u1.min() >= 0 and u1.max() < 1
  # Mean and variance of U(0, 1) within 5 standard errors.
  assert abs(u1.mean() - 0.5) < 5 * np.sqrt(1 / 12 / n)
  assert abs(u1.var() - 1 / 12) < 5 * np.sqrt(1 / 180 / n)
  counts = np.histogram(u1, bins=16, range=(0, 1))[0]
  chi2 = float(((counts - n / 16) ** 2 / (n / 16)).sum())
  assert chi2 < 50, chi2  # 15 degrees of freedom: P(chi2 > 50) < 1e-5
  for a, b in ((u1, u1.T), *((u1, u) for u in others)):
    off_diagonal = ~np.eye(512, dtype=bool)
    corr = np.corrcoef(a[off_diagonal], b[off_diagonal])[0, 1]
    assert abs(corr) < 5 / np.sqrt(n), corr


def test_rounding_noise_depends_on_the_flat_position_alone():
  """A coordinate's noise is a function of the key and of its row-major
  position in the array, whatever the array's shape (the library sums one
  index term per axis, each offset by a key word it takes off again)."""
  key = quantize.step_keys(3, 7, 2)[1]
  flat = np.asarray(quantize._uniform(key, jnp.zeros((6 * 35 * 4,))))
  for shape in ((6, 35, 4), (210, 4), (2, 3, 5, 7, 4)):
    u = np.asarray(quantize._uniform(key, jnp.zeros(shape)))
    np.testing.assert_array_equal(u.reshape(-1), flat)


def test_stochastic_update_draws_no_prng_bits():
  """The noise's keys are integer hashes of seed, step and leaf, with no
  threefry: jax.random.fold_in cost a GPU several small kernels per leaf and
  step (93 kernels against 68 to nearest, Llama-2-7B, BENCHMARKS.md 5)."""
  params = {'a': jnp.ones((64, 64)), 'b': jnp.ones((64, 64))}
  q = MomentQuantization(bits=8, group_size=8, min_size=0)
  tx = scale_by_adam_mini(mu_dtype=q, partition=Block.along(-1))
  jaxpr = str(jax.make_jaxpr(tx.update)(params, tx.init(params), params))
  assert 'threefry' not in jaxpr and 'random_' not in jaxpr


def test_stochastic_noise_is_new_every_step_and_rounds_unbiased_over_steps():
  """The same gradient each step, with b1 = 0 (m = g): between the two 4-bit
  linear levels 2/7 and 3/7, halfway, so each coordinate must land on both
  over the steps (fresh noise per step, uniform over [0, 1)) with the mean
  of the decoded m at 2.5/7. The state keeps the seed's key unchanged (its
  type stays that of init's); the step count makes the noise new."""
  q = MomentQuantization(
    bits=4,
    code='linear',
    group_size=8,
    min_size=0,
    stochastic_rounding='all',
  )
  block = Block.along(-1)  # groups of 8 down each column
  tx = scale_by_adam_mini(0.0, B2, EPS, mu_dtype=q, partition=block)
  g = np.full((8, 16), 2.5 / 7, np.float32)
  g[0] = 1.0  # each group's max: u = 2.5 / 7 elsewhere
  g[3, ::2] *= -1  # and some negative
  layout = quantize.leaf_layout(q, 'w', block_lib.bind(block, (8, 16)))
  state = tx.init({'w': jnp.zeros((8, 16))})
  update = jax.jit(tx.update)
  keys, decoded = [np.asarray(state.rng_key)], []
  for _ in range(40):
    _, state = update({'w': jnp.asarray(g)}, state)
    keys.append(np.asarray(state.rng_key))
    decoded.append(np.asarray(quantize.decode(state.mu['w'], layout)))
  assert len({k.tobytes() for k in keys}) == 1  # the seed's, kept
  decoded = np.stack(decoded)
  np.testing.assert_allclose(decoded[:, 0], 1.0, rtol=1e-6)  # the max: 7/7
  decoded = np.abs(decoded[:, 1:])  # (steps, 7, 16)
  assert np.all(np.isin(np.round(decoded * 7, 4), [2.0, 3.0]))
  # Every coordinate took both levels (chance of one not: 2 * 2**-40).
  assert np.all(decoded.min(axis=0) < 2.5 / 7) and np.all(
    decoded.max(axis=0) > 2.5 / 7
  )
  # Unbiased: 4480 draws of +-1/14, standard error 1/14 / sqrt(4480).
  assert abs(decoded.mean() - 2.5 / 7) < 4 * (1 / 14) / math.sqrt(4480)


# The update against NumPy ---------------------------------------------------------


def _numpy_quantized_adam_mini(
  param, grads, reduce_axes, group_axis, group, bits, code, lr
):
  """Adam-mini with a quantized m, in NumPy float64 from the definitions.

  Each step: decode m, take its EMA and the block's v, update with the
  unquantized m, then re-encode m to the nearest level of its group's max.
  """
  levels = _levels(bits, code)
  p = np.asarray(param, np.float64)
  shape = p.shape
  view = shape[:group_axis] + (shape[group_axis] // group, group)
  view += shape[group_axis + 1 :]
  codes = np.zeros(view)  # level values in [-1, 1]
  scales = np.zeros(view[: group_axis + 1] + (1,) + view[group_axis + 2 :])
  v = 0.0
  for t, g in enumerate(grads, start=1):
    g = np.asarray(g, np.float64)
    m = (codes * scales).reshape(shape)
    m = B1 * m + (1 - B1) * g
    v = B2 * v + (1 - B2) * np.mean(g**2, axis=reduce_axes, keepdims=True)
    u = (m / (1 - B1**t)) / (np.sqrt(v / (1 - B2**t)) + EPS)
    p = p - lr * u
    m_view = m.reshape(view)
    scales = np.max(np.abs(m_view), axis=group_axis + 1, keepdims=True)
    ratio = np.where(scales > 0, m_view / np.where(scales > 0, scales, 1), 0)
    codes = levels[np.argmin(np.abs(ratio[..., None] - levels), axis=-1)]
  return p, codes, scales


@pytest.mark.parametrize(
  'bits,code', [(8, 'dynamic'), (8, 'linear'), (4, 'dynamic'), (4, 'linear')]
)
@pytest.mark.parametrize(
  'block,reduce_axes,group_axis',
  [(Block.along(-1), (0,), 0), (Block.along(0), (1,), 1)],
  ids=['per-column', 'per-row'],
)
def test_update_matches_numpy_reference(
  bits, code, block, reduce_axes, group_axis
):
  rng = np.random.default_rng(1)
  param = rng.standard_normal((16, 32)).astype(np.float32)
  # Row and column scales that differ, so groups hold small and large m.
  scale = np.exp(rng.uniform(-3, 0, (16, 1))) * np.exp(rng.uniform(-1, 0, 32))
  grads = [
    (rng.standard_normal((16, 32)) * scale).astype(np.float32) for _ in range(6)
  ]
  q = MomentQuantization(
    bits=bits, code=code, group_size=8, min_size=0, stochastic_rounding='none'
  )
  tx = optax.chain(
    scale_by_adam_mini(B1, B2, EPS, mu_dtype=q, partition=block),
    optax.scale(-1e-2),
  )
  state = tx.init({'w': jnp.asarray(param)})
  p = {'w': jnp.asarray(param)}
  for g in grads:
    updates, state = tx.update({'w': jnp.asarray(g)}, state, p)
    p = optax.apply_updates(p, updates)
  expected, codes, scales = _numpy_quantized_adam_mini(
    param, grads, reduce_axes, group_axis, 8, bits, code, 1e-2
  )
  mu = state[0].mu['w']
  assert isinstance(mu, QuantizedArray)
  assert mu.scales.shape == tuple(np.squeeze(scales, group_axis + 1).shape)
  np.testing.assert_allclose(
    mu.scales, np.squeeze(scales, group_axis + 1), rtol=1e-4
  )
  np.testing.assert_allclose(p['w'], expected, rtol=1e-4, atol=1e-5)
  layout = quantize.leaf_layout(q, 'w', block_lib.bind(block, (16, 32)))
  decoded = quantize.decode(mu, layout)
  want = (codes * scales).reshape(16, 32)
  # float32 against float64: a value at a midpoint may round the other way.
  close = np.isclose(decoded, want, rtol=1e-4, atol=1e-7)
  assert close.mean() > 0.99, close.mean()


def test_int8_m_tracks_float32_m():
  """The issue's check: 5 steps on an MLP kernel, int8 against float32 m."""
  rng = np.random.default_rng(0)
  param = {
    'mlp': {
      'up_proj': {
        'kernel': jnp.asarray(rng.standard_normal((256, 64)), jnp.float32)
      }
    }
  }
  grads = [
    jax.tree.map(
      lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32), param
    )
    for _ in range(5)
  ]

  def run(mu_dtype):
    tx = scale_by_adam_mini(mu_dtype=mu_dtype)
    state = tx.init(param)
    out = []
    for g in grads:
      u, state = tx.update(g, state)
      out.append(np.asarray(u['mlp']['up_proj']['kernel']).ravel())
    return np.concatenate(out), state

  ref, _ = run(None)
  for mu_dtype, max_rel in ((jnp.int8, 0.02), (jnp.int4, 0.2)):
    got, state = run(mu_dtype)
    assert isinstance(state.mu['mlp']['up_proj']['kernel'], QuantizedArray)
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    cosine = got @ ref / np.linalg.norm(got) / np.linalg.norm(ref)
    print(
      f'{jnp.dtype(mu_dtype)}: relative difference {rel:.4f}, cosine {cosine:.5f}'
    )
    assert rel < max_rel and cosine > 1 - max_rel**2


# Construction and layout ------------------------------------------------------------


@pytest.mark.parametrize(
  'mu_dtype', [jnp.int16, jnp.int32, jnp.uint8, jnp.uint4, jnp.bool_, 'int64']
)
def test_other_integer_mu_dtypes_are_refused(mu_dtype):
  with pytest.raises(ValueError, match='not supported.*silently lose'):
    adam_mini(1e-3, mu_dtype=mu_dtype)
  with pytest.raises(ValueError, match='not supported'):
    scale_by_adam_mini(mu_dtype=mu_dtype)
  with pytest.raises(TypeError, match='mu_dtype must be a dtype'):
    adam_mini(1e-3, mu_dtype='eight bits')


def test_int_mu_dtypes_mean_their_quantization():
  # The measured defaults (BENCHMARKS.md section 5): linear codes rounded
  # stochastically, at both widths; groups of 256 and 128 (bitsandbytes',
  # torchao's).
  for mu_dtype, bits, group, code, rounding in (
    (jnp.int8, 8, 256, 'linear', 'all'),
    (jnp.int4, 4, 128, 'linear', 'all'),
  ):
    _, q = quantize.resolve_mu_dtype(mu_dtype)
    assert (q.bits, q.target_group_size) == (bits, group)
    assert (q.code, q.stochastic_rounding) == (code, rounding)
    assert q == MomentQuantization(
      bits=bits, code=code, stochastic_rounding=rounding
    )
  for bad in (
    dict(bits=2),
    dict(code='nf4'),
    dict(group_size=0),
    dict(stochastic_rounding='yes'),
  ):
    with pytest.raises(ValueError, match='MomentQuantization'):
      MomentQuantization(**bad)


# Llama-2-7B leaves and their groups: (path, shape, block) -> (axis, size).
_LLAMA_LAYOUTS = [
  (
    ('layers', '0', 'mlp', 'down_proj', 'kernel'),
    (11008, 4096),
    Block.along(-1),
    (0, 172),
  ),
  (
    ('layers', '0', 'mlp', 'up_proj', 'kernel'),
    (4096, 11008),
    Block.along(-1),
    (0, 256),
  ),
  (
    ('layers', '0', 'self_attn', 'q_proj', 'kernel'),
    (4096, 4096),
    Block.heads(-1, 128),
    (0, 256),
  ),
  (('embed_tokens', 'embedding'), (32000, 4096), Block.along(0), (1, 256)),
  (('lm_head', 'kernel'), (4096, 32000), Block.along(-1), (0, 256)),
  (
    ('layers', 'mlp', 'down_proj', 'kernel'),
    (32, 14336, 4096),
    Block.along(0, -1),
    (1, 224),
  ),
  (('h', '0', 'mlp', 'c_fc', 'bias'), (4096,), Block.elementwise(), (0, 256)),
]


@pytest.mark.parametrize('path,shape,block,expected', _LLAMA_LAYOUTS)
def test_groups_lie_inside_blocks_and_split_over_16_shards(
  path, shape, block, expected
):
  q = MomentQuantization()
  layout = quantize.leaf_layout(q, '/'.join(path), block_lib.bind(block, shape))
  assert (layout.axis, layout.group_size) == expected
  groups = shape[layout.axis] // layout.group_size
  assert groups % 16 == 0 or shape[layout.axis] <= 16 * 256
  assert layout.within_blocks == (block.kept_axes is not None)


def test_small_and_ungroupable_leaves_keep_float32_m():
  q = MomentQuantization()
  along = block_lib.bind(Block.along(-1), (64, 32))  # 2048 < min_size
  assert quantize.leaf_layout(q, 'w', along) is None
  # No divisor of a prime axis makes a group of 32+ coordinates.
  prime = block_lib.bind(Block.along(-1), (50021, 4))
  assert quantize.leaf_layout(q, 'w', prime) is None
  tx = scale_by_adam_mini(mu_dtype=jnp.int8, partition=Block.along(-1))
  state = tx.init({'small': jnp.ones((64, 32)), 'big': jnp.ones((512, 8))})
  assert state.mu['small'].dtype == jnp.float32
  assert isinstance(state.mu['big'], QuantizedArray)
  assert state.mu['big'].codes.dtype == jnp.int8
  assert state.mu['big'].scales.shape == (2, 8)


def test_int4_codes_are_packed_two_per_byte():
  tx = scale_by_adam_mini(mu_dtype=jnp.int4, partition=Block.along(-1))
  params = {'w': jnp.ones((512, 16))}
  state = tx.init(params)
  mu = state.mu['w']
  assert mu.codes.dtype == jnp.uint8 and mu.codes.shape == (256, 16)
  assert mu.scales.shape == (4, 16)
  g = {'w': jax.random.normal(jax.random.key(0), (512, 16))}
  _, state = tx.update(g, state)
  layout = quantize.leaf_layout(
    quantize.resolve_mu_dtype(jnp.int4)[1],
    'w',
    block_lib.bind(Block.along(-1), (512, 16)),
  )
  # 4-bit linear code: m = 0.1 g to within half a step of 1/7 of the group max.
  m = quantize.decode(state.mu['w'], layout)
  assert np.max(np.abs(m - 0.1 * g['w'])) <= np.max(np.abs(0.1 * g['w'])) * 0.5


def test_stochastic_rounding_only_where_asked():
  params = {
    'embed_tokens': {'embedding': jnp.ones((256, 32))},
    'mlp': {'up_proj': {'kernel': jnp.ones((32, 256))}},
  }

  def layouts(mode):
    q = MomentQuantization(min_size=0, stochastic_rounding=mode)
    leaves, _ = am.partition.resolve(am.default_partition, params)
    return {
      x.path[0]: quantize.leaf_layout(q, '/'.join(x.path), x.plan).stochastic
      for x in leaves
    }

  assert layouts('none') == {'embed_tokens': False, 'mlp': False}
  assert layouts('embeddings') == {'embed_tokens': True, 'mlp': False}
  assert layouts('all') == {'embed_tokens': True, 'mlp': True}
  tx = adam_mini(
    1e-3, mu_dtype=MomentQuantization(stochastic_rounding='embeddings', seed=3)
  )
  state = tx.init(params)[0]
  assert state.rng_key.dtype == jnp.uint32 and state.rng_key.shape == ()
  assert int(state.rng_key) == 3
  rounds_to_nearest = MomentQuantization(stochastic_rounding='none')
  assert (
    adam_mini(1e-3, mu_dtype=rounds_to_nearest).init(params)[0].rng_key is None
  )
  four_bits_to_nearest = MomentQuantization(bits=4, stochastic_rounding='none')
  assert (
    adam_mini(1e-3, mu_dtype=four_bits_to_nearest).init(params)[0].rng_key
    is None
  )


# State types, jit, wrappers -----------------------------------------------------------

_QUANTIZED = [
  MomentQuantization(bits=8, group_size=4, min_size=0),
  MomentQuantization(
    bits=4, code='linear', group_size=4, min_size=0, stochastic_rounding='all'
  ),
]


def _params(dtype=jnp.float32):
  params = worker.init_params(dtype=dtype)
  return params


def _tx(q, **kwargs):
  return adam_mini(1e-2, mu_dtype=q, num_heads=worker.HEADS, **kwargs)


@pytest.mark.parametrize('q', _QUANTIZED, ids=['int8', 'int4-sr'])
def test_state_types_are_stable_and_jit_compiles_once(q):
  params = _params()
  tx = _tx(q)
  state = tx.init(params)
  abstract = jax.eval_shape(
    tx.init,
    jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params),
  )
  trees.assert_same_shapes_and_dtypes(state, abstract)
  (mini,) = _quantized_states(state)
  assert isinstance(mini.mu['lm_head']['kernel'], QuantizedArray)

  @jax.jit
  def step(params, state, i):
    grads = jax.grad(worker.loss_fn)(params, worker.batch(i))
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  types = sharding_tests._types(state)
  for i in range(3):
    params, state = step(params, state, i)
    assert sharding_tests._types(state) == types
  assert step._cache_size() == 1
  out = jax.jit(
    lambda pred, s: jax.lax.cond(
      pred, lambda s: tx.update(params, s, params)[1], lambda s: s, s
    )
  )(True, state)
  trees.assert_same_shapes_and_dtypes(state, out)


def _wrap(kind, q, params):
  kwargs = dict(num_heads=worker.HEADS)
  if kind == 'chain':
    return optax.chain(
      optax.clip_by_global_norm(1.0), adam_mini(1e-2, mu_dtype=q, **kwargs)
    )
  if kind == 'inject_hyperparams':
    return optax.inject_hyperparams(
      adam_mini, static_args=('num_heads', 'mu_dtype')
    )(1e-2, mu_dtype=q, **kwargs)
  if kind == 'multi_steps':
    return optax.MultiSteps(
      adam_mini(1e-2, mu_dtype=q, **kwargs), every_k_schedule=2
    )
  if kind == 'masked':
    mask = jax.tree.map(lambda _: True, params)
    mask['lm_head']['kernel'] = False
    return optax.masked(adam_mini(1e-2, mu_dtype=q, **kwargs), mask)
  return optax.apply_if_finite(adam_mini(1e-2, mu_dtype=q, **kwargs), 3)


@functools.cache
def _unwrapped_params(q, steps: int = 4):
  """The params after ``steps`` steps of the unwrapped optimizer.

  Cached: the wrappers that must match it run the same deterministic
  trajectory, and compiling it once per process saves a compile per case.
  """
  plain = _tx(q)
  q_params = _params()
  plain_state = plain.init(q_params)
  for i in range(steps):
    grads = jax.grad(worker.loss_fn)(q_params, worker.batch(i))
    updates, plain_state = jax.jit(plain.update)(grads, plain_state, q_params)
    q_params = optax.apply_updates(q_params, updates)
  return q_params


@pytest.mark.parametrize(
  'kind',
  ['chain', 'inject_hyperparams', 'multi_steps', 'masked', 'apply_if_finite'],
)
def test_optax_wrappers(kind):
  q = _QUANTIZED[1]
  params = _params()
  tx = _wrap(kind, q, params)

  @jax.jit
  def step(tx_state, params, i):
    grads = jax.grad(worker.loss_fn)(params, worker.batch(i))
    updates, tx_state = tx.update(grads, tx_state, params)
    return tx_state, optax.apply_updates(params, updates)

  state = tx.init(params)
  types = sharding_tests._types(state)
  p = params
  for i in range(4):
    state, p = step(state, p, i)
    assert sharding_tests._types(state) == types
  (mini,) = _quantized_states(state)
  assert isinstance(
    mini.mu['model']['layers']['0']['mlp']['up_proj']['kernel'], QuantizedArray
  )
  if kind in ('inject_hyperparams', 'apply_if_finite'):  # same as unwrapped
    q_params = _unwrapped_params(q)
    trees.assert_trees_close(p, q_params, rtol=1e-5, atol=1e-6)
  if kind == 'multi_steps':
    assert int(mini.count) == 2
  if kind == 'masked':
    assert not isinstance(
      state.inner_state[0].mu['lm_head']['kernel'], QuantizedArray
    )


@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_nonfinite_gradient_poisons_its_group_and_apply_if_finite_skips(bad):
  q = MomentQuantization(group_size=4, min_size=0)
  tx = scale_by_adam_mini(mu_dtype=q, partition=Block.along(-1))
  params = {'w': jnp.zeros((8, 3))}
  state = tx.init(params)
  g = jnp.ones((8, 3)).at[1, 2].set(bad)
  _, state = tx.update({'w': g}, state)
  layout = quantize.leaf_layout(q, 'w', block_lib.bind(Block.along(-1), (8, 3)))
  m = np.asarray(quantize.decode(state.mu['w'], layout))
  # Rows 0-3 of column 2 are one group: none of it is finite any more (its
  # scale is NaN or inf); every other group is.
  assert not np.any(np.isfinite(m[:4, 2]))
  assert np.all(np.isfinite(np.delete(m.ravel(), [2, 5, 8, 11])))

  guarded = optax.apply_if_finite(tx, 3)
  gstate = guarded.init(params)
  _, gstate = guarded.update({'w': jnp.ones((8, 3))}, gstate)
  _, skipped = guarded.update({'w': g}, gstate)
  sharding_tests_bits = checkpoint_tests.worker._bits
  for a, b in zip(
    jax.tree.leaves(skipped.inner_state), jax.tree.leaves(gstate.inner_state)
  ):
    np.testing.assert_array_equal(
      sharding_tests_bits(a), sharding_tests_bits(b)
    )


@pytest.mark.parametrize('mu_dtype', [jnp.int8, jnp.int4])
def test_bf16_params(mu_dtype):
  bits = 8 if mu_dtype == jnp.int8 else 4
  q = MomentQuantization(bits=bits, group_size=4, min_size=16)
  params = _params(jnp.bfloat16)
  tx = _tx(q)
  state = tx.init(params)
  grads = jax.grad(worker.loss_fn)(params, worker.batch(0))
  updates, new_state = jax.jit(tx.update)(grads, state, params)
  trees.assert_same_shapes_and_dtypes(state, new_state)
  for u in jax.tree.leaves(updates):
    assert u.dtype == jnp.bfloat16 and np.all(
      np.isfinite(np.asarray(u, np.float32))
    )
  mini = new_state[0]
  assert mini.mu['model']['norm']['scale'].dtype == jnp.float32  # small
  assert isinstance(
    mini.mu['model']['layers']['0']['mlp']['up_proj']['kernel'], QuantizedArray
  )
  for v in jax.tree.leaves(mini.v):
    assert v.dtype == jnp.float32


# Meshes -------------------------------------------------------------------------------

_MESH_Q = MomentQuantization(bits=8, group_size=4, min_size=0)


def _mesh_tx():
  return adam_mini(
    1e-2,
    mu_dtype=_MESH_Q,
    num_heads=lm.CONFIG.n_heads,
    num_kv_heads=lm.CONFIG.n_kv_heads,
  )


@functools.cache
def _one_device_reference(stacked: bool, steps: int = 3):
  tx = _mesh_tx()
  device = jax.devices()[0]
  params = jax.device_put(lm.init_params(stacked), device)
  tokens = jax.device_put(lm.make_batch(), device)
  state = jax.jit(tx.init)(params)
  step = lm.make_train_step(tx)
  out = []
  for _ in range(steps):
    params, state, loss = step(params, state, tokens)
    out.append(jax.device_get((params, loss)))
  return out


@pytest.mark.parametrize('explicit', [False, True], ids=['auto', 'explicit'])
@pytest.mark.parametrize(
  'layout,stacked',
  [('fsdp_tp', False), ('dp_fsdp_tp', True)],
  ids=['fsdp_tp', 'dp_fsdp_tp-stacked'],
)
def test_mesh_training_matches_one_device(layout, stacked, explicit):
  tx = _mesh_tx()
  reference = _one_device_reference(stacked)
  mesh = lm.make_mesh(layout, explicit)
  host = lm.init_params(stacked)
  with sharding_tests._set_mesh(mesh):
    params = lm.shard(host, lm.param_specs(host, layout), mesh)
    tokens = jax.device_put(
      lm.make_batch(), NamedSharding(mesh, lm.batch_spec(layout))
    )
    param_sh = jax.tree.map(lambda x: x.sharding, params)
    state_sh = state_shardings(tx, params)
    state = jax.jit(tx.init, out_shardings=state_sh)(params)
    sharding_tests._assert_laid_out(state, state_sh)
    types = sharding_tests._types(state)
    if explicit:
      step = lm.make_train_step(tx)
    else:
      step = lm.make_train_step(tx, param_sh, state_sh)
    for expected_params, expected_loss in reference:
      params, state, loss = step(params, state, tokens)
      assert sharding_tests._types(state) == types
      sharding_tests._assert_laid_out(state, state_sh)
      # A sharded sum adds in another order: a code at a midpoint may round
      # the other way, so allow a quantization step's worth of drift.
      trees.assert_trees_close(params, expected_params, rtol=2e-3, atol=2e-4)
      np.testing.assert_allclose(loss, expected_loss, rtol=1e-4)
    assert step._cache_size() == 1
    if explicit:
      update = lm.make_update(tx)
    else:
      update = lm.make_update(tx, param_sh, state_sh)
    hlo = update.lower(params, state, params).compile().as_text()
  (mini,) = _quantized_states(state)
  kernel = mini.mu['model']['embed_tokens']['embedding']
  assert isinstance(kernel, QuantizedArray)
  smallest = min(
    x.size
    for path, x in jax.tree_util.tree_leaves_with_path(params)
    if getattr(path[-1], 'key', None) in ('kernel', 'embedding')
  )
  gathers = lm.all_gathers(hlo)
  assert all(math.prod(s) < smallest for s in gathers), gathers


def test_state_shardings_give_codes_and_scales_their_param_spec():
  mesh, specs, params = sharding_tests._abstract_params('fsdp_tp')
  tx = _mesh_tx()
  shardings = state_shardings(tx, params)
  (mini,) = _quantized_states(shardings)
  abstract = jax.eval_shape(tx.init, params)
  assert jax.tree.structure(shardings) == jax.tree.structure(abstract)
  layer = mini.mu['model']['layers']['0']
  for group, name in (('self_attn', 'q_proj'), ('mlp', 'down_proj')):
    q = layer[group][name]['kernel']
    want = specs['model']['layers']['0'][group][name]['kernel']
    assert q.codes.spec == want and q.scales.spec == want
  for s, x in zip(jax.tree.leaves(shardings), jax.tree.leaves(abstract)):
    s.shard_shape(x.shape)  # valid for the leaf's shape


def test_groups_that_would_cross_shards_raise_a_clear_error():
  # 'fsdp' shards the averaged axis (dim 32) 8 ways; groups of 8 along it
  # make 4 groups, which 8 shards cannot hold whole.
  tx = adam_mini(
    1e-2,
    mu_dtype=MomentQuantization(group_size=8, min_size=0),
    num_heads=lm.CONFIG.n_heads,
    num_kv_heads=lm.CONFIG.n_kv_heads,
  )
  mesh, specs, params = sharding_tests._abstract_params('fsdp')
  with pytest.raises(ValueError, match='cross the boundaries of its 8 shards'):
    state_shardings(tx, params)
  explicit = lm.make_mesh('fsdp', True)
  host = lm.init_params()
  with sharding_tests._set_mesh(explicit):
    sharded = lm.shard(host, lm.param_specs(host, 'fsdp'), explicit)
    with pytest.raises(ValueError, match=r'Quantized m of \S+/kernel \(shape'):
      jax.jit(tx.init)(sharded)


# Flax -----------------------------------------------------------------------------------


@pytest.fixture
def flax_tests(monkeypatch):
  pytest.importorskip('flax')
  import test_flax_sharding as module

  q = MomentQuantization(group_size=4, min_size=0)
  monkeypatch.setattr(
    module,
    '_tx',
    lambda: adam_mini(
      1e-2, mu_dtype=q, num_heads=module.H, num_kv_heads=module.K
    ),
  )
  return module


@pytest.mark.parametrize('explicit', [False, True], ids=['auto', 'explicit'])
def test_nnx_optimizer_boxes_codes_and_scales(flax_tests, explicit):
  t = flax_tests
  H, DH = t.H, t.DH  # noqa: N806
  expected_params, _, expected_losses = t._nnx_run(t._mesh(explicit, (1, 1)))
  params, opt_state, losses = t._nnx_run(t._mesh(explicit))
  np.testing.assert_allclose(losses, expected_losses, rtol=1e-4)
  mini = opt_state['opt_state'][0]
  # nnx.state shows the QuantizedArray as a State of its two fields, each
  # in its own box with the param's names.
  q = mini.mu['q_proj']['kernel']
  assert set(q) == {'codes', 'scales'}
  for part in (q['codes'], q['scales']):
    assert t._sharding_names(part) == ('fsdp', 'tp')
    assert t._spec(part[...]) == ('fsdp', 'tp')
  assert q['codes'][...].dtype == jnp.int8
  assert q['scales'][...].shape == (4, H * DH)
  assert t._spec(mini.v['q_proj']['kernel'][...]) == (None, 'tp', None)


@pytest.mark.parametrize('logical', [False, True], ids=['names', 'logical'])
def test_linen_train_state_boxes_codes_and_scales(flax_tests, logical):
  t = flax_tests
  from flax import linen as nn

  _, _, expected_losses = t._linen_run(t._mesh(True, (1, 1)), logical)
  state, shardings, losses = t._linen_run(t._mesh(True), logical)
  np.testing.assert_allclose(losses, expected_losses, rtol=1e-4)
  mu = state.opt_state[0].mu['up_proj']['kernel']
  assert isinstance(mu, QuantizedArray)
  box = nn.LogicallyPartitioned if logical else nn.Partitioned
  names = (t.LOGICAL if logical else t.NAMES)['up_proj']
  for part in mu:
    assert isinstance(part, box) and part.names == names
    assert t._spec(part.value) == t.NAMES['up_proj']


# Checkpoints ------------------------------------------------------------------------------


@pytest.mark.slow
def test_restart_in_fresh_process_is_bit_identical(tmp_path):
  jobs, expected = [], {}
  for mu_dtype in ('int8', 'int4'):
    tx = worker.make_tx(mu_dtype)
    step = worker.make_step(tx)
    params = worker.init_params()
    opt_state = tx.init(params)
    params, opt_state = worker.run(
      step, params, opt_state, 0, checkpoint_tests.SAVE_AT
    )
    ckpt = tmp_path / f'ckpt_{mu_dtype}'
    checkpoint_tests._save(ckpt, params, opt_state)
    params, opt_state = worker.run(
      step,
      params,
      opt_state,
      checkpoint_tests.SAVE_AT,
      checkpoint_tests.CONTINUE,
    )
    mini = opt_state[1][0]
    assert isinstance(mini.mu['lm_head']['kernel'], QuantizedArray)
    assert mini.rng_key is not None
    expected[mu_dtype] = {'params': params, 'opt_state': opt_state}
    jobs.append(
      {
        'ckpt': str(ckpt),
        'start': checkpoint_tests.SAVE_AT,
        'steps': checkpoint_tests.CONTINUE,
        'mu_dtype': mu_dtype,
        'mesh': None,
        'out': str(tmp_path / f'out_{mu_dtype}.npz'),
      }
    )
  checkpoint_tests._run_worker(jobs, tmp_path)
  for job in jobs:
    n = checkpoint_tests._assert_bit_identical(
      expected[job['mu_dtype']], job['out']
    )
    print(f'{job["mu_dtype"]} mu: {n} leaves bit-identical after restart')


@pytest.mark.slow
def test_restore_onto_smaller_mesh(tmp_path):
  mesh = worker.make_mesh(8)
  tx = worker.make_tx('int8')
  step = worker.make_step(tx)
  params = worker.init_params()
  params = jax.device_put(params, worker.param_shardings(params, mesh))
  shardings = state_shardings(tx, params)
  opt_state = jax.jit(tx.init, out_shardings=shardings)(params)
  codes = opt_state[1][0].mu['lm_head']['kernel'].codes
  assert codes.sharding.spec == P('data', 'model')
  params, opt_state = worker.run(
    step, params, opt_state, 0, checkpoint_tests.SAVE_AT
  )
  ckpt = tmp_path / 'ckpt_mesh8'
  checkpoint_tests._save(ckpt, params, opt_state)
  params, opt_state = worker.run(
    step, params, opt_state, checkpoint_tests.SAVE_AT, checkpoint_tests.CONTINUE
  )
  jobs = [
    {
      'ckpt': str(ckpt),
      'start': checkpoint_tests.SAVE_AT,
      'steps': checkpoint_tests.CONTINUE,
      'mu_dtype': 'int8',
      'mesh': devices,
      'out': str(tmp_path / f'out_mesh{devices}.npz'),
    }
    for devices in (4, 1)
  ]
  checkpoint_tests._run_worker(jobs, tmp_path, num_devices=4)
  for job in jobs:
    got = checkpoint_tests._tree_from_npz(job['out'])
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
      key = "['params']" + jax.tree_util.keystr(key_path)
      # The same stochastic rounding bits on any mesh; sums in another order
      # can still move a code by one step.
      np.testing.assert_allclose(
        got['value' + key], np.asarray(leaf), rtol=2e-3, atol=2e-4, err_msg=key
      )
    for key in got:
      if key.startswith('dtype'):
        assert str(got[key]) in ('float32', 'int8', 'uint32', 'int32'), key


def test_checkpoint_holds_codes_scales_and_key(tmp_path):
  import orbax.checkpoint as ocp

  tx = worker.make_tx('int4')
  params = worker.init_params()
  opt_state = tx.init(params)
  params, opt_state = worker.run(worker.make_step(tx), params, opt_state, 0, 3)
  checkpoint_tests._save(tmp_path / 'ckpt', params, opt_state)
  abstract = jax.eval_shape(
    lambda: {'params': params, 'opt_state': tx.init(params)}
  )
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(str(tmp_path / 'ckpt'), abstract)
  want = {'params': params, 'opt_state': opt_state}
  assert jax.tree.structure(restored) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(want)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(worker._bits(a), worker._bits(b))
  mini = restored['opt_state'][1][0]
  assert mini.mu['lm_head']['kernel'].codes.dtype == jnp.uint8
  assert mini.rng_key.dtype == jnp.uint32


# Report, memory, HLO -------------------------------------------------------------------------


def test_partition_report_counts_quantized_bytes():
  params = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _params()
  )
  q = MomentQuantization(group_size=4, min_size=16)
  report = am.partition_report(params, num_heads=worker.HEADS, mu_dtype=q)
  state = jax.eval_shape(
    scale_by_adam_mini(num_heads=worker.HEADS, mu_dtype=q).init, params
  )
  assert report.state_bytes == am.report.tree_bytes(state)
  # Besides the leaves: the step count (int32) and the rounding seed
  # (uint32).
  assert (
    sum(leaf.state_bytes for leaf in report.leaves) + 4 + 4
    == report.state_bytes
  )
  by_path = {leaf.path: leaf for leaf in report.leaves}
  lm_head = by_path['lm_head/kernel']
  # int8 codes, a float32 scale per 4, one float32 v per output neuron.
  assert lm_head.state_bytes == 8 * 16 + 4 * 16 * 2 + 4 * 16
  assert 'int8' in lm_head.mu and 'float32' in by_path['model/norm/scale'].mu
  assert 'int8' in str(report)


def test_llama2_7b_state_bounds():
  memory = pytest.importorskip('benchmarks.memory')
  params, heads, kv = memory.model_tree('llama', '7B')
  adamw = memory.state_bytes(optax.adamw(1e-3), params)
  ratios = {}
  for mu_dtype in (jnp.int8, jnp.int4):
    tx = adam_mini(1e-3, mu_dtype=mu_dtype, num_heads=heads, num_kv_heads=kv)
    ratios[jnp.dtype(mu_dtype).name] = memory.state_bytes(tx, params) / adamw
  print(f'Llama-2-7B state / AdamW: {ratios}')
  assert ratios['int8'] <= 0.135
  assert ratios['int4'] <= 0.075
  # Codes alone are 1/8 and 1/16 of AdamW's two float32 moments.
  assert ratios['int8'] > 0.125 and ratios['int4'] > 0.0625


@pytest.mark.parametrize('mu_dtype', [jnp.int8, jnp.int4])
def test_compiled_update_keeps_no_float32_copy_of_m(mu_dtype):
  params = {'mlp': {'up_proj': {'kernel': jnp.zeros((1024, 512))}}}
  tx = scale_by_adam_mini(mu_dtype=mu_dtype)
  state = tx.init(params)
  compiled = (
    jax.jit(tx.update, donate_argnums=(1,)).lower(params, state).compile()
  )
  n = 1024 * 512
  temp = compiled.memory_analysis().temp_size_in_bytes
  # At most a copy of the codes (XLA on the CPU copies a donated buffer that
  # two fusions read); never a float32 m (4n bytes) or unpacked codes.
  assert temp <= n * jnp.dtype(jnp.int8).itemsize + 64 * 1024, temp


# The benchmark script, at a tiny size -------------------------------------------


def test_update_step_hlo_check_on_a_tiny_llama(tmp_path):
  from benchmarks import update_step

  opts = ['adam_mini', 'adam_mini_int8', 'adam_mini_int4']
  argv = ['--hlo', str(tmp_path), '--sizes', 'tiny', '--opts', ','.join(opts)]
  stats = update_step.main(argv)['opts']
  written = json.loads((tmp_path / 'hlo_stats_tiny.json').read_text())
  assert {k: v['temp_bytes_per_param'] for k, v in written['opts'].items()} == {
    k: v['temp_bytes_per_param'] for k, v in stats.items()
  }
  for name, st in stats.items():
    # Temporaries never hold a float32 m: under 4 bytes per parameter.
    assert st['temp_bytes_per_param'] < 2, (name, st)
  per_param = {k: v['state_bytes_per_param'] for k, v in stats.items()}
  # Leaves of this size are mostly under min_size (float32 m): still < 1/2.
  assert (
    per_param['adam_mini_int4']
    < per_param['adam_mini_int8']
    < per_param['adam_mini'] / 2
  )


@pytest.mark.parametrize('stacked', [False, True], ids=['per_layer', 'stacked'])
def test_update_step_times_quantized_m_with_the_others(tmp_path, stacked):
  from benchmarks import update_step

  opts = ['adamw', 'adam_mini', 'adam_mini_bf16', 'adam_mini_int8']
  opts += ['adam_mini_int4']
  argv = ['--out', str(tmp_path), '--sizes', 'tiny', '--opts', ','.join(opts)]
  res = update_step.main([*argv, '--reps', '2'] + ['--stacked'] * stacked)
  row = res['rows']['tiny']
  for opt in opts:
    assert row[opt]['median_s'] > 0 and row[opt]['finite'], (opt, row[opt])
  state = [row[o]['state_bytes'] for o in reversed(opts)]
  assert state == sorted(state) and len(set(state)) == len(state), state
  name = 'update_step_stacked.json' if stacked else 'update_step.json'
  assert json.loads((tmp_path / name).read_text())['rows']['tiny'].keys() >= {
    *opts
  }
  assert 'adam_mini_int8' in update_step.table(res)
  assert 'vs adam_mini_bf16: int8' in update_step.table(res)


@pytest.mark.slow
def test_benchmark_trains_two_steps(tmp_path):
  from benchmarks import quantized_moment as bench

  out = tmp_path / 'quantized_moment.json'
  argv = ['--variants', 'f32', 'int8', 'int4-linear-g64-sr', '--steps', '2']
  argv += ['--out', str(out), '--mesh', 'data=1', '--']
  argv += ['--batch-size', '4', '--seq-len', '32']
  argv += ['--eval-batches', '1', '--max-data-bytes', '200000']
  records = bench.main(argv)
  assert [r['variant'] for r in records] == [
    'f32',
    'int8',
    'int4-linear-g64-sr',
  ]
  assert [r['mu_dtype'] for r in records[:2]] == ['float32', 'int8']
  assert records[2]['mu_dtype']['bits'] == 4
  assert all(r['state_finite'] and r['steps'] == 2 for r in records)
  summary = json.loads(out.read_text())['summary']
  key = 'tiny/2 [--batch-size 4 --seq-len 32 --eval-batches 1'
  key += ' --max-data-bytes 200000]'
  assert summary[f'{key}/f32']['val_ratio'] == [1.0]
  # Codes of a byte (half a byte) where m had four; v and small leaves stay.
  assert 0.25 < summary[f'{key}/int8']['state_ratio'] < 0.3
  assert summary[f'{key}/int4-linear-g64-sr']['state_ratio'] < 0.2
  with pytest.raises(ValueError, match='unknown variant'):
    bench.main(['--variants', 'int2', '--out', str(out)])


def test_summary_pairs_each_seed_with_its_float32_run():
  import statistics

  from benchmarks import quantized_moment as bench

  def record(variant, seed, val):
    return {
      'variant': variant, 'seed': seed, 'preset': 'tiny', 'steps': 800,
      'final_val_loss': val, 'final_train_loss': val,
      'optimizer_state_bytes': 4 if variant == 'f32' else 1,
    }  # fmt: skip

  records = [
    record('f32', 0, 2.0), record('int8', 0, 2.02),
    record('f32', 1, 1.0), record('int8', 1, 0.99),
    record('f32', 2, 4.0), record('int8', 2, 4.04),
    record('int8', 3, 9.0),  # no float32 run of its seed: left out
  ]  # fmt: skip
  entry = bench.summarize(records)['tiny/800/int8']
  ratios = [1.01, 0.99, 1.01]
  assert entry['seeds'] == [0, 1, 2]
  np.testing.assert_allclose(entry['val_ratio'], ratios)
  np.testing.assert_allclose(entry['val_ratio_mean'], statistics.mean(ratios))
  np.testing.assert_allclose(entry['val_ratio_sd'], statistics.stdev(ratios))
  np.testing.assert_allclose(
    entry['val_ratio_se'], statistics.stdev(ratios) / 3**0.5
  )
  assert entry['state_ratio'] == 0.25 and not entry['within_bound']
  # Student's t for 2 degrees of freedom at 0.95, from the printed tables.
  np.testing.assert_allclose(
    entry['val_ratio_upper95'],
    statistics.mean(ratios) + 2.920 * statistics.stdev(ratios) / 3**0.5,
    rtol=1e-4,
  )
  assert not entry['mean_within_bound']
  # Twenty pairs spread by 1% about 1.000 show the mean under the bound
  # though a fifth of them pass it.
  many = []
  for seed, ratio in enumerate([0.99, 1.0, 1.0, 1.0, 1.01] * 4):
    many += [record('f32', seed, 1.0), record('int8', seed, ratio)]
  entry = bench.summarize(many)['tiny/800/int8']
  assert not entry['within_bound'] and entry['mean_within_bound']
  # t for 19 degrees of freedom at 0.95: 1.729.
  np.testing.assert_allclose(
    entry['val_ratio_upper95'],
    1.0 + 1.729 * statistics.stdev([0.99, 1.0, 1.0, 1.0, 1.01] * 4) / 20**0.5,
    rtol=1e-4,
  )
  assert bench.summarize(records[:2])['tiny/800/int8']['val_ratio_se'] is None
  assert '(se)' in bench.table(bench.summarize(records))


def test_variant_names_spell_each_option():
  from benchmarks import quantized_moment as bench

  assert bench.mu_dtype_of('int8') == 'int8'  # the library's default
  assert bench.mu_dtype_of('int8-linear-g2048-min0-srall-seed1') == (
    am.MomentQuantization(
      bits=8,
      code='linear',
      group_size=2048,
      min_size=0,
      stochastic_rounding='all',
      seed=1,
    )
  )
  # A named code without -sr/-srall rounds to nearest (the older records).
  assert bench.mu_dtype_of('int4-dynamic').stochastic_rounding == 'none'
  with pytest.raises(ValueError, match='unknown option'):
    bench.mu_dtype_of('int8-linear-fast')

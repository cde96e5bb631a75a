"""Parity of ``optax_adam_mini.adam_mini`` with the PyTorch reference Adam-mini.

The reference trajectories come from the PyPI package ``adam-mini`` 1.1.1 and
are stored in ``tests/reference/fixtures/adam_mini_llama_reference.npz``
(regenerate with ``python -m tests.reference.make_reference_fixtures``; that
needs torch).  The fixture tests need only numpy and our package; the live
test re-runs the torch reference and is skipped when torch / adam_mini are
not installed.

Run ``pytest tests/test_reference_parity.py -s`` to see the measured errors,
or ``python tests/test_reference_parity.py`` for a short table.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from reference import fixture_io

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE_DIR = os.path.join(HERE, 'reference')
FIXTURE_PATH = os.path.join(
  REFERENCE_DIR, 'fixtures', 'adam_mini_llama_reference.npz'
)

# |ours - reference| <= ATOL + RTOL * |reference|, elementwise, at every step.
ATOL = 1e-6
RTOL = 1e-6

# Filled in by the tests / `replay_and_measure`: {label: {"max_abs": .., "max_rel": .., ...}}
PARITY_REPORT: dict[str, dict[str, float]] = {}


# ----------------------------------------------------------------------------
# Torch (HF names, Linear weight (out, in)) <-> Flax (HF Flax port) layout
# ----------------------------------------------------------------------------
def torch_to_flax(name: str, array) -> tuple[tuple[str, ...], np.ndarray]:
  """Map one torch parameter to its Flax path and layout.

  ``model.embed_tokens.weight`` (V, D)  -> model/embed_tokens/embedding (V, D)
  ``...<x>_proj.weight`` (out, in)       -> .../<x>_proj/kernel (in, out)
  ``lm_head.weight`` (V, D)              -> lm_head/kernel (D, V)
  ``...norm.weight`` (D,)                -> .../norm/weight (D,)   (unchanged)
  """
  parts = name.split('.')
  if parts[-1] != 'weight':
    raise ValueError(f'unsupported parameter {name!r}')
  a = np.asarray(array)
  module = parts[-2]
  if module == 'embed_tokens':
    return tuple(parts[:-1]) + ('embedding',), a
  if module.endswith('_proj') or module == 'lm_head':
    if a.ndim != 2:
      raise ValueError(f'{name!r}: expected a matrix, got {a.shape}')
    return tuple(parts[:-1]) + ('kernel',), np.ascontiguousarray(a.T)
  if module.endswith('norm'):
    return tuple(parts), a
  raise ValueError(f'unsupported parameter {name!r}')


def flax_to_torch(path: tuple[str, ...], array) -> tuple[str, np.ndarray]:
  """Inverse of :func:`torch_to_flax`."""
  a = np.asarray(array)
  leaf = path[-1]
  if leaf == 'embedding':
    return '.'.join(path[:-1] + ('weight',)), a
  if leaf == 'kernel':
    return '.'.join(path[:-1] + ('weight',)), np.ascontiguousarray(a.T)
  if leaf == 'weight':
    return '.'.join(path), a
  raise ValueError(f'unsupported path {path!r}')


def to_flax_tree(torch_params: dict[str, np.ndarray]) -> dict:
  """{torch name: array} -> nested dict pytree in the Flax layout."""
  tree: dict = {}
  for name, arr in torch_params.items():
    path, a = torch_to_flax(name, arr)
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    if path[-1] in node:
      raise ValueError(f'duplicate path {path}')
    node[path[-1]] = a
  return tree


def from_flax_tree(tree: dict) -> dict[str, np.ndarray]:
  """Nested dict pytree in the Flax layout -> {torch name: numpy array}."""
  out: dict[str, np.ndarray] = {}

  def walk(node, path):
    if isinstance(node, dict):
      for k, v in node.items():
        walk(v, path + (str(k),))
    else:
      name, a = flax_to_torch(path, np.asarray(node))
      out[name] = a

  walk(tree, ())
  return out


# ----------------------------------------------------------------------------
# Replaying gradients through our optimizer
# ----------------------------------------------------------------------------
def make_ours(meta: dict, value_blocks: str):
  import optax_adam_mini

  hp = meta['hparams']
  return optax_adam_mini.adam_mini(
    learning_rate=hp['lr'],
    b1=hp['betas'][0],
    b2=hp['betas'][1],
    eps=hp['eps'],
    weight_decay=hp['weight_decay'],
    num_heads=hp['n_heads'],
    num_kv_heads=hp['n_kv_heads'],
    value_blocks=value_blocks,
  )


def replay_ours(
  meta: dict,
  init: dict[str, np.ndarray],
  grads: list[dict[str, np.ndarray]],
  value_blocks: str,
) -> list[dict[str, np.ndarray]]:
  """Feed the recorded gradients to our optimizer; params after each step (torch layout)."""
  import jax
  import jax.numpy as jnp
  import optax

  tx = make_ours(meta, value_blocks)
  as_jnp = lambda tree: jax.tree_util.tree_map(
    lambda x: jnp.asarray(x, jnp.float32), tree
  )
  params = as_jnp(to_flax_tree(init))
  state = tx.init(params)
  out = []
  for g in grads:
    updates, state = tx.update(as_jnp(to_flax_tree(g)), state, params)
    params = optax.apply_updates(params, updates)
    out.append(from_flax_tree(jax.device_get(params)))
  return out


def compare_trajectories(
  ref: list[dict[str, np.ndarray]], ours: list[dict[str, np.ndarray]]
) -> dict[str, object]:
  """Errors over all steps and leaves.

  ``max_abs``: max |ours - ref|; ``max_rel``: max over leaves and steps of
  max |ours - ref| / max |ref| (error relative to the leaf's scale);
  ``ok``: |ours - ref| <= ATOL + RTOL * |ref| everywhere; ``worst``: (step,
  name, max abs err) of the leaf closest to / furthest over that tolerance.
  """
  assert len(ref) == len(ours)
  max_abs, max_rel, max_excess, worst = 0.0, 0.0, -np.inf, None
  per_step = []
  for t, (r, o) in enumerate(zip(ref, ours)):
    assert set(r) == set(o), set(r) ^ set(o)
    step_abs = 0.0
    for n in r:
      assert r[n].shape == o[n].shape, (n, r[n].shape, o[n].shape)
      rv = r[n].astype(np.float64)
      err = np.abs(o[n].astype(np.float64) - rv)
      a = float(err.max())
      excess = float((err - (ATOL + RTOL * np.abs(rv))).max())
      step_abs = max(step_abs, a)
      max_abs = max(max_abs, a)
      max_rel = max(max_rel, a / max(float(np.abs(rv).max()), 1e-30))
      if excess > max_excess:
        max_excess, worst = excess, (t + 1, n, a)
    per_step.append(step_abs)
  return dict(
    max_abs=max_abs,
    max_rel=max_rel,
    ok=max_excess <= 0.0,
    worst=worst,
    per_step_abs=per_step,
  )


def replay_and_measure(
  traj: str, path: str = FIXTURE_PATH
) -> dict[str, object]:
  fx = fixture_io.load_fixture(path)
  value_blocks = (
    'whole'
    if fx['meta']['trajectories'][traj]['reference_whole_values']
    else 'neuron'
  )
  ours = replay_ours(fx['meta'], fx['init'], fx['grads'], value_blocks)
  res = compare_trajectories(fx['params'][traj], ours)
  PARITY_REPORT[f'fixture/{traj}'] = res
  return res


def _fmt(label: str, res: dict[str, object]) -> str:
  return (
    f'[reference parity] {label}: max abs err {res["max_abs"]:.3e}, '
    f'max err rel. to leaf scale {res["max_rel"]:.3e} '
    f'(worst leaf vs tolerance, step/name/abs err: {res["worst"]})'
  )


# ----------------------------------------------------------------------------
# An independent numpy re-derivation of the reference update (torch layout).
# Used to check the fixture itself without torch, and as a diagnostic.
# ----------------------------------------------------------------------------
def numpy_reference_trajectory(meta, init, grads, whole_values: bool):
  hp = meta['hparams']
  lr, (b1, b2), eps, wd = hp['lr'], hp['betas'], hp['eps'], hp['weight_decay']
  head_numel = hp['dim'] * hp['dim'] // hp['n_heads']
  f32 = np.float32

  def blocks(name: str, a: np.ndarray) -> np.ndarray:
    """Reshape to (n_blocks, block_size); one second moment per block row."""
    if 'bias' in name:
      return a.reshape(-1, 1)
    if 'q_proj' in name or 'k_proj' in name:
      return a.reshape(-1, head_numel)
    rowwise = ('embed', 'lm_head', 'o_proj', 'mlp') + (
      () if whole_values else ('v_proj',)
    )
    if any(k in name for k in rowwise):
      return a.reshape(a.shape[0], -1)
    return a.reshape(1, -1)

  p = {n: np.array(a, dtype=f32) for n, a in init.items()}
  m = {n: np.zeros_like(a) for n, a in p.items()}
  v = {n: np.zeros((blocks(n, a).shape[0], 1), f32) for n, a in p.items()}
  out = []
  for t, g in enumerate(grads, start=1):
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    for n in p:
      gb = blocks(n, np.asarray(g[n], f32))
      v[n] = f32(b2) * v[n] + f32(1 - b2) * np.mean(
        gb * gb, axis=1, keepdims=True, dtype=f32
      )
      m[n] = f32(b1) * m[n] + f32(1 - b1) * np.asarray(g[n], f32)
      if not any(k in n for k in ('norm', 'ln', 'bias')):
        p[n] = p[n] * f32(1 - lr * wd)
      h = np.sqrt(v[n]) / f32(np.sqrt(bc2)) + f32(eps)
      upd = blocks(n, m[n]) * (f32(1 / bc1) / h)
      p[n] = p[n] - f32(lr) * upd.reshape(p[n].shape)
    out.append({n: a.copy() for n, a in p.items()})
  return out


# ----------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------
@pytest.fixture(scope='module')
def fixture():
  return fixture_io.load_fixture(FIXTURE_PATH)


def test_fixture_contents(fixture):
  meta = fixture['meta']
  assert meta['reference_package'] == 'adam-mini'
  assert meta['reference_version'] == '1.1.1'
  assert meta['torch_version']
  assert meta['hparams'] == dict(
    lr=1e-2,
    betas=[0.9, 0.95],
    eps=1e-8,
    weight_decay=0.1,
    dim=32,
    n_heads=4,
    n_kv_heads=2,
  )
  T = meta['num_steps']
  assert T == 10 and len(fixture['grads']) == T
  assert set(fixture['params']) == {'neuron', 'whole'}
  assert os.path.getsize(FIXTURE_PATH) < 1_000_000
  shapes = {n: a.shape for n, a in fixture['init'].items()}
  assert shapes['model.embed_tokens.weight'] == (40, 32)
  assert shapes['lm_head.weight'] == (40, 32)
  assert shapes['model.layers.1.self_attn.q_proj.weight'] == (32, 32)
  assert shapes['model.layers.1.self_attn.k_proj.weight'] == (16, 32)
  assert shapes['model.layers.1.self_attn.v_proj.weight'] == (16, 32)
  assert shapes['model.layers.1.self_attn.o_proj.weight'] == (32, 32)
  assert shapes['model.layers.0.mlp.down_proj.weight'] == (32, 48)
  assert shapes['model.norm.weight'] == (32,)
  for traj in ('neuron', 'whole'):
    for step in fixture['params'][traj]:
      assert all(np.all(np.isfinite(a)) for a in step.values())
  # The two variants differ exactly on v_proj.
  for r_n, r_w in zip(fixture['params']['neuron'], fixture['params']['whole']):
    for n in r_n:
      assert np.array_equal(r_n[n], r_w[n]) == ('v_proj' not in n), n
  # Gradients are real and not degenerate: every leaf gets a nonzero gradient.
  for g in fixture['grads']:
    assert all(np.any(a != 0) for a in g.values())


def test_torch_to_flax_layout(fixture):
  init = fixture['init']
  tree = to_flax_tree(init)
  assert set(tree) == {'model', 'lm_head'}
  assert set(tree['model']) == {'embed_tokens', 'layers', 'norm'}
  assert set(tree['model']['layers']) == {'0', '1'}
  layer = tree['model']['layers']['0']
  assert set(layer) == {
    'self_attn',
    'mlp',
    'input_layernorm',
    'post_attention_layernorm',
  }
  assert tree['model']['embed_tokens']['embedding'].shape == (40, 32)
  assert tree['lm_head']['kernel'].shape == (32, 40)
  assert layer['self_attn']['q_proj']['kernel'].shape == (32, 32)
  assert layer['self_attn']['k_proj']['kernel'].shape == (32, 16)
  assert layer['self_attn']['v_proj']['kernel'].shape == (32, 16)
  assert layer['self_attn']['o_proj']['kernel'].shape == (32, 32)
  assert layer['mlp']['gate_proj']['kernel'].shape == (32, 48)
  assert layer['mlp']['up_proj']['kernel'].shape == (32, 48)
  assert layer['mlp']['down_proj']['kernel'].shape == (48, 32)
  assert layer['input_layernorm']['weight'].shape == (32,)
  assert tree['model']['norm']['weight'].shape == (32,)
  np.testing.assert_array_equal(
    layer['self_attn']['k_proj']['kernel'],
    init['model.layers.0.self_attn.k_proj.weight'].T,
  )
  back = from_flax_tree(tree)
  assert set(back) == set(init)
  for n in init:
    np.testing.assert_array_equal(back[n], init[n])


@pytest.mark.parametrize('traj', ['neuron', 'whole'])
def test_numpy_rederivation_matches_fixture(fixture, traj):
  """Sanity check of the fixture (and of our reading of the reference), no torch needed."""
  whole = fixture['meta']['trajectories'][traj]['reference_whole_values']
  mine = numpy_reference_trajectory(
    fixture['meta'], fixture['init'], fixture['grads'], whole
  )
  res = compare_trajectories(fixture['params'][traj], mine)
  PARITY_REPORT[f'numpy-rederivation/{traj}'] = res
  print('\n' + _fmt(f'numpy re-derivation vs fixture/{traj}', res))
  assert res['ok'], _fmt(traj, res)


@pytest.mark.parametrize('traj', ['neuron', 'whole'])
def test_parity_with_reference_fixture(traj):
  res = replay_and_measure(traj)
  print('\n' + _fmt(f'optax_adam_mini vs fixture/{traj}', res))
  print(
    f'    per-step max abs err: {", ".join(f"{e:.2e}" for e in res["per_step_abs"])}'
  )
  assert res['ok'], _fmt(traj, res)
  assert res['max_abs'] < 1e-6, _fmt(traj, res)


def test_fixture_discriminates_value_blocks(fixture):
  """Negative control: the wrong v_proj partition is caught by the tolerance."""
  ours = replay_ours(
    fixture['meta'], fixture['init'], fixture['grads'], 'neuron'
  )
  res = compare_trajectories(fixture['params']['whole'], ours)
  PARITY_REPORT['negative-control/neuron-vs-whole'] = res
  print('\n' + _fmt("negative control: ours 'neuron' vs fixture/whole", res))
  assert not res['ok']
  assert 'v_proj' in res['worst'][1]


@pytest.mark.parametrize('traj', ['neuron', 'whole'])
def test_live_against_torch(traj):
  pytest.importorskip('torch')
  pytest.importorskip('adam_mini')
  import torch

  from reference import make_reference_fixtures as mrf

  seed = 1234
  torch.manual_seed(seed)
  init_t = mrf.init_params(seed)
  # Full float32 gradients here (no bf16 rounding), computed at the current params.
  grads, ref = mrf.run_reference(
    init_t, tokens=mrf.make_tokens(seed), whole_values=(traj == 'whole')
  )
  meta = dict(
    hparams=dict(
      lr=mrf.HPARAMS['lr'],
      betas=list(mrf.HPARAMS['betas']),
      eps=mrf.HPARAMS['eps'],
      weight_decay=mrf.HPARAMS['weight_decay'],
      dim=mrf.DIM,
      n_heads=mrf.N_HEADS,
      n_kv_heads=mrf.N_KV_HEADS,
    )
  )
  init = {n: t.numpy() for n, t in init_t.items()}
  ours = replay_ours(
    meta, init, grads, 'whole' if traj == 'whole' else 'neuron'
  )
  res = compare_trajectories(ref, ours)
  PARITY_REPORT[f'live/{traj}'] = res
  print('\n' + _fmt(f'optax_adam_mini vs live torch/{traj}', res))
  assert res['ok'], _fmt(traj, res)
  assert res['max_abs'] < 1e-6, _fmt(traj, res)


if __name__ == '__main__':
  for traj in ('neuron', 'whole'):
    print(_fmt(f'optax_adam_mini vs fixture/{traj}', replay_and_measure(traj)))

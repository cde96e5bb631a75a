"""Nothing is lost across an Orbax checkpoint, a fresh process or a new mesh.

* ``test_restart_in_fresh_process_is_bit_identical``: params plus the state of
  ``optax.chain(clip_by_global_norm, adam_mini(schedule, ...))``, float32 and
  bfloat16 ``mu_dtype``, saved mid-run with Orbax; a new Python process
  (``tests/_support/checkpoint_worker.py``) restores and continues; its params and state
  are bit-identical to the uninterrupted run's.
* ``test_restore_onto_smaller_mesh``: saved from an 8-device ``(data, model)``
  mesh, restored with :func:`optax_adam_mini.state_shardings` onto 4 devices
  and onto one, in a fresh process that has only 4 devices; the
  continuation matches the uninterrupted 8-device run to float32 round-off
  (reductions over sharded axes may sum in another order).
* ``test_nnx_optimizer_state_roundtrip``: ``nnx.Optimizer`` state saved with
  ``nnx.state`` and restored with ``nnx.update`` into a fresh model and
  optimizer continues bit-identically.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import optax_adam_mini as am
from _support import REPO_ROOT, worker_env
from _support import checkpoint_worker as worker

SAVE_AT = 7  # the checkpoint's step: mid warmup-cosine schedule
CONTINUE = 8  # steps run after it


def _run_worker(jobs, tmp_path, num_devices: int = 8):
  """Runs the jobs in a fresh Python process with ``num_devices`` devices."""
  jobs_path = tmp_path / f'jobs_{num_devices}.json'
  jobs_path.write_text(json.dumps(jobs))
  result = subprocess.run(
    [sys.executable, '-m', '_support.checkpoint_worker', str(jobs_path)],
    cwd=REPO_ROOT,
    env=worker_env(num_devices),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, (
    f'worker failed:\n{result.stdout}\n{result.stderr[-5000:]}'
  )
  return result


def _save(path, params, opt_state):
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(
      os.path.abspath(path), {'params': params, 'opt_state': opt_state}
    )


def _tree_from_npz(path):
  with np.load(path) as data:
    return {key: data[key] for key in data.files}


def _assert_bit_identical(expected_tree, npz_path):
  expected = {}
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(expected_tree)[0]:
    expected[jax.tree_util.keystr(key_path)] = worker._bits(leaf)
  got = _tree_from_npz(npz_path)
  got_keys = {k[len('bits') :] for k in got if k.startswith('bits')}
  assert got_keys == set(expected)
  differing = [
    key
    for key, bits in expected.items()
    if bits.dtype != got['bits' + key].dtype
    or not np.array_equal(bits, got['bits' + key])
  ]
  assert not differing, f'leaves not bit-identical: {differing}'
  return len(expected)


@pytest.mark.slow
def test_restart_in_fresh_process_is_bit_identical(tmp_path):
  jobs, expected = [], {}
  for mu_dtype in ('float32', 'bfloat16'):
    tx = worker.make_tx(mu_dtype)
    step = worker.make_step(tx)
    params = worker.init_params()
    opt_state = tx.init(params)
    params, opt_state = worker.run(step, params, opt_state, 0, SAVE_AT)
    ckpt = tmp_path / f'ckpt_{mu_dtype}'
    _save(ckpt, params, opt_state)
    # The uninterrupted run goes on from the live arrays.
    params, opt_state = worker.run(step, params, opt_state, SAVE_AT, CONTINUE)
    mu = opt_state[1][0].mu
    assert all(
      leaf.dtype == jnp.dtype(mu_dtype) for leaf in jax.tree.leaves(mu)
    )
    expected[mu_dtype] = {'params': params, 'opt_state': opt_state}
    jobs.append(
      {
        'ckpt': str(ckpt),
        'start': SAVE_AT,
        'steps': CONTINUE,
        'mu_dtype': mu_dtype,
        'mesh': None,
        'out': str(tmp_path / f'out_{mu_dtype}.npz'),
      }
    )
  _run_worker(jobs, tmp_path)
  for job in jobs:
    n = _assert_bit_identical(expected[job['mu_dtype']], job['out'])
    print(f'{job["mu_dtype"]} mu: {n} leaves bit-identical after restart')


def test_checkpoint_holds_the_chain_state(tmp_path):
  """In-process restore gives back the exact state, types and structure."""
  tx = worker.make_tx('bfloat16')
  params = worker.init_params()
  opt_state = tx.init(params)
  params, opt_state = worker.run(worker.make_step(tx), params, opt_state, 0, 3)
  _save(tmp_path / 'ckpt', params, opt_state)
  abstract = jax.eval_shape(
    lambda: {'params': params, 'opt_state': tx.init(params)}
  )
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(
      os.path.abspath(tmp_path / 'ckpt'), abstract
    )
  want = {'params': params, 'opt_state': opt_state}
  assert jax.tree.structure(restored) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(want)):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(worker._bits(a), worker._bits(b))
  state = restored['opt_state'][1][0]
  assert isinstance(state, am.ScaleByAdamMiniState)
  assert int(state.count) == 3
  # v is stored reduced: one float32 per block, never the full leaf.
  v_q = state.v['model']['layers']['0']['self_attn']['q_proj']['kernel']
  assert v_q.dtype == jnp.float32 and v_q.size == worker.HEADS


# nnx.Optimizer ---------------------------------------------------------------


class _TinyModel(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Embed(16, 8, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(
      num_heads=2, in_features=8, qkv_features=8, decode=False, rngs=rngs
    )
    self.norm = nnx.RMSNorm(8, rngs=rngs)
    self.mlp = nnx.Linear(8, 16, rngs=rngs)
    self.lm_head = nnx.Linear(16, 16, rngs=rngs)

  def __call__(self, tokens):
    x = self.embed(tokens)
    x = x + self.attn(x, x)
    return self.lm_head(jax.nn.gelu(self.mlp(self.norm(x))))


def _nnx_tx():
  return optax.chain(
    optax.clip_by_global_norm(1.0),
    am.adam_mini(optax.cosine_decay_schedule(1e-2, 50), mu_dtype=jnp.bfloat16),
  )


@nnx.jit
def _nnx_step(model, optimizer, tokens):
  def loss(model):
    logits = model(tokens)
    return optax.softmax_cross_entropy_with_integer_labels(
      logits[:, :-1], tokens[:, 1:]
    ).mean()

  grads = nnx.grad(loss)(model)
  optimizer.update(model, grads)


def _nnx_run(model, optimizer, start, steps):
  for i in range(start, start + steps):
    _nnx_step(model, optimizer, worker.batch(i))


def test_nnx_optimizer_state_roundtrip(tmp_path):
  model = _TinyModel(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, _nnx_tx(), wrt=nnx.Param)
  _nnx_run(model, optimizer, 0, 4)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(
      os.path.abspath(tmp_path / 'nnx'),
      {'model': nnx.state(model), 'optimizer': nnx.state(optimizer)},
    )

  # A fresh model and optimizer, built from another seed and overwritten.
  fresh = _TinyModel(nnx.Rngs(1))
  fresh_optimizer = nnx.Optimizer(fresh, _nnx_tx(), wrt=nnx.Param)
  abstract = jax.eval_shape(
    lambda: {'model': nnx.state(fresh), 'optimizer': nnx.state(fresh_optimizer)}
  )
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(os.path.abspath(tmp_path / 'nnx'), abstract)
  nnx.update(fresh, restored['model'])
  nnx.update(fresh_optimizer, restored['optimizer'])

  def leaves(m, o):
    return jax.tree.leaves((nnx.state(m), nnx.state(o)))

  for a, b in zip(leaves(model, optimizer), leaves(fresh, fresh_optimizer)):
    np.testing.assert_array_equal(worker._bits(a), worker._bits(b))
  mini = nnx.state(fresh_optimizer)['opt_state'][1][0]
  assert int(mini.count.get_value()) == 4

  _nnx_run(model, optimizer, 4, 4)
  _nnx_run(fresh, fresh_optimizer, 4, 4)
  want, got = leaves(model, optimizer), leaves(fresh, fresh_optimizer)
  assert len(want) == len(got) > 10
  for a, b in zip(want, got):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(worker._bits(a), worker._bits(b))


# Meshes ----------------------------------------------------------------------


@pytest.mark.slow
def test_restore_onto_smaller_mesh(tmp_path):
  """8-device save, 4- and 1-device restores, each in a fresh process."""
  assert len(jax.devices()) == 8, 'conftest gives the tests 8 CPU devices'
  mesh = worker.make_mesh(8)
  tx = worker.make_tx('float32')
  step = worker.make_step(tx)
  params = worker.init_params()
  params = jax.device_put(params, worker.param_shardings(params, mesh))
  shardings = am.state_shardings(tx, params)
  opt_state = jax.jit(tx.init, out_shardings=shardings)(params)
  # The state really is spread over the mesh, v included.
  v_q = opt_state[1][0].v['model']['layers']['0']['self_attn']['q_proj']
  v_q = v_q['kernel']
  assert v_q.sharding.spec != jax.sharding.PartitionSpec()
  assert opt_state[1][0].mu['lm_head']['kernel'].sharding.spec == (
    jax.sharding.PartitionSpec('data', 'model')
  )
  params, opt_state = worker.run(step, params, opt_state, 0, SAVE_AT)
  ckpt = tmp_path / 'ckpt_mesh8'
  _save(ckpt, params, opt_state)
  params, opt_state = worker.run(step, params, opt_state, SAVE_AT, CONTINUE)
  want = {'params': params, 'opt_state': opt_state}

  # One fresh process that has only 4 devices restores twice: onto a (2, 2)
  # mesh of all four, and onto a (1, 1) mesh of one.
  jobs = [
    {
      'ckpt': str(ckpt),
      'start': SAVE_AT,
      'steps': CONTINUE,
      'mu_dtype': 'float32',
      'mesh': devices,
      'out': str(tmp_path / f'out_mesh{devices}.npz'),
    }
    for devices in (4, 1)
  ]
  _run_worker(jobs, tmp_path, num_devices=4)
  for devices, job in zip((4, 1), jobs):
    out = job['out']
    got = _tree_from_npz(out)
    worst = 0.0
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(want)[0]:
      key = jax.tree_util.keystr(key_path)
      expected = np.asarray(leaf).astype(np.float64)
      assert str(got['dtype' + key]) == str(leaf.dtype), key
      np.testing.assert_allclose(
        got['value' + key], expected, rtol=1e-4, atol=1e-6, err_msg=key
      )
      scale = np.maximum(np.abs(expected), 1e-3)
      worst = max(
        worst, float(np.max(np.abs(got['value' + key] - expected) / scale))
      )
    print(f'8 -> {devices} devices: max relative difference {worst:.2e}')

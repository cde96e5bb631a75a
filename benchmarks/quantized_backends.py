"""Does the accelerator quantize ``m`` as the CPU does? The same steps on both.

A quantized ``m`` is integer arithmetic on top of one float EMA per
coordinate, ``b1 * m + (1 - b1) * g``: given the same gradients, its codes
depend only on the hash noise (exact), the group maxima (exact) and that
EMA's rounding. So two backends must agree on almost every code; a fusion
that indexes the noise or the groups wrongly shows as a large share of codes
that differ. This script runs the convergence study's optimizer (the example
trainer's ``make_optimizer``: clipping, schedule, weight decay, Adam-mini with
each ``--mu-dtypes``) for ``--steps`` steps from the same weights and
gradients (drawn with NumPy: a slowly drifting signal plus noise, with a
scale per leaf) on the default backend and on the CPU, then compares:

* per leaf of the state and of the params, integer leaves (codes) by the
  share of elements that differ, float leaves by the largest difference
  over the largest magnitude;
* on each backend, each quantized run's last update against float32 ``m``'s
  (``|u - u_f32| / |u_f32|``, and its projection on ``u_f32``: the bias).

From the repository root (a GPU machine; on a CPU-only one both runs are
the CPU)::

    python -m benchmarks.quantized_backends --preset study-10m --steps 20 \\
        --out OUT/quantized_backends.json
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import numpy as np
import optax

from benchmarks import scan_llama
from examples.lm import model, optimizer, presets


def gradient_stream(shapes, steps: int, seed: int = 0):
  """``steps`` gradient trees (float32 NumPy): per leaf a random scale, a
  signal that drifts as an AR(1) with correlation 0.99, plus fresh noise."""
  rng = np.random.default_rng(seed)
  leaves, treedef = jax.tree.flatten(shapes)
  scales = [np.exp(rng.standard_normal()) * 1e-3 for _ in leaves]
  signal = [rng.standard_normal(x.shape, np.float32) for x in leaves]
  for _ in range(steps):
    out = []
    for i, x in enumerate(leaves):
      signal[i] = 0.99 * signal[i] + 0.14 * rng.standard_normal(
        x.shape, np.float32
      )
      noise = rng.standard_normal(x.shape, np.float32)
      out.append((scales[i] * (0.3 * signal[i] + noise)).astype(np.float32))
    yield jax.tree.unflatten(treedef, out)


def run(preset: str, mu_dtype: str, steps: int, device) -> dict:
  """Params, state and last updates after ``steps`` steps on ``device``."""
  model_cfg, train_cfg = presets.from_preset(
    preset, name='adam_mini', mu_dtype=mu_dtype
  )
  shapes = model.abstract_params(model_cfg)
  rng = np.random.default_rng(1)
  params = jax.tree.map(
    lambda s: (0.02 * rng.standard_normal(s.shape)).astype(s.dtype), shapes
  )
  tx = optimizer.make_optimizer(train_cfg.opt, model_cfg, shapes)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates

  params = jax.device_put(params, device)
  state = jax.jit(tx.init)(params)
  updates = None
  for grads in gradient_stream(shapes, steps):
    params, state, updates = step(params, state, jax.device_put(grads, device))
  return jax.device_get({'params': params, 'state': state, 'updates': updates})


def _path(path) -> str:
  return jax.tree_util.keystr(path, simple=True, separator='/')


def compare_trees(a, b) -> dict:
  """Per leaf of ``a``/``b`` (same structure): ``{'differ': share}`` for
  integer leaves, ``{'rel': max |a - b| / max |a|}`` for float ones."""
  out = {}
  for (path, x), y in zip(
    jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)
  ):
    x, y = np.asarray(x), np.asarray(y)
    if x.size == 0:
      continue
    if np.issubdtype(x.dtype, np.integer):
      out[_path(path)] = {'differ': float(np.mean(x != y)), 'size': x.size}
    else:
      x, y = x.astype(np.float64), y.astype(np.float64)
      top = float(np.max(np.abs(x))) or 1.0
      out[_path(path)] = {'rel': float(np.max(np.abs(x - y))) / top}
  return out


def update_error(updates, reference) -> dict:
  """The last update against float32 ``m``'s: relative error and bias."""
  u = np.concatenate([np.ravel(x) for x in jax.tree.leaves(updates)])
  f = np.concatenate([np.ravel(x) for x in jax.tree.leaves(reference)])
  u, f = u.astype(np.float64), f.astype(np.float64)
  return {
    'relative_error': float(np.linalg.norm(u - f) / np.linalg.norm(f)),
    'bias': float(np.dot(u - f, f) / np.dot(f, f)),
  }


def compare(preset: str, mu_dtypes, steps: int) -> dict:
  accelerator = jax.devices()[0]
  cpu = jax.devices('cpu')[0]
  out = {
    'env': scan_llama.env_info(),
    'preset': preset,
    'steps': steps,
    'backends': [str(accelerator), str(cpu)],
    'runs': {},
  }
  reference = {}
  for mu in ('float32', *mu_dtypes):
    runs = {name: run(preset, mu, steps, d) for name, d in
            (('accelerator', accelerator), ('cpu', cpu))}  # fmt: skip
    if mu == 'float32':
      reference = {k: r['updates'] for k, r in runs.items()}
    per_leaf = compare_trees(runs['accelerator'], runs['cpu'])
    codes = {k: v for k, v in per_leaf.items() if 'differ' in v}
    floats = [v['rel'] for v in per_leaf.values() if 'rel' in v]
    out['runs'][mu] = {
      'codes_differ_max': max((v['differ'] for v in codes.values()), default=0),
      'float_rel_max': max(floats, default=0.0),
      'per_leaf': per_leaf,
      'vs_float32_m': {
        k: update_error(r['updates'], reference[k]) for k, r in runs.items()
      },
    }
  return out


def table(out: dict) -> str:
  lines = [
    f'{out["preset"]}, {out["steps"]} steps, {out["backends"][0]} vs CPU',
    'mu        codes differing (worst leaf)  float rel diff (worst)  '
    'update vs f32 m: rel err / bias (accelerator; cpu)',
  ]
  for mu, r in out['runs'].items():
    e = r['vs_float32_m']
    lines.append(
      f'{mu:9s} {r["codes_differ_max"]:28.2e}  {r["float_rel_max"]:22.2e}  '
      f'{e["accelerator"]["relative_error"]:.4f} / '
      f'{e["accelerator"]["bias"]:+.5f}; {e["cpu"]["relative_error"]:.4f} / '
      f'{e["cpu"]["bias"]:+.5f}'
    )
  return '\n'.join(lines)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--preset', default='study-10m')
  ap.add_argument('--steps', type=int, default=20)
  ap.add_argument('--mu-dtypes', nargs='+', default=['int8', 'int4'])
  ap.add_argument('--out', required=True, help='the JSON to write')
  args = ap.parse_args(argv)
  out = compare(args.preset, args.mu_dtypes, args.steps)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(out, f, indent=1)
  print(table(out))
  return out


if __name__ == '__main__':
  main()

"""Table 2: time of one optimizer step (``update`` + ``apply_updates``).

For Llama-shaped float32 parameter trees (one subtree per layer, Hugging Face
names) from 125M to 7B parameters: the jitted, buffer-donating step
``params, state = step(params, state, grads)`` for ``optax.adamw`` (float32
and bf16 ``mu_dtype``), ``adam_mini`` (float32 and bf16 ``mu_dtype``) and
``optax.adafactor``, medians over many repetitions after warm-up, with the
steps queued back to back as in a training loop (device time; the time of one
step at a time, host dispatch included, is kept too). In the same
run it measures the card's streaming bandwidth (a large ``y = a * x + b``,
counting bytes read plus written) and reports each optimizer against its
floor: the bytes it must move per parameter over that bandwidth.

    python benchmarks/update_step.py --out OUT [--sizes 125M,1.1B] [--budget-s 300]
    python benchmarks/update_step.py --hlo OUT/hlo   # dump compiled HLO + fusion stats
    python benchmarks/update_step.py --variants --sizes 1.1B --out OUT
        # the library's step against other formulations (VARIANTS), with
        # kernel counts and the compiled HLO

Writes ``update_step.json``; ``benchmarks/plots.py`` draws the figure.
"""

from __future__ import annotations

import argparse
import collections
import functools
import gc
import json
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import lm  # noqa: E402

SIZES = [
  '1.1B',
  '7B',
  '3.4B',
  '1.9B',
  '350M',
  '125M',
]  # most important first (time guard)
OPTS = ['adamw', 'adamw_bf16', 'adam_mini', 'adam_mini_bf16', 'adafactor']

# Bytes each optimizer must move per float32 parameter (read + written):
#   adamw:          g, m, v, p read; m, v, p written            = 7 x 4
#   adamw_bf16:     g, p read (4), m read (2), v read (4); m (2), v, p written
#   adam_mini:      g, m, p read; m, p written; g read again for the block
#                   means (v itself is negligible)               = 6 x 4
#   adam_mini_bf16: g x2, p read (4 each), m read (2); m (2), p written (4)
#   adafactor:      g read twice (row/col means, then the update), p read,
#                   p written (its factored state is negligible) = 4 x 4
FLOOR_BYTES = {
  'adamw': 28,
  'adamw_bf16': 24,
  'adam_mini': 24,
  'adam_mini_bf16': 20,
  'adafactor': 16,
}


def bandwidth(n_bytes=8 * 2**30, reps=30):
  """Streaming bandwidth (bytes read + written per second) of y = a*x + b."""
  n = n_bytes // 4 // 2
  x = jax.random.normal(jax.random.key(1), (n,), jnp.float32)
  f = jax.jit(lambda x: 1.0001 * x + 0.5)
  y = f(x).block_until_ready()
  ts = []
  for _ in range(reps):
    t0 = time.perf_counter()
    y = f(x)
    y.block_until_ready()
    ts.append(time.perf_counter() - t0)
  del x, y
  t = float(np.median(ts))
  return 2 * n * 4 / t, t


def make_step(tx):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1))


def hlo_stats(text: str, n_leaves: int) -> dict:
  """Fusion and kernel counts of a compiled module (entry computation)."""
  entry = text[text.find('ENTRY') :]
  fusions = re.findall(r'= [^=]*? fusion\(', entry)
  kinds = collections.Counter(re.findall(r'kind=(k\w+)', entry))
  # Passes over each gradient: fusions that take the gradient parameter.
  params = dict(
    re.findall(r'(%?[\w.\-]+) = f32\[[^\]]*\][^=]*parameter\((\d+)\)', entry)
  )
  return {
    'fusions': len(fusions),
    'fusion_kinds': dict(kinds),
    'custom_calls': entry.count('custom-call('),
    'leaves': n_leaves,
    'fusions_per_leaf': len(fusions) / max(n_leaves, 1),
    'n_params_in_entry': len(params),
  }


def grad_passes(text: str, first_grad: int, n_leaves: int) -> dict:
  """How many kernels read each gradient buffer (entry parameters)."""
  entry = text[text.find('ENTRY') :]
  names = {}
  for m in re.finditer(r'(%?[\w.\-]+) = \S+ parameter\((\d+)\)', entry):
    names[int(m.group(2))] = m.group(1)
  # The operand list follows the opcode; a tuple-shaped result type also
  # starts with '(' but has no opcode before it.
  call = re.compile(r'\s[a-z][\w\-]*\(([^)]*)\)')
  operands = []
  for line in entry.splitlines():
    if ' = ' in line and 'parameter(' not in line:
      m = call.search(line.split(' = ', 1)[1])
      if m:  # operands from the sixth on carry an /*index=N*/ comment
        ops = re.sub(r'/\*.*?\*/', '', m.group(1))
        operands.append({x.strip() for x in ops.split(',')})
  counts = [
    sum(names[i] in ops for ops in operands)
    for i in range(first_grad, first_grad + n_leaves)
    if i in names
  ]
  return dict(collections.Counter(counts))


STACKED = False
PIPELINE_ROUNDS = 5


def bench_one(cfg, opt, reps, key):
  shapes = lm.llama_shapes(cfg, stacked=STACKED)
  tx = lm.make_tx(opt, 1e-4, num_heads=cfg.n_heads, num_kv_heads=cfg.n_kv_heads)
  params = lm.init_from_shapes(shapes, key)
  grads = lm.init_from_shapes(shapes, jax.random.fold_in(key, 1), std=1e-3)
  state = jax.jit(tx.init)(params)
  state_bytes = lm.tree_bytes(state)
  step = make_step(tx)
  t0 = time.perf_counter()
  compiled = step.lower(params, state, grads).compile()
  compile_s = time.perf_counter() - t0
  stats = hlo_stats(compiled.as_text(), len(jax.tree.leaves(shapes)))
  for _ in range(3):
    params, state = compiled(params, state, grads)
  jax.block_until_ready((params, state))
  # Per call: dispatch of every buffer plus the device work, one at a time.
  per_call = []
  for _ in range(reps):
    t0 = time.perf_counter()
    params, state = compiled(params, state, grads)
    jax.block_until_ready(params)
    per_call.append(time.perf_counter() - t0)
  # Pipelined, as in a training loop: steps queued back to back, so the host
  # dispatch overlaps the device work and the time is the device's.
  pipelined = []
  for _ in range(PIPELINE_ROUNDS):
    t0 = time.perf_counter()
    for _ in range(reps):
      params, state = compiled(params, state, grads)
    jax.block_until_ready(params)
    pipelined.append((time.perf_counter() - t0) / reps)
  finite = bool(jnp.isfinite(jax.tree.leaves(params)[0]).all())
  del params, state, grads, compiled
  gc.collect()
  return {
    'median_s': float(np.median(pipelined)),
    'per_call_median_s': float(np.median(per_call)),
    'min_s': float(np.min(pipelined)),
    'p90_s': float(np.percentile(pipelined, 90)),
    'reps': reps,
    'compile_s': compile_s,
    'state_bytes': state_bytes,
    'finite': finite,
    'hlo': stats,
  }


def dump_hlo(outdir, size='125M'):
  """Compiled HLO of each optimizer's step on one size, with fusion stats."""
  os.makedirs(outdir, exist_ok=True)
  cfg = lm.LLAMA[size]
  shapes = lm.llama_shapes(cfg, stacked=False)
  n = len(jax.tree.leaves(shapes))
  out = {}
  for opt in OPTS:
    tx = lm.make_tx(
      opt, 1e-4, num_heads=cfg.n_heads, num_kv_heads=cfg.n_kv_heads
    )
    state = jax.eval_shape(tx.init, shapes)
    n_state = len(jax.tree.leaves(state))
    text = make_step(tx).lower(shapes, state, shapes).compile().as_text()
    with open(os.path.join(outdir, f'{opt}_{size}.hlo.txt'), 'w') as f:
      f.write(text)
    st = hlo_stats(text, n)
    st['grad_read_by_n_kernels'] = grad_passes(text, n + n_state, n)
    out[opt] = st
  return out


def _second_moment_folded(g, v, plan, decay):
  """``decay * v + (1 - decay) * mean(g**2)`` as a single reduction.

  ``v`` enters the sum as one more term at each block's first coordinate, so
  no separate EMA kernel follows the reduction. Plain and head blocks only.
  """
  g = g.astype(jnp.float32)
  if plan.reduce_axes is None:
    return (1 - decay) * g**2 + decay * v
  size = int(np.prod([plan.view_shape[a] for a in plan.reduce_axes]))
  squares = g**2 * ((1 - decay) / size)

  def add_at_block_start(x, v, axes):
    first = True
    for axis in axes:
      shape = [1] * x.ndim
      shape[axis] = x.shape[axis]
      first = first & (jax.lax.broadcasted_iota(jnp.int32, shape, axis) == 0)
    return x + jnp.where(first, decay * v, 0.0)

  split = plan.head_axis
  if split is None:
    terms = add_at_block_start(squares, v, plan.reduce_axes)
    return jnp.sum(terms, axis=plan.reduce_axes, keepdims=True)
  other = tuple(
    a if a < split else a - 1
    for a in plan.reduce_axes
    if a not in (split, split + 1)
  )
  heads, head_dim = plan.view_shape[split : split + 2]
  spread = v.shape[: split + 1] + (head_dim,) + v.shape[split + 2 :]
  v = jnp.where(
    jax.lax.broadcasted_iota(jnp.int32, spread, split + 1) == 0, v, 0.0
  ).reshape(v.shape[:split] + (heads * head_dim,) + v.shape[split + 2 :])
  sums = jnp.sum(add_at_block_start(squares, v, other), other, keepdims=True)
  sums = sums.reshape(
    sums.shape[:split] + (heads, head_dim) + sums.shape[split + 1 :]
  )
  return jnp.sum(sums, axis=split + 1, keepdims=True)


def _update_leaf_folded(g, mu, v, plan, count, b1, b2, eps, eps_root):
  """The leaf step with ``v``'s EMA folded into the block reduction.

  Measured on one H200 (``update_step_variants.json``, run B): 543 kernels for
  the 1.1B per-layer tree against the library's 671, but 8.90 ms against 7.71,
  because XLA then emits the large reductions as Triton fusions rather than its
  native reduction kernels.
  """
  from optax_adam_mini import block as block_lib

  mu_new = optax.tree.update_moment(g, mu, b1, 1)
  v_new = _second_moment_folded(g, v, plan, b2)
  mu_hat = optax.tree.bias_correction(mu_new, b1, count)
  v_hat = optax.tree.bias_correction(v_new, b2, count)
  denominator = jnp.sqrt(v_hat + eps_root) + eps
  update = block_lib.divide_by_blocks(mu_hat, denominator, plan)
  return update.astype(g.dtype), mu_new.astype(mu.dtype), v_new


def _update_leaves_batched_ema(
  grads, mus, vs, plans, count, b1, b2, eps, eps_root, barrier=False
):
  """Every leaf's step, with all leaves' block arrays as one vector.

  The block means of all leaves are concatenated, so that one kernel computes
  every ``v`` and denominator, then split back per leaf. Measured on one H200
  (``update_step_variants.json``, run C) against the library's one small
  kernel per leaf, at 1.1B per layer: 915 kernels against 671, since XLA adds
  a kernel per leaf for each slice and for the division by the block size, and
  fuses no reductions across leaves; 7.76 ms against 7.65 (1.01x), 0.98x with
  bf16 momentum. At 6.7B: 39.59 ms against 40.23 (0.98x; 1458 kernels against
  1035). Not adopted: mixed, and under a mesh the concatenation moves the
  ``v`` shardings off those ``init`` gives. With ``barrier`` the concatenated
  inputs sit behind an ``optimization_barrier`` (916 kernels, 7.74 ms). For
  trees whose leaves all have reduced blocks (the Llama trees).
  """
  from optax_adam_mini import block as block_lib

  means = [block_lib.block_mean_square(g, p) for g, p in zip(grads, plans)]
  mean_square = jnp.concatenate([m.ravel() for m in means])
  v = jnp.concatenate([v.ravel() for v in vs])
  if barrier:
    mean_square, v = jax.lax.optimization_barrier((mean_square, v))
  v_new = (1 - b2) * mean_square + b2 * v
  v_hat = optax.tree.bias_correction(v_new, b2, count)
  denominator = jnp.sqrt(v_hat + eps_root) + eps
  offsets = np.cumsum([v.size for v in vs])[:-1]
  new_vs = [x.reshape(v.shape) for x, v in zip(jnp.split(v_new, offsets), vs)]
  denominators = jnp.split(denominator, offsets)
  updates, new_mus = [], []
  for g, mu, d, v, plan in zip(grads, mus, denominators, vs, plans):
    mu_new = optax.tree.update_moment(g, mu, b1, 1)
    mu_hat = optax.tree.bias_correction(mu_new, b1, count)
    update = block_lib.divide_by_blocks(mu_hat, d.reshape(v.shape), plan)
    updates.append(update.astype(g.dtype))
    new_mus.append(mu_new.astype(mu.dtype))
  return updates, new_mus, new_vs


_LIBRARY = {}  # the library's functions that variants replace, by name

VARIANTS = [
  # (label, optimizer, {name in optax_adam_mini.transform: replacement})
  ('adamw', 'adamw', {}),
  ('adam_mini', 'adam_mini', {}),
  (
    'adam_mini_batched_ema',
    'adam_mini',
    {'_update_leaves': _update_leaves_batched_ema},
  ),
  (
    'adam_mini_batched_ema_barrier',
    'adam_mini',
    {
      '_update_leaves': functools.partial(
        _update_leaves_batched_ema, barrier=True
      )
    },
  ),
  ('adam_mini_folded_v', 'adam_mini', {'_update_leaf': _update_leaf_folded}),
  ('adamw_bf16', 'adamw_bf16', {}),
  ('adam_mini_bf16', 'adam_mini_bf16', {}),
  (
    'adam_mini_bf16_batched_ema',
    'adam_mini_bf16',
    {'_update_leaves': _update_leaves_batched_ema},
  ),
]


def compare_variants(args):
  """Formulations of the Adam-mini step side by side."""
  import gzip

  from optax_adam_mini import transform

  global STACKED
  STACKED = args.stacked
  out = {'env': lm.env_info(), 'stacked': STACKED, 'rows': {}}
  os.makedirs(args.out, exist_ok=True)
  names = {name for _, _, patches in VARIANTS for name in patches}
  _LIBRARY.update({name: getattr(transform, name) for name in names})
  for i, size in enumerate(args.sizes.split(',')):
    cfg = lm.LLAMA[size]
    row = out['rows'][size] = {'params': cfg.n_params()}
    for label, opt, patches in VARIANTS:
      # --opts, when given, names the variants' labels.
      if args.opts != ','.join(OPTS) and label not in args.opts.split(','):
        continue
      for name in names:
        setattr(transform, name, patches.get(name, _LIBRARY[name]))
      r = bench_one(cfg, opt, args.reps, jax.random.key(0))
      row[label] = r
      print(
        size,
        f'{label:>24}',
        f'{r["median_s"] * 1e3:8.3f} ms pipelined',
        f'{r["per_call_median_s"] * 1e3:8.3f} ms per call',
        r['hlo']['fusions'],
        r['hlo']['fusion_kinds'],
        flush=True,
      )
      if i == 0 and opt == 'adam_mini' and not STACKED:
        shapes = lm.llama_shapes(cfg, stacked=False)
        tx = lm.make_tx(
          opt, 1e-4, num_heads=cfg.n_heads, num_kv_heads=cfg.n_kv_heads
        )
        state = jax.eval_shape(tx.init, shapes)
        text = make_step(tx).lower(shapes, state, shapes).compile().as_text()
        n = len(jax.tree.leaves(shapes))
        r['hlo']['grad_read_by_n_kernels'] = grad_passes(
          text, n + len(jax.tree.leaves(state)), n
        )
        name = f'hlo_{label}_{size}_per_layer.txt.gz'
        with gzip.open(os.path.join(args.out, name), 'wt') as f:
          f.write(text)
    with open(os.path.join(args.out, 'update_step_variants.json'), 'w') as f:
      json.dump(out, f, indent=1)
  for name in names:
    setattr(transform, name, _LIBRARY[name])
  lines = ['pipelined ms (x adamw), per-call ms, fusions']
  for size, row in out['rows'].items():
    for label, _, _ in VARIANTS:
      if label not in row:
        continue
      r = row[label]
      base = row.get('adamw', r)
      lines.append(
        f'{size:>5} {label:>24} {r["median_s"] * 1e3:8.3f} '
        f'{r["median_s"] / base["median_s"]:6.3f}x '
        f'{r["per_call_median_s"] * 1e3:8.3f} {r["hlo"]["fusions"]:5d}'
      )
  print('\n'.join(lines))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--out', default='benchmarks/results')
  ap.add_argument('--sizes', default=','.join(SIZES))
  ap.add_argument('--opts', default=','.join(OPTS))
  ap.add_argument('--reps', type=int, default=30)
  ap.add_argument('--budget-s', type=float, default=330)
  ap.add_argument(
    '--stacked',
    action='store_true',
    help='layers stacked on a leading axis (12 leaves)',
  )
  ap.add_argument(
    '--hlo',
    default=None,
    help='dump compiled HLO of the 125M step here and exit',
  )
  ap.add_argument(
    '--variants',
    action='store_true',
    help='compare formulations of the Adam-mini step (VARIANTS)',
  )
  args = ap.parse_args()
  if args.variants:
    compare_variants(args)
    return
  start = time.perf_counter()
  deadline = float(os.environ.get('BENCH_DEADLINE', 0))
  if deadline:
    args.budget_s = min(args.budget_s, deadline - time.time() - 60)
  if args.hlo:
    stats = dump_hlo(args.hlo, args.sizes.split(',')[0])
    print(json.dumps(stats, indent=1))
    return
  info = lm.env_info()
  bw, bw_t = bandwidth(8 * 2**30 if info['platform'] == 'gpu' else 2**28)
  print(
    f'bandwidth {bw / 1e12:.3f} TB/s ({bw_t * 1e3:.2f} ms per 8 GiB)',
    flush=True,
  )
  res = {
    'env': info,
    'bandwidth_Bps': bw,
    'floor_bytes_per_param': FLOOR_BYTES,
    'rows': {},
  }
  global STACKED
  STACKED = args.stacked
  res['stacked'] = STACKED
  path = os.path.join(
    args.out, 'update_step_stacked.json' if STACKED else 'update_step.json'
  )
  os.makedirs(args.out, exist_ok=True)
  for size in args.sizes.split(','):
    cfg = lm.LLAMA[size]
    n = cfg.n_params()
    row = {'params': n, 'config': cfg.__dict__}
    res['rows'][size] = row
    for opt in args.opts.split(','):
      if time.perf_counter() - start > args.budget_s:
        row[opt] = {'skipped': 'time budget'}
        continue
      try:
        r = bench_one(cfg, opt, args.reps, jax.random.key(0))
      except Exception as e:  # noqa: BLE001
        r = {'error': str(e)[:300]}
        gc.collect()
      if 'median_s' in r:
        r['floor_s'] = FLOOR_BYTES[opt] * n / bw
        r['vs_floor'] = r['median_s'] / r['floor_s']
        r['achieved_Bps'] = FLOOR_BYTES[opt] * n / r['median_s']
      row[opt] = r
      print(
        size,
        opt,
        {
          k: (round(v, 5) if isinstance(v, float) else v)
          for k, v in r.items()
          if k != 'hlo'
        },
        'fusions',
        r.get('hlo', {}).get('fusions'),
        flush=True,
      )
      with open(path, 'w') as f:
        json.dump(res, f, indent=1)
  print(table(res))


def table(res):
  lines = [
    f'bandwidth {res["bandwidth_Bps"] / 1e12:.2f} TB/s; times in ms (x = vs adamw, f = vs own floor)'
  ]
  lines.append(f'{"size":>6} ' + ' '.join(f'{o:>22}' for o in OPTS))
  for size, row in res['rows'].items():
    cells = []
    base = row.get('adamw', {}).get('median_s')
    for o in OPTS:
      r = row.get(o, {})
      if 'median_s' in r:
        x = r['median_s'] / base if base else float('nan')
        cells.append(
          f'{r["median_s"] * 1e3:8.2f} {x:5.3f}x {r["vs_floor"]:4.2f}f'
        )
      else:
        cells.append(f'{"-":>22}')
    lines.append(f'{size:>6} ' + ' '.join(f'{c:>22}' for c in cells))
  return '\n'.join(lines)


if __name__ == '__main__':
  main()

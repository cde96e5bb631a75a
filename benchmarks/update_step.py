"""Table 2: time of one optimizer step (``update`` + ``apply_updates``).

For Llama-shaped float32 parameter trees (one subtree per layer, Hugging Face
names) from 125M to 7B parameters: the jitted, buffer-donating step
``params, state = step(params, state, grads)`` for ``optax.adamw`` (float32
and bf16 ``mu_dtype``), ``adam_mini`` (float32 and bf16 ``mu_dtype``, and
quantized: ``adam_mini_int8``, ``adam_mini_int4``) and
``optax.adafactor``, medians over many repetitions after warm-up, with the
steps queued back to back as in a training loop (device time; the time of one
step at a time, host dispatch included, is kept too). In the same
run it measures the card's streaming bandwidth (a large ``y = a * x + b``,
counting bytes read plus written) and reports each optimizer against its
floor: the bytes it must move per parameter over that bandwidth.

From the repository root::

    python -m benchmarks.update_step --out OUT [--sizes 125M,1.1B] [--stacked]
    python -m benchmarks.update_step --hlo OUT/hlo  # compiled HLO + fusion stats
    python -m benchmarks.update_step --hlo OUT/hlo --sizes 1.1B \
        --opts adam_mini,adam_mini_bf16,adam_mini_int8,adam_mini_int4

Writes ``update_step.json`` (``update_step_stacked.json`` with ``--stacked``;
``--hlo``: the HLO texts and ``hlo_stats_<size>.json``);
``benchmarks/plots.py`` draws the figure. The formulations measured and not
adopted are in ``update_step_variants.py``.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import scan_llama
from optax_adam_mini.report import tree_bytes

SIZES = [
  '1.1B',
  '7B',
  '3.4B',
  '1.9B',
  '350M',
  '125M',
]  # most important first (time guard)
OPTS = [
  'adamw',
  'adamw_bf16',
  'adam_mini',
  'adam_mini_bf16',
  'adam_mini_int8',  # quantized first moment
  'adam_mini_int4',
  'adafactor',
]

# Bytes each optimizer must move per float32 parameter (read + written):
#   adamw:          g, m, v, p read; m, v, p written            = 7 x 4
#   adamw_bf16:     g, p read (4), m read (2), v read (4); m (2), v, p written
#   adam_mini:      g, m, p read; m, p written; g read again for the block
#                   means (v itself is negligible)               = 6 x 4
#   adam_mini_bf16: g x2, p read (4 each), m read (2); m (2), p written (4)
#   adafactor:      g read twice (row/col means, then the update), p read,
#                   p written (its factored state is negligible) = 4 x 4
#   adam_mini_int8: g x2 (8), p read and written (8), codes read by the
#                   reduction (the group maxima of the new m) and by the
#                   update (1 each), codes written (1); scales negligible
#   adam_mini_int4: as int8 with half-byte codes                 = 17.5
FLOOR_BYTES = {
  'adamw': 28,
  'adamw_bf16': 24,
  'adam_mini': 24,
  'adam_mini_bf16': 20,
  'adafactor': 16,
  'adam_mini_int8': 19,
  'adam_mini_int4': 17.5,
  'adam_mini_int8_linear': 19,
  'adam_mini_int8_dynamic': 19,
  'adam_mini_int4_linear': 17.5,
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


PIPELINE_ROUNDS = 5


def step_inputs(cfg, opt, key, stacked=False):
  """``(tx, params, state, grads)`` of one optimizer's step on ``cfg``'s
  tree (per layer, or ``stacked`` on a leading layer axis): random params
  and gradients, the state from ``init``."""
  shapes = scan_llama.llama_shapes(cfg, stacked=stacked)
  tx = scan_llama.make_tx(
    opt, 1e-4, num_heads=cfg.n_heads, num_kv_heads=cfg.n_kv_heads
  )
  params = scan_llama.init_from_shapes(shapes, key)
  grads = scan_llama.init_from_shapes(
    shapes, jax.random.fold_in(key, 1), std=1e-3
  )
  return tx, params, jax.jit(tx.init)(params), grads


def bench_one(cfg, opt, reps, key, stacked=False):
  """Times one optimizer's jitted step on ``cfg``'s tree (per layer, or
  ``stacked`` on a leading layer axis)."""
  shapes = scan_llama.llama_shapes(cfg, stacked=stacked)
  tx, params, state, grads = step_inputs(cfg, opt, key, stacked)
  state_bytes = tree_bytes(state)
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


def dump_hlo(outdir, size='125M', opts=OPTS, stacked=False):
  """Compiled HLO of each optimizer's step on one size, with fusion stats.

  Besides the fusion counts: how many kernels read each gradient, and the
  compiled step's temporary bytes per parameter (a float32 copy of a moment
  kept across the step would show as 4).
  """
  os.makedirs(outdir, exist_ok=True)
  cfg = scan_llama.LLAMA[size]
  shapes = scan_llama.llama_shapes(cfg, stacked=stacked)
  n = len(jax.tree.leaves(shapes))
  n_params = sum(x.size for x in jax.tree.leaves(shapes))
  out = {}
  for opt in opts:
    tx = scan_llama.make_tx(
      opt, 1e-4, num_heads=cfg.n_heads, num_kv_heads=cfg.n_kv_heads
    )
    state = jax.eval_shape(tx.init, shapes)
    n_state = len(jax.tree.leaves(state))
    compiled = make_step(tx).lower(shapes, state, shapes).compile()
    text = compiled.as_text()
    name = f'{opt}_{size}{"_stacked" if stacked else ""}.hlo.txt'
    with open(os.path.join(outdir, name), 'w') as f:
      f.write(text)
    st = hlo_stats(text, n)
    st['grad_read_by_n_kernels'] = grad_passes(text, n + n_state, n)
    temp = compiled.memory_analysis().temp_size_in_bytes
    st['temp_bytes_per_param'] = temp / n_params
    st['state_bytes_per_param'] = tree_bytes(state) / n_params
    out[opt] = st
  return out


def main(argv=None):
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
    help="dump compiled HLO of the first size's step here and exit",
  )
  args = ap.parse_args(argv)
  start = time.perf_counter()
  deadline = float(os.environ.get('BENCH_DEADLINE', 0))
  if deadline:
    args.budget_s = min(args.budget_s, deadline - time.time() - 60)
  if args.hlo:
    size = args.sizes.split(',')[0]
    stats = dump_hlo(args.hlo, size, args.opts.split(','), args.stacked)
    stats = {'env': scan_llama.env_info(), 'size': size, 'opts': stats}
    name = f'hlo_stats_{size}{"_stacked" if args.stacked else ""}.json'
    with open(os.path.join(args.hlo, name), 'w') as f:
      json.dump(stats, f, indent=1)
    print(hlo_table(stats))
    return stats
  info = scan_llama.env_info()
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
  res['stacked'] = args.stacked
  path = os.path.join(
    args.out, 'update_step_stacked.json' if args.stacked else 'update_step.json'
  )
  os.makedirs(args.out, exist_ok=True)
  for size in args.sizes.split(','):
    cfg = scan_llama.LLAMA[size]
    n = cfg.n_params()
    row = {'params': n, 'config': cfg.__dict__}
    res['rows'][size] = row
    for opt in args.opts.split(','):
      if time.perf_counter() - start > args.budget_s:
        row[opt] = {'skipped': 'time budget'}
        continue
      try:
        r = bench_one(cfg, opt, args.reps, jax.random.key(0), args.stacked)
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
  res['elapsed_s'] = time.perf_counter() - start
  with open(path, 'w') as f:
    json.dump(res, f, indent=1)
  print(table(res))
  return res


def hlo_table(stats):
  """Per optimizer: fusions, kernels reading each gradient, bytes/param."""
  lines = [
    f'compiled step, {stats["size"]} ({stats["env"]["platform"]}): '
    'fusions per leaf, gradient read by N kernels (leaves), temp and state '
    'bytes per parameter'
  ]
  for opt, st in stats['opts'].items():
    lines.append(
      f'{opt:16s} {st["fusions_per_leaf"]:6.2f} {st["grad_read_by_n_kernels"]}'
      f' temp {st["temp_bytes_per_param"]:.3f} state '
      f'{st["state_bytes_per_param"]:.3f}'
    )
  return '\n'.join(lines)


def table(res):
  lines = [
    f'bandwidth {res["bandwidth_Bps"] / 1e12:.2f} TB/s; times in ms (x = vs adamw, f = vs own floor)'
  ]
  opts = [o for o in OPTS if any(o in row for row in res['rows'].values())]
  lines.append(f'{"size":>6} ' + ' '.join(f'{o:>22}' for o in opts))
  for size, row in res['rows'].items():
    cells = []
    base = row.get('adamw', {}).get('median_s')
    for o in opts:
      r = row.get(o, {})
      if 'median_s' in r:
        x = r['median_s'] / base if base else float('nan')
        cells.append(
          f'{r["median_s"] * 1e3:8.2f} {x:5.3f}x {r["vs_floor"]:4.2f}f'
        )
      else:
        cells.append(f'{"-":>22}')
    lines.append(f'{size:>6} ' + ' '.join(f'{c:>22}' for c in cells))
  # The quantized m against bf16 m (the issue's bar: no slower).
  for size, row in res['rows'].items():
    bf16 = row.get('adam_mini_bf16', {}).get('median_s')
    ratios = [
      f'{o[10:]} {row[o]["median_s"] / bf16:.3f}x'
      for o in ('adam_mini_int8', 'adam_mini_int4')
      if bf16 and 'median_s' in row.get(o, {})
    ]
    if ratios:
      lines.append(f'{size:>6} vs adam_mini_bf16: ' + ', '.join(ratios))
  return '\n'.join(lines)


if __name__ == '__main__':
  main()

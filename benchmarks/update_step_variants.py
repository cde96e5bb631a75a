"""The Adam-mini step formulations that were measured and not adopted.

Each variant swaps one private function of ``optax_adam_mini.transform``
(``_update_leaves``: all leaves' step; ``_update_leaf``: one leaf's) for
another formulation of the same math, and times the whole optimizer step as
``update_step.py`` does, with its kernel counts and compiled HLO. BENCHMARKS.md
section 2 gives the results (``results/update_step_variants.json``) and why
none is adopted. ``tests/test_update_step_variants.py`` runs every variant on
the CPU, so that a renamed private fails there rather than on a GPU.

From the repository root::

    python -m benchmarks.update_step_variants --sizes 1.1B --out OUT [--stacked]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gzip
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import scan_llama
from benchmarks.update_step import SIZES, bench_one, grad_passes, make_step
from optax_adam_mini import block as block_lib
from optax_adam_mini import quantize, transform


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


def _float_moment_only(layout):
  """The variants predate the quantized ``m``; they take a float one only."""
  if layout is not None:
    raise ValueError('the update-step variants need a float mu_dtype')


def _update_leaf_folded(
  g, mu, v, plan, count, b1, b2, eps, eps_root, layout=None, key=None
):
  """The leaf step with ``v``'s EMA folded into the block reduction.

  Measured on one H200 (``update_step_variants.json``, run B): 543 kernels for
  the 1.1B per-layer tree against the library's 671, but 8.90 ms against 7.71,
  because XLA then emits the large reductions as Triton fusions rather than its
  native reduction kernels.
  """
  _float_moment_only(layout)
  mu_new = optax.tree.update_moment(g, mu, b1, 1)
  v_new = _second_moment_folded(g, v, plan, b2)
  mu_hat = optax.tree.bias_correction(mu_new, b1, count)
  v_hat = optax.tree.bias_correction(v_new, b2, count)
  denominator = jnp.sqrt(v_hat + eps_root) + eps
  update = block_lib.divide_by_blocks(mu_hat, denominator, plan)
  return update.astype(g.dtype), mu_new.astype(mu.dtype), v_new


def _update_leaves_batched_ema(
  grads, mus, vs, plans, count, b1, b2, eps, eps_root, layouts=None,
  keys=None, barrier=False,
):  # fmt: skip
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
  del keys  # only a quantized m rounds stochastically
  for layout in layouts or ():
    _float_moment_only(layout)
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


def _group_stats_sibling(g, m, plan, layout):
  """``quantize.group_stats`` as two plain reductions over the same groups
  (a sum of ``g**2`` and a max of ``|m|``), which XLA may fuse as siblings,
  instead of one variadic ``lax.reduce`` with a custom combiner."""
  if not layout.within_blocks:
    return quantize.group_stats(g, m, plan, layout)
  quantize.check_shards(g, layout)
  a = layout.axis + 1
  maxima = jnp.max(jnp.abs(quantize._group_view(m, layout)), axis=a)
  g2_view = jnp.square(quantize._group_view(g.astype(jnp.float32), layout))
  sums = jnp.sum(g2_view, axis=a)
  group_plan = quantize._plan_for_shape(plan, sums.shape)
  mean_of_sums = block_lib.block_mean_square(jnp.sqrt(sums), group_plan)
  mean_sq = jax.tree.map(lambda x: x / layout.group_size, mean_of_sums)
  return mean_sq, maxima


def _decode_dynamic_table(c, bits):
  """The dynamic code's magnitudes looked up in a constant table (a gather)
  rather than computed by the library's chain of selects."""
  table = jnp.asarray(quantize.dynamic_magnitudes(bits))
  magnitude = table[jnp.abs(c.astype(jnp.int32))]
  return jnp.where(c < 0, -magnitude, magnitude)


def _uniform_shared_index(key, like):
  """``quantize._uniform`` as it was until 2026-12-03: the sum of one
  ``iota * stride`` term per axis, without each leaf's key word.

  The same noise bit for bit. XLA computes each term as a small vector that
  every leaf whose groups have that shape shares, and sibling multi-output
  fusion merges those leaves' update loops through it (on Llama-2-7B
  stacked, one kernel for four attention leaves and one for the three MLP
  leaves, at 3.96 TB/s against 4.34 TB/s apart). Without mesh shardings.
  """
  index = jnp.zeros((), jnp.uint32)
  stride = 1
  for axis in reversed(range(like.ndim)):
    iota = jax.lax.broadcasted_iota(jnp.uint32, like.shape, axis)
    index = index + iota * np.uint32(stride % 2**32)
    stride *= like.shape[axis]
  return quantize._uniform_of_index(index, key)


def _uniform_flat_iota(key, like):
  """``quantize._uniform`` from one iota over the flattened leaf, reshaped:
  no per-axis vectors at all. Without mesh shardings, and for leaves under
  2**32 coordinates only (the reshape has no sharding to give the iota)."""
  index = jax.lax.iota(jnp.uint32, like.size).reshape(like.shape)
  return quantize._uniform_of_index(index, key)


_LIBRARY_LEAF_LAYOUT = quantize.leaf_layout


def _leaf_layout_last_axis(quantization, path, plan):
  """m's groups along the leaf's last (minor) axis, whatever the blocks.

  The library puts them on an axis the block averages over, so that one
  reduction gives the group maxima and the block sums of ``g**2``; for an
  ``(in, out)`` kernel with one ``v`` per output neuron that is the major
  axis, and the maxima are a column reduction that XLA runs as its own
  kernel before the encoding reads ``m`` again. Along the minor axis the
  maxima are a row reduction, the pattern XLA's GPU backend can fuse with
  the elementwise encoding that consumes it.

  Measured (session 6, one H200, BENCHMARKS.md section 5): slower, 1.43x
  bf16 ``m``'s step against the library's 1.11x. Under the reference's
  rules the minor axis of a value, attention-output or MLP kernel is not
  one its blocks average over (``within_blocks`` is False), so those leaves
  take a second reduction; where the blocks do average over it (SlimAdam's
  rules, ``adam_mini_int8_slim``) the library already groups along it.
  """
  layout = _LIBRARY_LEAF_LAYOUT(quantization, path, plan)
  if layout is None:
    return None
  last = len(layout.shape) - 1
  size = quantize._group_size(
    layout.shape[last],
    quantization.target_group_size,
    even=quantization.bits == 4,
  )
  if not size:
    return layout
  averaged = quantize._averaged_axes(plan)
  within = averaged is not None and last in averaged
  return layout._replace(axis=last, group_size=size, within_blocks=within)


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
  # Quantized m (issue 14): the library's codes, then other formulations.
  ('adam_mini_int8', 'adam_mini_int8', {}),  # the default: linear, stochastic
  ('adam_mini_int8_linear', 'adam_mini_int8_linear', {}),  # to nearest
  ('adam_mini_int8_dynamic', 'adam_mini_int8_dynamic', {}),
  (
    'adam_mini_int8_sibling',
    'adam_mini_int8_dynamic',
    {'quantize.group_stats': _group_stats_sibling},
  ),
  (
    'adam_mini_int8_table',
    'adam_mini_int8_dynamic',
    {'quantize._decode_dynamic': _decode_dynamic_table},
  ),
  (
    'adam_mini_int8_linear_sibling',
    'adam_mini_int8_linear',
    {'quantize.group_stats': _group_stats_sibling},
  ),
  # The default's noise index: shared between leaves (the library's until
  # 2026-12-03), and from one iota over the flattened leaf.
  (
    'adam_mini_int8_shared_index',
    'adam_mini_int8',
    {'quantize._uniform': _uniform_shared_index},
  ),
  (
    'adam_mini_int8_flat_iota',
    'adam_mini_int8',
    {'quantize._uniform': _uniform_flat_iota},
  ),
  (
    'adam_mini_int8_last_axis',
    'adam_mini_int8',
    {'quantize.leaf_layout': _leaf_layout_last_axis},
  ),
  ('adam_mini_int4', 'adam_mini_int4', {}),
  ('adam_mini_int4_linear', 'adam_mini_int4_linear', {}),
  # SlimAdam's blocks average v, o and MLP kernels over fan-out, the minor
  # axis of (in, out): m's groups then lie along it, so a group's maximum is
  # a row reduction, which XLA can fuse with its consumer.
  ('adam_mini_bf16_slim', 'adam_mini_bf16_slim', {}),
  ('adam_mini_int8_slim', 'adam_mini_int8_slim', {}),
]
# Variants that quantize other groups than the library's: their steps agree
# with the library's to within the quantization error, not to rounding.
OTHER_GROUPS = ('adam_mini_int8_last_axis',)

# The modules whose private functions a variant may replace: a bare name is
# one of transform's, 'quantize.NAME' one of quantize's.
_MODULES = {'transform': transform, 'quantize': quantize}


def _owner(name):
  module, _, attr = name.rpartition('.')
  return _MODULES[module or 'transform'], attr


@contextlib.contextmanager
def patched(patches):
  """The library with ``patches`` ({name: replacement}; a bare name is in
  ``optax_adam_mini.transform``, ``'quantize.NAME'`` in ``quantize``)
  swapped in, and the library's objects back afterwards. A name the library
  no longer has is an error, not a silent no-op."""
  missing = [name for name in patches if not hasattr(*_owner(name))]
  if missing:
    raise AttributeError(
      f'optax_adam_mini has no {missing}: the variants replace these private '
      'functions; update them to the library.'
    )
  library = {name: getattr(*_owner(name)) for name in patches}
  try:
    for name, replacement in patches.items():
      setattr(*_owner(name), replacement)
    yield
  finally:
    for name, original in library.items():
      setattr(*_owner(name), original)


def compare_variants(sizes, labels, reps, stacked, out_dir):
  """Times the ``labels`` of :data:`VARIANTS` on each of ``sizes``; writes
  ``update_step_variants.json`` (and the per-layer HLO of the first size's
  Adam-mini variants) to ``out_dir``; returns the results."""
  out = {'env': scan_llama.env_info(), 'stacked': stacked, 'rows': {}}
  os.makedirs(out_dir, exist_ok=True)
  for i, size in enumerate(sizes):
    cfg = scan_llama.LLAMA[size]
    row = out['rows'][size] = {'params': cfg.n_params()}
    for label, opt, patches in VARIANTS:
      if label not in labels:
        continue
      with patched(patches):
        r = bench_one(cfg, opt, reps, jax.random.key(0), stacked)
        if i == 0 and opt == 'adam_mini' and not stacked:
          shapes = scan_llama.llama_shapes(cfg, stacked=False)
          tx = scan_llama.make_tx(
            opt, 1e-4, num_heads=cfg.n_heads, num_kv_heads=cfg.n_kv_heads
          )
          state = jax.eval_shape(tx.init, shapes)
          text = make_step(tx).lower(shapes, state, shapes).compile().as_text()
          n = len(jax.tree.leaves(shapes))
          r['hlo']['grad_read_by_n_kernels'] = grad_passes(
            text, n + len(jax.tree.leaves(state)), n
          )
          name = f'hlo_{label}_{size}_per_layer.txt.gz'
          with gzip.open(os.path.join(out_dir, name), 'wt') as f:
            f.write(text)
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
    with open(os.path.join(out_dir, 'update_step_variants.json'), 'w') as f:
      json.dump(out, f, indent=1)
  return out


def table(out):
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
  return '\n'.join(lines)


def main():
  labels = [label for label, _, _ in VARIANTS]
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--out', default='benchmarks/results')
  ap.add_argument(
    '--sizes', default=','.join(SIZES), help='keys of scan_llama.LLAMA'
  )
  ap.add_argument(
    '--variants', default=','.join(labels), help='labels of VARIANTS to run'
  )
  ap.add_argument('--reps', type=int, default=30)
  ap.add_argument(
    '--stacked',
    action='store_true',
    help='layers stacked on a leading axis (12 leaves)',
  )
  args = ap.parse_args()
  unknown = set(args.variants.split(',')) - set(labels)
  if unknown:
    ap.error(f'unknown variants {sorted(unknown)}; choose from {labels}')
  out = compare_variants(
    args.sizes.split(','),
    args.variants.split(','),
    args.reps,
    args.stacked,
    args.out,
  )
  print(table(out))


if __name__ == '__main__':
  main()

"""Quantized first moment: loss against float32 ``m`` at equal steps.

Trains the example trainer's model (``examples/lm``, the preset and data of
``examples/train_lm.py``; ``tiny`` by default: a 0.4M-parameter Llama on the
Python standard library's sources, byte tokens) with Adam-mini for each
``m`` variant and seed, and reports each variant's final validation and
training loss over float32-``m`` Adam-mini's on the same seed (same init,
same batches, same data)::

    python -m benchmarks.quantized_moment --variants f32 int8 int4 \\
        --seeds 0 1 --out OUT/quantized_moment.json
    # trainer flags after --, e.g. a bigger model on a GPU
    python -m benchmarks.quantized_moment --preset study-10m -- \\
        --max-data-bytes 32000000

Variants are ``f32``, ``bf16``, ``int8`` and ``int4`` (the trainer's
``--mu-dtype``: the library's defaults), or ``int{8,4}-{dynamic,linear}``
optionally followed by ``-g<group size>``, ``-min<min size>``, ``-seed<n>``
(the rounding noise's seed) and ``-sr``
(stochastic rounding on embedding and output leaves) or ``-srall`` (on all
leaves), e.g. ``int8-linear-g64-min0-sr`` (a ``MomentQuantization``; a named
code rounds to nearest unless ``-sr``/``-srall`` says otherwise). Results
are merged into the ``--out`` JSON (one record per preset, steps, variant and
seed, with the device, versions and date), so runs can be added one at a
time; the table of ratios is printed last.

The compiled step itself (fusions, temporary bytes): ``python -m
benchmarks.update_step --hlo OUT --opts adam_mini,adam_mini_int8,...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import optax_adam_mini  # noqa: E402
from benchmarks import scan_llama  # noqa: E402
from examples import train_lm  # noqa: E402
from examples.lm import data, sharding, train  # noqa: E402

DEFAULT_OUT = os.path.join(
  ROOT, 'benchmarks', 'results', 'quantized_moment.json'
)
# Variant names the trainer's --mu-dtype takes as they are.
_TRAINER_NAMES = {
  'f32': 'float32',
  'bf16': 'bfloat16',
  'int8': 'int8',
  'int4': 'int4',
}


def mu_dtype_of(variant: str):
  """The trainer's ``mu_dtype`` (a name or a ``MomentQuantization``) a
  variant name stands for (see the module docstring)."""
  if variant in _TRAINER_NAMES:
    return _TRAINER_NAMES[variant]
  head, *rest = variant.split('-')
  if head not in ('int8', 'int4') or not rest:
    raise ValueError(f'unknown variant {variant!r}')
  code, *options = rest
  if code not in optax_adam_mini.quantize.CODES:
    raise ValueError(f'unknown code {code!r} in {variant!r}')
  # A named code rounds to nearest unless the name says otherwise: names
  # keep the meaning of the runs recorded under them.
  kwargs = {'bits': int(head[3:]), 'code': code, 'stochastic_rounding': 'none'}
  for option in options:
    if option.startswith('g'):
      kwargs['group_size'] = int(option[1:])
    elif option.startswith('min'):
      kwargs['min_size'] = int(option[3:])
    elif option.startswith('seed'):
      kwargs['seed'] = int(option[4:])
    elif option == 'sr':
      kwargs['stochastic_rounding'] = 'embeddings'
    elif option == 'srall':
      kwargs['stochastic_rounding'] = 'all'
    else:
      raise ValueError(f'unknown option {option!r} in {variant!r}')
  return optax_adam_mini.MomentQuantization(**kwargs)


def _configs(args, seed: int):
  """The trainer's configs for ``--preset``, the seed and the extra flags."""
  argv = ['--preset', args.preset, '--seed', str(seed), '--optimizer']
  argv += ['adam_mini', *args.trainer_args]
  if args.steps is not None:
    argv += ['--steps', str(args.steps)]
  return train_lm.configs_from_args(train_lm.build_parser().parse_args(argv))


def run_one(args, corpus, variant: str, seed: int) -> dict:
  """One Adam-mini run of the trainer with ``variant``'s first moment."""
  model_cfg, train_cfg, _ = _configs(args, seed)
  model_cfg = dataclasses.replace(
    model_cfg, vocab_size=corpus.tokenizer.vocab_size
  )
  opt = dataclasses.replace(train_cfg.opt, mu_dtype=mu_dtype_of(variant))
  train_cfg = dataclasses.replace(train_cfg, opt=opt)
  mesh = sharding.make_mesh(sharding.parse_mesh(args.mesh, len(jax.devices())))
  start = time.perf_counter()
  result = train.train(
    model_cfg,
    train_cfg,
    corpus,
    mesh=mesh,
    progress=False,
    print_fn=lambda *_: None,
  )
  metrics = result.metrics
  finite = all(
    bool(np.all(np.isfinite(np.asarray(x, np.float64))))
    for x in jax.tree.leaves(result.opt_state)
    if jnp.issubdtype(x.dtype, jnp.floating)
  )
  return {
    'variant': variant,
    'mu_dtype': metrics['train_config']['opt']['mu_dtype'],
    'seed': seed,
    'preset': args.preset,
    'trainer_args': list(args.trainer_args),
    'steps': metrics['steps'],
    'tokens_seen': metrics['tokens_seen'],
    'final_val_loss': metrics['final_val_loss'],
    'final_train_loss': metrics['final_train_loss'],
    'val_loss': metrics['history']['val_loss'],
    'val_step': metrics['history']['val_step'],
    'optimizer_state_bytes': metrics['optimizer_state_bytes'],
    'param_count': metrics['param_count'],
    'tokens_per_second': metrics['tokens_per_second'],
    'state_finite': finite,
    'wall_time_s': time.perf_counter() - start,
  }


def _run_key(r: dict) -> str:
  """What must match between a run and its float32-``m`` reference."""
  extra = ' '.join(r.get('trainer_args') or [])
  return f'{r["preset"]}/{r["steps"]}' + (f' [{extra}]' if extra else '')


# The bound on the loss of a quantized m at equal steps.
LOSS_BOUND = 1.005


def summarize(records: list[dict]) -> dict:
  """Per variant: loss ratios over ``f32`` on the same seed, steps, data."""
  base = {(_run_key(r), r['seed']): r for r in records if r['variant'] == 'f32'}
  out: dict = {}
  for r in records:
    ref = base.get((_run_key(r), r['seed']))
    if ref is None:
      continue
    entry = out.setdefault(
      f'{_run_key(r)}/{r["variant"]}',
      {'seeds': [], 'val_ratio': [], 'train_ratio': []},
    )
    entry['seeds'].append(r['seed'])
    entry['val_ratio'].append(r['final_val_loss'] / ref['final_val_loss'])
    entry['train_ratio'].append(r['final_train_loss'] / ref['final_train_loss'])
    entry['state_ratio'] = (
      r['optimizer_state_bytes'] / ref['optimizer_state_bytes']
    )
  for entry in out.values():
    for name in ('val_ratio', 'train_ratio'):
      entry[f'{name}_mean'] = float(np.mean(entry[name]))
      entry[f'{name}_max'] = float(np.max(entry[name]))
    # Each seed's ratio is one paired sample (same init and batches as its
    # float32 run): the mean's standard error says what the seeds resolve.
    n = len(entry['val_ratio'])
    sd = float(np.std(entry['val_ratio'], ddof=1)) if n > 1 else None
    entry['val_ratio_sd'] = sd
    entry['val_ratio_se'] = se = sd / math.sqrt(n) if sd is not None else None
    # Every seed under the bound asks more than the bound does when one
    # pair's spread exceeds it; the mean's one-sided 95% upper bound
    # (Student's t, n - 1 degrees of freedom) is what n pairs show of it.
    entry['within_bound'] = entry['val_ratio_max'] <= LOSS_BOUND
    entry['val_ratio_upper95'] = upper = (
      entry['val_ratio_mean'] + float(scipy.stats.t.ppf(0.95, n - 1)) * se
      if se is not None
      else None
    )
    entry['mean_within_bound'] = upper is not None and upper <= LOSS_BOUND
  return out


def table(summary: dict) -> str:
  """Validation and training loss over float32 m's, state bytes over its."""
  lines = [
    f'{"preset/steps/variant":<44} {"seeds":>5} {"val ratio":>10} {"(se)":>8} '
    f'{"(up95)":>8} {"(max)":>8} {"train ratio":>11} {"(max)":>8} '
    f'{"state":>7} <={LOSS_BOUND}: max, up95'
  ]
  for key, e in sorted(summary.items()):
    se, upper = e.get('val_ratio_se'), e.get('val_ratio_upper95')
    lines.append(
      f'{key:<44} {len(e["seeds"]):>5} {e["val_ratio_mean"]:>10.4f} '
      f'{"-" if se is None else f"{se:.4f}":>8} '
      f'{"-" if upper is None else f"{upper:.4f}":>8} '
      f'{e["val_ratio_max"]:>8.4f} {e["train_ratio_mean"]:>11.4f} '
      f'{e["train_ratio_max"]:>8.4f} {e["state_ratio"]:>7.3f} '
      f'{"yes" if e["within_bound"] else "NO"}, '
      f'{"yes" if e.get("mean_within_bound") else "NO"}'
    )
  return '\n'.join(lines)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  own, trainer_args = argv, []
  if '--' in argv:
    at = argv.index('--')
    own, trainer_args = argv[:at], argv[at + 1 :]
  ap = argparse.ArgumentParser(
    description=__doc__.splitlines()[0],
    epilog='flags after -- go to the trainer (examples/train_lm.py --help)',
  )
  ap.add_argument(
    '--variants',
    nargs='+',
    default=['f32', 'int8', 'int4'],
    help='first-moment variants; f32 is the reference (default: f32 int8 int4)',
  )
  ap.add_argument('--seeds', nargs='+', type=int, default=[0])
  ap.add_argument('--preset', default='tiny', help='a trainer preset')
  ap.add_argument('--steps', type=int, default=None, help="the preset's")
  ap.add_argument('--out', default=DEFAULT_OUT, help='the JSON to merge into')
  ap.add_argument(
    '--mesh', help="the trainer's --mesh (default: every device on data)"
  )
  args = ap.parse_args(own)
  args.trainer_args = trainer_args
  for variant in args.variants:
    mu_dtype_of(variant)  # reject a bad name before training anything
  records = []
  if os.path.exists(args.out):
    with open(args.out) as f:
      records = json.load(f)['records']
  # One corpus for every run: a BPE is trained once, next to the results.
  data_cfg = _configs(args, args.seeds[0])[2]
  cache = os.path.join(
    os.path.dirname(os.path.abspath(args.out)) or tempfile.gettempdir(),
    'quantized_moment_data',
  )
  corpus = data.load(data_cfg, cache_dir=cache)
  for seed in args.seeds:
    for variant in args.variants:
      record = run_one(args, corpus, variant, seed)
      key = ('variant', 'seed', 'preset', 'steps', 'trainer_args')
      records = [
        r
        for r in records
        if tuple(r.get(k) for k in key) != tuple(record[k] for k in key)
      ] + [record]
      print(
        f'{variant} seed {seed}: val {record["final_val_loss"]:.4f} train '
        f'{record["final_train_loss"]:.4f}, '
        f'{record["tokens_per_second"]:,.0f} tokens/s '
        f'({record["wall_time_s"]:.0f} s)',
        flush=True,
      )
      os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
      with open(args.out, 'w') as f:
        json.dump(
          {
            'env': scan_llama.env_info(),
            'summary': summarize(records),
            'records': records,
          },
          f,
          indent=1,
        )
  print(table(summarize(records)))
  return records


if __name__ == '__main__':
  main()

"""Quantized first moment: training loss against float32 ``m`` at equal steps.

Trains the example trainer's model (``examples/train_lm.py``, preset ``tiny``
by default: a Llama on the Python standard library's sources, byte tokens)
with Adam-mini for each ``m`` variant and seed, and reports each variant's
final validation and training loss over float32-``m`` Adam-mini's on the same
seed (same init, same batches). Runs on the CPU::

    python benchmarks/quantized_moment.py --variants f32 bf16 int8-dynamic \\
        int8-linear --seeds 0 1 2

Variants are ``f32``, ``bf16`` and ``int{8,4}-{dynamic,linear}``, optionally
followed by ``-g<group size>``, ``-min<min size>`` and ``-sr`` (stochastic
rounding on embedding and output leaves) or ``-srall`` (on all leaves), e.g.
``int8-dynamic-g64-min0-sr``. Results are merged into
``benchmarks/results/quantized_moment.json`` (one record per variant and seed,
with the device, versions and date), so runs can be added one at a time.

The compiled step itself (fusions, temporary bytes): ``python -m
benchmarks.update_step --hlo OUT --opts adam_mini,adam_mini_int8,...``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import optax_adam_mini  # noqa: E402
from benchmarks import scan_llama  # noqa: E402

DEFAULT_OUT = os.path.join(
  ROOT, 'benchmarks', 'results', 'quantized_moment.json'
)


def _load_trainer():
  """``examples/train_lm.py`` as a module (it is a script, not a package)."""
  name = '_train_lm_for_quantized_moment'
  if name not in sys.modules:
    path = os.path.join(ROOT, 'examples', 'train_lm.py')
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
  return sys.modules[name]


def mu_dtype_of(variant: str):
  """The ``mu_dtype`` a variant name stands for (see the module docstring)."""
  if variant == 'f32':
    return None
  if variant == 'bf16':
    return jnp.bfloat16
  head, code, *options = variant.split('-')
  if head not in ('int8', 'int4') or code not in optax_adam_mini.quantize.CODES:
    raise ValueError(f'unknown variant {variant!r}')
  kwargs = {'bits': int(head[3:]), 'code': code}
  for option in options:
    if option.startswith('g'):
      kwargs['group_size'] = int(option[1:])
    elif option.startswith('min'):
      kwargs['min_size'] = int(option[3:])
    elif option == 'sr':
      kwargs['stochastic_rounding'] = 'embeddings'
    elif option == 'srall':
      kwargs['stochastic_rounding'] = 'all'
    else:
      raise ValueError(f'unknown option {option!r} in {variant!r}')
  return optax_adam_mini.MomentQuantization(**kwargs)


@contextlib.contextmanager
def trainer_with_mu_dtype(trainer, mu_dtype):
  """The trainer, building Adam-mini with ``mu_dtype`` inside this block.

  The trainer has no ``mu_dtype`` option yet: its one optimizer construction
  (``make_optimizer``) calls ``optax_adam_mini.adam_mini``, which is given the
  extra argument here; the cached train functions are rebuilt on the way in
  and out.
  """
  library = trainer.optax_adam_mini
  proxy = types.SimpleNamespace(**vars(library))
  proxy.adam_mini = functools.partial(library.adam_mini, mu_dtype=mu_dtype)
  trainer.optax_adam_mini = proxy
  trainer._train_fns.cache_clear()
  try:
    yield trainer
  finally:
    trainer.optax_adam_mini = library
    trainer._train_fns.cache_clear()


def run_one(trainer, args, variant: str, seed: int) -> dict:
  argv = ['--preset', args.preset, '--seed', str(seed)]
  if args.steps is not None:
    argv += ['--steps', str(args.steps)]
  parsed = trainer.build_parser().parse_args(argv)
  mcfg, tcfg = trainer.configs_from_args(parsed)
  tokens, desc = trainer.load_corpus(parsed.data, parsed.max_data_bytes)
  train_tokens, val_tokens = trainer.split_train_val(
    tokens, parsed.val_fraction
  )
  start = time.perf_counter()
  with trainer_with_mu_dtype(trainer, mu_dtype_of(variant)) as t:
    metrics = t.train(
      'adam_mini',
      mcfg,
      tcfg,
      train_tokens,
      val_tokens,
      data_desc=desc,
      progress=False,
      print_fn=lambda *_: None,
    )
  state = metrics['_opt_state']
  finite = all(
    bool(np.all(np.isfinite(np.asarray(x, np.float64))))
    for x in jax.tree.leaves(state)
    if jnp.issubdtype(x.dtype, jnp.floating)
  )
  return {
    'variant': variant,
    'seed': seed,
    'preset': args.preset,
    'steps': metrics['steps'],
    'final_val_loss': metrics['final_val_loss'],
    'final_train_loss': metrics['final_train_loss'],
    'val_loss': metrics['history']['val_loss'],
    'val_step': metrics['history']['val_step'],
    'optimizer_state_bytes': metrics['optimizer_state_bytes'],
    'param_count': metrics['param_count'],
    'state_finite': finite,
    'wall_time_s': time.perf_counter() - start,
  }


def summarize(records: list[dict]) -> dict:
  """Per variant: loss ratios over ``f32`` on the same seed and steps."""
  base = {
    (r['preset'], r['steps'], r['seed']): r
    for r in records
    if r['variant'] == 'f32'
  }
  out: dict = {}
  for r in records:
    ref = base.get((r['preset'], r['steps'], r['seed']))
    if ref is None:
      continue
    key = f'{r["preset"]}/{r["steps"]}/{r["variant"]}'
    entry = out.setdefault(
      key, {'seeds': [], 'val_ratio': [], 'train_ratio': []}
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
  return out


def table(summary: dict) -> str:
  lines = [
    f'{"preset/steps/variant":<44} {"seeds":>5} {"val ratio":>10} {"(max)":>8} '
    f'{"train ratio":>11} {"(max)":>8} {"state":>7}'
  ]
  for key, e in sorted(summary.items()):
    lines.append(
      f'{key:<44} {len(e["seeds"]):>5} {e["val_ratio_mean"]:>10.4f} '
      f'{e["val_ratio_max"]:>8.4f} {e["train_ratio_mean"]:>11.4f} '
      f'{e["train_ratio_max"]:>8.4f} {e["state_ratio"]:>7.3f}'
    )
  return '\n'.join(lines)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--variants', nargs='+', default=['f32', 'int8-dynamic'])
  ap.add_argument('--seeds', nargs='+', type=int, default=[0])
  ap.add_argument('--preset', default='tiny')
  ap.add_argument('--steps', type=int, default=None, help="the preset's")
  ap.add_argument('--out', default=DEFAULT_OUT)
  args = ap.parse_args(argv)
  trainer = _load_trainer()
  records = []
  if os.path.exists(args.out):
    with open(args.out) as f:
      records = json.load(f)['records']
  for seed in args.seeds:
    for variant in args.variants:
      mu_dtype_of(variant)  # reject a bad name before training anything
      record = run_one(trainer, args, variant, seed)
      records = [
        r
        for r in records
        if (r['variant'], r['seed'], r['preset'], r['steps'])
        != (variant, seed, record['preset'], record['steps'])
      ] + [record]
      print(
        f'{variant} seed {seed}: val {record["final_val_loss"]:.4f} train '
        f'{record["final_train_loss"]:.4f} ({record["wall_time_s"]:.0f} s)',
        flush=True,
      )
      os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
      summary = summarize(records)
      with open(args.out, 'w') as f:
        json.dump(
          {
            'env': scan_llama.env_info(),
            'summary': summary,
            'records': records,
          },
          f,
          indent=1,
        )
  print(table(summarize(records)))
  return records


if __name__ == '__main__':
  main()

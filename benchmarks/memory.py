"""Table 1: optimizer-state memory, exact, with no allocation (``jax.eval_shape``).

Adam-mini (float32, bfloat16, int8 and int4 ``mu_dtype``) against ``optax.adamw`` and
``optax.adafactor`` on GPT-2 (124M/355M/774M/1.5B) and Llama-2 (7B/13B/70B),
Llama-3 8B parameter trees: the example trainer's own NNX models
(``examples.lm.model``) at the published sizes, float32 params (their
parameter counts are the published ones: 6,738,415,616 for Llama-2-7B,
124,439,808 for GPT-2 with its tied LM head). Runs anywhere (CPU is fine),
from the repository root::

    python -m benchmarks.memory [--out benchmarks/results]

Writes ``memory.json`` and ``memory.png`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings

import jax
import jax.numpy as jnp
import optax

import optax_adam_mini
from benchmarks import scan_llama
from examples.lm import config, model
from optax_adam_mini.report import tree_bytes


def _gpt2(d, layers, heads):
  return config.ModelConfig(
    arch='gpt2', vocab_size=50257, d_model=d, num_layers=layers,
    num_heads=heads, d_ff=4 * d, max_seq_len=1024,
  )  # fmt: skip


def _llama(d, layers, heads, kv_heads, d_ff, vocab=32000):
  return config.ModelConfig(
    arch='llama', vocab_size=vocab, d_model=d, num_layers=layers,
    num_heads=heads, num_kv_heads=kv_heads, d_ff=d_ff,
  )  # fmt: skip


# (table row, family, size) -> the model's config.
CONFIGS = {
  ('gpt2', '124M'): _gpt2(768, 12, 12),
  ('gpt2', '355M'): _gpt2(1024, 24, 16),
  ('gpt2', '774M'): _gpt2(1280, 36, 20),
  ('gpt2', '1.5B'): _gpt2(1600, 48, 25),
  ('llama', '7B'): _llama(4096, 32, 32, 32, 11008),
  ('llama', '13B'): _llama(5120, 40, 40, 40, 13824),
  ('llama', '70B'): _llama(8192, 80, 64, 8, 28672),
  ('llama', 'llama3-8B'): _llama(4096, 32, 32, 8, 14336, vocab=128256),
}
MODELS = [
  ('GPT-2 124M', 'gpt2', '124M'),
  ('GPT-2 355M', 'gpt2', '355M'),
  ('GPT-2 774M', 'gpt2', '774M'),
  ('GPT-2 1.5B', 'gpt2', '1.5B'),
  ('Llama-2 7B', 'llama', '7B'),
  ('Llama-2 13B', 'llama', '13B'),
  ('Llama-2 70B', 'llama', '70B'),
  ('Llama-3 8B', 'llama', 'llama3-8B'),
]


def model_tree(family, key):
  """The abstract params and head counts of one row's model."""
  cfg = CONFIGS[family, key]
  return model.abstract_params(cfg), cfg.num_heads, cfg.num_kv_heads


def state_bytes(tx, params) -> int:
  return tree_bytes(jax.eval_shape(tx.init, params))


def measure(family, key):
  params, heads, kv = model_tree(family, key)
  n = sum(x.size for x in jax.tree.leaves(params))
  kw = dict(num_heads=heads, num_kv_heads=kv)
  row = {
    'params': int(n),
    'param_bytes': tree_bytes(params),
    'adamw': state_bytes(optax.adamw(1e-3), params),
    'adafactor': state_bytes(optax.adafactor(1e-3), params),
    'adam_mini': state_bytes(optax_adam_mini.adam_mini(1e-3, **kw), params),
    'adam_mini_bf16': state_bytes(
      optax_adam_mini.adam_mini(1e-3, mu_dtype=jnp.bfloat16, **kw), params
    ),
    'adam_mini_int8': state_bytes(
      optax_adam_mini.adam_mini(1e-3, mu_dtype=jnp.int8, **kw), params
    ),
    'adam_mini_int4': state_bytes(
      optax_adam_mini.adam_mini(1e-3, mu_dtype=jnp.int4, **kw), params
    ),
  }
  with warnings.catch_warnings():
    if family == 'gpt2':  # its LM head is its token embedding: none to find
      warnings.filterwarnings('ignore', 'This tree looks like a transformer')
    report = optax_adam_mini.partition_report(params, **kw)
  row['blocks'] = int(sum(r.blocks for r in report.roles.values()))
  row['report_state_bytes'] = report.state_bytes
  for k in (
    'adam_mini',
    'adam_mini_bf16',
    'adam_mini_int8',
    'adam_mini_int4',
    'adafactor',
  ):
    row[f'{k}_ratio'] = row[k] / row['adamw']
  return row


def run():
  return {name: measure(family, key) for name, family, key in MODELS}


def gib(b):
  return b / 2**30


def table(rows) -> str:
  lines = [
    f'{"model":<12} {"params":>8} {"adamw GiB":>10} {"mini GiB":>9} {"ratio":>7} '
    f'{"mini bf16":>10} {"ratio":>7} {"mini int8":>10} {"ratio":>7} '
    f'{"mini int4":>10} {"ratio":>7} {"adafactor":>10} {"ratio":>7} {"blocks":>9}'
  ]
  for name, r in rows.items():
    lines.append(
      f'{name:<12} {r["params"] / 1e9:>7.2f}B {gib(r["adamw"]):>10.2f} {gib(r["adam_mini"]):>9.2f} '
      f'{r["adam_mini_ratio"]:>7.4f} {gib(r["adam_mini_bf16"]):>10.2f} {r["adam_mini_bf16_ratio"]:>7.4f} '
      f'{gib(r["adam_mini_int8"]):>10.2f} {r["adam_mini_int8_ratio"]:>7.4f} '
      f'{gib(r["adam_mini_int4"]):>10.2f} {r["adam_mini_int4_ratio"]:>7.4f} '
      f'{gib(r["adafactor"]):>10.3f} {r["adafactor_ratio"]:>7.4f} {r["blocks"]:>9,}'
    )
  return '\n'.join(lines)


def plot(rows, path):
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  import numpy as np

  names = list(rows)
  x = np.arange(len(names))
  bars = [
    ('adamw', 'optax.adamw'),
    ('adam_mini', 'adam_mini (f32 m)'),
    ('adam_mini_bf16', 'adam_mini (bf16 m)'),
    ('adam_mini_int8', 'adam_mini (int8 m)'),
    ('adam_mini_int4', 'adam_mini (int4 m)'),
    ('adafactor', 'optax.adafactor'),
  ]
  w = 0.8 / len(bars)
  fig, ax = plt.subplots(figsize=(11, 4.5))
  for i, (k, label) in enumerate(bars):
    offset = (i - (len(bars) - 1) / 2) * w
    ax.bar(x + offset, [gib(rows[n][k]) for n in names], w, label=label)
  ax.set_xticks(x, names, rotation=20)
  ax.set_yscale('log')
  ax.set_ylabel('optimizer state (GiB, log)')
  ax.set_title('Optimizer state for float32 params (jax.eval_shape, exact)')
  ax.legend()
  ax.grid(axis='y', alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument(
    '--out',
    default=os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results'),
  )
  args = ap.parse_args()
  rows = run()
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'memory.json'), 'w') as f:
    json.dump({'env': scan_llama.env_info(), 'rows': rows}, f, indent=1)
  plot(rows, os.path.join(args.out, 'memory.png'))
  print(table(rows))


if __name__ == '__main__':
  main()

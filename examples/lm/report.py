"""What a run leaves behind: ``metrics.json``, ``loss.png``, ``summary.json``.

``results`` below maps an optimizer's name to its metrics (``RunResult.
metrics``, plain JSON values). Sizes are printed in binary units (KiB, MiB,
GiB) and stored in bytes.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

Results = dict[str, dict[str, Any]]
_COLORS = {'adamw': 'tab:blue', 'adam_mini': 'tab:red'}


def format_bytes(n: float) -> str:
  """``1724876`` -> ``'1.64 MiB'``."""
  for unit in ('B', 'KiB', 'MiB'):
    if n < 1024:
      return f'{int(n)} B' if unit == 'B' else f'{n:.2f} {unit}'
    n /= 1024
  return f'{n:.2f} GiB'


def write_json(path: str, record: dict[str, Any]) -> None:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'w') as f:
    json.dump(record, f, indent=1)


def summary(results: Results) -> dict[str, Any]:
  """The optimizers side by side; the ratios need both."""
  out = {
    key: {name: m[field] for name, m in results.items()}
    for key, field in (
      ('val_loss', 'final_val_loss'),
      ('optimizer_state_bytes', 'optimizer_state_bytes'),
      ('tokens_per_second', 'tokens_per_second'),
    )
  }
  if 'adam_mini' in results:  # AdamW's m is float32 whatever the flag says
    out['adam_mini_mu_dtype'] = results['adam_mini']['train_config']['opt'][
      'mu_dtype'
    ]
  if {'adamw', 'adam_mini'} <= set(results):
    adamw, mini = results['adamw'], results['adam_mini']
    out['val_loss_ratio_adam_mini_over_adamw'] = (
      mini['final_val_loss'] / adamw['final_val_loss']
    )
    out['state_bytes_saved'] = (
      adamw['optimizer_state_bytes'] - mini['optimizer_state_bytes']
    )
  return out


def summary_table(results: Results) -> str:
  head = (
    f'{"optimizer":<10} {"val loss":>9} {"train loss":>10} {"tokens/s":>10} '
    f'{"opt state":>12}'
  )
  lines = [head, '-' * len(head)]
  for name, m in results.items():
    lines.append(
      f'{name:<10} {m["final_val_loss"]:>9.4f} '
      f'{m["final_train_loss"]:>10.4f} {m["tokens_per_second"]:>10,.0f} '
      f'{format_bytes(m["optimizer_state_bytes"]):>12}'
    )
  return '\n'.join(lines)


def _zoom_range(results: Results) -> tuple[float, float] | None:
  """The losses past the first tenth of training, where the curves separate."""
  values = []
  for m in results.values():
    h = m['history']
    curves = (
      (range(1, len(h['train_loss']) + 1), h['train_loss']),
      (h['val_step'], h['val_loss']),
    )
    for steps, losses in curves:
      values += [
        v
        for step, v in zip(steps, losses)
        if step >= 0.1 * max(1, m['steps']) and np.isfinite(v)
      ]
  return (min(values) * 0.97, max(values) * 1.03) if values else None


def plot_losses(results: Results, path: str, title: str = '') -> None:
  """Training loss (raw and smoothed) and validation loss per optimizer."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, (train_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 4))
  for name, m in results.items():
    h, color = m['history'], _COLORS.get(name)
    train = np.asarray(h['train_loss'], dtype=np.float64)
    if len(train):
      width = max(1, min(20, len(train) // 10))
      smooth = np.convolve(train, np.ones(width) / width, mode='valid')
      steps = np.arange(1, len(train) + 1)
      train_ax.plot(steps, train, color=color, alpha=0.2, lw=0.8)
      train_ax.plot(steps[width - 1 :], smooth, color=color, label=name)
    label = f'{name} (final {m["final_val_loss"]:.4f})'
    val_ax.plot(
      h['val_step'], h['val_loss'], 'o-', color=color, ms=3, label=label
    )
  train_ax.set(
    title='train loss', xlabel='step', ylabel='cross-entropy (nats/token)'
  )
  val_ax.set(title='validation loss', xlabel='step')
  zoom = _zoom_range(results)
  for ax in (train_ax, val_ax):
    ax.legend()
    ax.grid(alpha=0.3)
    if zoom:
      ax.set_ylim(*zoom)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)

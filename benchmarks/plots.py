"""Draws the PNGs of BENCHMARKS.md from the JSON in benchmarks/results/ (runs on CPU).

From the repository root::

    python -m benchmarks.plots
"""

import json
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

R = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')


def load(name):
  with open(os.path.join(R, name)) as f:
    return json.load(f)


def _floor_ms(d, row, opt):
  """A row's floor in ms, as its table gives it: the bytes ``opt`` must move
  over the bandwidth measured in the run that timed the row (``floor_s``),
  else in the run that wrote the JSON (``bandwidth_Bps``)."""
  if 'floor_s' in row[opt]:
    return row[opt]['floor_s'] * 1e3
  bytes_moved = d['floor_bytes_per_param'][opt] * row['params']
  return bytes_moved / d['bandwidth_Bps'] * 1e3


def _bandwidth_label(d, rows, opt):
  """The bandwidths behind the floors of ``rows``, in TB/s (``3.64-3.74``)."""
  bytes_per_param = d['floor_bytes_per_param'][opt]
  tbps = [
    bytes_per_param * r['params'] / _floor_ms(d, r, opt) * 1e-9 for r in rows
  ]
  low, high = f'{min(tbps):.2f}', f'{max(tbps):.2f}'
  return low if low == high else f'{low}-{high}'


def update_step():
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
  for ax, name, title in (
    (axes[0], 'update_step.json', 'one leaf per layer (HF/NNX layout)'),
    (axes[1], 'update_step_stacked.json', 'layers stacked (scan layout)'),
  ):
    d = load(name)
    for opt, style in (
      ('adamw', 'C0'),
      ('adamw_bf16', 'C4'),
      ('adam_mini', 'C1'),
      ('adam_mini_bf16', 'C2'),
      ('adafactor', 'C3'),
    ):
      rows = sorted(
        (r for r in d['rows'].values() if 'median_s' in r.get(opt, {})),
        key=lambda r: r['params'],
      )
      if not rows:
        continue
      xs = [r['params'] for r in rows]
      ax.plot(
        xs,
        [r[opt]['median_s'] * 1e3 for r in rows],
        'o-',
        color=style,
        label=opt,
      )
      if opt in ('adamw', 'adam_mini'):
        ax.plot(
          xs,
          [_floor_ms(d, r, opt) for r in rows],
          ':',
          color=style,
          label=f'{opt} floor @{_bandwidth_label(d, rows, opt)} TB/s',
        )
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('parameters')
    ax.set_title(title)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel('update + apply_updates (ms, device time)')
  for ax in axes:  # each panel's floors come from its own run
    ax.legend(fontsize=8)
  fig.suptitle('Optimizer step on one H200, float32 params')
  fig.tight_layout()
  fig.savefig(os.path.join(R, 'update_step.png'), dpi=110)


def _tokens_per_s_bars(ax, runs, title):
  runs = [r for r in runs if r.get('ok')]
  ax.bar(
    [f'{r["opt"]}\n{r["policy"]} b={r["batch"]}' for r in runs],
    [r['tokens_per_s'] for r in runs],
    color=['C0' if r['opt'] == 'adamw' else 'C1' for r in runs],
  )
  ax.set_ylabel('tokens/s')
  ax.set_title(title)


def throughput():
  t = load('train_throughput.json')
  t8 = load('train_throughput_llama3_8b.json')
  lg = load('train_largest.json')
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  _tokens_per_s_bars(axes[0], t['runs'], 'Llama-2-7B on one H200 (seq 2048)')
  _tokens_per_s_bars(
    axes[1], t8['runs'], 'Llama-3-8B on one H200: AdamW short of memory'
  )
  opts = list(lg['opts'])
  axes[2].bar(
    opts,
    [lg['opts'][o].get('largest_params', 0) / 1e9 for o in opts],
    color=['C0', 'C1', 'C2'],
  )
  axes[2].set_ylabel('parameters (B)')
  axes[2].set_title('Largest trainable Llama (d=4096) on one H200')
  fig.tight_layout()
  fig.savefig(os.path.join(R, 'train.png'), dpi=110)


def convergence():
  """The convergence study's plot (benchmarks/convergence.py draws it)."""
  if not os.path.exists(os.path.join(R, 'convergence.json')):
    return  # the study has not run yet
  from benchmarks import convergence as study

  records = study.load_points([study.RESULTS])
  study.plot(records, load('convergence.json'), study.SUMMARY_PNG)


if __name__ == '__main__':
  update_step()
  throughput()
  convergence()

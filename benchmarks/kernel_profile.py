"""Where an optimizer step's time goes: its kernels, timed by the profiler.

For each variant of :data:`benchmarks.update_step_variants.VARIANTS` (the
library's optimizers and the formulations measured against them), compiles the
buffer-donating step of ``update_step.py`` on one Llama tree, traces a few
steps with ``jax.profiler`` and reads the device's kernels from the trace: per
kernel (an XLA fusion or a library call) its time per step and, from the
compiled HLO, the bytes it reads and writes, so its achieved bandwidth. A
kernel far under the card's bandwidth is bound by its arithmetic (or its
access pattern), not by memory traffic. From the repository root::

    python -m benchmarks.kernel_profile --size 7B --stacked --out OUT \\
        --variants adam_mini_bf16,adam_mini_int8,adam_mini_int8_linear

Writes ``kernel_profile.json`` (every kernel of every variant) and keeps the
raw traces under ``OUT/traces``; prints, per variant, the step's kernel time
and its costliest kernels.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import tempfile

import jax

from benchmarks import scan_llama
from benchmarks.update_step import make_step, step_inputs
from benchmarks.update_step_variants import VARIANTS, patched

_DTYPE_BYTES = {
  'f64': 8,
  'f32': 4,
  's32': 4,
  'u32': 4,
  'bf16': 2,
  'f16': 2,
  's16': 2,
  'u16': 2,
  's8': 1,
  'u8': 1,
  'pred': 1,
  's4': 0.5,
  'u4': 0.5,
}
_ARRAY = re.compile(r'\b(' + '|'.join(_DTYPE_BYTES) + r')\[([\d,]*)\]')


def _array_bytes(text: str) -> float:
  """Bytes of every array type written in ``text`` (``f32[4,8]{1,0}``...)."""
  total = 0.0
  for dtype, dims in _ARRAY.findall(text):
    count = 1
    for d in filter(None, dims.split(',')):
      count *= int(d)
    total += count * _DTYPE_BYTES[dtype]
  return total


def kernel_bytes(hlo_text: str) -> dict[str, dict]:
  """Per top-level instruction of the entry computation that launches work
  (fusions, custom calls, copies): the bytes of its operands and results as
  the compiled HLO types them, and its fusion kind.

  Each operand counts once: a kernel that reads an input twice (or only part
  of it) moves other bytes than these.
  """
  entry = hlo_text[hlo_text.find('ENTRY') :]
  definition = re.compile(
    r'^\s*(?:ROOT )?%?([\w.\-]+) = (.*?) ([a-z][\w\-]*)\('
  )
  launches = ('fusion', 'custom-call', 'copy', 'copy-start')
  sizes, out = {}, {}
  for text in entry.splitlines():
    m = definition.match(text)
    if not m:
      continue
    name, result, opcode = m.groups()
    sizes[name] = _array_bytes(result)
    if opcode not in launches:
      continue
    operands = text[m.end() :].split(')', 1)[0]
    names = re.findall(r'%?([\w.\-]+)', re.sub(r'/\*.*?\*/', '', operands))
    kind = re.search(r'kind=(k\w+)', text)
    out[name] = {
      'opcode': opcode,
      'kind': kind.group(1) if kind else None,
      'bytes': sizes[name] + sum(sizes.get(x, 0.0) for x in names),
    }
  return out


def device_kernels(trace: dict) -> dict[str, dict]:
  """Calls and total microseconds of each kernel on the GPUs of a Chrome
  trace (``jax.profiler``'s ``*.trace.json.gz``), keyed by its HLO op."""
  gpu_pids = {
    e['pid']
    for e in trace['traceEvents']
    if e.get('ph') == 'M'
    and e.get('name') == 'process_name'
    and '/device:GPU' in e.get('args', {}).get('name', '')
  }
  kernels = collections.defaultdict(lambda: {'calls': 0, 'us': 0.0})
  for e in trace['traceEvents']:
    if e.get('ph') != 'X' or e.get('pid') not in gpu_pids:
      continue
    args = e.get('args', {})
    name = args.get('hlo_op') or e.get('name', '?')
    kernels[name]['calls'] += 1
    kernels[name]['us'] += float(e.get('dur', 0.0))
  return dict(kernels)


def _read_trace(trace_dir: str) -> dict:
  paths = glob.glob(
    os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True
  )
  if not paths:
    raise FileNotFoundError(f'no *.trace.json.gz under {trace_dir}')
  with gzip.open(max(paths, key=os.path.getmtime), 'rt') as f:
    return json.load(f)


def summarize(kernels, hlo, steps, bandwidth_Bps=None):
  """Rows per kernel (time per step, bytes, bandwidth), costliest first."""
  rows = []
  for name, k in kernels.items():
    info = hlo.get(name, {})
    us = k['us'] / steps
    row = {
      'kernel': name,
      'calls_per_step': k['calls'] / steps,
      'us_per_step': us,
      'kind': info.get('kind') or info.get('opcode'),
      'bytes': info.get('bytes'),
    }
    if info.get('bytes') and us > 0:
      row['GBps'] = info['bytes'] * row['calls_per_step'] / us / 1e3
      if bandwidth_Bps:
        row['of_bandwidth'] = row['GBps'] * 1e9 / bandwidth_Bps
    rows.append(row)
  rows.sort(key=lambda r: -r['us_per_step'])
  return rows


def profile_variant(cfg, label, stacked, steps, trace_dir, key):
  """Kernel rows of one variant's step on ``cfg``'s tree."""
  (opt, patches) = next((o, p) for lab, o, p in VARIANTS if lab == label)
  with patched(patches):
    tx, params, state, grads = step_inputs(cfg, opt, key, stacked)
    compiled = make_step(tx).lower(params, state, grads).compile()
  text = compiled.as_text()
  with gzip.open(os.path.join(trace_dir, f'hlo_{label}.txt.gz'), 'wt') as f:
    f.write(text)
  hlo = kernel_bytes(text)
  for _ in range(3):
    params, state = compiled(params, state, grads)
  jax.block_until_ready((params, state))
  with jax.profiler.trace(trace_dir):
    for _ in range(steps):
      params, state = compiled(params, state, grads)
    jax.block_until_ready((params, state))
  del params, state, grads, compiled
  return device_kernels(_read_trace(trace_dir)), hlo


def table(out, top=8) -> str:
  lines = []
  for label, r in out['variants'].items():
    if 'error' in r:
      lines.append(f'{label}: {r["error"]}')
      continue
    lines.append(
      f'{label}: {r["kernel_us_per_step"] / 1e3:.2f} ms of kernels per step, '
      f'{r["kernels_per_step"]:.0f} kernels'
    )
    for row in r['kernels'][:top]:
      bw = row.get('of_bandwidth')
      lines.append(
        f'  {row["us_per_step"]:9.1f} us  {str(row["kind"]):12s} '
        f'{(row.get("bytes") or 0) / 2**30:7.2f} GiB  '
        f'{"" if bw is None else f"{bw:5.2f} of bw"}  {row["kernel"][:48]}'
      )
  return '\n'.join(lines)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--out', required=True)
  ap.add_argument('--size', default='7B', help='a key of scan_llama.LLAMA')
  ap.add_argument('--stacked', action='store_true')
  ap.add_argument('--steps', type=int, default=5)
  ap.add_argument(
    '--variants', default='adam_mini_bf16,adam_mini_int8', help='VARIANTS'
  )
  ap.add_argument(
    '--bandwidth', type=float, default=None, help='bytes/s, for the ratios'
  )
  args = ap.parse_args(argv)
  # XLA runs a step's kernels as one CUDA graph (a command buffer), which the
  # trace shows as a single kernel: launch them one by one instead. Read
  # when the backend starts, so before the first computation.
  flags = os.environ.get('XLA_FLAGS', '')
  if 'xla_gpu_enable_command_buffer' not in flags:
    os.environ['XLA_FLAGS'] = f'{flags} --xla_gpu_enable_command_buffer='
  cfg = scan_llama.LLAMA[args.size]
  out = {
    'env': scan_llama.env_info(),
    'size': args.size,
    'stacked': args.stacked,
    'steps': args.steps,
    'bandwidth_Bps': args.bandwidth,
    'variants': {},
  }
  os.makedirs(args.out, exist_ok=True)
  for label in args.variants.split(','):
    trace_dir = tempfile.mkdtemp(prefix=f'trace_{label}_')
    try:
      kernels, hlo = profile_variant(
        cfg, label, args.stacked, args.steps, trace_dir, jax.random.key(0)
      )
      rows = summarize(kernels, hlo, args.steps, args.bandwidth)
      out['variants'][label] = {
        'kernel_us_per_step': sum(r['us_per_step'] for r in rows),
        'kernels_per_step': sum(r['calls_per_step'] for r in rows),
        'kernels': rows,
      }
      keep = os.path.join(args.out, 'traces', label)
      shutil.copytree(trace_dir, keep, dirs_exist_ok=True)
    except Exception as e:  # noqa: BLE001 (one variant's failure is a row)
      out['variants'][label] = {'error': f'{type(e).__name__}: {e}'[:400]}
    finally:
      shutil.rmtree(trace_dir, ignore_errors=True)
    with open(os.path.join(args.out, 'kernel_profile.json'), 'w') as f:
      json.dump(out, f, indent=1)
  print(table(out))
  return out


if __name__ == '__main__':
  main()

"""Table 4: convergence, GPT-2-small shape, Adam-mini vs AdamW, real text.

A GPT-2-small-shaped model (12 layers, d=768, 12 heads, 1024 context; byte-level
vocabulary of 256, tied embedding) pretrained on the Python standard library's
own source files (all ``*.py`` under ``os.path.dirname(os.__file__)``, sorted;
the last 1% held out for validation). Both optimizers get the same
initialisation, hyper-parameters, learning-rate schedule and batch order (the
batch of step ``s`` is a pure function of ``(seed, s)``).

Run one optimizer per GPU at the same time; the two processes agree on one
step count through ``--sync-dir`` after timing their first steps, so both
train for the same number of steps within ``--train-s`` seconds::

    CUDA_VISIBLE_DEVICES=0 python benchmarks/convergence.py --opt adamw --sync-dir /tmp/s --out OUT &
    CUDA_VISIBLE_DEVICES=1 python benchmarks/convergence.py --opt adam_mini --sync-dir /tmp/s --out OUT &
    wait

Writes ``convergence_<opt>.json`` (loss curves); ``plots.py`` draws them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import gpt2, scan_llama  # noqa: E402


def stdlib_corpus(max_bytes=None):
  root = os.path.dirname(os.__file__)
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(
      d
      for d in dirnames
      if d not in ('site-packages', 'dist-packages', '__pycache__')
    )
    files.extend(
      os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith('.py')
    )
  chunks, total = [], 0
  for f in files:
    with open(f, 'rb') as fh:
      b = fh.read()
    chunks.append(b)
    total += len(b)
    if max_bytes and total >= max_bytes:
      break
  data = np.frombuffer(b''.join(chunks), np.uint8)
  return data, {'root': root, 'files': len(chunks), 'bytes': int(data.size)}


def get_batch(tokens, step, batch, seq, seed):
  rng = np.random.default_rng([seed, step])
  starts = rng.integers(0, len(tokens) - seq - 1, size=batch)
  return tokens[starts[:, None] + np.arange(seq + 1)].astype(np.int32)


def val_set(tokens, n_batches, batch, seq):
  n = n_batches * batch
  starts = np.linspace(0, len(tokens) - seq - 2, n).round().astype(np.int64)
  return (
    tokens[starts[:, None] + np.arange(seq + 1)]
    .astype(np.int32)
    .reshape(n_batches, batch, seq + 1)
  )


def lr_at(step, total, peak, warmup, final_frac=0.1):
  if step < warmup:
    return peak * (step + 1) / warmup
  p = min(1.0, (step - warmup) / max(1, total - warmup))
  return peak * (
    final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * p))
  )


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--opt', required=True)
  ap.add_argument('--out', default='benchmarks/results')
  ap.add_argument('--sync-dir', default=None)
  ap.add_argument('--peers', default='adamw,adam_mini')
  ap.add_argument('--train-s', type=float, default=400)
  ap.add_argument(
    '--steps', type=int, default=0, help='fixed step count (skips the timing)'
  )
  ap.add_argument('--batch', type=int, default=32)
  ap.add_argument('--seq', type=int, default=1024)
  ap.add_argument('--lr', type=float, default=6e-4)
  ap.add_argument('--warmup', type=int, default=200)
  ap.add_argument('--wd', type=float, default=0.1)
  ap.add_argument('--evals', type=int, default=25)
  ap.add_argument('--val-batches', type=int, default=16)
  ap.add_argument('--max-bytes', type=int, default=0)
  ap.add_argument(
    '--small', action='store_true', help='tiny model for a CPU smoke test'
  )
  ap.add_argument('--seed', type=int, default=0)
  args = ap.parse_args()
  t_start = time.perf_counter()

  data, corpus = stdlib_corpus(args.max_bytes or None)
  n_val = max(args.seq * 4, int(len(data) * 0.01))
  train, val = data[:-n_val], data[-n_val:]
  corpus.update(train_bytes=int(train.size), val_bytes=int(val.size))
  cfg = gpt2.GPT2Config('gpt2-small-bytes', 768, 12, 12, args.seq, 256)
  if args.small:
    cfg = gpt2.GPT2Config('gpt2-tiny-bytes', 64, 2, 4, args.seq, 256)
  shapes = gpt2.gpt2_shapes(cfg, stacked=True)
  n_params = sum(x.size for x in jax.tree.leaves(shapes))
  tx = optax.chain(
    optax.clip_by_global_norm(1.0),
    scan_llama.make_tx(
      args.opt, 1.0, num_heads=cfg.n_heads, b1=0.9, b2=0.95, wd=args.wd
    ),
  )
  params = jax.jit(lambda k: scan_llama.init_from_shapes(shapes, k))(
    jax.random.key(args.seed)
  )
  state = jax.jit(tx.init)(params)

  def step(params, state, tokens, lr):
    loss, grads = jax.value_and_grad(gpt2.gpt2_loss)(params, tokens, cfg)
    updates, state = tx.update(grads, state, params)
    updates = jax.tree.map(lambda u: lr * u, updates)
    return optax.apply_updates(params, updates), state, loss

  step = jax.jit(step, donate_argnums=(0, 1))
  evaluate = jax.jit(lambda p, t: gpt2.gpt2_loss(p, t, cfg))
  vset = val_set(val, args.val_batches, args.batch, args.seq)

  def val_loss(params):
    return float(
      np.mean([float(evaluate(params, jnp.asarray(b))) for b in vset])
    )

  # Compile, then time the first steps (they are real training steps: the
  # warm-up part of the schedule does not depend on the total).
  calib = 30 if not args.steps else 0
  s = 0
  train_losses = []
  total = args.steps or 10**9
  tt = None
  for s in range(calib):
    if s == 5:
      jax.block_until_ready(params)
      tt = time.perf_counter()
    params, state, loss = step(
      params,
      state,
      jnp.asarray(get_batch(train, s, args.batch, args.seq, args.seed)),
      jnp.float32(lr_at(s, total, args.lr, args.warmup)),
    )
    train_losses.append((s, float(loss)))
  steps = args.steps
  if not steps:
    jax.block_until_ready(params)
    step_s = (time.perf_counter() - tt) / (calib - 5)
    eval_s = 0.0
    t0 = time.perf_counter()
    v0 = val_loss(params)
    eval_s = time.perf_counter() - t0
    remaining = args.train_s - (time.perf_counter() - t_start)
    proposal = int((remaining - args.evals * eval_s) / (step_s * 1.02))
    steps = proposal
    if args.sync_dir:
      os.makedirs(args.sync_dir, exist_ok=True)
      with open(os.path.join(args.sync_dir, args.opt + '.json'), 'w') as f:
        json.dump({'steps': proposal, 'step_s': step_s}, f)
      peers = [p for p in args.peers.split(',') if p != args.opt]
      deadline = time.perf_counter() + 120
      while time.perf_counter() < deadline:
        got = [os.path.join(args.sync_dir, p + '.json') for p in peers]
        if all(os.path.exists(g) for g in got):
          time.sleep(0.5)
          steps = min([proposal] + [json.load(open(g))['steps'] for g in got])
          break
        time.sleep(0.5)
    print(
      f'{args.opt}: step {step_s * 1e3:.1f} ms, proposal {proposal}, agreed {steps} steps',
      flush=True,
    )
    del v0
  total = max(steps, calib + 1)
  eval_every = max(1, total // args.evals)
  curve = []
  t_train = time.perf_counter()
  for s in range(calib, total):
    params, state, loss = step(
      params,
      state,
      jnp.asarray(get_batch(train, s, args.batch, args.seq, args.seed)),
      jnp.float32(lr_at(s, total, args.lr, args.warmup)),
    )
    if s % 10 == 0:
      train_losses.append((s, float(loss)))
    if (s + 1) % eval_every == 0 or s + 1 == total:
      curve.append((s + 1, val_loss(params)))
      print(
        f'{args.opt} step {s + 1}/{total} val {curve[-1][1]:.4f} ({time.perf_counter() - t_start:.0f}s)',
        flush=True,
      )
  train_s = time.perf_counter() - t_train
  final = curve[-1][1]
  res = {
    'env': scan_llama.env_info(),
    'opt': args.opt,
    'model': {**cfg.__dict__, 'n_params': int(n_params)},
    'corpus': corpus,
    'hparams': {
      k: getattr(args, k)
      for k in ('batch', 'seq', 'lr', 'warmup', 'wd', 'seed')
    }
    | {
      'b1': 0.9,
      'b2': 0.95,
      'eps': 1e-8,
      'clip': 1.0,
      'schedule': 'linear warmup, cosine to 0.1x',
    },
    'steps': total,
    'tokens': total * args.batch * args.seq,
    'train_loop_s': train_s,
    'val_curve': curve,
    'train_curve': train_losses,
    'final_val_loss': final,
    'wall_s': time.perf_counter() - t_start,
  }
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, f'convergence_{args.opt}.json'), 'w') as f:
    json.dump(res, f, indent=1)
  print(
    f'RESULT {args.opt} steps {total} final val loss {final:.4f}', flush=True
  )


if __name__ == '__main__':
  main()

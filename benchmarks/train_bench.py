"""Table 3: end-to-end training of Llama-style models, Adam-mini vs AdamW.

Float32 master weights, bfloat16 compute, a scanned pure-JAX Llama
(``benchmarks/scan_llama.py``), full ``value_and_grad`` + optimizer + apply step,
jitted with params and state donated. Modes:

* ``largest``: the largest Llama-2-7B-width model (d=4096, more or fewer
  layers) each optimizer can train on one GPU at batch 1 x 2048 tokens with
  full rematerialisation. The compiled step's own memory analysis at two depths
  gives a line, its crossing with the card's memory the predicted depth; a real
  run (init + 3 steps, in a subprocess) confirms it, stepping down on OOM.
* ``throughput``: Llama-2-7B, tokens/s of each optimizer at its largest
  feasible batch for each remat policy (``dots``: matmul outputs saved;
  ``full``: nothing saved), found the same way, each timed over several steps.
* ``sharded``: on all visible GPUs, a mesh ``(fsdp, tp)``: (a) a small Llama
  trained 3 steps sharded (fsdp=N and tp=N) against the same on one GPU; (b)
  Llama-2-7B FSDP over all GPUs (:func:`fsdp_hooks`: batch-sharded
  activations, weights all-gathered one layer at a time), tokens/s, peak memory
  and state bytes per GPU, at the global batch the compiled step's per-GPU
  memory at two batches predicts (``--fsdp-headroom``), stepping down on OOM.
* ``memory``: the compiled sharded step's per-device memory with and without
  :func:`fsdp_hooks`, compile only (works on CPU with
  ``XLA_FLAGS=--xla_force_host_platform_device_count=2``).
* ``trial``: one run (used by the above through subprocesses).

From the repository root::

    python -m benchmarks.train_bench largest --out OUT --budget-s 300
    python -m benchmarks.train_bench largest --out OUT \\
        --opts adamw,adam_mini,adam_mini_int8      # 8-bit m
    python -m benchmarks.train_bench throughput --out OUT --budget-s 300
    python -m benchmarks.train_bench sharded --out OUT --budget-s 300
    python -m benchmarks.train_bench memory --out OUT --layers 4 --batch 20

Environment: ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (set by the script).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import subprocess
import sys
import time

os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.95')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import optax_adam_mini  # noqa: E402
from benchmarks import scan_llama  # noqa: E402
from optax_adam_mini.report import tree_bytes  # noqa: E402

# The trials run as `python -m benchmarks.train_bench` from the repo root.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------
# Step, sharding
# ----------------------------------------------------------------------------


def make_train_step(
  cfg,
  tx,
  policy,
  p_shard=None,
  s_shard=None,
  b_shard=None,
  dtype=jnp.bfloat16,
  fsdp=True,
):
  """The jitted train step; sharded when ``p_shard`` is given (then, unless
  ``fsdp=False``, with :func:`fsdp_hooks` placing the forward pass)."""
  hooks = {}
  if p_shard is not None and fsdp:
    hooks = fsdp_hooks(p_shard, b_shard)

  def step(params, state, tokens):
    loss, grads = jax.value_and_grad(scan_llama.llama_loss)(
      params, tokens, cfg, policy, dtype, **hooks
    )
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  kw = {}
  if p_shard is not None:
    kw = dict(
      in_shardings=(p_shard, s_shard, b_shard),
      out_shardings=(p_shard, s_shard, NamedSharding(b_shard.mesh, P())),
    )
  return jax.jit(step, donate_argnums=(0, 1), **kw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _gathered(w, used, stored):
  """``w`` (sharded as ``stored``) resharded to ``used``: an all-gather; its
  gradient goes back to ``stored`` (a reduce-scatter) where it is made."""
  return jax.lax.with_sharding_constraint(
    jax.lax.with_sharding_constraint(w, stored), used
  )


def _gathered_fwd(w, used, stored):
  return _gathered(w, used, stored), None


def _gathered_bwd(used, stored, _, g):
  return (jax.lax.with_sharding_constraint(g, stored),)


_gathered.defvjp(_gathered_fwd, _gathered_bwd)


def fsdp_hooks(p_shard, b_shard):
  """``scan_llama.llama_loss`` hooks for FSDP over the mesh axis ``'fsdp'``.

  Without them the SPMD partitioner follows the params: the embedding lookup
  comes out sharded over the model dim, and every matmul then contracts over
  the sharded dim with the full global batch on each device (partial sums
  all-reduced), so each device holds the activations of the whole batch.
  Here activations keep the batch sharded like the tokens (``b_shard``), and
  each weight is all-gathered over ``'fsdp'`` (in the compute dtype, inside
  the scanned body: one layer at a time) where it is used, its gradient
  reduce-scattered back to the param's sharding.
  """
  mesh = b_shard.mesh
  stored = {
    tuple(k.key for k in path): sh.spec
    for path, sh in jax.tree_util.tree_flatten_with_path(p_shard)[0]
  }

  def drop_fsdp(a):
    if isinstance(a, tuple):
      a = tuple(x for x in a if x != 'fsdp') or None
      return a[0] if a and len(a) == 1 else a
    return None if a == 'fsdp' else a

  def weight(path, w):
    spec = tuple(stored[path])
    if path[:2] == ('model', 'layers'):
      spec = spec[1:]  # the scanned body sees one layer
    used = tuple(drop_fsdp(a) for a in spec)
    if used == spec:
      return w
    return _gathered(
      w, NamedSharding(mesh, P(*used)), NamedSharding(mesh, P(*spec))
    )

  act_sharding = NamedSharding(mesh, P(*b_shard.spec))

  def act(x):
    return jax.lax.with_sharding_constraint(x, act_sharding)

  return {'weight': weight, 'act': act}


_COL = {'q_proj', 'k_proj', 'v_proj', 'gate_proj', 'up_proj'}
_ROW = {'o_proj', 'down_proj'}


def param_specs(shapes):
  def spec(path, s):
    names = [getattr(k, 'key', getattr(k, 'name', str(k))) for k in path]
    if 'embed_tokens' in names:
      return P(None, 'fsdp')
    if 'lm_head' in names:
      return P('fsdp', 'tp')
    if any(n in _COL for n in names):
      return P(None, 'fsdp', 'tp')
    if any(n in _ROW for n in names):
      return P(None, 'tp', 'fsdp')
    return P()

  return jax.tree_util.tree_map_with_path(spec, shapes)


def state_shardings(tx, params_abs, p_shardings):
  """NamedShardings for the optimizer state, from the library."""
  return optax_adam_mini.state_shardings(tx, _abstract(params_abs, p_shardings))


def mesh_setup(shapes, tx, mesh_shape):
  """Mesh ``(fsdp, tp)`` over the first devices, and the shardings of the
  params, optimizer state and tokens (batch over ``'fsdp'``)."""
  devs = np.array(jax.devices()[: mesh_shape[0] * mesh_shape[1]]).reshape(
    mesh_shape
  )
  mesh = jax.sharding.Mesh(devs, ('fsdp', 'tp'))
  p_shard = jax.tree.map(
    lambda s: NamedSharding(mesh, s),
    param_specs(shapes),
    is_leaf=lambda x: isinstance(x, P),
  )
  s_shard = state_shardings(tx, shapes, p_shard)
  b_shard = NamedSharding(mesh, P('fsdp'))
  return mesh, p_shard, s_shard, b_shard


def _abstract(tree, shardings):
  return jax.tree.map(
    lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
    tree,
    shardings,
  )


def memory_estimate(
  cfg, opt, policy, batch, seq, mesh_shape=None, fsdp=True, hlo=None
):
  """Peak bytes of one compiled step (compile only, nothing allocated); per
  device when sharded over ``mesh_shape`` (``fsdp=False``: without
  :func:`fsdp_hooks`). ``hlo``: a path to write the compiled HLO to."""
  shapes = scan_llama.llama_shapes(cfg, stacked=True)
  tx = scan_llama.make_tx(
    opt, 1e-4, num_heads=cfg.n_heads, num_kv_heads=cfg.n_kv_heads
  )
  state = jax.eval_shape(tx.init, shapes)
  tok = jax.ShapeDtypeStruct((batch, seq + 1), jnp.int32)
  t0 = time.perf_counter()
  if mesh_shape is None:
    step = make_train_step(cfg, tx, policy)
  else:
    _, p_shard, s_shard, b_shard = mesh_setup(shapes, tx, mesh_shape)
    step = make_train_step(
      cfg, tx, policy, p_shard, s_shard, b_shard, fsdp=fsdp
    )
    shapes, state = _abstract(shapes, p_shard), _abstract(state, s_shard)
    tok = jax.ShapeDtypeStruct(tok.shape, tok.dtype, sharding=b_shard)
  compiled = step.lower(shapes, state, tok).compile()
  ma = compiled.memory_analysis()
  if hlo:
    with open(hlo, 'w') as f:
      f.write(compiled.as_text())
  peak = (
    ma.argument_size_in_bytes
    + ma.output_size_in_bytes
    - ma.alias_size_in_bytes
    + ma.temp_size_in_bytes
  )
  return {
    'peak': int(peak),
    'temp': int(ma.temp_size_in_bytes),
    'args': int(ma.argument_size_in_bytes),
    'out': int(ma.output_size_in_bytes),
    'alias': int(ma.alias_size_in_bytes),
    'compile_s': time.perf_counter() - t0,
  }


_PROBES = {}
PROBE_OPT = 'adam_mini'
# A quantized m changes the step's temporaries too (codes decoded and
# encoded in the update), not only the state: probed as themselves.
SELF_PROBED = tuple(
  name for name in scan_llama._ADAM_MINI_MU_DTYPES if '_int' in name
)


def state_bytes_of(cfg, opt, mesh_shape=None):
  """Optimizer state bytes (per device when sharded over ``mesh_shape``)."""
  shapes = scan_llama.llama_shapes(cfg, stacked=True)
  tx = scan_llama.make_tx(
    opt, 1e-4, num_heads=cfg.n_heads, num_kv_heads=cfg.n_kv_heads
  )
  state = jax.eval_shape(tx.init, shapes)
  if mesh_shape is None:
    return tree_bytes(state)
  s_shard = mesh_setup(shapes, tx, mesh_shape)[2]
  return sum(
    math.prod(sh.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
    for x, sh in zip(jax.tree.leaves(state), jax.tree.leaves(s_shard))
  )


def probe(cfg, opt, policy, batch, seq, mesh_shape=None):
  """Peak bytes of a step: compiled once with PROBE_OPT, other float-state
  optimizers shifted by their exact state-size difference (saves
  compiles); those of ``SELF_PROBED`` compiled as themselves."""
  mesh_shape = tuple(mesh_shape) if mesh_shape else None
  probed_with = opt if opt in SELF_PROBED else PROBE_OPT
  key = (cfg, probed_with, policy, batch, seq, mesh_shape)
  if key not in _PROBES:
    _PROBES[key] = memory_estimate(
      cfg, probed_with, policy, batch, seq, mesh_shape
    )
  m = dict(_PROBES[key])
  m['peak'] += state_bytes_of(cfg, opt, mesh_shape) - state_bytes_of(
    cfg, probed_with, mesh_shape
  )
  m['probed_with'] = probed_with
  return m


def trial(
  cfg,
  opt,
  policy,
  batch,
  seq,
  steps,
  mesh_shape=None,
  check=False,
  dtype=jnp.bfloat16,
):
  """Init, compile and run ``steps`` steps; timing excludes the first two."""
  out = {
    'config': dataclasses.asdict(cfg),
    'opt': opt,
    'policy': policy,
    'batch': batch,
    'seq': seq,
    'n_params': cfg.n_params(),
  }
  shapes = scan_llama.llama_shapes(cfg, stacked=True)
  tx = scan_llama.make_tx(
    opt, 1e-4, num_heads=cfg.n_heads, num_kv_heads=cfg.n_kv_heads
  )
  rng = np.random.default_rng(0)
  batches = [
    rng.integers(0, cfg.vocab, (batch, seq + 1), dtype=np.int32)
    for _ in range(2)
  ]
  if mesh_shape is not None:
    mesh, p_shard, s_shard, b_shard = mesh_setup(shapes, tx, mesh_shape)
    params = scan_llama.init_from_shapes(
      shapes, jax.random.key(0), shardings=p_shard
    )
    state = jax.jit(tx.init, out_shardings=s_shard)(params)
    step = make_train_step(cfg, tx, policy, p_shard, s_shard, b_shard, dtype)
    batches = [jax.device_put(b, b_shard) for b in batches]
    dev0 = jax.devices()[0]
    out['state_bytes_per_gpu'] = int(
      sum(
        s.data.nbytes
        for x in jax.tree.leaves(state)
        for s in x.addressable_shards
        if s.device == dev0
      )
    )
    out['param_bytes_per_gpu'] = int(
      sum(
        s.data.nbytes
        for x in jax.tree.leaves(params)
        for s in x.addressable_shards
        if s.device == dev0
      )
    )
    out['mesh'] = list(mesh_shape)
  else:
    params = jax.jit(lambda k: scan_llama.init_from_shapes(shapes, k))(
      jax.random.key(0)
    )
    state = jax.jit(tx.init)(params)
    step = make_train_step(cfg, tx, policy, dtype=dtype)
    batches = [jnp.asarray(b) for b in batches]
    out['state_bytes_per_gpu'] = tree_bytes(state)
  t0 = time.perf_counter()
  compiled = step.lower(params, state, batches[0]).compile()
  out['compile_s'] = time.perf_counter() - t0
  losses, ts = [], []
  for i in range(steps):
    t0 = time.perf_counter()
    params, state, loss = compiled(params, state, batches[i % 2])
    loss.block_until_ready()
    ts.append(time.perf_counter() - t0)
    losses.append(float(loss))
  timed = ts[2:] if len(ts) > 2 else ts
  out['step_s'] = float(np.median(timed))
  out['tokens_per_s'] = batch * seq / out['step_s']
  out['losses'] = losses
  stats = [
    d.memory_stats() or {}
    for d in jax.local_devices()[
      : (mesh_shape[0] * mesh_shape[1] if mesh_shape else 1)
    ]
  ]
  out['peak_bytes_per_gpu'] = [
    int(s.get('peak_bytes_in_use', 0)) for s in stats
  ]
  out['bytes_limit'] = int(stats[0].get('bytes_limit', 0))
  if check:
    out['_params'] = params
  out['ok'] = bool(np.isfinite(losses).all())
  return out


_DEADLINE = 0.0


def run_trial_subprocess(args_dict, timeout):
  if _DEADLINE:
    timeout = max(5, min(timeout, _DEADLINE - time.time() - 15))
  cmd = [sys.executable, '-m', 'benchmarks.train_bench', 'trial']
  cmd += ['--spec', json.dumps(args_dict)]
  try:
    p = subprocess.run(
      cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT
    )
  except subprocess.TimeoutExpired:
    return {'ok': False, 'error': 'timeout'}
  for line in reversed(p.stdout.splitlines()):
    if line.startswith('RESULT '):
      return json.loads(line[7:])
  err = (p.stderr or '')[-2000:]
  return {
    'ok': False,
    'oom': scan_llama.is_oom(Exception(err)),
    'error': err[-400:],
  }


def cfg_from(d):
  return scan_llama.LlamaConfig(**d)


def memory_limit(args):
  """Bytes one GPU may use: ``--limit-bytes``, else the allocator's limit."""
  if args.limit_bytes is not None:
    return args.limit_bytes
  return (jax.devices()[0].memory_stats() or {}).get('bytes_limit', 0)


def predicted_batch(m0, m1, b0, b1, usable_bytes, multiple=1, max_batch=0):
  """The largest batch (a multiple of ``multiple``) whose peak, on the line
  through the probes ``m0`` (batch ``b0``) and ``m1`` (``b1``), fits in
  ``usable_bytes``; returns ``(batch, bytes per sequence, fixed bytes)``."""
  per_seq = (m1['peak'] - m0['peak']) / (b1 - b0)
  fixed = m0['peak'] - b0 * per_seq
  batch = int((usable_bytes - fixed) // per_seq) // multiple * multiple
  if max_batch:
    batch = min(batch, max_batch // multiple * multiple)
  return batch, per_seq, fixed


def stepping_down(batch, multiple=1):
  """``batch``, then about 1/6 less each time (in multiples of ``multiple``),
  until below ``multiple``: the compiled step's memory can undershoot the
  run's (Llama-3-8B, AdamW, full remat: predicted 6, fits 2)."""
  while True:
    yield batch
    if batch < multiple:
      return
    batch -= max(multiple, batch // 6 // multiple * multiple)


def largest_that_fits(fits, first, confirm_next=False):
  """The largest ``n >= 1`` with ``fits(n)``, trying ``first`` first.

  The compiled step's memory analysis predicts ``first`` but can undershoot
  the run's peak by several layers (Llama-2-7B width, int8 m: predicted 73,
  70 did not fit either), so after each failure the step down doubles (1, 2,
  4, ...); once a depth fits, bisection between it and the smallest failure
  finds the largest. ``fits`` returns None to stop (time, or an error that a
  smaller model will not fix). With ``confirm_next`` a fitting ``first`` is
  followed by ``first + 1``, and so on up while those fit.
  """
  ok, failed, n, step = None, None, first, 1
  while n >= 1:
    result = fits(n)
    if result is None:
      break
    if result:
      ok = n
    else:
      failed = n
    if ok is None:
      n, step = n - step, step * 2
    elif failed is None:
      if not confirm_next:
        break
      n = ok + 1
    elif failed - ok > 1:
      n = (ok + failed) // 2
    else:
      break
  return ok


def first_that_runs(run, batches, spec, timeout, start, budget_s, smallest=1):
  """Trials of ``spec`` at each of ``batches`` (largest first) until one runs,
  recorded into ``run``. Out-of-memory errors and time-outs move on to the
  next batch; any other error stops, as a smaller batch will not help."""
  for batch in batches:
    if batch < smallest:
      run['error'] = f'does not fit at batch {smallest}'
      return
    if time.perf_counter() - start > budget_s:
      run['note'] = 'time budget'
      return
    t = run_trial_subprocess(dict(spec, batch=batch), timeout=timeout)
    print(
      spec['opt'],
      spec['policy'],
      batch,
      'ok' if t.get('ok') else 'FAIL',
      round(t.get('tokens_per_s', 0)),
      str(t.get('error', ''))[-150:],
      flush=True,
    )
    if t.get('ok'):
      run.update({k: v for k, v in t.items() if k != 'config'})
      return
    run.setdefault('failed_batches', []).append(batch)
    run.setdefault('errors', []).append(str(t.get('error', ''))[-300:])
    if not t.get('oom') and t.get('error') != 'timeout':
      return


# ----------------------------------------------------------------------------
# Modes
# ----------------------------------------------------------------------------


def mode_largest(args, start):
  base = scan_llama.LLAMA[args.model]
  limit = memory_limit(args)
  res = {
    'base': dataclasses.asdict(base),
    'limit_bytes': int(limit),
    'seq': args.seq,
    'batch': 1,
    'policy': 'full',
    'opts': {},
  }
  l0, l1 = args.probe_layers
  for opt in args.opts.split(','):
    r = res['opts'].setdefault(opt, {'trials': []})
    m0 = probe(base.with_layers(l0), opt, 'full', 1, args.seq)
    m1 = probe(base.with_layers(l1), opt, 'full', 1, args.seq)
    per_layer = (m1['peak'] - m0['peak']) / (l1 - l0)
    fixed = m0['peak'] - l0 * per_layer
    pred = int((limit * args.headroom - fixed) // per_layer)
    r.update(
      probe=[m0, m1],
      per_layer_bytes=per_layer,
      fixed_bytes=fixed,
      predicted_layers=pred,
    )
    print(
      opt,
      'predicted layers',
      pred,
      'per layer GB',
      per_layer / 1e9,
      'fixed GB',
      fixed / 1e9,
      flush=True,
    )

    def fits(layers, opt=opt, r=r):
      """Whether a real run at ``layers`` trains; None: out of time, or an
      error that fewer layers will not fix."""
      if time.perf_counter() - start > args.budget_s:
        r['note'] = 'time budget'
        return None
      cfg = base.with_layers(layers)
      t = run_trial_subprocess(
        {
          'config': dataclasses.asdict(cfg),
          'opt': opt,
          'policy': 'full',
          'batch': 1,
          'seq': args.seq,
          'steps': 3,
        },
        timeout=240,
      )
      t.pop('losses', None)
      r['trials'].append(
        {
          'layers': layers,
          'n_params': cfg.n_params(),
          **{k: v for k, v in t.items() if k != 'config'},
        }
      )
      print(
        opt,
        layers,
        cfg.n_params() / 1e9,
        'ok' if t.get('ok') else 'FAIL',
        t.get('error', '')[-120:],
        flush=True,
      )
      if t.get('ok'):
        return True
      return False if t.get('oom') or t.get('error') == 'timeout' else None

    layers = largest_that_fits(fits, pred, confirm_next=args.confirm_next)
    best = (layers, base.with_layers(layers).n_params()) if layers else None
    if best:
      r['largest_layers'], r['largest_params'] = best
  return res


def mode_throughput(args, start):
  cfg = scan_llama.LLAMA[args.model]
  limit = memory_limit(args)
  res = {
    'config': dataclasses.asdict(cfg),
    'limit_bytes': int(limit),
    'seq': args.seq,
    'runs': [],
  }
  b0, b1 = args.probe_batches
  for policy in args.policies.split(','):
    for opt in args.opts.split(','):
      if time.perf_counter() - start > args.budget_s:
        res['runs'].append(
          {'opt': opt, 'policy': policy, 'skipped': 'time budget'}
        )
        continue
      m0 = probe(cfg, opt, policy, b0, args.seq)
      m1 = probe(cfg, opt, policy, b1, args.seq)
      batch, per_seq, fixed = predicted_batch(
        m0, m1, b0, b1, limit * args.headroom, max_batch=args.max_batch
      )
      print(
        opt,
        policy,
        'predicted batch',
        batch,
        'per seq GB',
        per_seq / 1e9,
        'fixed GB',
        fixed / 1e9,
        flush=True,
      )
      run = {
        'opt': opt,
        'policy': policy,
        'probe': [m0, m1],
        'per_seq_bytes': per_seq,
        'fixed_bytes': fixed,
        'predicted_batch': batch,
      }
      spec = {
        'config': dataclasses.asdict(cfg),
        'opt': opt,
        'policy': policy,
        'seq': args.seq,
        'steps': args.steps,
      }
      first_that_runs(
        run, stepping_down(batch), spec, 300, start, args.budget_s
      )
      res['runs'].append(run)
  best = {}
  for r in res['runs']:
    if r.get('ok'):
      if (
        r['opt'] not in best
        or r['tokens_per_s'] > best[r['opt']]['tokens_per_s']
      ):
        best[r['opt']] = {
          k: r[k] for k in ('policy', 'batch', 'tokens_per_s', 'step_s')
        }
  res['best'] = best
  return res


def mode_sharded(args, start):
  n = jax.device_count()
  res = {'n_devices': n, 'seq': args.seq, 'check': {}, 'fsdp7b': {}}
  small = scan_llama.LlamaConfig('llama-small-check', 512, 4, 8, 4, 1536)
  jax.config.update('jax_default_matmul_precision', 'highest')
  for opt in [] if args.skip_check else args.opts.split(','):
    one = trial(
      small,
      opt,
      'none',
      8,
      256,
      3,
      mesh_shape=None,
      check=True,
      dtype=jnp.float32,
    )
    ref = jax.tree.map(np.asarray, one.pop('_params'))
    p0 = jax.tree.map(
      np.asarray,
      jax.jit(
        lambda k: scan_llama.init_from_shapes(
          scan_llama.llama_shapes(small, True), k
        )
      )(jax.random.key(0)),
    )
    res['check'][opt] = {
      'one_gpu': {k: v for k, v in one.items() if k != 'config'}
    }
    for mesh_shape in ((n, 1), (1, n)):
      sh = trial(
        small,
        opt,
        'none',
        8,
        256,
        3,
        mesh_shape=mesh_shape,
        check=True,
        dtype=jnp.float32,
      )
      got = jax.tree.map(np.asarray, sh.pop('_params'))
      num = sum(
        float(np.sum((a - b) ** 2))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref))
      )
      den = sum(float(np.sum(b**2)) for b in jax.tree.leaves(ref))
      d_ref = sum(
        float(np.sum((b - c) ** 2))
        for b, c in zip(jax.tree.leaves(ref), jax.tree.leaves(p0))
      )
      sh['rel_err_params_vs_one_gpu'] = (num / den) ** 0.5
      sh['rel_err_update_vs_one_gpu'] = (num / d_ref) ** 0.5
      sh['max_abs_loss_diff'] = float(
        np.max(np.abs(np.array(sh['losses']) - np.array(one['losses'])))
      )
      res['check'][opt][f'mesh_fsdp{mesh_shape[0]}_tp{mesh_shape[1]}'] = {
        k: v for k, v in sh.items() if k != 'config'
      }
      print(
        opt,
        mesh_shape,
        'rel err',
        sh['rel_err_params_vs_one_gpu'],
        sh['rel_err_update_vs_one_gpu'],
        'loss diff',
        sh['max_abs_loss_diff'],
        flush=True,
      )
  jax.config.update('jax_default_matmul_precision', None)
  # Llama-2-7B FSDP over all GPUs, in subprocesses (fresh memory); the global
  # batch from the compiled step's per-device memory at two batches.
  cfg = scan_llama.LLAMA[args.model]
  policy = args.policies.split(',')[0]
  mesh_shape = (n, 1)
  limit = memory_limit(args)
  res['fsdp_limit_bytes'] = int(limit)
  res['fsdp_policy'] = policy
  res['fsdp_config'] = cfg.name
  for opt in args.opts.split(','):
    if time.perf_counter() - start > args.budget_s:
      res['fsdp7b'][opt] = {'skipped': 'time budget'}
      continue
    run = {}
    if args.fsdp_batches.get(opt):
      batches = list(args.fsdp_batches[opt])
    else:
      b0, b1 = (n * b for b in args.probe_batches)
      m0 = probe(cfg, opt, policy, b0, args.seq, mesh_shape)
      m1 = probe(cfg, opt, policy, b1, args.seq, mesh_shape)
      batch, per_seq, fixed = predicted_batch(  # per GPU
        m0, m1, b0, b1, limit * args.fsdp_headroom, n, args.max_batch
      )
      run.update(
        probe=[m0, m1],
        per_seq_bytes_per_gpu=per_seq,
        fixed_bytes_per_gpu=fixed,
        predicted_batch=batch,
        predicted_peak_bytes_per_gpu=int(fixed + batch * per_seq),
      )
      print(
        'fsdp',
        opt,
        policy,
        'predicted batch',
        batch,
        'per seq GB/GPU',
        round(per_seq / 1e9, 3),
        'fixed GB/GPU',
        round(fixed / 1e9, 2),
        flush=True,
      )
      batches = stepping_down(batch, n)
    spec = {
      'config': dataclasses.asdict(cfg),
      'opt': opt,
      'policy': policy,
      'seq': args.seq,
      'steps': args.fsdp_steps,
      'mesh_shape': list(mesh_shape),
    }
    first_that_runs(run, batches, spec, 240, start, args.budget_s, smallest=n)
    res['fsdp7b'][opt] = run
  return res


def mode_memory(args, start):
  """The compiled sharded step's per-device memory (compile only), with and
  without :func:`fsdp_hooks`; on CPU use
  ``XLA_FLAGS=--xla_force_host_platform_device_count=2``."""
  n = jax.device_count()
  cfg = scan_llama.LLAMA[args.model]
  if args.layers:
    cfg = cfg.with_layers(args.layers)
  batch = args.batch or 2 * n
  res = {'config': dataclasses.asdict(cfg), 'batch': batch, 'runs': []}
  os.makedirs(args.out, exist_ok=True)
  for policy in args.policies.split(','):
    for opt in args.opts.split(','):
      for fsdp in (False, True):
        hlo = os.path.join(
          args.out, f'hlo_{cfg.name}_b{batch}_{policy}_{opt}_fsdp{fsdp:d}.txt'
        )
        m = memory_estimate(
          cfg, opt, policy, batch, args.seq, (n, 1), fsdp, hlo
        )
        m.update(opt=opt, policy=policy, fsdp_hooks=fsdp, hlo=hlo)
        res['runs'].append(m)
        print(
          f'{opt:10s} {policy:5s} fsdp_hooks={fsdp!s:5s} GB/device: '
          + ' '.join(
            f'{k} {m[k] / 1e9:.2f}'
            for k in ('args', 'out', 'alias', 'temp', 'peak')
          ),
          flush=True,
        )
  return res


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument(
    'mode', choices=['largest', 'throughput', 'sharded', 'memory', 'trial']
  )
  ap.add_argument('--out', default='benchmarks/results')
  ap.add_argument('--model', default='7B')
  ap.add_argument(
    '--opts',
    default='adamw,adam_mini,adam_mini_bf16',
    help='comma-separated: adamw, adamw_bf16, adam_mini, adam_mini_bf16, '
    'adam_mini_int8, adam_mini_int4 (quantized m), adafactor',
  )
  ap.add_argument('--policies', default='dots,full')
  ap.add_argument('--seq', type=int, default=2048)
  ap.add_argument('--steps', type=int, default=8)
  ap.add_argument('--budget-s', type=float, default=420)
  ap.add_argument('--headroom', type=float, default=0.97)
  ap.add_argument('--probe-layers', type=int, nargs=2, default=[8, 16])
  ap.add_argument('--probe-batches', type=int, nargs=2, default=[1, 2])
  ap.add_argument('--max-batch', type=int, default=0)
  ap.add_argument(
    '--confirm-next',
    action='store_true',
    help='largest: also try one layer more',
  )
  ap.add_argument('--limit-bytes', type=float, default=None)
  ap.add_argument(
    '--fsdp-batch',
    default='',
    help='sharded: global batches to try per optimizer, e.g. '
    '"adamw:16,12;adam_mini:24" (default: predicted from the compiled step)',
  )
  ap.add_argument(
    '--fsdp-headroom',
    type=float,
    default=0.8,
    help='sharded: fraction of the memory limit the predicted batch may use '
    '(at 0.9 the 7B AdamW prediction, 18, ran out of memory on two H200s)',
  )
  ap.add_argument('--fsdp-steps', type=int, default=6)
  ap.add_argument(
    '--skip-check',
    action='store_true',
    help='sharded: skip the small model check against one GPU',
  )
  ap.add_argument('--layers', type=int, default=0, help='memory: layers')
  ap.add_argument('--batch', type=int, default=0, help='memory: global batch')
  ap.add_argument('--spec', default=None)
  args = ap.parse_args(argv)
  start = time.perf_counter()
  deadline = float(os.environ.get('BENCH_DEADLINE', 0))
  if deadline:  # an absolute wall-clock end (epoch seconds) for the whole call
    args.budget_s = min(args.budget_s, deadline - time.time() - 60)
    global _DEADLINE
    _DEADLINE = deadline
  if args.mode == 'trial':
    s = json.loads(args.spec)
    mesh = tuple(s['mesh_shape']) if s.get('mesh_shape') else None
    try:
      r = trial(
        cfg_from(s['config']),
        s['opt'],
        s['policy'],
        s['batch'],
        s['seq'],
        s['steps'],
        mesh,
      )
    except Exception as e:  # noqa: BLE001
      r = {'ok': False, 'oom': scan_llama.is_oom(e), 'error': str(e)[:400]}
    print('RESULT ' + json.dumps(r), flush=True)
    return
  args.fsdp_batches = {
    k: [int(x) for x in v.split(',')]
    for k, v in (p.split(':') for p in args.fsdp_batch.split(';') if p)
  }
  fn = {
    'largest': mode_largest,
    'throughput': mode_throughput,
    'sharded': mode_sharded,
    'memory': mode_memory,
  }[args.mode]
  res = fn(args, start)
  res['env'] = scan_llama.env_info()
  res['elapsed_s'] = time.perf_counter() - start
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, f'train_{args.mode}.json')
  with open(path, 'w') as f:
    json.dump(res, f, indent=1, default=str)
  print(json.dumps(summary(args.mode, res), indent=1))
  if args.mode == 'sharded':
    print(fsdp_table(res))
  elif args.mode in ('largest', 'throughput'):
    print(table(args.mode, res))
  return res


def table(mode, res):
  """``largest`` and ``throughput`` in a few lines, ratios to AdamW's."""
  if mode == 'largest':
    rows = {
      o: (r.get('largest_params'), r.get('largest_layers'))
      for o, r in res['opts'].items()
    }
    lines = [
      f'largest trainable ({res["base"]["name"]} width, batch 1 x '
      f'{res["seq"]}, full remat; {res["limit_bytes"] / 1e9:.1f} GB)',
      f'{"opt":16s} {"layers":>6s} {"params B":>9s} {"x adamw":>8s}',
    ]
    base = rows.get('adamw', (None,))[0]
    for o, (n, layers) in rows.items():
      x = f'{n / base:8.3f}' if n and base else f'{"-":>8s}'
      size = f'{n / 1e9:9.2f}' if n else f'{"-":>9s}'
      lines.append(f'{o:16s} {layers or "-":>6} {size} {x}')
    return '\n'.join(lines)
  best = res['best']
  lines = [
    f'tokens/s ({res["config"]["name"]}, seq {res["seq"]}), best batch and '
    'remat policy per optimizer',
    f'{"opt":16s} {"policy":>6s} {"batch":>5s} {"tokens/s":>9s} '
    f'{"x adamw":>8s}',
  ]
  base = best.get('adamw', {}).get('tokens_per_s')
  for o in dict.fromkeys(r['opt'] for r in res['runs']):
    b = best.get(o)
    if not b:
      lines.append(f'{o:16s} {"-":>6s} {"-":>5s} {"-":>9s} {"-":>8s}')
      continue
    x = f'{b["tokens_per_s"] / base:8.3f}' if base else f'{"-":>8s}'
    lines.append(
      f'{o:16s} {b["policy"]:>6s} {b["batch"]:5d} {b["tokens_per_s"]:9.0f} {x}'
    )
  return '\n'.join(lines)


def fsdp_table(res):
  """The 7B FSDP runs, one line per optimizer (GB per GPU)."""
  G = 1e9
  lines = [
    f'{res.get("fsdp_config")} FSDP over {res["n_devices"]} GPUs, '
    f'policy {res.get("fsdp_policy")}, seq {res.get("seq")}',
    f'{"opt":15s} {"batch":>5s} {"tok/s":>8s} {"step s":>7s} '
    f'{"peak GB":>8s} {"pred GB":>8s} {"state GB":>8s}  note',
  ]
  for opt, r in res['fsdp7b'].items():
    peak = max(r.get('peak_bytes_per_gpu') or [0])
    note = r.get('skipped') or r.get('note') or r.get('error') or ''
    if r.get('failed_batches'):
      note = f'failed {r["failed_batches"]} {note}'
    lines.append(
      f'{opt:15s} {r.get("batch", r.get("predicted_batch", 0)) or 0:5d} '
      f'{r.get("tokens_per_s", 0):8.0f} {r.get("step_s", 0):7.3f} '
      f'{peak / G:8.1f} {r.get("predicted_peak_bytes_per_gpu", 0) / G:8.1f} '
      f'{r.get("state_bytes_per_gpu", 0) / G:8.1f}  {note}'[:200]
    )
  for opt, c in res['check'].items():
    for m, v in c.items():
      if m != 'one_gpu':
        lines.append(
          f'check {opt} {m}: rel err params '
          f'{v.get("rel_err_params_vs_one_gpu", float("nan")):.2e}, '
          f'max loss diff {v.get("max_abs_loss_diff", float("nan")):.2e}'
        )
  return '\n'.join(lines)


def summary(mode, res):
  if mode == 'largest':
    return {
      o: (
        r.get('largest_layers'),
        r.get('largest_params'),
        r.get('predicted_layers'),
      )
      for o, r in res['opts'].items()
    }
  if mode == 'throughput':
    return res['best']
  if mode == 'memory':
    return [
      (r['opt'], r['policy'], r['fsdp_hooks'], round(r['peak'] / 1e9, 2))
      for r in res['runs']
    ]
  return {
    'check': {
      o: {
        m: (
          v.get('rel_err_params_vs_one_gpu'),
          v.get('rel_err_update_vs_one_gpu'),
          v.get('step_s'),
        )
        for m, v in c.items()
        if m != 'one_gpu'
      }
      for o, c in res['check'].items()
    },
    'fsdp7b': {
      o: (
        v.get('tokens_per_s'),
        v.get('batch'),
        v.get('peak_bytes_per_gpu'),
        v.get('state_bytes_per_gpu'),
      )
      for o, v in res['fsdp7b'].items()
      if isinstance(v, dict)
    },
  }


if __name__ == '__main__':
  main()

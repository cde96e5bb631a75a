"""One training run: compile, initialise, resume, train, evaluate, save.

``train(model_cfg, train_cfg, corpus)`` trains one model with the optimizer
``train_cfg.opt`` names and returns a ``RunResult``. The initial weights
depend only on ``(model_cfg, seed)`` and the batch of step ``s`` only on
``(seed, s)``, so two optimizers see the same model and the same data, and a
resumed run repeats an uninterrupted one exactly.

The train step comes from ``step.compile_run``, compiled once per
configuration; a step that needs more memory than a device has is refused
before the run starts. Losses stay on the device and are fetched every ``log_every`` steps; a
non-finite one stops the run (``NonFiniteLoss``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from typing import Any, NamedTuple

import jax
import numpy as np

from examples.lm import checkpoint, config, data, model, optimizer, sharding
from examples.lm.config import ModelConfig, TrainConfig
from examples.lm.step import compile_run
from optax_adam_mini.report import tree_bytes


class RunResult(NamedTuple):
  metrics: dict[str, Any]  # plain JSON values: what metrics.json holds
  params: Any
  opt_state: Any


class NonFiniteLoss(FloatingPointError):
  """The training loss became NaN or infinite: the run diverged."""

  def __init__(self, optimizer_name: str, step: int, loss: float):
    self.step, self.loss = step, loss
    super().__init__(
      f'[{optimizer_name}] the training loss is {loss} at step {step}: the '
      'run diverged and was stopped (try a lower --lr or more --warmup-steps)'
    )


class Throughput:
  """Tokens per second of training steps alone.

  The clock runs between fetches of the losses. The first step of a call
  (it waits for everything queued before it) and the time spent evaluating
  or saving (``skip``) are left out.
  """

  def __init__(self, tokens_per_step: int, seconds=0.0, tokens=0):
    self.tokens_per_step = tokens_per_step
    self.seconds, self.tokens = seconds, tokens
    self.first_step_seconds = 0.0
    self._started = self._mark = None

  def start(self) -> None:
    self._started = time.perf_counter()

  def record(self, steps: int) -> None:
    """The losses of ``steps`` more steps reached the host."""
    now = time.perf_counter()
    if self._mark is None:
      self.first_step_seconds = now - self._started
    else:
      self.seconds += now - self._mark
      self.tokens += steps * self.tokens_per_step
    self._mark = now

  def skip(self) -> None:
    self._mark = time.perf_counter()

  @property
  def rate(self) -> float:
    return self.tokens / max(self.seconds, 1e-9)

  def final_rate(self, steps_done: int) -> float:
    seconds, tokens = self.seconds, self.tokens
    if tokens == 0 and steps_done:  # one step: its time is all there is
      seconds, tokens = self.first_step_seconds, self.tokens_per_step
    return tokens / seconds if seconds else float('nan')


def _evaluate(run, params, batches) -> float:
  losses = [
    float(run.eval_step(params, jax.device_put(b, run.batch_sharding)))
    for b in batches
  ]
  return float(np.mean(losses))


def train(
  model_cfg: ModelConfig,
  train_cfg: TrainConfig,
  corpus: data.Corpus,
  *,
  mesh: jax.sharding.Mesh | None = None,
  checkpoint_dir: str | None = None,
  resume: bool = False,
  progress: bool = True,
  print_fn=print,
) -> RunResult:
  """Trains one model with one optimizer; see the module docstring."""
  from tqdm.auto import tqdm

  name = train_cfg.opt.name
  config.check_sequence(model_cfg, train_cfg)
  data.check_seq_len(corpus, train_cfg.seq_len)
  mesh = sharding.default_mesh() if mesh is None else mesh
  sharding.check_batch(train_cfg.batch_size, mesh)
  run_fingerprint = checkpoint.fingerprint(model_cfg, train_cfg, corpus)
  with contextlib.ExitStack() as cleanup:
    checkpoints, start = None, None
    if checkpoint_dir and (train_cfg.checkpoint_every > 0 or resume):
      checkpoints = checkpoint.Checkpoints(checkpoint_dir)
      cleanup.callback(checkpoints.close)
      start = checkpoint.check(checkpoints, run_fingerprint, resume)

    # ---- model, optimizer and state
    run = compile_run(
      model_cfg, train_cfg.opt, mesh, train_cfg.batch_size, train_cfg.seq_len
    )
    params = model.init_params(model_cfg, train_cfg.seed, mesh)
    opt_state = run.init_state(params)
    if name == 'adam_mini':
      print_fn(optimizer.partition_report(train_cfg.opt, model_cfg, params))
    history = {'train_loss': [], 'val_step': [], 'val_loss': []}
    tokens_per_step = train_cfg.batch_size * train_cfg.seq_len
    clock = Throughput(tokens_per_step)
    if start is not None:
      params, opt_state = checkpoints.restore(start, params, opt_state)
      record = checkpoints.record(start)
      history = record['history']
      clock = Throughput(
        tokens_per_step, record['train_time'], record['timed_tokens']
      )
      print_fn(f'[{name}] resumed from {checkpoint_dir} at step {start}')
    elif resume:
      print_fn(
        f'[{name}] --resume: no checkpoint in {checkpoint_dir}; starting '
        'from step 0'
      )
    start = start or 0
    val_set = data.val_batches(
      corpus.val_tokens,
      train_cfg.eval_batches,
      train_cfg.batch_size,
      train_cfg.seq_len,
    )
    if not history['val_step']:
      history['val_step'].append(0)
      history['val_loss'].append(_evaluate(run, params, val_set))

    # ---- the loop
    end = train_cfg.end_step
    bar = tqdm(
      total=train_cfg.steps,
      initial=start,
      desc=name,
      disable=not progress,
      dynamic_ncols=True,
      mininterval=0.5,
    )
    cleanup.callback(bar.close)
    pending = []  # losses of steps not yet fetched from the device

    def fetch_losses():
      losses = [float(x) for x in jax.device_get(pending)]
      for i, loss in enumerate(losses):
        if not math.isfinite(loss):
          raise NonFiniteLoss(name, len(history['train_loss']) + i + 1, loss)
      history['train_loss'].extend(losses)
      clock.record(len(losses))
      bar.update(len(losses))
      bar.set_postfix(loss=f'{losses[-1]:.3f}', tok_s=f'{clock.rate:,.0f}')
      pending.clear()

    clock.start()
    for step in range(start, end):
      batch = data.get_batch(
        corpus.train_tokens,
        step,
        train_cfg.batch_size,
        train_cfg.seq_len,
        train_cfg.seed,
      )
      batch = jax.device_put(batch, run.batch_sharding)
      params, opt_state, loss = run.train_step(params, opt_state, batch)
      pending.append(loss)
      done = step + 1
      do_eval = done % train_cfg.eval_every == 0 or done == train_cfg.steps
      do_save = (
        checkpoints is not None
        and train_cfg.checkpoint_every > 0
        and (done % train_cfg.checkpoint_every == 0 or done == end)
      )
      fetch = step == start or len(pending) >= train_cfg.log_every
      if fetch or do_eval or do_save or done == end:
        fetch_losses()
      if do_eval:
        history['val_step'].append(done)
        history['val_loss'].append(_evaluate(run, params, val_set))
        bar.set_postfix(
          loss=f'{history["train_loss"][-1]:.3f}',
          val=f'{history["val_loss"][-1]:.3f}',
          tok_s=f'{clock.rate:,.0f}',
        )
      if do_save:
        record = {
          'fingerprint': run_fingerprint,
          'history': history,
          'train_time': clock.seconds,
          'timed_tokens': clock.tokens,
          'step': done,
        }
        checkpoints.save(done, params, opt_state, record)
      if do_eval or do_save:
        clock.skip()  # evaluation and checkpointing are not training time

  if end < train_cfg.steps:
    saved = checkpoints is not None and train_cfg.checkpoint_every > 0
    saved = '; --resume continues it' if saved else ''
    print_fn(
      f'[{name}] stopped early, after step {end} of {train_cfg.steps} '
      f'(--stop-after {train_cfg.stop_after}){saved}'
    )
  metrics = _metrics(model_cfg, train_cfg, corpus, mesh, history, clock)
  metrics['optimizer_state_bytes'] = tree_bytes(opt_state)
  metrics['param_bytes'] = tree_bytes(params)
  metrics['param_count'] = model.param_count(params)
  return RunResult(metrics, params, opt_state)


def _metrics(model_cfg, train_cfg, corpus, mesh, history, clock) -> dict:
  """The run's record, as plain JSON values (no arrays)."""
  steps_done = len(history['train_loss'])
  tail = history['train_loss'][-10:] or [float('nan')]
  return {
    'optimizer': train_cfg.opt.name,
    'steps': steps_done,
    'stopped_early': steps_done < train_cfg.steps,
    'final_val_loss': history['val_loss'][-1],
    'final_train_loss': float(np.mean(tail)),
    'tokens_per_second': clock.final_rate(steps_done),
    'tokens_seen': steps_done * clock.tokens_per_step,
    'history': history,
    'model_config': dataclasses.asdict(model_cfg),
    # Plain JSON (tuples as lists), as metrics.json holds it.
    'train_config': json.loads(json.dumps(dataclasses.asdict(train_cfg))),
    'mesh': dict(mesh.shape),
    'data': corpus.description,
    'tokenizer': corpus.tokenizer.name,
    'notes': (
      'final_train_loss is the mean of the last 10 steps; tokens_per_second '
      'excludes compilation, evaluation and checkpointing; losses are in '
      'nats per token (per byte with the byte tokenizer)'
    ),
  }

"""Orbax checkpoints of a run, and the guard that resumes only the same run.

A checkpoint holds the weights, the optimizer state and a JSON record: the
run's fingerprint (every setting that shapes its trajectory), its loss
history and its training time so far. Resuming from it repeats an
uninterrupted run bit for bit, because the batch of step ``s`` is a pure
function of ``(seed, s)``. A checkpoint written by a run with other settings
is refused (``ResumeMismatch`` names each setting that differs), and so is
a fresh run into a folder that holds checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from examples.lm.config import ModelConfig, TrainConfig, UsageError
from examples.lm.data import Corpus

# Settings that change how long a run goes or how it is saved, not its steps.
_RUN_LENGTH_FIELDS = ('steps', 'checkpoint_every', 'stop_after', 'log_every')


def fingerprint(
  model_cfg: ModelConfig, train_cfg: TrainConfig, corpus: Corpus
) -> dict[str, Any]:
  """What must match for a resumed run to continue the same run."""
  train = dataclasses.asdict(train_cfg)
  for name in _RUN_LENGTH_FIELDS:
    train.pop(name)
  model = dataclasses.asdict(model_cfg)
  model.pop('remat')  # remat changes memory, not math
  data = {
    'description': corpus.description,
    'tokenizer': corpus.tokenizer.name,
    'vocab_size': corpus.tokenizer.vocab_size,
    'train_tokens': len(corpus.train_tokens),
    'val_tokens': len(corpus.val_tokens),
  }
  # As the checkpoint's JSON record holds it (tuples as lists), so that a
  # fresh fingerprint compares equal to a saved one.
  return json.loads(json.dumps({'model': model, 'train': train, 'data': data}))


def differences(old: dict, new: dict, prefix: str = '') -> list[tuple]:
  """``(dotted name, old value, new value)`` for each setting that differs."""
  out = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += differences(a, b, f'{prefix}{key}.')
    elif a != b:
      out.append((f'{prefix}{key}', a, b))
  return out


class ResumeMismatch(UsageError):
  """The checkpoint was written by a run with other settings."""

  def __init__(self, directory: str, diffs: list[tuple]):
    self.directory, self.diffs = directory, diffs
    listed = '; '.join(
      f'{name}: {a!r} there, {b!r} now' for name, a, b in diffs
    )
    super().__init__(
      f'--resume: {directory} was written by a different run ({listed})'
    )


class Checkpoints:
  """The checkpoints of one run in ``directory`` (created when needed)."""

  def __init__(self, directory: str):
    self.directory = directory
    options = ocp.CheckpointManagerOptions(
      max_to_keep=2, create=True, enable_async_checkpointing=False
    )
    self._manager = ocp.CheckpointManager(
      os.path.abspath(directory), options=options
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def record(self, step: int) -> dict[str, Any]:
    """The JSON record saved with ``step``."""
    args = ocp.args.Composite(meta=ocp.args.JsonRestore())
    return self._manager.restore(step, args=args)['meta']

  def restore(self, step: int, params, opt_state):
    """Weights and state of ``step``, laid out like ``params``/``opt_state``."""
    target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      {'params': params, 'opt_state': opt_state},
    )
    args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
    state = self._manager.restore(step, args=args)['state']
    return state['params'], state['opt_state']

  def save(self, step: int, params, opt_state, record: dict) -> None:
    state = {'params': params, 'opt_state': opt_state}
    args = ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(record)
    )
    self._manager.save(step, args=args, force=True)
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def check(
  checkpoints: Checkpoints, run_fingerprint: dict, resume: bool
) -> int | None:
  """The step to resume from, or None; raises if the folder is not this run's."""
  latest = checkpoints.latest_step()
  if latest is None:
    return None
  if not resume:
    raise UsageError(
      f'{checkpoints.directory} already holds checkpoints (step {latest}); '
      'pass --resume to continue, or use another --out'
    )
  diffs = differences(
    checkpoints.record(latest)['fingerprint'], run_fingerprint
  )
  if diffs:
    raise ResumeMismatch(checkpoints.directory, diffs)
  return latest


def check_folder(directory: str, run_fingerprint: dict, resume: bool) -> None:
  """``check`` without creating anything: fails before a model is built."""
  if os.path.isdir(directory):
    checkpoints = Checkpoints(directory)
    try:
      check(checkpoints, run_fingerprint, resume)
    finally:
      checkpoints.close()

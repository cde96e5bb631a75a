#!/usr/bin/env python
"""Train a small decoder-only language model with Adam-mini and/or AdamW.

    # tiny Llama, AdamW and Adam-mini: about 4 minutes on 2 CPU cores
    python examples/train_lm.py
    python examples/train_lm.py --optimizer adam_mini --steps 200 --out runs/quick
    python examples/train_lm.py --preset gpt2-124m --data my_corpus/ --remat
    # a 16k byte-level BPE, trained on the data's training split
    python examples/train_lm.py --preset small --data my_corpus/ --file-types .py,.md
    # FSDP x tensor parallel on 4 (here: simulated) devices
    XLA_FLAGS=--xla_force_host_platform_device_count=4 \\
        python examples/train_lm.py --mesh data=1,fsdp=2,tp=2 --steps 20

Writes ``<out>/<optimizer>/metrics.json`` (and ``checkpoints/`` with
``--checkpoint-every``) per optimizer, then ``<out>/loss.png`` and
``<out>/summary.json``; a BPE tokenizer and its token ids are kept in
``<out>/data/`` for the next run on the same data. This file is the command line only: the model, data,
optimizers and loop live in ``examples/lm/`` (see its docstring). Each flag
of a setting comes from a field of ``examples/lm/config.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

try:
  import jax

  from examples.lm import (
    checkpoint,
    config,
    data,
    model,
    presets,
    report,
    sharding,
    train,
  )
except ModuleNotFoundError as missing:  # a clone that is not installed
  sys.exit(
    f'{os.path.basename(__file__)}: error: {missing}; from the repository '
    "root, install the project first: pip install -e '.[examples]'"
  )

DEFAULT_OUT = os.path.join('runs', 'train_lm')
_TYPES = {'int': int, 'float': float, 'str': str}
_GROUPS = (
  ('training', config.TrainConfig),
  ('optimizer', config.OptimizerConfig),
  ('data', config.DataConfig),
  ('model', config.ModelConfig),
)


def _flag_fields(cls) -> list[dataclasses.Field]:
  """The fields that are flags: all but a model's, unless marked ``cli``."""
  default = cls is not config.ModelConfig
  return [
    f
    for f in dataclasses.fields(cls)
    if 'help' in f.metadata and f.metadata.get('cli', default)
  ]


def _default_text(cls, field: dataclasses.Field) -> str:
  """``(default: X)``, or the preset's value where presets differ."""
  if '(default' in field.metadata['help'] or field.type == 'bool':
    return ''
  if cls in (config.TrainConfig, config.OptimizerConfig):
    values = {}
    for preset, (_, _, train_cfg) in presets.PRESETS.items():
      owner = train_cfg if cls is config.TrainConfig else train_cfg.opt
      values[preset] = getattr(owner, field.name)
    if len(set(values.values())) > 1:
      return f" (default: the preset's; {values['tiny']} for tiny)"
    return f' (default: {values["tiny"]})'
  return f' (default: {field.default})'


class _Parser(argparse.ArgumentParser):
  """Bad arguments: one line on stderr and exit code 2, no usage dump."""

  def error(self, message):
    self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
    description='Train a small decoder-only LM with Adam-mini and/or AdamW '
    '(Flax NNX). A setting not given here comes from the preset.'
  )
  named = ', '.join(
    f'{k} ({v.description})' for k, v in presets.PRESETS.items()
  )
  parser.add_argument(
    '--preset', default='tiny', choices=list(presets.PRESETS),
    help=f'model shape and default settings: {named} (default: tiny)',
  )  # fmt: skip
  parser.add_argument(
    '--optimizer', default='both', choices=[*config.OPTIMIZERS, 'both'],
    help='which optimizers to train, one after the other (default: both)',
  )  # fmt: skip
  parser.add_argument(
    '--out', default=DEFAULT_OUT,
    help=f'output folder (default: {DEFAULT_OUT})',
  )  # fmt: skip
  parser.add_argument(
    '--mesh',
    help='device mesh, e.g. data=2,fsdp=2,tp=1 (default: every device on data)',
  )
  parser.add_argument(
    '--resume', action='store_true',
    help='continue from the latest checkpoint in --out',
  )  # fmt: skip
  parser.add_argument(
    '--no-progress', action='store_true', help='no progress bar'
  )
  for title, cls in _GROUPS:
    group = parser.add_argument_group(f'{title} settings')
    for field in _flag_fields(cls):
      help_text = field.metadata['help'] + _default_text(cls, field)
      option = field.metadata.get('flag', config.flag(field.name))
      kwargs = dict(
        dest=field.name,
        default=None,
        help=help_text.replace('%', '%%'),
      )
      if field.type == 'bool':
        kwargs['action'] = 'store_true'
      else:
        kwargs['type'] = _TYPES[field.type.split(' | ')[0]]
        kwargs['choices'] = field.metadata.get('choices')
        if not kwargs['choices']:
          kwargs['metavar'] = option[2:].upper().replace('-', '_')
      group.add_argument(option, **kwargs)
  return parser


def configs_from_args(args: argparse.Namespace):
  """``(ModelConfig, TrainConfig, DataConfig)`` from the preset and the flags."""
  given = {k: v for k, v in vars(args).items() if v is not None}
  run_fields = {
    f.name
    for cls in (config.TrainConfig, config.OptimizerConfig, config.ModelConfig)
    for f in _flag_fields(cls)
  }
  model_cfg, train_cfg = presets.from_preset(
    args.preset, **{k: v for k, v in given.items() if k in run_fields}
  )
  data_fields = {f.name for f in _flag_fields(config.DataConfig)}
  data_cfg = presets.data_config(
    args.preset, **{k: v for k, v in given.items() if k in data_fields}
  )
  return model_cfg, train_cfg, data_cfg


def _resume_hint(error: checkpoint.ResumeMismatch) -> str:
  """The flags that make this run the checkpoint's again."""
  flags = {f.name: f for _, cls in _GROUPS for f in _flag_fields(cls)}
  fixes = [
    f'{config.flag(name.rsplit(".", 1)[-1])} {old}'
    for name, old, _ in error.diffs
    if name.rsplit('.', 1)[-1] in flags and not name.startswith('data.')
  ]
  hint = f'; to continue it, pass {" ".join(fixes)}' if fixes else ''
  if any(name.endswith('schedule_steps') for name, _, _ in error.diffs):
    hint += " (steps past --schedule-steps keep the schedule's last rate)"
  if len(fixes) < len(error.diffs):
    hint += '; the same --preset and --data are needed too'
  return f'{error}{hint}; or start anew with another --out'


def run(args: argparse.Namespace) -> dict[str, train.RunResult]:
  model_cfg, train_cfg, data_cfg = configs_from_args(args)
  mesh_sizes = sharding.parse_mesh(args.mesh, len(jax.devices()))
  # A trained tokenizer and its ids are kept next to the run, for the next.
  corpus = data.load(data_cfg, cache_dir=os.path.join(args.out, 'data'))
  model_cfg = dataclasses.replace(
    model_cfg, vocab_size=corpus.tokenizer.vocab_size
  )
  names = config.OPTIMIZERS if args.optimizer == 'both' else [args.optimizer]
  runs = {
    name: dataclasses.replace(
      train_cfg, opt=dataclasses.replace(train_cfg.opt, name=name)
    )
    for name in names
  }
  if args.resume or train_cfg.checkpoint_every:
    # A checkpoint of another run is refused now, before anything is built.
    for name, cfg in runs.items():
      folder = os.path.join(args.out, name, 'checkpoints')
      fingerprint = checkpoint.fingerprint(model_cfg, cfg, corpus)
      try:
        checkpoint.check_folder(folder, fingerprint, args.resume)
      except checkpoint.ResumeMismatch as error:
        raise config.UsageError(_resume_hint(error)) from None
  mesh = sharding.make_mesh(mesh_sizes)

  n_params = model.param_count(model.abstract_params(model_cfg))
  print(
    f'preset {args.preset}: {model_cfg.arch}, {n_params:,} parameters, '
    f'd_model={model_cfg.d_model}, layers={model_cfg.num_layers}, '
    f'heads={model_cfg.num_heads}/{model_cfg.num_kv_heads} kv, '
    f'compute {model_cfg.dtype}'
  )
  print(
    f'data: {corpus.description}: {len(corpus.train_tokens):,} train / '
    f'{len(corpus.val_tokens):,} val tokens (tokenizer: '
    f'{corpus.tokenizer.description})'
  )
  opt = train_cfg.opt
  print(
    f'mesh: {mesh_sizes} on {jax.devices()[0].platform}; '
    f'steps={train_cfg.steps} batch={train_cfg.batch_size} '
    f'seq_len={train_cfg.seq_len} lr={opt.lr} warmup={opt.warmup_steps} '
    f'wd={opt.weight_decay} partition={opt.partition} '
    f'mu_dtype={opt.mu_dtype} (Adam-mini)'
  )

  results = {}
  for name, cfg in runs.items():
    folder = os.path.join(args.out, name)
    start = time.perf_counter()
    result = train.train(
      model_cfg,
      cfg,
      corpus,
      mesh=mesh,
      checkpoint_dir=os.path.join(folder, 'checkpoints'),
      resume=args.resume,
      progress=not args.no_progress,
    )
    m = result.metrics
    m['wall_time_s'] = time.perf_counter() - start
    m['preset'] = args.preset
    report.write_json(os.path.join(folder, 'metrics.json'), m)
    results[name] = result
    print(
      f'[{name}] val loss {m["final_val_loss"]:.4f}, train loss '
      f'{m["final_train_loss"]:.4f}, {m["tokens_per_second"]:,.0f} tokens/s, '
      f'optimizer state {report.format_bytes(m["optimizer_state_bytes"])}, '
      f'{m["wall_time_s"]:.1f}s'
    )

  metrics = {name: result.metrics for name, result in results.items()}
  title = f'{args.preset} ({model_cfg.arch})'
  report.plot_losses(metrics, os.path.join(args.out, 'loss.png'), title)
  summary = report.summary(metrics)
  report.write_json(os.path.join(args.out, 'summary.json'), summary)
  print()
  print(report.summary_table(metrics))
  if 'state_bytes_saved' in summary:
    ratio = summary['val_loss_ratio_adam_mini_over_adamw']
    saved = report.format_bytes(summary['state_bytes_saved'])
    print(
      f'\nAdam-mini / AdamW validation loss: {ratio:.4f}; optimizer state '
      f'saved: {saved}'
    )
  print(f'wrote {args.out}/')
  return results


def main(argv=None) -> dict[str, train.RunResult]:
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    return run(args)
  except config.UsageError as error:
    parser.error(str(error))
  except train.NonFiniteLoss as error:
    parser.exit(1, f'{parser.prog}: error: {error}\n')


if __name__ == '__main__':
  main()

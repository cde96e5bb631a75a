"""What defines a run: the model's shape, the optimizer, the loop, the data.

Frozen dataclasses, grouped as nanodo groups its config: ``ModelConfig``
(the transformer), ``TrainConfig`` (the loop) holding an ``OptimizerConfig``
(everything that defines the update, the schedule included), and
``DataConfig`` (the corpus and its tokenizer). Every field carries its help
text; ``examples/train_lm.py`` makes one flag per field from it (a
``ModelConfig`` field only where it says ``cli=True``), so a default is
written once, here.

Each config checks its fields when it is made and raises ``UsageError``
naming the flag. Named settings are in ``presets``.
"""

from __future__ import annotations

import dataclasses

from optax_adam_mini import MomentQuantization

OPTIMIZERS = ('adam_mini', 'adamw')
# Block partitions by name (``partitions.build`` maps them to blocks), and
# the roles an ``adam:ROLE[+ROLE...]`` name (the role ablation) makes plain
# Adam.
PARTITIONS = (
  'default',
  'elementwise',
  'whole',
  'qk-neuron',
  'vom-input',
  'slim',
)
ABLATION_ROLES = (
  'query', 'key', 'value', 'attention_out', 'attention', 'mlp', 'norm',
  'embedding', 'output',
)  # fmt: skip
DTYPES = ('bfloat16', 'float32', 'float16')
# Adam-mini's first moment: floats, or quantized (``optimizer.mu_dtype``).
MU_DTYPES = ('float32', 'bfloat16', 'int8', 'int4')
TOKENIZERS = ('byte', 'bpe')


class UsageError(ValueError):
  """A bad setting or input; the CLI prints it as one line (exit code 2)."""


def _field(default, help: str, **metadata):
  return dataclasses.field(default=default, metadata={'help': help, **metadata})


def flag(name: str) -> str:
  """The command-line flag of a config field: ``warmup_steps`` -> ``--warmup-steps``."""
  return '--' + name.replace('_', '-')


def _require(ok: bool, name: str, value, rule: str) -> None:
  if not ok:
    raise UsageError(f'{flag(name)} must be {rule} (got {value!r})')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The transformer's shape and numerics, in the library's vocabulary.

  ``num_kv_heads`` and ``head_dim`` are resolved once, when the config is
  made (``None`` gives ``num_heads`` and ``d_model // num_heads``); pass them
  as ``None`` again to ``dataclasses.replace`` to re-derive them.
  """

  arch: str = _field('llama', 'architecture', choices=('llama', 'gpt2'))
  vocab_size: int = _field(256, 'vocabulary size (set from the tokenizer)')
  d_model: int = _field(128, 'width of the residual stream')
  num_layers: int = _field(2, 'transformer blocks')
  num_heads: int = _field(4, 'query heads')
  num_kv_heads: int | None = _field(None, 'key/value heads (llama GQA)')
  head_dim: int | None = _field(None, 'width of one head')
  d_ff: int = _field(512, 'hidden width of the MLP')
  max_seq_len: int = _field(1024, 'learned positions (gpt2 only)')
  rope_theta: float = _field(10000.0, 'rotary base (llama only)')
  norm_eps: float = _field(1e-5, 'epsilon of the norms')
  dtype: str = _field(
    'bfloat16',
    'compute dtype (weights and optimizer state stay float32)',
    choices=DTYPES,
    cli=True,
  )
  param_dtype: str = _field('float32', 'dtype of the master weights')
  remat: bool = _field(
    False, 'rematerialise each block in the backward pass', cli=True
  )
  init_std: float = _field(0.02, 'standard deviation of the initial weights')

  def __post_init__(self):
    if self.arch not in ('llama', 'gpt2'):
      raise UsageError(
        f"unknown arch {self.arch!r}; expected 'llama' or 'gpt2'"
      )
    if self.num_kv_heads is None:
      object.__setattr__(self, 'num_kv_heads', self.num_heads)
    if self.head_dim is None and self.num_heads > 0:
      object.__setattr__(self, 'head_dim', self.d_model // self.num_heads)
    heads, kv_heads = self.num_heads, self.num_kv_heads
    if heads <= 0 or kv_heads <= 0 or heads % kv_heads:
      raise UsageError(
        f'num_heads={heads} must be a positive multiple of '
        f'num_kv_heads={kv_heads}'
      )
    if self.arch == 'gpt2' and (
      heads * self.head_dim != self.d_model or kv_heads != heads
    ):
      raise UsageError(
        'gpt2 needs num_heads * head_dim == d_model and no grouped heads'
      )
    if self.arch == 'llama' and self.head_dim % 2:
      raise UsageError('rotary embeddings need an even head_dim')
    _require(self.dtype in DTYPES, 'dtype', self.dtype, f'one of {DTYPES}')
    _require(self.vocab_size >= 1, 'vocab_size', self.vocab_size, '>= 1')

  def partition_kwargs(self) -> dict[str, int]:
    """The head layout, as ``adam_mini`` and ``partition_report`` take it."""
    return dict(
      num_heads=self.num_heads,
      num_kv_heads=self.num_kv_heads,
      head_dim=self.head_dim,
    )


def check_partition(name: str) -> None:
  """Refuses a ``--partition`` that is not one of ``PARTITIONS`` or adam:...."""
  if name in PARTITIONS:
    return
  roles = name.removeprefix('adam:').split('+')
  if name.startswith('adam:') and all(r in ABLATION_ROLES for r in roles):
    return
  raise UsageError(
    f'--partition {name!r}: expected one of {", ".join(PARTITIONS)}, or '
    f'adam:ROLE[+ROLE...] with roles {", ".join(ABLATION_ROLES)}'
  )


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Everything that defines the update; AdamW and Adam-mini share it."""

  # A flag of its own: train_lm.py's --optimizer also takes 'both'.
  name: str = _field('adam_mini', 'optimizer', choices=OPTIMIZERS, cli=False)
  lr: float = _field(3e-3, 'peak learning rate (warmup, then cosine)')
  warmup_steps: int = _field(
    80, "linear warmup steps (default: 10% of --steps, at most the preset's)"
  )
  schedule_steps: int = _field(
    800,
    'length of the warmup + cosine schedule; later steps keep its final '
    'learning rate (default: --steps)',
  )
  min_lr_ratio: float = _field(0.1, 'final learning rate / peak')
  weight_decay: float = _field(0.1, 'decoupled weight decay (matrices only)')
  b1: float = _field(0.9, "Adam's first-moment decay")
  b2: float = _field(0.95, "Adam's second-moment decay")
  eps: float = _field(1e-8, "Adam's epsilon")
  grad_clip: float = _field(1.0, 'global gradient-norm clipping threshold')
  partition: str = _field(
    'default',
    "Adam-mini's blocks. default: the library's transformer rules; "
    'elementwise: one v per coordinate (plain Adam); whole: one v per leaf; '
    'qk-neuron: queries and keys per output neuron, not per head; '
    'vom-input: values, attention outputs and MLPs per input neuron; slim: '
    "both, and norms elementwise (SlimAdam's rules, the library's "
    "block_rules='slim'); adam:ROLE[+ROLE...]: the "
    f'default with these roles plain Adam ({", ".join(ABLATION_ROLES)}) '
    '(default: default)',
  )
  value_blocks: str = _field(
    'neuron',
    "Adam-mini's blocks for value projections, with --partition default: "
    'one v per output neuron, or one per leaf (whole; the reference advises '
    'it for runs below ~10k steps)',
    choices=('neuron', 'whole'),
  )
  mu_dtype: str | MomentQuantization = _field(
    'float32',
    "how Adam-mini stores its first moment m (AdamW's stays float32): "
    'float32 (4 bytes per parameter), bfloat16 (2), or quantized: int8 '
    '(1 byte, plus a float32 scale per group of 256) or int4 (half a byte, '
    'groups of 128); leaves under 4096 parameters keep a float32 m. In code '
    "also a MomentQuantization (the library's options)",
    choices=MU_DTYPES,
  )
  layouts: tuple = _field(
    (),
    "blocks or layouts stated by path pattern, the library's layouts=: "
    '((pattern, Block or layout string), ...), on top of --partition',
    cli=False,
  )

  def __post_init__(self):
    _require(self.name in OPTIMIZERS, 'optimizer', self.name, str(OPTIMIZERS))
    _require(self.lr > 0, 'lr', self.lr, '> 0')
    _require(self.warmup_steps >= 0, 'warmup_steps', self.warmup_steps, '>= 0')
    _require(
      self.schedule_steps >= 1, 'schedule_steps', self.schedule_steps, '>= 1'
    )
    _require(
      0 <= self.min_lr_ratio <= 1,
      'min_lr_ratio',
      self.min_lr_ratio,
      'in [0, 1]',
    )
    _require(self.weight_decay >= 0, 'weight_decay', self.weight_decay, '>= 0')
    _require(0 <= self.b1 < 1, 'b1', self.b1, 'in [0, 1)')
    _require(0 <= self.b2 < 1, 'b2', self.b2, 'in [0, 1)')
    _require(self.eps > 0, 'eps', self.eps, '> 0')
    _require(self.grad_clip > 0, 'grad_clip', self.grad_clip, '> 0')
    check_partition(self.partition)
    if not isinstance(self.mu_dtype, MomentQuantization):
      _require(
        self.mu_dtype in MU_DTYPES,
        'mu_dtype',
        self.mu_dtype,
        f'one of {MU_DTYPES} or a MomentQuantization',
      )
    _require(
      self.value_blocks in ('neuron', 'whole'),
      'value_blocks',
      self.value_blocks,
      "'neuron' or 'whole'",
    )
    if self.value_blocks != 'neuron' and self.partition != 'default':
      raise UsageError(
        f'--value-blocks {self.value_blocks} configures --partition default, '
        f'not --partition {self.partition}'
      )
    if self.layouts and self.partition in ('elementwise', 'whole'):
      raise UsageError(
        f'layouts configure the default partition and those built on it, '
        f'not --partition {self.partition}'
      )
    for entry in self.layouts:
      if not (isinstance(entry, tuple) and len(entry) == 2):
        raise UsageError(
          f'layouts must be (pattern, Block or layout) pairs, got {entry!r}'
        )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The loop: how long, on what batches, how often to evaluate and save."""

  steps: int = _field(800, 'training steps')
  batch_size: int = _field(16, 'sequences per step')
  seq_len: int = _field(128, 'tokens per sequence')
  seed: int = _field(0, 'seed of the initial weights and of the batches')
  eval_every: int = _field(50, 'validation interval in steps')
  eval_batches: int = _field(4, 'validation batches per evaluation')
  checkpoint_every: int = _field(0, 'Orbax checkpoint interval (0: none)')
  stop_after: int | None = _field(
    None,
    'stop after this step as if interrupted; the schedule still spans '
    '--steps (default: run to --steps)',
  )
  log_every: int = _field(10, 'steps between fetches of the loss')
  opt: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)

  def __post_init__(self):
    for name in ('steps', 'batch_size', 'seq_len', 'eval_every'):
      _require(getattr(self, name) >= 1, name, getattr(self, name), '>= 1')
    for name in ('eval_batches', 'log_every'):
      _require(getattr(self, name) >= 1, name, getattr(self, name), '>= 1')
    _require(
      self.checkpoint_every >= 0,
      'checkpoint_every',
      self.checkpoint_every,
      '>= 0',
    )
    if self.stop_after is not None:
      _require(self.stop_after >= 1, 'stop_after', self.stop_after, '>= 1')

  @property
  def end_step(self) -> int:
    """The step this run stops after: ``steps``, or ``stop_after`` if sooner."""
    return min(self.steps, self.stop_after or self.steps)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the text comes from and how it becomes tokens."""

  path: str | None = _field(
    None,
    "text file or folder of text files, or several joined by ':' (default: "
    'the local Python standard library sources)',
    flag='--data',
  )
  file_types: str | None = _field(
    None,
    'comma-separated file name endings to read from folders, e.g. '
    '.py,.md,.rst,.txt (default: every text file; .py for the standard '
    'library)',
  )
  max_bytes: int | None = _field(
    None,
    'read at most this many bytes (default: 4000000 for the built-in '
    'corpus, all of --data)',
    flag='--max-data-bytes',
  )
  val_fraction: float = _field(
    0.05,
    'fraction of the corpus held out for validation: whole files, or the end '
    'of a single file',
  )
  tokenizer: str = _field(
    'byte',
    'tokenizer: byte (256 ids) or bpe (byte-level BPE trained on the training '
    "split) (default: the preset's; byte for tiny)",
    choices=TOKENIZERS,
  )
  vocab_size: int | None = _field(
    None,
    "vocabulary size (default: the preset's for bpe; byte: 256)",
  )
  tokenizer_train_bytes: int = _field(
    50_000_000,
    'train the BPE tokenizer on at most this many bytes of the training split',
  )

  def __post_init__(self):
    _require(
      0 < self.val_fraction < 1, 'val_fraction', self.val_fraction, 'in (0, 1)'
    )
    if self.max_bytes is not None and self.max_bytes < 1:
      raise UsageError(f'--max-data-bytes must be >= 1 (got {self.max_bytes})')
    _require(
      self.tokenizer in TOKENIZERS,
      'tokenizer',
      self.tokenizer,
      f'one of {TOKENIZERS}',
    )
    _require(
      self.tokenizer_train_bytes >= 1,
      'tokenizer_train_bytes',
      self.tokenizer_train_bytes,
      '>= 1',
    )
    if self.file_types is not None and not self.suffixes():
      raise UsageError(
        f'--file-types {self.file_types!r}: name at least one ending, e.g. .py'
      )

  def suffixes(self) -> tuple[str, ...] | None:
    """``file_types`` as a tuple of endings, or ``None`` for every file."""
    if self.file_types is None:
      return None
    return tuple(s.strip() for s in self.file_types.split(',') if s.strip())


def check_sequence(model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
  """Refuses a sequence longer than the model's learned positions."""
  if model_cfg.arch == 'gpt2' and train_cfg.seq_len > model_cfg.max_seq_len:
    raise UsageError(
      f'--seq-len {train_cfg.seq_len} is longer than the '
      f'{model_cfg.max_seq_len} learned positions of this gpt2 model'
    )

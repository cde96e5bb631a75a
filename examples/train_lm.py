#!/usr/bin/env python
"""Train a small decoder-only language model with Adam-mini and/or AdamW.

A Flax NNX transformer in two flavours that use the parameter names of the
models they imitate, so that ``optax_adam_mini``'s default partition
recognises every weight:

* ``llama``: RMSNorm, SwiGLU MLP, rotary position embeddings, grouped-query
  attention; names ``embed_tokens``, ``layers/N/self_attn/{q,k,v,o}_proj``,
  ``layers/N/mlp/{gate,up,down}_proj``, ``input_layernorm``,
  ``post_attention_layernorm``, ``norm``, ``lm_head``.
* ``gpt2``: LayerNorm, GELU MLP, learned positions, fused QKV, tied output
  embedding; names ``wte``, ``wpe``, ``h/N/attn/c_attn``, ``attn/c_proj``,
  ``mlp/c_fc``, ``mlp/c_proj``, ``ln_1``, ``ln_2``, ``ln_f``.

Weights are kept in float32 (the master copy the optimizer updates) and the
forward/backward pass runs in bfloat16 (``--dtype``).  Tokenisation is
byte-level (vocabulary 256), so any text works.  Without ``--data`` the model
trains on the Python standard library's own source files, read from the
local installation: nothing is ever downloaded.

Examples::

    # tiny Llama, AdamW and Adam-mini: about 4 minutes on 2 CPU cores
    python examples/train_lm.py
    python examples/train_lm.py --optimizer adam_mini --steps 200 --out runs/quick
    python examples/train_lm.py --preset gpt2-124m --data my_corpus/ --remat
    # FSDP x tensor parallel on 4 (here: simulated) devices
    XLA_FLAGS=--xla_force_host_platform_device_count=4 \\
        python examples/train_lm.py --mesh data=1,fsdp=2,tp=2 --steps 20

Outputs (``--out``, default ``runs/train_lm``): ``<optimizer>/metrics.json``
per optimizer (just ``metrics.json`` with a single ``--optimizer``),
``loss.png`` and ``summary.json``.  The partition report of the library is
printed before Adam-mini trains.

``--mesh data=D,fsdp=F,tp=T`` lays the run out on a ``jax.sharding`` mesh of
``D*F*T`` devices: each batch is split over ``data`` and ``fsdp``, each weight
over ``fsdp`` and ``tp`` by its name (Megatron-style column and row parallel
layers; an axis that does not divide a dimension is dropped there), the
weights are created on their shards, and the optimizer state follows its
weight (``optax_adam_mini.state_shardings``).

``--checkpoint-every N`` writes Orbax checkpoints (``<out>/checkpoints``, or
``<out>/<optimizer>/checkpoints``), and ``--resume`` continues from the
latest one bit-exactly: the batch of step ``s`` is a pure function of
``(seed, s)`` and the loss history is saved with the weights.  The schedule
spans ``--steps`` (or ``--schedule-steps``), so resume with the same values;
a checkpoint of other hyper-parameters is refused.  ``--stop-after K`` ends a
run after step ``K`` as if it had been interrupted.

The model, data and training functions are importable (see ``train`` and
``ModelConfig``/``TrainConfig``) so notebooks and benchmarks can reuse them.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

try:
  import optax_adam_mini
except ImportError:  # a source checkout without the package installed
  _ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, _ROOT)
  import optax_adam_mini

OPTIMIZERS = ('adam_mini', 'adamw')
VOCAB_SIZE = 256  # byte-level tokens
DEFAULT_OUT = os.path.join('runs', 'train_lm')
DEFAULT_CORPUS_MAX_BYTES = 4_000_000


class UsageError(ValueError):
  """A bad argument or input; ``main`` turns it into ``parser.error`` (exit 2)."""


# ----------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of the transformer."""

  arch: str = 'llama'  # "llama" or "gpt2"
  vocab_size: int = VOCAB_SIZE
  d_model: int = 128
  n_layers: int = 2
  n_heads: int = 4
  # Grouped-query attention (llama only); None = n_heads.
  n_kv_heads: int | None = None
  head_dim: int | None = None  # None = d_model // n_heads
  d_ff: int = 512
  max_seq_len: int = 1024  # size of the learned position table (gpt2 only)
  rope_theta: float = 10000.0
  norm_eps: float = 1e-5
  dtype: str = 'bfloat16'  # compute dtype
  param_dtype: str = 'float32'  # master weights
  remat: bool = False  # rematerialise each block in the backward pass
  init_std: float = 0.02

  def __post_init__(self):
    if self.arch not in ('llama', 'gpt2'):
      raise UsageError(
        f"unknown arch {self.arch!r}; expected 'llama' or 'gpt2'"
      )
    if self.n_heads <= 0 or self.kv_heads <= 0 or self.n_heads % self.kv_heads:
      raise UsageError(
        f'n_heads={self.n_heads} must be a positive multiple of n_kv_heads={self.kv_heads}'
      )
    if self.arch == 'gpt2' and self.n_heads * self.dim_per_head != self.d_model:
      raise UsageError('gpt2 needs n_heads * head_dim == d_model')
    if self.dim_per_head % 2 and self.arch == 'llama':
      raise UsageError('rotary embeddings need an even head_dim')

  @property
  def kv_heads(self) -> int:
    return self.n_kv_heads or self.n_heads

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.d_model // self.n_heads

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def master_dtype(self):
    return jnp.dtype(self.param_dtype)

  def partition_kwargs(self) -> dict[str, Any]:
    """Hints for ``optax_adam_mini.adam_mini`` / ``partition_report``."""
    return dict(
      num_heads=self.n_heads,
      num_kv_heads=self.kv_heads,
      head_dim=self.dim_per_head,
    )


@dataclasses.dataclass(frozen=True)
class Preset:
  model: ModelConfig
  steps: int
  batch_size: int
  seq_len: int
  lr: float
  warmup_steps: int
  eval_every: int
  description: str = ''


PRESETS: dict[str, Preset] = {
  # Tuned on 2 CPU cores: both optimizers in about 4 minutes, Adam-mini's
  # validation loss within ~1.5% of AdamW's. The larger init (0.06, not 0.02)
  # matters at this width: both optimizers learn much faster with it.
  'tiny': Preset(
    ModelConfig(
      'llama',
      d_model=128,
      n_layers=2,
      n_heads=4,
      n_kv_heads=2,
      d_ff=344,
      init_std=0.06,
    ),
    steps=800,
    batch_size=16,
    seq_len=128,
    lr=3e-3,
    warmup_steps=80,
    eval_every=50,
    description='~0.4M-param Llama for CPUs',
  ),
  'tiny-gpt2': Preset(
    ModelConfig(
      'gpt2',
      d_model=128,
      n_layers=2,
      n_heads=4,
      d_ff=512,
      max_seq_len=1024,
      init_std=0.06,
    ),
    steps=800,
    batch_size=16,
    seq_len=128,
    lr=3e-3,
    warmup_steps=80,
    eval_every=50,
    description='~0.5M-param GPT-2 for CPUs',
  ),
  'small': Preset(
    ModelConfig(
      'llama', d_model=512, n_layers=8, n_heads=8, n_kv_heads=4, d_ff=1376
    ),
    steps=2000,
    batch_size=32,
    seq_len=512,
    lr=1e-3,
    warmup_steps=200,
    eval_every=200,
    description='~25M-param Llama (a GPU, or a patient CPU)',
  ),
  'gpt2-124m': Preset(
    ModelConfig(
      'gpt2', d_model=768, n_layers=12, n_heads=12, d_ff=3072, max_seq_len=1024
    ),
    steps=5000,
    batch_size=32,
    seq_len=1024,
    lr=6e-4,
    warmup_steps=500,
    eval_every=250,
    description='GPT-2 small body (byte vocabulary)',
  ),
  'llama-1b': Preset(
    ModelConfig(
      'llama',
      d_model=2048,
      n_layers=16,
      n_heads=32,
      n_kv_heads=8,
      d_ff=8192,
      rope_theta=500000.0,
    ),
    steps=5000,
    batch_size=32,
    seq_len=2048,
    lr=3e-4,
    warmup_steps=500,
    eval_every=250,
    description='Llama-3.2-1B body (byte vocabulary)',
  ),
  'llama2-7b': Preset(
    ModelConfig(
      'llama', d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, d_ff=11008
    ),
    steps=5000,
    batch_size=16,
    seq_len=4096,
    lr=3e-4,
    warmup_steps=500,
    eval_every=250,
    description='Llama-2-7B body (byte vocabulary); shard it with --mesh',
  ),
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything that determines a training run besides the model shape and data."""

  steps: int = 300
  batch_size: int = 16
  seq_len: int = 128
  lr: float = 3e-3
  warmup_steps: int = 30
  # Length of the warmup + cosine schedule; None = steps.
  schedule_steps: int | None = None
  min_lr_ratio: float = 0.1
  weight_decay: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  grad_clip: float = 1.0
  seed: int = 0
  eval_every: int = 50
  eval_batches: int = 4
  checkpoint_every: int = 0  # 0 = no checkpoints
  stop_after: int | None = None  # stop (as if interrupted) after this step
  log_every: int = 10

  @property
  def total_schedule_steps(self) -> int:
    return self.schedule_steps or self.steps


# ----------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------


# A list of submodules: nnx.List on Flax >= 0.12, where plain lists are static.
_List = getattr(nnx, 'List', list)


def _normal(std: float):
  return nnx.initializers.normal(stddev=std)


def _linear(
  cfg: ModelConfig,
  din: int,
  dout: int,
  rngs: nnx.Rngs,
  *,
  bias: bool,
  std: float | None = None,
):
  return nnx.Linear(
    din,
    dout,
    use_bias=bias,
    dtype=cfg.compute_dtype,
    param_dtype=cfg.master_dtype,
    kernel_init=_normal(cfg.init_std if std is None else std),
    rngs=rngs,
  )


def _residual_std(cfg: ModelConfig) -> float:
  # GPT-2 / nanoGPT scaling of the projections that write into the residual stream.
  return cfg.init_std / math.sqrt(2 * cfg.n_layers)


class RMSNorm(nnx.Module):
  """RMSNorm with a Llama/HF-style ``weight`` parameter, statistics in float32."""

  def __init__(self, dim: int, eps: float, dtype, param_dtype):
    self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(
      jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps
    )
    return (y * self.weight[...].astype(jnp.float32)).astype(self.dtype)


def rotary_tables(seq_len: int, head_dim: int, theta: float):
  """cos/sin tables of shape (seq_len, head_dim), HF "rotate_half" layout, float32."""
  inv_freq = 1.0 / (
    theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  )
  freqs = np.outer(np.arange(seq_len, dtype=np.float64), inv_freq)
  emb = np.concatenate([freqs, freqs], axis=-1)
  return jnp.asarray(np.cos(emb), jnp.float32), jnp.asarray(
    np.sin(emb), jnp.float32
  )


def apply_rotary(x, cos, sin):
  """x: (B, T, H, Dh); cos/sin: (T, Dh)."""
  x32 = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  out = x32 * cos[None, :, None, :] + rotated * sin[None, :, None, :]
  return out.astype(x.dtype)


class LlamaAttention(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    h, kv, dh, d = cfg.n_heads, cfg.kv_heads, cfg.dim_per_head, cfg.d_model
    self.q_proj = _linear(cfg, d, h * dh, rngs, bias=False)
    self.k_proj = _linear(cfg, d, kv * dh, rngs, bias=False)
    self.v_proj = _linear(cfg, d, kv * dh, rngs, bias=False)
    self.o_proj = _linear(
      cfg, h * dh, d, rngs, bias=False, std=_residual_std(cfg)
    )
    self.n_heads, self.kv_heads, self.head_dim = h, kv, dh

  def __call__(self, x, cos, sin):
    b, t, _ = x.shape
    q = self.q_proj(x).reshape(b, t, self.n_heads, self.head_dim)
    k = self.k_proj(x).reshape(b, t, self.kv_heads, self.head_dim)
    v = self.v_proj(x).reshape(b, t, self.kv_heads, self.head_dim)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    # Grouped-query attention: dot_product_attention broadcasts the kv heads.
    y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    return self.o_proj(y.reshape(b, t, self.n_heads * self.head_dim))


class LlamaMLP(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.gate_proj = _linear(cfg, cfg.d_model, cfg.d_ff, rngs, bias=False)
    self.up_proj = _linear(cfg, cfg.d_model, cfg.d_ff, rngs, bias=False)
    self.down_proj = _linear(
      cfg, cfg.d_ff, cfg.d_model, rngs, bias=False, std=_residual_std(cfg)
    )

  def __call__(self, x):
    return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    args = (cfg.d_model, cfg.norm_eps, cfg.compute_dtype, cfg.master_dtype)
    self.input_layernorm = RMSNorm(*args)
    self.self_attn = LlamaAttention(cfg, rngs)
    self.post_attention_layernorm = RMSNorm(*args)
    self.mlp = LlamaMLP(cfg, rngs)

  def __call__(self, x, cos, sin):
    x = x + self.self_attn(self.input_layernorm(x), cos, sin)
    return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nnx.Module):
  """Llama-style decoder: returns float32 logits of shape (B, T, vocab)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed_tokens = nnx.Embed(
      cfg.vocab_size,
      cfg.d_model,
      dtype=cfg.compute_dtype,
      param_dtype=cfg.master_dtype,
      embedding_init=_normal(cfg.init_std),
      rngs=rngs,
    )
    self.layers = _List([LlamaBlock(cfg, rngs) for _ in range(cfg.n_layers)])
    self.norm = RMSNorm(
      cfg.d_model, cfg.norm_eps, cfg.compute_dtype, cfg.master_dtype
    )
    self.lm_head = _linear(cfg, cfg.d_model, cfg.vocab_size, rngs, bias=False)

  def __call__(self, tokens):
    cos, sin = rotary_tables(
      tokens.shape[1], self.cfg.dim_per_head, self.cfg.rope_theta
    )
    x = self.embed_tokens(tokens)
    for layer in self.layers:
      x = _maybe_remat(self.cfg, layer)(layer, x, cos, sin)
    return self.lm_head(self.norm(x)).astype(jnp.float32)


class GPT2Attention(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d = cfg.d_model
    # Fused [q | k | v] projection, each D wide and split into heads: the HF GPT-2 layout.
    self.c_attn = _linear(cfg, d, 3 * d, rngs, bias=True)
    self.c_proj = _linear(cfg, d, d, rngs, bias=True, std=_residual_std(cfg))
    self.n_heads, self.head_dim = cfg.n_heads, cfg.dim_per_head

  def __call__(self, x):
    b, t, d = x.shape
    q, k, v = jnp.split(self.c_attn(x), 3, axis=-1)
    q, k, v = (a.reshape(b, t, self.n_heads, self.head_dim) for a in (q, k, v))
    y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    return self.c_proj(y.reshape(b, t, d))


class GPT2MLP(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.c_fc = _linear(cfg, cfg.d_model, cfg.d_ff, rngs, bias=True)
    self.c_proj = _linear(
      cfg, cfg.d_ff, cfg.d_model, rngs, bias=True, std=_residual_std(cfg)
    )

  def __call__(self, x):
    return self.c_proj(jax.nn.gelu(self.c_fc(x), approximate=True))


class GPT2Block(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    def ln():
      return nnx.LayerNorm(
        cfg.d_model,
        epsilon=cfg.norm_eps,
        dtype=cfg.compute_dtype,
        param_dtype=cfg.master_dtype,
        rngs=rngs,
      )

    self.ln_1 = ln()
    self.attn = GPT2Attention(cfg, rngs)
    self.ln_2 = ln()
    self.mlp = GPT2MLP(cfg, rngs)

  def __call__(self, x):
    x = x + self.attn(self.ln_1(x))
    return x + self.mlp(self.ln_2(x))


class GPT2(nnx.Module):
  """GPT-2-style decoder with a tied output embedding: float32 logits (B, T, vocab)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    emb = dict(dtype=cfg.compute_dtype, param_dtype=cfg.master_dtype, rngs=rngs)
    self.wte = nnx.Embed(
      cfg.vocab_size, cfg.d_model, embedding_init=_normal(cfg.init_std), **emb
    )
    self.wpe = nnx.Embed(
      cfg.max_seq_len, cfg.d_model, embedding_init=_normal(0.01), **emb
    )
    self.h = _List([GPT2Block(cfg, rngs) for _ in range(cfg.n_layers)])
    self.ln_f = nnx.LayerNorm(
      cfg.d_model,
      epsilon=cfg.norm_eps,
      dtype=cfg.compute_dtype,
      param_dtype=cfg.master_dtype,
      rngs=rngs,
    )

  def __call__(self, tokens):
    t = tokens.shape[1]
    x = self.wte(tokens) + self.wpe(jnp.arange(t))[None]
    for block in self.h:
      x = _maybe_remat(self.cfg, block)(block, x)
    return self.wte.attend(self.ln_f(x)).astype(jnp.float32)


def _maybe_remat(cfg: ModelConfig, block: nnx.Module) -> Callable:
  fn = type(block).__call__
  return nnx.remat(fn) if cfg.remat else fn


def build_model(cfg: ModelConfig, seed: int | jax.Array = 0) -> nnx.Module:
  """A freshly initialised model; ``seed`` is an int or a ``jax.random.key``."""
  rngs = nnx.Rngs(seed)
  return Llama(cfg, rngs) if cfg.arch == 'llama' else GPT2(cfg, rngs)


def init_params(cfg: ModelConfig, seed: int = 0, mesh=None):
  """Returns ``(graphdef, params)``; ``params`` is a plain nested dict of arrays.

  The weights are created directly on their shards of ``mesh`` (default: one
  device), so no device ever holds more than its part of the model.
  """
  fns = _model_fns(cfg, mesh if mesh is not None else default_mesh())
  return fns.graphdef, fns.init(jax.random.key(seed))


def abstract_params(cfg: ModelConfig):
  """``(graphdef, params)`` with ``jax.ShapeDtypeStruct`` leaves; allocates nothing."""
  model = nnx.eval_shape(lambda: build_model(cfg, 0))
  graphdef, state = nnx.split(model)
  return graphdef, nnx.to_pure_dict(state)


def apply_model(graphdef, params, tokens):
  """Logits (float32) for ``tokens`` (B, T) int32."""
  return nnx.merge(graphdef, params)(tokens)


def lm_loss(graphdef, params, batch):
  """Mean next-token cross-entropy; ``batch`` is (B, T+1) int32."""
  logits = apply_model(graphdef, params, batch[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(
    logits, batch[:, 1:]
  ).mean()


def param_count(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def tree_bytes(tree) -> int:
  return int(
    sum(
      np.prod(x.shape) * np.dtype(x.dtype).itemsize
      for x in jax.tree.leaves(tree)
    )
  )


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------


def stdlib_files() -> list[str]:
  """The Python standard library's ``*.py`` files, in a deterministic order."""
  root = os.path.dirname(os.__file__)
  skip = {'site-packages', 'dist-packages', '__pycache__'}
  out = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(
      d for d in dirnames if d not in skip and not d.startswith('.')
    )
    out.extend(
      os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith('.py')
    )
  return out


def _text_files(folder: str) -> list[str]:
  out = []
  for dirpath, dirnames, filenames in os.walk(folder):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
    out.extend(
      os.path.join(dirpath, f)
      for f in sorted(filenames)
      if not f.startswith('.')
    )
  return out


def _read_files(files: Iterable[str], max_bytes: int | None) -> bytes:
  chunks, total = [], 0
  for f in files:
    with open(f, 'rb') as fh:
      b = fh.read()
    if b'\0' in b[:4096]:  # skip binary files in a folder
      continue
    chunks.append(b)
    total += len(b)
    if max_bytes is not None and total >= max_bytes:
      break
  data = b''.join(chunks)
  return data[:max_bytes] if max_bytes is not None else data


def load_corpus(
  path: str | None = None, max_bytes: int | None = None
) -> tuple[np.ndarray, str]:
  """Byte tokens (uint8 array) and a description of where they came from.

  ``path`` may be a text file or a folder (all non-hidden, non-binary files,
  recursively, sorted).  ``None`` reads the local Python standard library's
  sources, capped at ``max_bytes`` (default 4 MB).
  """
  if path is None:
    files = stdlib_files()
    cap = DEFAULT_CORPUS_MAX_BYTES if max_bytes is None else max_bytes
    data = _read_files(files, cap)
    desc = f'Python {sys.version.split()[0]} standard library sources ({os.path.dirname(os.__file__)})'
  else:
    if not os.path.exists(path):
      raise UsageError(f'--data {path}: no such file or directory')
    if os.path.isdir(path):
      files = _text_files(path)
      if not files:
        raise UsageError(f'--data {path}: folder has no files')
    else:
      files = [path]
    data = _read_files(files, max_bytes)
    desc = f'{path} ({len(files)} file{"s" if len(files) != 1 else ""})'
  if not data:
    raise UsageError(f'--data {path}: no text found (empty)')
  return np.frombuffer(data, dtype=np.uint8), desc


def split_train_val(
  tokens: np.ndarray, val_fraction: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
  """Hold out the last ``val_fraction`` of the corpus for validation."""
  n_val = max(1, int(round(len(tokens) * val_fraction)))
  return tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]


def get_batch(
  tokens: np.ndarray, step: int, batch_size: int, seq_len: int, seed: int
) -> np.ndarray:
  """The training batch of ``step``: a pure function of ``(seed, step)``, shape (B, T+1) int32."""
  rng = np.random.default_rng([seed, step])
  starts = rng.integers(0, len(tokens) - seq_len, size=batch_size)
  return tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int32)


def val_batches(
  tokens: np.ndarray, n_batches: int, batch_size: int, seq_len: int
) -> np.ndarray:
  """Fixed, evenly spaced validation windows: (n_batches, B, T+1) int32."""
  n = n_batches * batch_size
  starts = np.linspace(0, len(tokens) - seq_len - 1, n).round().astype(np.int64)
  return (
    tokens[starts[:, None] + np.arange(seq_len + 1)]
    .astype(np.int32)
    .reshape(n_batches, batch_size, -1)
  )


# ----------------------------------------------------------------------------
# Sharding
# ----------------------------------------------------------------------------

MESH_AXES = ('data', 'fsdp', 'tp')
# Linear layers whose output features are split over "tp" (column parallel) ...
_COLUMN_PARALLEL = {
  'q_proj',
  'k_proj',
  'v_proj',
  'gate_proj',
  'up_proj',
  'lm_head',
  'c_attn',
  'c_fc',
}
# ... and those whose input features are (row parallel).
_ROW_PARALLEL = {'o_proj', 'down_proj', 'c_proj'}


def parse_mesh(spec: str | None, n_devices: int) -> dict[str, int]:
  """``"data=2,fsdp=1,tp=1"`` -> {"data": 2, "fsdp": 1, "tp": 1}; default: all devices on "data"."""
  if not spec:
    return {'data': n_devices, 'fsdp': 1, 'tp': 1}
  sizes = {a: 1 for a in MESH_AXES}
  for part in spec.split(','):
    name, sep, value = part.strip().partition('=')
    if not sep or name not in MESH_AXES:
      raise UsageError(
        f'--mesh {spec!r}: expected comma-separated AXIS=SIZE with AXIS in {MESH_AXES}'
      )
    try:
      sizes[name] = int(value)
    except ValueError:
      raise UsageError(
        f'--mesh {spec!r}: {value!r} is not an integer'
      ) from None
    if sizes[name] < 1:
      raise UsageError(f'--mesh {spec!r}: sizes must be >= 1')
  total = math.prod(sizes.values())
  if total > n_devices:
    raise UsageError(
      f'--mesh {spec!r} needs {total} devices but only {n_devices} are visible '
      '(on CPU set XLA_FLAGS=--xla_force_host_platform_device_count=N)'
    )
  return sizes


def make_mesh(sizes: dict[str, int]) -> jax.sharding.Mesh:
  shape = tuple(sizes[a] for a in MESH_AXES)
  devices = jax.devices()[: math.prod(shape)]
  return jax.make_mesh(
    shape,
    MESH_AXES,
    axis_types=(jax.sharding.AxisType.Auto,) * 3,
    devices=devices,
  )


def _key_name(k) -> Any:
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return getattr(k, attr)
  return str(k)


def _path_names(path) -> tuple:
  return tuple(_key_name(k) for k in path)


def _fit(spec: Sequence, shape: Sequence[int], mesh) -> P:
  """Drop mesh axes that do not divide the dimension they would shard."""
  out = []
  for axis, dim in zip(spec, shape):
    out.append(
      axis if axis is not None and dim % mesh.shape[axis] == 0 else None
    )
  return P(*out)


def param_partition_spec(path: tuple, shape: Sequence[int], mesh) -> P:
  """FSDP + tensor-parallel layout of one weight, chosen by name (Megatron style)."""
  names = [n for n in path if isinstance(n, str)]
  leaf, owner = names[-1], (names[-2] if len(names) > 1 else '')
  if len(shape) == 2 and leaf == 'kernel':
    if owner in _COLUMN_PARALLEL:
      return _fit(('fsdp', 'tp'), shape, mesh)
    if owner in _ROW_PARALLEL:
      return _fit(('tp', 'fsdp'), shape, mesh)
    return _fit(('fsdp', None), shape, mesh)
  if len(shape) == 2 and leaf == 'embedding':  # (vocab or positions, D)
    return _fit((None, 'fsdp'), shape, mesh)
  if len(shape) == 1 and leaf == 'bias' and owner in _COLUMN_PARALLEL:
    return _fit(('tp',), shape, mesh)
  return P()  # norms, other biases: replicated (tiny)


def param_shardings(params, mesh):
  return jax.tree_util.tree_map_with_path(
    lambda p, x: NamedSharding(
      mesh, param_partition_spec(_path_names(p), x.shape, mesh)
    ),
    params,
  )


# ----------------------------------------------------------------------------
# Optimizers and training
# ----------------------------------------------------------------------------


def learning_rate_schedule(tcfg: TrainConfig) -> optax.Schedule:
  total = tcfg.total_schedule_steps
  warmup = min(tcfg.warmup_steps, max(total - 1, 0))
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=tcfg.lr,
    warmup_steps=warmup,
    decay_steps=max(total, warmup + 1),
    end_value=tcfg.lr * tcfg.min_lr_ratio,
  )


def make_optimizer(
  name: str, tcfg: TrainConfig, mcfg: ModelConfig, params
) -> optax.GradientTransformation:
  """Global-norm clipping followed by ``adam_mini`` or ``optax.adamw``, same hyper-parameters."""
  schedule = learning_rate_schedule(tcfg)
  # Decay matrices and embeddings, not norm scales or biases, for both.
  mask = optax_adam_mini.default_weight_decay_mask(params)
  if name == 'adamw':
    inner = optax.adamw(
      schedule,
      b1=tcfg.b1,
      b2=tcfg.b2,
      eps=tcfg.eps,
      weight_decay=tcfg.weight_decay,
      mask=mask,
    )
  elif name == 'adam_mini':
    inner = optax_adam_mini.adam_mini(
      schedule,
      b1=tcfg.b1,
      b2=tcfg.b2,
      eps=tcfg.eps,
      weight_decay=tcfg.weight_decay,
      weight_decay_mask=mask,
      **mcfg.partition_kwargs(),
    )
  else:
    raise UsageError(
      f'unknown optimizer {name!r}; expected one of {OPTIMIZERS}'
    )
  return optax.chain(optax.clip_by_global_norm(tcfg.grad_clip), inner)


def partition_report(mcfg: ModelConfig, params) -> str:
  """The library's per-leaf table of Adam-mini blocks and state bytes."""
  with warnings.catch_warnings():
    if mcfg.arch == 'gpt2':
      # GPT-2 ties its output layer to `wte`: no separate LM head to find.
      warnings.filterwarnings('ignore', message='.*recognised as its output')
    text = str(
      optax_adam_mini.partition_report(params, **mcfg.partition_kwargs())
    )
  if mcfg.arch == 'gpt2':
    text += (
      '\n(gpt2 ties its output layer to wte/embedding, so no lm_head leaf)'
    )
  return text


def _config_fingerprint(
  mcfg: ModelConfig,
  tcfg: TrainConfig,
  data_desc: str,
  n_tokens: int,
  optimizer: str,
):
  """What must match for ``--resume`` to continue the same run."""
  t = dataclasses.asdict(tcfg)
  for k in ('steps', 'checkpoint_every', 'stop_after', 'log_every'):
    t.pop(k)
  t['schedule_steps'] = tcfg.total_schedule_steps
  m = dataclasses.asdict(mcfg)
  m.pop('remat')  # remat changes memory, not math
  return {
    'model': m,
    'train': t,
    'data': f'{data_desc} [{n_tokens} bytes]',
    'optimizer': optimizer,
  }


def _checkpoint_manager(directory: str):
  import orbax.checkpoint as ocp

  options = ocp.CheckpointManagerOptions(
    max_to_keep=2, create=True, enable_async_checkpointing=False
  )
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def _abstract_like(tree):
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree
  )


def default_mesh() -> jax.sharding.Mesh:
  """A one-device mesh with the usual axis names."""
  return make_mesh(parse_mesh(None, 1))


@functools.lru_cache(maxsize=4)
def _model_fns(mcfg: ModelConfig, mesh: jax.sharding.Mesh):
  """Initialiser, loss and evaluation step of a model on a mesh, jitted once."""
  graphdef, abstract = abstract_params(mcfg)
  p_shard = param_shardings(abstract, mesh)
  batch_shard = NamedSharding(mesh, P(('data', 'fsdp'), None))

  def make(key):
    return nnx.to_pure_dict(nnx.state(build_model(mcfg, key)))

  loss_fn = functools.partial(lm_loss, graphdef)
  return types.SimpleNamespace(
    graphdef=graphdef,
    abstract=abstract,
    param_sharding=p_shard,
    batch_sharding=batch_shard,
    init=jax.jit(make, out_shardings=p_shard),
    loss_fn=loss_fn,
    eval_step=jax.jit(loss_fn, in_shardings=(p_shard, batch_shard)),
  )


def _optimizer_key(tcfg: TrainConfig) -> TrainConfig:
  """``tcfg`` reduced to the fields that define the optimizer (a cache key)."""
  return TrainConfig(
    steps=tcfg.total_schedule_steps,
    lr=tcfg.lr,
    warmup_steps=tcfg.warmup_steps,
    min_lr_ratio=tcfg.min_lr_ratio,
    weight_decay=tcfg.weight_decay,
    b1=tcfg.b1,
    b2=tcfg.b2,
    eps=tcfg.eps,
    grad_clip=tcfg.grad_clip,
  )


@functools.lru_cache(maxsize=8)
def _train_fns(
  optimizer: str, mcfg: ModelConfig, opt_cfg: TrainConfig, mesh
) -> types.SimpleNamespace:
  """The optimizer, its sharded ``init`` and the jitted train step."""
  model = _model_fns(mcfg, mesh)
  p_shard, batch_shard = model.param_sharding, model.batch_sharding
  tx = make_optimizer(optimizer, opt_cfg, mcfg, model.abstract)
  # The library derives the state's layout from the weights': m like its
  # weight, v on the mesh axes of the axes its blocks keep.
  s_shard = optax_adam_mini.state_shardings(tx, model.abstract, p_shard)
  loss_fn = model.loss_fn

  @functools.partial(
    jax.jit,
    in_shardings=(p_shard, s_shard, batch_shard),
    out_shardings=(p_shard, s_shard, None),
    donate_argnums=(0, 1),
  )
  def train_step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return types.SimpleNamespace(
    model=model,
    tx=tx,
    state_sharding=s_shard,
    tx_init=jax.jit(tx.init, out_shardings=s_shard),
    train_step=train_step,
  )


def train(
  optimizer: str,
  mcfg: ModelConfig,
  tcfg: TrainConfig,
  train_tokens: np.ndarray,
  val_tokens: np.ndarray,
  *,
  mesh: jax.sharding.Mesh | None = None,
  checkpoint_dir: str | None = None,
  resume: bool = False,
  data_desc: str = '',
  progress: bool = True,
  print_fn: Callable[[str], None] = print,
) -> dict[str, Any]:
  """Train one model with one optimizer; returns the metrics dict (see ``metrics.json``).

  The initial weights depend only on ``(mcfg, tcfg.seed)`` and the batch of
  step ``s`` only on ``(tcfg.seed, s)``, so different optimizers see the same
  model and data, and a resumed run repeats an uninterrupted one exactly.
  """
  from tqdm.auto import tqdm

  for name, tokens in (('training', train_tokens), ('validation', val_tokens)):
    if len(tokens) < tcfg.seq_len + 1:
      raise UsageError(
        f'--seq-len {tcfg.seq_len} is longer than the {name} split ({len(tokens)} bytes); '
        'use a shorter --seq-len or more data'
      )
  if mcfg.arch == 'gpt2' and tcfg.seq_len > mcfg.max_seq_len:
    raise UsageError(
      f"--seq-len {tcfg.seq_len} exceeds this preset's {mcfg.max_seq_len} learned positions"
    )
  if mesh is None:
    mesh = default_mesh()
  n_batch_shards = mesh.shape['data'] * mesh.shape['fsdp']
  if tcfg.batch_size % n_batch_shards:
    raise UsageError(
      f'--batch-size {tcfg.batch_size} is not divisible by data*fsdp={n_batch_shards}'
    )

  # ---- model, optimizer, shardings (compiled once per configuration)
  fns = _train_fns(optimizer, mcfg, _optimizer_key(tcfg), mesh)
  batch_shard = fns.model.batch_sharding
  params = fns.model.init(jax.random.key(tcfg.seed))
  opt_state = fns.tx_init(params)
  if optimizer == 'adam_mini':
    print_fn(partition_report(mcfg, params))
  train_step, eval_step = fns.train_step, fns.model.eval_step
  vb = val_batches(val_tokens, tcfg.eval_batches, tcfg.batch_size, tcfg.seq_len)

  def evaluate(params) -> float:
    return float(
      np.mean(
        [float(eval_step(params, jax.device_put(b, batch_shard))) for b in vb]
      )
    )

  # ---- state to resume
  fingerprint = _config_fingerprint(
    mcfg, tcfg, data_desc, len(train_tokens) + len(val_tokens), optimizer
  )
  history: dict[str, list] = {'train_loss': [], 'val_step': [], 'val_loss': []}
  start, train_time, timed_tokens = 0, 0.0, 0
  mngr = None
  if checkpoint_dir is not None and (tcfg.checkpoint_every > 0 or resume):
    mngr = _checkpoint_manager(checkpoint_dir)
    latest = mngr.latest_step()
    if latest is not None and not resume:
      mngr.close()
      raise UsageError(
        f'{checkpoint_dir} already holds checkpoints (step {latest}); '
        'pass --resume to continue, or use another --out'
      )
    if latest is not None:
      import orbax.checkpoint as ocp

      meta = mngr.restore(
        latest, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
      )['meta']
      if meta['fingerprint'] != fingerprint:
        diff = _describe_diff(meta['fingerprint'], fingerprint)
        mngr.close()
        raise UsageError(
          f'--resume: {checkpoint_dir} was written by a different run ({diff})'
        )
      target = {
        'params': _abstract_like(params),
        'opt_state': _abstract_like(opt_state),
      }
      restored = mngr.restore(
        latest, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
      )
      params = restored['state']['params']
      opt_state = restored['state']['opt_state']
      history = meta['history']
      start = latest
      train_time, timed_tokens = meta['train_time'], meta['timed_tokens']
      print_fn(f'[{optimizer}] resumed from {checkpoint_dir} at step {latest}')
    elif resume:
      print_fn(
        f'[{optimizer}] --resume: no checkpoint in {checkpoint_dir}; starting from step 0'
      )

  def save(step: int):
    if mngr is None or tcfg.checkpoint_every <= 0:
      return
    import orbax.checkpoint as ocp

    meta = {
      'fingerprint': fingerprint,
      'history': history,
      'train_time': train_time,
      'timed_tokens': timed_tokens,
      'step': step,
    }
    mngr.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave({'params': params, 'opt_state': opt_state}),
        meta=ocp.args.JsonSave(meta),
      ),
      force=True,
    )
    mngr.wait_until_finished()

  if start == 0 and not history['val_step']:
    history['val_step'].append(0)
    history['val_loss'].append(evaluate(params))

  end = (
    tcfg.steps if tcfg.stop_after is None else min(tcfg.steps, tcfg.stop_after)
  )
  tokens_per_step = tcfg.batch_size * tcfg.seq_len
  bar = tqdm(
    total=tcfg.steps,
    initial=start,
    desc=optimizer,
    disable=not progress,
    dynamic_ncols=True,
    mininterval=0.5,
  )
  pending: list = []
  # Start of the current timed interval; None: the next step compiles.
  mark = None
  tok_s = float('nan')

  def flush():
    nonlocal mark, train_time, timed_tokens, tok_s
    if not pending:
      return
    losses = [float(x) for x in jax.device_get(pending)]
    now = time.perf_counter()
    if mark is not None:
      train_time += now - mark
      timed_tokens += len(pending) * tokens_per_step
      tok_s = timed_tokens / max(train_time, 1e-9)
    history['train_loss'].extend(losses)
    bar.update(len(pending))
    bar.set_postfix(loss=f'{losses[-1]:.3f}', tok_s=f'{tok_s:,.0f}')
    pending.clear()
    mark = now

  first_step_time = 0.0
  for step in range(start, end):
    batch = jax.device_put(
      get_batch(train_tokens, step, tcfg.batch_size, tcfg.seq_len, tcfg.seed),
      batch_shard,
    )
    if mark is None and not pending:
      t0 = time.perf_counter()
      params, opt_state, loss = train_step(params, opt_state, batch)
      pending.append(loss)
      # The first step of a process compiles: keep it out of tokens/s.
      flush()
      first_step_time = time.perf_counter() - t0
    else:
      params, opt_state, loss = train_step(params, opt_state, batch)
      pending.append(loss)
    done = step + 1
    do_eval = done % tcfg.eval_every == 0 or done == tcfg.steps
    do_ckpt = tcfg.checkpoint_every > 0 and (
      done % tcfg.checkpoint_every == 0 or done == end
    )
    if len(pending) >= tcfg.log_every or do_eval or do_ckpt or done == end:
      flush()
    if do_eval:
      history['val_step'].append(done)
      history['val_loss'].append(evaluate(params))
      bar.set_postfix(
        loss=f'{history["train_loss"][-1]:.3f}',
        val=f'{history["val_loss"][-1]:.3f}',
        tok_s=f'{tok_s:,.0f}',
      )
    if do_ckpt:
      save(done)
    if do_eval or do_ckpt:
      # Evaluation and checkpointing are not training time.
      mark = time.perf_counter()
  flush()
  bar.close()
  if mngr is not None:
    mngr.close()

  steps_done = len(history['train_loss'])
  if timed_tokens == 0 and steps_done:
    # A single step: all we have is its time, compilation included.
    train_time, timed_tokens = first_step_time, tokens_per_step
  nan = float('nan')
  tail = history['train_loss'][-10:] or [nan]
  return {
    'optimizer': optimizer,
    'steps': steps_done,
    'final_val_loss': history['val_loss'][-1] if history['val_loss'] else nan,
    'final_train_loss': float(np.mean(tail)),
    'tokens_per_second': timed_tokens / train_time if train_time else nan,
    'optimizer_state_bytes': tree_bytes(opt_state),
    'param_count': param_count(params),
    'param_bytes': tree_bytes(params),
    'tokens_seen': steps_done * tokens_per_step,
    'history': history,
    'model_config': dataclasses.asdict(mcfg),
    'train_config': dataclasses.asdict(tcfg),
    'mesh': dict(mesh.shape),
    'data': data_desc,
    'notes': (
      'final_train_loss is the mean of the last 10 steps; tokens_per_second '
      'excludes compilation, evaluation and checkpointing; losses are in '
      'nats per byte'
    ),
    # Not written to metrics.json (keys starting with "_"):
    '_params': params,
    '_opt_state': opt_state,
  }


def _describe_diff(old: dict, new: dict, prefix: str = '') -> str:
  for k in sorted(set(old) | set(new)):
    a, b = old.get(k), new.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      d = _describe_diff(a, b, f'{prefix}{k}.')
      if d:
        return d
    elif a != b:
      return f'{prefix}{k}: checkpoint has {a!r}, now {b!r}'
  return ''


# ----------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------


def write_metrics(path: str, metrics: dict[str, Any]) -> None:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  clean = {k: v for k, v in metrics.items() if not k.startswith('_')}
  with open(path, 'w') as f:
    json.dump(clean, f, indent=1)


def plot_losses(
  results: dict[str, dict[str, Any]], path: str, title: str = ''
) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  colors = {'adamw': 'tab:blue', 'adam_mini': 'tab:red'}
  for name, m in results.items():
    h, c = m['history'], colors.get(name)
    tl = np.asarray(h['train_loss'], dtype=np.float64)
    if len(tl):
      w = max(1, min(20, len(tl) // 10))
      smooth = np.convolve(tl, np.ones(w) / w, mode='valid')
      steps = np.arange(1, len(tl) + 1)
      axes[0].plot(steps, tl, color=c, alpha=0.2, lw=0.8)
      axes[0].plot(steps[w - 1 :], smooth, color=c, label=name)
    axes[1].plot(
      h['val_step'],
      h['val_loss'],
      'o-',
      color=c,
      ms=3,
      label=f'{name} (final {m["final_val_loss"]:.4f})',
    )
  axes[0].set(
    title='train loss', xlabel='step', ylabel='cross-entropy (nats/byte)'
  )
  axes[1].set(title='validation loss', xlabel='step')
  # Zoom in past the first tenth of training, where the curves separate.
  zoom = [
    v
    for m in results.values()
    for steps, vals in (
      (
        range(1, len(m['history']['train_loss']) + 1),
        m['history']['train_loss'],
      ),
      (m['history']['val_step'], m['history']['val_loss']),
    )
    for step, v in zip(steps, vals)
    if step >= 0.1 * max(1, m['steps']) and np.isfinite(v)
  ]
  for ax in axes:
    ax.legend()
    ax.grid(alpha=0.3)
    if zoom:
      ax.set_ylim(min(zoom) * 0.97, max(zoom) * 1.03)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def summary_table(results: dict[str, dict[str, Any]]) -> str:
  head = f'{"optimizer":<10} {"val loss":>9} {"train loss":>10} {"tokens/s":>10} {"opt state":>12}'
  lines = [head, '-' * len(head)]
  for name, m in results.items():
    lines.append(
      f'{name:<10} {m["final_val_loss"]:>9.4f} {m["final_train_loss"]:>10.4f} '
      f'{m["tokens_per_second"]:>10,.0f} {_fmt_bytes(m["optimizer_state_bytes"]):>12}'
    )
  return '\n'.join(lines)


def _fmt_bytes(n: float) -> str:
  for unit in ('B', 'KiB', 'MiB', 'GiB'):
    if n < 1024 or unit == 'GiB':
      return f'{n:.1f} {unit}' if unit != 'B' else f'{int(n)} B'
    n /= 1024
  return str(n)


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
  """Bad arguments: one line on stderr and exit code 2, no usage dump."""

  def error(self, message):
    self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def build_parser() -> argparse.ArgumentParser:
  p = _Parser(
    description='Train a small decoder-only LM with Adam-mini and/or AdamW (Flax NNX).',
    formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  p.add_argument(
    '--preset',
    default='tiny',
    choices=sorted(PRESETS),
    help='model shape and default hyper-parameters',
  )
  p.add_argument('--optimizer', default='both', choices=[*OPTIMIZERS, 'both'])
  p.add_argument(
    '--data',
    default=None,
    help='text file or folder of text files (default: the local Python standard library sources)',
  )
  p.add_argument(
    '--max-data-bytes',
    type=int,
    default=None,
    help=f'read at most this many bytes (default: {DEFAULT_CORPUS_MAX_BYTES} for the built-in corpus)',
  )
  p.add_argument(
    '--val-fraction',
    type=float,
    default=0.05,
    help='last fraction of the corpus held out',
  )
  p.add_argument(
    '--steps', type=int, default=None, help='training steps (default: preset)'
  )
  p.add_argument(
    '--batch-size',
    type=int,
    default=None,
    help='sequences per step (default: preset)',
  )
  p.add_argument(
    '--seq-len',
    type=int,
    default=None,
    help='tokens per sequence (default: preset)',
  )
  p.add_argument(
    '--lr',
    type=float,
    default=None,
    help='peak learning rate, warmup then cosine (default: preset)',
  )
  p.add_argument('--warmup-steps', type=int, default=None)
  p.add_argument(
    '--schedule-steps',
    type=int,
    default=None,
    help='length of the cosine schedule (default: --steps)',
  )
  p.add_argument('--weight-decay', type=float, default=0.1)
  p.add_argument('--b1', type=float, default=0.9)
  p.add_argument('--b2', type=float, default=0.95)
  p.add_argument('--grad-clip', type=float, default=1.0)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument(
    '--eval-every',
    type=int,
    default=None,
    help='validation interval in steps (default: preset)',
  )
  p.add_argument('--eval-batches', type=int, default=4)
  p.add_argument(
    '--dtype',
    default='bfloat16',
    choices=['bfloat16', 'float32', 'float16'],
    help='compute dtype (weights and optimizer state stay float32)',
  )
  p.add_argument(
    '--remat',
    action='store_true',
    help='rematerialise transformer blocks in the backward pass',
  )
  p.add_argument(
    '--mesh',
    default=None,
    help="device mesh, e.g. data=2,fsdp=2,tp=1 (default: every device on 'data')",
  )
  p.add_argument('--out', default=DEFAULT_OUT, help='output folder')
  p.add_argument(
    '--checkpoint-every',
    type=int,
    default=0,
    help='Orbax checkpoint interval (0: none)',
  )
  p.add_argument(
    '--resume',
    action='store_true',
    help='continue from the latest checkpoint in --out',
  )
  p.add_argument(
    '--stop-after',
    type=int,
    default=None,
    help='stop after this step as if interrupted (schedule still spans --steps)',
  )
  p.add_argument('--no-progress', action='store_true', help='no progress bar')
  return p


def configs_from_args(
  args: argparse.Namespace,
) -> tuple[ModelConfig, TrainConfig]:
  preset = PRESETS[args.preset]
  mcfg = dataclasses.replace(preset.model, dtype=args.dtype, remat=args.remat)
  steps = preset.steps if args.steps is None else args.steps
  tcfg = TrainConfig(
    steps=steps,
    batch_size=preset.batch_size
    if args.batch_size is None
    else args.batch_size,
    seq_len=preset.seq_len if args.seq_len is None else args.seq_len,
    lr=preset.lr if args.lr is None else args.lr,
    warmup_steps=(
      min(preset.warmup_steps, steps // 10)
      if args.warmup_steps is None
      else args.warmup_steps
    ),
    schedule_steps=args.schedule_steps,
    weight_decay=args.weight_decay,
    b1=args.b1,
    b2=args.b2,
    grad_clip=args.grad_clip,
    seed=args.seed,
    eval_every=preset.eval_every
    if args.eval_every is None
    else args.eval_every,
    eval_batches=args.eval_batches,
    checkpoint_every=args.checkpoint_every,
    stop_after=args.stop_after,
  )
  checks = {
    '--steps': tcfg.steps,
    '--batch-size': tcfg.batch_size,
    '--seq-len': tcfg.seq_len,
    '--eval-every': tcfg.eval_every,
    '--eval-batches': tcfg.eval_batches,
  }
  for flag, v in checks.items():
    if v < 1:
      raise UsageError(f'{flag} must be >= 1 (got {v})')
  for flag, v in {
    '--checkpoint-every': tcfg.checkpoint_every,
    '--warmup-steps': tcfg.warmup_steps,
  }.items():
    if v < 0:
      raise UsageError(f'{flag} must be >= 0 (got {v})')
  if args.stop_after is not None and args.stop_after < 1:
    raise UsageError(f'--stop-after must be >= 1 (got {args.stop_after})')
  if args.schedule_steps is not None and args.schedule_steps < 1:
    raise UsageError(
      f'--schedule-steps must be >= 1 (got {args.schedule_steps})'
    )
  if not tcfg.lr > 0:
    raise UsageError(f'--lr must be > 0 (got {tcfg.lr})')
  if not 0 < args.val_fraction < 1:
    raise UsageError(
      f'--val-fraction must be in (0, 1) (got {args.val_fraction})'
    )
  if args.max_data_bytes is not None and args.max_data_bytes < 1:
    raise UsageError(
      f'--max-data-bytes must be >= 1 (got {args.max_data_bytes})'
    )
  return mcfg, tcfg


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    return _run(args)
  except UsageError as e:
    parser.error(str(e))


def _run(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
  mcfg, tcfg = configs_from_args(args)
  mesh_sizes = parse_mesh(args.mesh, len(jax.devices()))
  tokens, desc = load_corpus(args.data, args.max_data_bytes)
  train_tokens, val_tokens = split_train_val(tokens, args.val_fraction)
  mesh = make_mesh(mesh_sizes)
  names = list(OPTIMIZERS) if args.optimizer == 'both' else [args.optimizer]
  progress = not args.no_progress

  n_params = param_count(abstract_params(mcfg)[1])
  print(
    f'preset {args.preset}: {mcfg.arch}, {n_params:,} parameters, d_model={mcfg.d_model}, '
    f'layers={mcfg.n_layers}, heads={mcfg.n_heads}/{mcfg.kv_heads} kv, compute {mcfg.dtype}'
  )
  print(
    f'data: {desc}: {len(train_tokens):,} train / {len(val_tokens):,} val bytes'
  )
  print(
    f'mesh: {mesh_sizes} on {jax.devices()[0].platform}; steps={tcfg.steps} batch={tcfg.batch_size} '
    f'seq_len={tcfg.seq_len} lr={tcfg.lr} wd={tcfg.weight_decay}'
  )

  os.makedirs(args.out, exist_ok=True)
  results = {}
  for name in names:
    sub = os.path.join(args.out, name) if len(names) > 1 else args.out
    t0 = time.perf_counter()
    metrics = train(
      name,
      mcfg,
      tcfg,
      train_tokens,
      val_tokens,
      mesh=mesh,
      checkpoint_dir=os.path.join(sub, 'checkpoints'),
      resume=args.resume,
      data_desc=desc,
      progress=progress,
    )
    metrics['wall_time_s'] = time.perf_counter() - t0
    metrics['preset'] = args.preset
    write_metrics(os.path.join(sub, 'metrics.json'), metrics)
    results[name] = metrics
    print(
      f'[{name}] val loss {metrics["final_val_loss"]:.4f}, train loss {metrics["final_train_loss"]:.4f}, '
      f'{metrics["tokens_per_second"]:,.0f} tokens/s, optimizer state '
      f'{_fmt_bytes(metrics["optimizer_state_bytes"])}, {metrics["wall_time_s"]:.1f}s'
    )

  plot_losses(
    results,
    os.path.join(args.out, 'loss.png'),
    title=f'{args.preset} ({mcfg.arch})',
  )
  print()
  print(summary_table(results))
  if len(results) > 1:
    a, m = results['adamw'], results['adam_mini']
    summary = {
      'val_loss': {k: v['final_val_loss'] for k, v in results.items()},
      'val_loss_ratio_adam_mini_over_adamw': m['final_val_loss']
      / a['final_val_loss'],
      'optimizer_state_bytes': {
        k: v['optimizer_state_bytes'] for k, v in results.items()
      },
      'state_bytes_saved': a['optimizer_state_bytes']
      - m['optimizer_state_bytes'],
      'tokens_per_second': {
        k: v['tokens_per_second'] for k, v in results.items()
      },
    }
    with open(os.path.join(args.out, 'summary.json'), 'w') as f:
      json.dump(summary, f, indent=1)
    print(
      f'\nAdam-mini / AdamW validation loss: {summary["val_loss_ratio_adam_mini_over_adamw"]:.4f}; '
      f'optimizer state saved: {_fmt_bytes(summary["state_bytes_saved"])}'
    )
  print(f'wrote {args.out}/')
  return results


if __name__ == '__main__':
  main()

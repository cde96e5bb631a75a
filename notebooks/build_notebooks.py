"""Writes the notebooks in this folder from the cell sources below.

Edit the cells here, then run ``python notebooks/build_notebooks.py``; the
notebooks are stored without outputs (``tests/test_notebooks.py`` checks that
they match this file and that each runs top to bottom).
"""

import os
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = 'optax-adam-mini/optax_adam_mini'


def badge(name):
  url = f'https://colab.research.google.com/github/{REPO}/blob/main/notebooks/{name}'
  return f'[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})'


INSTALL = f"""\
# In a clone of the repository use its source tree; elsewhere (Colab) install.
import os
import sys

if os.path.exists(os.path.join('..', 'optax_adam_mini', '__init__.py')):
  sys.path.insert(0, os.path.abspath('..'))
try:
  import optax_adam_mini
except ImportError:
  %pip install -q "optax_adam_mini[examples] @ git+https://github.com/{REPO}"
  import optax_adam_mini
print('optax_adam_mini', optax_adam_mini.__version__, 'from', optax_adam_mini.__file__)"""


def md(text):
  return new_markdown_cell(text.strip('\n'))


def code(text):
  return new_code_cell(text.strip('\n'))


# --------------------------------------------------------------------------------------
# quickstart.ipynb
# --------------------------------------------------------------------------------------

QUICKSTART = [
  md(f"""
# Adam-mini quickstart

{badge('quickstart.ipynb')}

[Adam-mini](https://arxiv.org/abs/2406.16793) (Zhang et al., 2024) keeps Adam's
per-parameter first moment `m` but only **one second-moment scalar `v` per
block** of parameters: one per attention head for queries and keys, one per
output neuron for values, output projections and MLPs, one per token for the
embedding and the LM head, one per norm scale. That removes almost half of
Adam's optimizer state, usually at no cost in loss.

This notebook trains the same tiny Llama-style language model (byte-level, on
the Python standard library's own source code, so nothing is downloaded) with
`optax.adamw` and `optax_adam_mini.adam_mini`, side by side, in a couple of
minutes on a CPU.
"""),
  code(INSTALL),
  md("""
The model and data code comes from `examples/train_lm.py` when this notebook
runs inside the repository. Elsewhere (Colab) the next cell defines a compact
copy of the same Llama-style model inline.
"""),
  code("""
import functools
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

lm = None
examples = os.path.abspath(os.path.join('..', 'examples'))
if os.path.exists(os.path.join(examples, 'train_lm.py')) and not os.environ.get(
  'QUICKSTART_INLINE'
):
  sys.path.insert(0, examples)
  import train_lm as lm  # examples/train_lm.py
print('model code from', lm.__file__ if lm else 'this notebook')
"""),
  code("""
if lm is None:  # A compact copy of examples/train_lm.py (Llama preset only).
  import dataclasses
  import types

  @dataclasses.dataclass(frozen=True)
  class ModelConfig:
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    d_ff: int = 172
    vocab_size: int = 256
    rope_theta: float = 10000.0
    dtype: str = 'bfloat16'
    init_std: float = 0.02

    @property
    def dim_per_head(self):
      return self.d_model // self.n_heads

    def partition_kwargs(self):
      return dict(num_heads=self.n_heads, num_kv_heads=self.n_kv_heads)

  def _dense(cfg, din, dout, rngs):
    init = nnx.initializers.normal(cfg.init_std)
    return nnx.Linear(din, dout, use_bias=False, dtype=cfg.dtype, kernel_init=init, rngs=rngs)

  class RMSNorm(nnx.Module):
    def __init__(self, dim):
      self.weight = nnx.Param(jnp.ones((dim,)))

    def __call__(self, x):
      x32 = x.astype(jnp.float32)
      y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + 1e-5)
      return (y * self.weight[...]).astype(x.dtype)

  def rotate(x, pos, theta):
    half = x.shape[-1] // 2
    freqs = pos[:, None] / theta ** (jnp.arange(half) / half)
    cos = jnp.cos(jnp.concatenate([freqs, freqs], -1))[None, :, None]
    sin = jnp.sin(jnp.concatenate([freqs, freqs], -1))[None, :, None]
    x32 = x.astype(jnp.float32)
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], -1)
    return (x32 * cos + rotated * sin).astype(x.dtype)

  class Attention(nnx.Module):
    def __init__(self, cfg, rngs):
      h, kv, dh, d = cfg.n_heads, cfg.n_kv_heads, cfg.dim_per_head, cfg.d_model
      self.q_proj = _dense(cfg, d, h * dh, rngs)
      self.k_proj = _dense(cfg, d, kv * dh, rngs)
      self.v_proj = _dense(cfg, d, kv * dh, rngs)
      self.o_proj = _dense(cfg, h * dh, d, rngs)
      self.cfg = cfg

    def __call__(self, x):
      b, t, _ = x.shape
      c, dh, pos = self.cfg, self.cfg.dim_per_head, jnp.arange(t)
      q = rotate(self.q_proj(x).reshape(b, t, c.n_heads, dh), pos, c.rope_theta)
      k = rotate(self.k_proj(x).reshape(b, t, c.n_kv_heads, dh), pos, c.rope_theta)
      v = self.v_proj(x).reshape(b, t, c.n_kv_heads, dh)
      y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
      return self.o_proj(y.reshape(b, t, -1))

  class MLP(nnx.Module):
    def __init__(self, cfg, rngs):
      self.gate_proj = _dense(cfg, cfg.d_model, cfg.d_ff, rngs)
      self.up_proj = _dense(cfg, cfg.d_model, cfg.d_ff, rngs)
      self.down_proj = _dense(cfg, cfg.d_ff, cfg.d_model, rngs)

    def __call__(self, x):
      return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))

  class Layer(nnx.Module):
    def __init__(self, cfg, rngs):
      self.input_layernorm = RMSNorm(cfg.d_model)
      self.self_attn = Attention(cfg, rngs)
      self.post_attention_layernorm = RMSNorm(cfg.d_model)
      self.mlp = MLP(cfg, rngs)

    def __call__(self, x):
      x = x + self.self_attn(self.input_layernorm(x))
      return x + self.mlp(self.post_attention_layernorm(x))

  class Llama(nnx.Module):
    def __init__(self, cfg, rngs):
      init = nnx.initializers.normal(cfg.init_std)
      self.embed_tokens = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, embedding_init=init, rngs=rngs)
      self.layers = getattr(nnx, 'List', list)([Layer(cfg, rngs) for _ in range(cfg.n_layers)])
      self.norm = RMSNorm(cfg.d_model)
      self.lm_head = _dense(cfg, cfg.d_model, cfg.vocab_size, rngs)

    def __call__(self, tokens):
      x = self.embed_tokens(tokens)
      for layer in self.layers:
        x = layer(x)
      return self.lm_head(self.norm(x)).astype(jnp.float32)

  def abstract_params(cfg):
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Llama(cfg, nnx.Rngs(0))))
    return graphdef, nnx.to_pure_dict(state)

  def init_params(cfg, seed=0):
    graphdef, state = nnx.split(Llama(cfg, nnx.Rngs(seed)))
    return graphdef, nnx.to_pure_dict(state)

  def lm_loss(graphdef, params, batch):
    logits = nnx.merge(graphdef, params)(batch[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()

  def load_corpus(path=None, max_bytes=4_000_000):
    root, chunks, total = os.path.dirname(os.__file__), [], 0
    for dirpath, dirnames, filenames in os.walk(root):
      dirnames[:] = sorted(d for d in dirnames if d not in ('site-packages', 'dist-packages', '__pycache__'))
      for name in sorted(f for f in filenames if f.endswith('.py')):
        if total < max_bytes:
          with open(os.path.join(dirpath, name), 'rb') as f:
            chunks.append(f.read())
          total += len(chunks[-1])
    data = b''.join(chunks)[:max_bytes]
    return np.frombuffer(data, np.uint8), f'Python standard library sources ({root})'

  def split_train_val(tokens, val_fraction=0.05):
    n_val = max(1, int(round(len(tokens) * val_fraction)))
    return tokens[:-n_val], tokens[-n_val:]

  def get_batch(tokens, step, batch_size, seq_len, seed):
    starts = np.random.default_rng([seed, step]).integers(0, len(tokens) - seq_len, size=batch_size)
    return tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int32)

  def val_batches(tokens, n_batches, batch_size, seq_len):
    starts = np.linspace(0, len(tokens) - seq_len - 1, n_batches * batch_size).round().astype(int)
    windows = tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int32)
    return windows.reshape(n_batches, batch_size, -1)

  lm = types.SimpleNamespace(**{k: v for k, v in globals().items() if k in (
    'ModelConfig', 'abstract_params', 'init_params', 'lm_loss', 'load_corpus',
    'split_train_val', 'get_batch', 'val_batches')})
"""),
  md("""
## Model and data

A 2-layer Llama-style decoder (RMSNorm, SwiGLU, rotary embeddings, grouped-query
attention with 4 query and 2 key/value heads), computing in bfloat16 with
float32 weights. Tokens are bytes, and the last 5% of the corpus is held out.
"""),
  code("""
cfg = lm.ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=172, init_std=0.06)
tokens, source = lm.load_corpus(None, max_bytes=2_000_000)
train_tokens, val_tokens = lm.split_train_val(tokens, 0.05)
graphdef, params = lm.init_params(cfg, seed=0)
n_params = sum(x.size for x in jax.tree.leaves(params))
print(f'{n_params:,} parameters; {source}: {len(train_tokens):,} train / {len(val_tokens):,} val bytes')
print(repr(bytes(train_tokens[:200]).decode(errors='replace')))
"""),
  md("""
## The blocks Adam-mini uses

`adam_mini` finds the blocks from the parameter names (`q_proj`, `k_proj`,
`mlp/...`, `embed_tokens`, ...). Grouped-query attention needs the head counts;
`partition_report` shows the rule, the number of blocks and the shape of `v`
for every leaf, and the optimizer state against `optax.adamw`'s.
"""),
  code("""
print(optax_adam_mini.partition_report(params, **cfg.partition_kwargs()))
"""),
  md("""
## Train with both optimizers

Same initial weights, same batches in the same order, same hyper-parameters
(warmup + cosine schedule, weight decay on matrices only). `adam_mini` is a
drop-in replacement for `optax.adamw`.
"""),
  code("""
STEPS, BATCH, SEQ, LR, EVAL_EVERY = 800, 16, 64, 3e-3, 100

schedule = optax.warmup_cosine_decay_schedule(0.0, LR, STEPS // 10, STEPS, end_value=LR / 10)
decay_mask = jax.tree.map(lambda x: x.ndim >= 2, params)  # no decay on norm scales
optimizers = {
  'adamw': optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=0.1, mask=decay_mask),
  'adam_mini': optax_adam_mini.adam_mini(
    schedule, b1=0.9, b2=0.95, weight_decay=0.1, weight_decay_mask=decay_mask,
    **cfg.partition_kwargs(),
  ),
}
loss_fn = functools.partial(lm.lm_loss, graphdef)
eval_loss = jax.jit(loss_fn)
val_set = lm.val_batches(val_tokens, 4, BATCH, SEQ)


def train(tx):
  @jax.jit
  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  params = lm.init_params(cfg, seed=0)[1]
  opt_state = tx.init(params)
  history = {'train': [], 'val_step': [], 'val': []}
  start = time.perf_counter()
  for i in range(STEPS):
    batch = lm.get_batch(train_tokens, i, BATCH, SEQ, seed=0)
    params, opt_state, loss = step(params, opt_state, batch)
    history['train'].append(float(loss))
    if (i + 1) % EVAL_EVERY == 0:
      history['val_step'].append(i + 1)
      history['val'].append(float(np.mean([eval_loss(params, b) for b in val_set])))
  history['seconds'] = time.perf_counter() - start
  history['state_bytes'] = sum(x.nbytes for x in jax.tree.leaves(opt_state))
  return history


results = {}
for name, tx in optimizers.items():
  results[name] = h = train(tx)
  print(f"{name:>9}: val loss {h['val'][-1]:.4f}  ({h['seconds']:.0f}s, optimizer state {h['state_bytes']:,} bytes)")
"""),
  code("""
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
for (name, h), color in zip(results.items(), ['tab:blue', 'tab:red']):
  smooth = np.convolve(h['train'], np.ones(10) / 10, mode='valid')
  ax1.plot(np.arange(10, STEPS + 1), smooth, color=color, label=name)
  ax2.plot(h['val_step'], h['val'], 'o-', color=color, label=f"{name} ({h['val'][-1]:.3f})")
ax1.set(title='train loss (10-step mean)', xlabel='step', ylabel='nats / byte', ylim=(None, 3.0))
ax2.set(title='validation loss', xlabel='step')
for ax in (ax1, ax2):
  ax.grid(alpha=0.3)
  ax.legend()
plt.tight_layout()
plt.show()
ratio = results['adam_mini']['val'][-1] / results['adamw']['val'][-1]
print(f'Adam-mini / AdamW final validation loss: {ratio:.4f}')
"""),
  md("""
At this tiny scale Adam-mini starts a little behind (a coordinate whose
gradients are small for its block takes smaller steps than under Adam) and
closes most of the gap as training goes on, here to within about 1-2% of
AdamW's validation loss, with half of the optimizer state.
"""),
  md("""
## Memory

The optimizer state of AdamW is two float32 arrays the size of the model
(`m` and `v`). Adam-mini keeps `m` and a few numbers per block, so its state
is about half. `jax.eval_shape` gives the state shapes of large models without
allocating anything (the vocabulary here is 256 bytes; with a real tokenizer
the embedding and LM head grow, and Adam-mini's one `v` per token keeps them
at half too).
"""),
  code("""
def state_bytes(tx, params):
  state = jax.eval_shape(tx.init, params)
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


shapes = {
  'this notebook': cfg,
  'Llama, d=768, 12 layers': lm.ModelConfig(d_model=768, n_layers=12, n_heads=12, n_kv_heads=4, d_ff=2048),
  'Llama-3.2-1B shape': lm.ModelConfig(d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, d_ff=8192),
  'Llama-2-7B shape': lm.ModelConfig(d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, d_ff=11008),
}
print(f"{'model':<26} {'params':>14} {'AdamW state':>12} {'Adam-mini':>12} {'saved':>10}")
for name, c in shapes.items():
  abstract = lm.abstract_params(c)[1]
  n = sum(x.size for x in jax.tree.leaves(abstract))
  adamw = state_bytes(optax.adamw(1e-3), abstract)
  mini = state_bytes(optax_adam_mini.adam_mini(1e-3, **c.partition_kwargs()), abstract)
  print(f'{name:<26} {n:>14,} {adamw / 2**20:>9.1f} MiB {mini / 2**20:>8.1f} MiB {1 - mini / adamw:>9.1%}')
"""),
  md("""
## Next

* `python examples/train_lm.py` trains both optimizers from the command line
  (presets up to Llama-2-7B shapes, sharding with `--mesh`, Orbax checkpoints).
* `partition_explorer.ipynb` shows how blocks are chosen and how to write your own.
* `hessian_structure.ipynb` shows the near-block-diagonal Hessian that motivates
  the blocks.
"""),
]


# --------------------------------------------------------------------------------------
# partition_explorer.ipynb
# --------------------------------------------------------------------------------------

EXPLORER = [
  md(f"""
# Partition explorer: how Adam-mini chooses its blocks

{badge('partition_explorer.ipynb')}

Adam-mini gives every block of parameters one second-moment scalar `v`. A
**partition** says, for each leaf of the parameter tree, which coordinates
form a block. It is written with four rules of `optax_adam_mini.Block`:

| rule | one `v` per | used for |
|---|---|---|
| `Block.elementwise()` | coordinate (plain Adam) | biases |
| `Block.whole()` | leaf | norm scales, anything unrecognised |
| `Block.along(*axes)` | index along `axes` | output neurons (`along(-1)`), tokens (`along(0)`) |
| `Block.heads(axis, head_dim, along=())` | head of `head_dim` coordinates along `axis` | queries and keys |

The default partition reads the names on each leaf's path. This notebook runs
it on Flax Linen, Flax NNX and Llama-style trees, then writes a partition by hand.
"""),
  code(INSTALL),
  code("""
import warnings

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import linen as nn
from flax import nnx
from optax_adam_mini import Block
"""),
  md("""
## Flax Linen: `nn.MultiHeadDotProductAttention`

A small Linen language model. Linen's attention keeps heads as separate axes:
query/key/value kernels are `(D, H, Dh)` and the output kernel is
`(H, Dh, D)`, so no head counts are needed. `jax.eval_shape` gives the
parameter shapes without allocating anything.
"""),
  code("""
class LinenMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(64, name='fc2')(nn.gelu(nn.Dense(256, name='fc1')(x)))


class LinenLM(nn.Module):
  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(256, 64, name='embed')(tokens)
    for i in range(2):
      attn = nn.MultiHeadDotProductAttention(num_heads=4, name=f'attn_{i}')
      x = x + attn(nn.LayerNorm(name=f'ln_attn_{i}')(x))
      x = x + LinenMLP(name=f'mlp_{i}')(nn.LayerNorm(name=f'ln_mlp_{i}')(x))
    return nn.Dense(256, name='lm_head')(nn.LayerNorm(name='ln_f')(x))


linen_params = jax.eval_shape(LinenLM().init, jax.random.key(0), jnp.ones((1, 8), jnp.int32))
print(optax_adam_mini.partition_report(linen_params))
"""),
  md("""
## Flax NNX: `nnx.MultiHeadAttention`

The same model in NNX. The state of an NNX module can be passed as it is
(paths that end in `.value` are understood) or as a pure dict
(`nnx.to_pure_dict`).
"""),
  code("""
class NNXMLP(nnx.Module):
  def __init__(self, rngs):
    self.fc1 = nnx.Linear(64, 256, rngs=rngs)
    self.fc2 = nnx.Linear(256, 64, rngs=rngs)


class NNXLayer(nnx.Module):
  def __init__(self, rngs):
    self.ln_attn = nnx.LayerNorm(64, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(num_heads=4, in_features=64, decode=False, rngs=rngs)
    self.ln_mlp = nnx.LayerNorm(64, rngs=rngs)
    self.mlp = NNXMLP(rngs)


class NNXLM(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Embed(256, 64, rngs=rngs)
    self.layers = getattr(nnx, 'List', list)([NNXLayer(rngs) for _ in range(2)])  # nnx.List: Flax >= 0.12
    self.ln_f = nnx.LayerNorm(64, rngs=rngs)
    self.lm_head = nnx.Linear(64, 256, rngs=rngs)


nnx_state = nnx.state(NNXLM(nnx.Rngs(0)), nnx.Param)
print(optax_adam_mini.partition_report(nnx_state))
"""),
  md("""
## Llama-style trees, stacked layers and grouped-query attention

Hugging Face style names (`self_attn/q_proj`, `mlp/gate_proj`, ...) store
all heads in one `(D, H * Dh)` matrix, so the default partition needs
`num_heads` (and `num_kv_heads` for grouped-query attention) to cut it into
heads. Layers stacked on a leading axis (`nnx.vmap`/`nnx.scan`, or
`jax.lax.scan` over layers) keep one set of blocks per layer.
"""),
  code("""
def sds(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


L, D, H, KV, DH, F, V = 4, 256, 8, 2, 32, 688, 1000  # 4 stacked layers
llama = {
  'model': {
    'embed_tokens': {'embedding': sds(V, D)},
    'layers': {
      'self_attn': {
        'q_proj': {'kernel': sds(L, D, H * DH)},
        'k_proj': {'kernel': sds(L, D, KV * DH)},
        'v_proj': {'kernel': sds(L, D, KV * DH)},
        'o_proj': {'kernel': sds(L, H * DH, D)},
      },
      'mlp': {
        'gate_proj': {'kernel': sds(L, D, F)},
        'up_proj': {'kernel': sds(L, D, F)},
        'down_proj': {'kernel': sds(L, F, D)},
      },
      'input_layernorm': {'weight': sds(L, D)},
      'post_attention_layernorm': {'weight': sds(L, D)},
    },
    'norm': {'weight': sds(D)},
  },
  'lm_head': {'kernel': sds(D, V)},
}
report = optax_adam_mini.partition_report(llama, num_heads=H, num_kv_heads=KV)
print(report)
"""),
  md("""
Without the head counts the flattened query and key kernels cannot be cut
into heads, and the library says so instead of guessing:
"""),
  code("""
try:
  jax.eval_shape(optax_adam_mini.adam_mini(1e-3).init, llama)
except ValueError as e:
  print('ValueError:', e)
"""),
  md("""
`value_blocks='whole'` gives the value projection one `v` per (layer and)
leaf instead of one per output neuron; the reference implementation offers
both.
"""),
  code("""
whole = optax_adam_mini.partition_report(llama, num_heads=H, num_kv_heads=KV, value_blocks='whole')
print([(leaf.path, leaf.num_blocks, leaf.v_shape) for leaf in whole.leaves if 'v_proj' in leaf.path])
"""),
  md("""
## Seeing the blocks

To draw which coordinates share a `v`, feed `scale_by_adam_mini` a gradient
that is 1 at a single coordinate: exactly one entry of the new `v` becomes
non-zero, the one of that coordinate's block. Doing this for every coordinate
(`jax.vmap`) colours each matrix by block.
"""),
  code("""
def block_ids(block, shape):
  \"\"\"The block index of every coordinate of a leaf of `shape` under `block`.\"\"\"
  tx = optax_adam_mini.scale_by_adam_mini(partition=lambda p: {'w': block})
  params = {'w': jnp.zeros(shape)}
  state = tx.init(params)
  n = int(np.prod(shape))
  one_hots = jnp.eye(n).reshape(n, *shape)
  v = jax.vmap(lambda g: tx.update({'w': g}, state, params)[1].v)(one_hots)
  v = jnp.concatenate([x.reshape(n, -1) for x in jax.tree.leaves(v)], axis=1)
  return np.asarray(jnp.argmax(v != 0, axis=1)).reshape(shape)


d, heads, dh = 12, 3, 4  # a (12, 12) kernel with 3 heads of 4
examples = {
  'query (D, H*Dh): Block.heads(1, 4)': (Block.heads(1, dh), (d, heads * dh)),
  'value / MLP (in, out): Block.along(1)': (Block.along(1), (d, heads * dh)),
  'embedding (vocab, D): Block.along(0)': (Block.along(0), (16, d)),
  'norm scale: Block.whole()': (Block.whole(), (1, d)),
  'bias: Block.elementwise()': (Block.elementwise(), (1, d)),
}
fig, axes = plt.subplots(1, len(examples), figsize=(17, 3.8))
for ax, (title, (block, shape)) in zip(axes, examples.items()):
  ids = block_ids(block, shape)
  ax.imshow(ids % 20, cmap='tab20', vmin=0, vmax=19, aspect='equal', interpolation='nearest')
  ax.set_title(f'{title}\\n{ids.max() + 1} blocks', fontsize=8)
  ax.set_xticks([])
  ax.set_yticks([])
plt.tight_layout()
plt.show()
"""),
  md("""
GPT-2's fused `c_attn` kernel `(D, 3D)` holds `[q | k | v]` side by side, and
gets a head rule for `q` and `k` and a neuron rule for `v`:
"""),
  code("""
gpt2 = {'h': {'0': {'attn': {'c_attn': {'kernel': sds(12, 36)}}}}}
with warnings.catch_warnings():  # a lone c_attn does not look like a whole model
  warnings.simplefilter('ignore')
  fused = optax_adam_mini.partition_report(gpt2, num_heads=3).leaves[0]
print(fused.rule)
ids = block_ids(fused.rule, (12, 36))
plt.figure(figsize=(8, 3))
plt.imshow(ids % 20, cmap='tab20', vmin=0, vmax=19, interpolation='nearest')
plt.title(f'c_attn (12, 3*12): {ids.max() + 1} blocks')
plt.axis('off')
plt.show()
"""),
  md("""
## Writing your own partition

A partition is a function from the parameter tree to a tree of `Block`s of
the same structure (or a tree of `Block`s itself). Here is a model whose names
the default partition does not know: a fused `(D, 3, H, Dh)` projection,
stacked layers, an unusual embedding name.
"""),
  code("""
D, H, DH, F, V, L = 32, 4, 8, 64, 100, 2
key = iter(jax.random.split(jax.random.key(0), 10))
my_params = {
  'tok': jax.random.normal(next(key), (V, D)) * 0.02,
  'blocks': {
    'mix_qkv': jax.random.normal(next(key), (L, D, 3, H, DH)) * 0.02,
    'mix_out': jax.random.normal(next(key), (L, H * DH, D)) * 0.02,
    'ff_in': jax.random.normal(next(key), (L, D, F)) * 0.02,
    'ff_in_bias': jnp.zeros((L, F)),
    'ff_out': jax.random.normal(next(key), (L, F, D)) * 0.02,
    'gain': jnp.ones((L, D)),
  },
}


def my_partition(params):
  def rule(path, leaf):
    name = path[-1].key
    if name == 'tok':
      return Block.along(0)  # one v per token
    if name == 'mix_qkv':
      # (L, D, 3, H, Dh): one v per layer, per q/k/v and per head.
      return Block.along(0, 2, 3)
    if name in ('mix_out', 'ff_in', 'ff_out'):
      return Block.along(0, -1)  # per layer and output neuron
    if name == 'gain':
      return Block.along(0)  # one v per layer's norm scale
    return Block.elementwise()  # biases: plain Adam

  return jax.tree_util.tree_map_with_path(rule, params)


print(optax_adam_mini.partition_report(my_params, partition=my_partition))
"""),
  md("""
`Block.heads(axis, head_dim, along=...)` cuts a flattened axis into heads, and
`along` keeps further axes, such as the layer axis of a stacked kernel. The
same rule written for a `(L, D, H*Dh)` query kernel:
"""),
  code("""
q_stacked = {'q': jnp.zeros((L, D, H * DH))}
rule = {'q': Block.heads(-1, DH, along=(0,))}  # a tree of Blocks works as well
leaf = optax_adam_mini.partition_report(q_stacked, partition=rule).leaves[0]
print(leaf.rule, '->', leaf.num_blocks, 'blocks, v shape', leaf.v_shape)
"""),
  md("""
The partition goes straight into `adam_mini`. A few steps on a toy regression
check that it trains:
"""),
  code("""
tx = optax_adam_mini.adam_mini(3e-3, partition=my_partition, weight_decay=0.0)
targets = jax.random.normal(next(key), (8, D))
tokens = jnp.arange(8)


def toy_loss(p):
  x = p['tok'][tokens]
  for i in range(L):
    x = x + jax.nn.gelu(x @ p['blocks']['ff_in'][i] + p['blocks']['ff_in_bias'][i]) @ p['blocks']['ff_out'][i]
    x = x * p['blocks']['gain'][i]
  return jnp.mean((x - targets) ** 2)


@jax.jit
def step(p, s):
  loss, g = jax.value_and_grad(toy_loss)(p)
  u, s = tx.update(g, s, p)
  return optax.apply_updates(p, u), s, loss


p, s = my_params, tx.init(my_params)
for i in range(201):
  p, s, loss = step(p, s)
  if i % 50 == 0:
    print(f'step {i:3d}  loss {float(loss):.4f}')
"""),
]


# --------------------------------------------------------------------------------------
# hessian_structure.ipynb
# --------------------------------------------------------------------------------------

HESSIAN = [
  md(f"""
# The block structure of a transformer's Hessian

{badge('hessian_structure.ipynb')}

Adam-mini rests on an observation (Zhang et al., 2024): the Hessian of a
transformer's loss is close to **block-diagonal**, with blocks that follow
the architecture: one per attention head for queries and keys, one per output
neuron for values and MLP layers. One learning rate (one `v`) per dense
Hessian block is then nearly as good as Adam's one per coordinate.

Here we compute exact Hessians of a tiny transformer (1 layer, width 16, 2
heads) with `jax.hessian`, for its query projection, value projection and MLP
matrices, order each matrix's coordinates by Adam-mini's blocks, and look at
the heat maps.
"""),
  code(INSTALL),
  code("""
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from matplotlib.colors import LogNorm
"""),
  md("""
## A tiny transformer in plain JAX

Byte-level tokens, learned positions, one pre-norm attention layer (2 heads of
8) and a GELU MLP (width 32), float32. The parameter names follow Llama so that
the default partition recognises them.
"""),
  code("""
D, H, DH, F, V, T = 16, 2, 8, 32, 256, 32


def init(key):
  k = iter(jax.random.split(key, 16))
  normal = lambda shape, std=0.2: jax.random.normal(next(k), shape) * std
  return {
    'embed_tokens': {'embedding': normal((V, D), 0.5)},
    'position_embeddings': {'embedding': normal((T, D), 0.1)},
    'self_attn': {
      'q_proj': {'kernel': normal((D, H * DH))},
      'k_proj': {'kernel': normal((D, H * DH))},
      'v_proj': {'kernel': normal((D, H * DH))},
      'o_proj': {'kernel': normal((H * DH, D))},
    },
    'mlp': {'up_proj': {'kernel': normal((D, F))}, 'down_proj': {'kernel': normal((F, D))}},
    'lm_head': {'kernel': normal((D, V))},
  }


def rms(x):
  return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6)


def loss_fn(p, batch):
  tokens, targets = batch[:, :-1], batch[:, 1:]
  b, t = tokens.shape
  x = p['embed_tokens']['embedding'][tokens] + p['position_embeddings']['embedding'][:t]
  a = p['self_attn']
  h = rms(x)
  q, k, v = (
    (h @ a[name]['kernel']).reshape(b, t, H, DH) for name in ('q_proj', 'k_proj', 'v_proj')
  )
  y = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(b, t, H * DH)
  x = x + y @ a['o_proj']['kernel']
  x = x + jax.nn.gelu(rms(x) @ p['mlp']['up_proj']['kernel']) @ p['mlp']['down_proj']['kernel']
  logits = rms(x) @ p['lm_head']['kernel']
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


print(optax_adam_mini.partition_report(init(jax.random.key(0)), num_heads=H))
"""),
  md("""
## Data, and a short training run

The Hessian at initialisation and after some training both show the
structure; we look at a model trained for a few hundred Adam steps on
byte-level text (the Python standard library's own sources, read locally).
"""),
  code("""
root, text = os.path.dirname(os.__file__), b''
for name in sorted(os.listdir(root)):
  if name.endswith('.py') and len(text) < 300_000:
    with open(os.path.join(root, name), 'rb') as f:
      text += f.read()
data = np.frombuffer(text, np.uint8)


def batch_at(step, size=32):
  starts = np.random.default_rng(step).integers(0, len(data) - T - 1, size)
  return jnp.asarray(data[starts[:, None] + np.arange(T + 1)].astype(np.int32))


params0 = init(jax.random.key(0))
tx = optax.adam(1e-2)


@jax.jit
def train_step(p, s, batch):
  loss, g = jax.value_and_grad(loss_fn)(p, batch)
  u, s = tx.update(g, s, p)
  return optax.apply_updates(p, u), s, loss


params, state = params0, tx.init(params0)
for i in range(400):
  params, state, loss = train_step(params, state, batch_at(i))
  if i % 100 == 0 or i == 399:
    print(f'step {i:3d}  loss {float(loss):.3f}')
"""),
  md("""
## Hessians of single weight matrices

For a kernel `W` of shape `(in, out)` we flatten it **output neuron by output
neuron** (`W.T.reshape(-1)`), so that the coordinates of one output neuron,
and of one head (a run of `Dh` consecutive output neurons), are contiguous.
`jax.hessian` of the loss as a function of that vector gives the full
`(in*out, in*out)` matrix, on a fixed batch of 16 sequences.
"""),
  code("""
def hessian(p, path, batch):
  \"\"\"Hessian of the loss w.r.t. the kernel at `path`, output-neuron-major order.\"\"\"
  w = p
  for k in path:
    w = w[k]
  n_in, n_out = w.shape

  def f(flat):
    new = jax.tree.map(lambda x: x, p)  # a copy we can edit
    leaf = new
    for k in path[:-1]:
      leaf = leaf[k]
    leaf[path[-1]] = flat.reshape(n_out, n_in).T
    return loss_fn(new, batch)

  return np.asarray(jax.jit(jax.hessian(f))(w.T.reshape(-1)))


probe = batch_at(10_000, size=16)  # a fixed batch of 16 sequences of 32 bytes
matrices = {
  'query  (16, 2 heads x 8)': (('self_attn', 'q_proj', 'kernel'), DH),
  'value  (16, 16)': (('self_attn', 'v_proj', 'kernel'), 1),
  'MLP up (16, 32)': (('mlp', 'up_proj', 'kernel'), 1),
}
hessians = {}
for name, (path, per_block) in matrices.items():
  for when, p in (('init', params0), ('trained', params)):
    hessians[name, when] = hessian(p, path, probe)
  print(name, hessians[name, 'trained'].shape)
"""),
  md("""
## Heat maps

`|H|` on a log scale. Adam-mini's blocks lie on the diagonal: per head for
the query (2 blocks of 16 x 8 = 128 coordinates, split by the white lines),
per output neuron for the value and the MLP (16 x 16 and 32 x 32 small
blocks of 16 coordinates, one per input feature).
"""),
  code("""
def block_size(name):
  path, per_block = matrices[name]
  return per_block * D  # output neurons per block x input features


fig, axes = plt.subplots(2, 3, figsize=(16, 10))
for col, name in enumerate(matrices):
  for row, when in enumerate(('init', 'trained')):
    h = np.abs(hessians[name, when])
    ax = axes[row, col]
    floor = max(h.max() * 1e-6, 1e-12)
    im = ax.imshow(np.maximum(h, floor), norm=LogNorm(vmin=floor, vmax=h.max()), cmap='viridis', interpolation='nearest')
    size = block_size(name)
    if h.shape[0] // size <= 8:  # grid lines between head blocks (neuron blocks: too many)
      for edge in range(size, h.shape[0], size):
        ax.axhline(edge - 0.5, color='white', lw=0.8)
        ax.axvline(edge - 0.5, color='white', lw=0.8)
    ax.set_title(f'{name}, {when}\\n|Hessian|, {h.shape[0]} coordinates', fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, fraction=0.046)
plt.tight_layout()
plt.show()
"""),
  md("""
## How much of the Hessian lies in the blocks?

The share of the Hessian's squared (Frobenius) mass inside Adam-mini's
diagonal blocks, against the share of the matrix those blocks cover (what a
structureless matrix would put there). For comparison, the same measure for
blocks of the same size taken **along input features** instead of output
neurons, which is not how Adam-mini groups coordinates.
"""),
  code("""
def mass_in_blocks(h, size):
  n = h.shape[0]
  mask = np.zeros_like(h, dtype=bool)
  for s in range(0, n, size):
    mask[s : s + size, s : s + size] = True
  return (h[mask] ** 2).sum() / (h**2).sum(), mask.mean()


def input_major(h, n_out):
  \"\"\"Reorder an output-major Hessian so that coordinates are grouped by input feature.\"\"\"
  n = h.shape[0]
  n_in = n // n_out
  perm = np.arange(n).reshape(n_out, n_in).T.reshape(-1)
  return h[np.ix_(perm, perm)]


print(f"{'matrix':<26} {'when':<8} {'blocks cover':>12} {'mass in blocks':>15} {'by input instead':>17}")
for (name, when), h in hessians.items():
  size = block_size(name)
  mass, area = mass_in_blocks(h, size)
  other, _ = mass_in_blocks(input_major(h, h.shape[0] // D), size)
  print(f'{name:<26} {when:<8} {area:>12.1%} {mass:>15.1%} {other:>17.1%}')
"""),
  md("""
What to look for:

* **Query**: the two head blocks hold most of the mass, and the entries
  between heads are mostly an order of magnitude smaller: one `v` per head.
* **MLP**: the small per-neuron blocks on the diagonal stand out from the
  rest and hold a large share of the mass while covering only a few percent
  of the matrix, far more than the same blocks taken along input features.
* **Value**: at initialisation it has no per-neuron structure (output- and
  input-grouped blocks hold the same share); the per-neuron blocks appear
  with training. This is why the value projection's block is a choice
  (`value_blocks='neuron'` or `'whole'`) in Adam-mini.

This is a 1-layer toy on a 16-sequence batch, so the numbers move with the
seed and the batch; Zhang et al. (2024), *Adam-mini: Use Fewer Learning Rates
To Gain More*, study the structure at scale. `partition_explorer.ipynb` shows
how the blocks are chosen.
"""),
]


NOTEBOOKS = {
  'quickstart.ipynb': QUICKSTART,
  'partition_explorer.ipynb': EXPLORER,
  'hessian_structure.ipynb': HESSIAN,
}


def build(name):
  nb = new_notebook(cells=NOTEBOOKS[name])
  nb.metadata = {
    'kernelspec': {
      'display_name': 'Python 3',
      'language': 'python',
      'name': 'python3',
    },
    'language_info': {'name': 'python'},
    'colab': {'provenance': [], 'name': name},
  }
  # Stable ids, so regenerating gives the same file.
  for i, cell in enumerate(nb.cells):
    cell['id'] = f'{os.path.splitext(name)[0].replace("_", "-")}-{i}'
  return nb


def main(argv=None):
  names = (argv if argv else sys.argv[1:]) or list(NOTEBOOKS)
  for name in names:
    path = os.path.join(HERE, name)
    nbformat.write(build(name), path)
    print('wrote', path)


if __name__ == '__main__':
  main()

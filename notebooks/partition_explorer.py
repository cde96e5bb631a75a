# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Partition explorer: how Adam-mini chooses its blocks
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/optax-adam-mini/optax_adam_mini/blob/main/notebooks/partition_explorer.ipynb)
#
# Adam-mini gives every block of parameters one second-moment scalar `v`. A
# **partition** says, for each leaf of the parameter tree, which coordinates
# form a block. It is written with four rules of `optax_adam_mini.Block`:
#
# | rule | one `v` per | used for |
# |---|---|---|
# | `Block.elementwise()` | coordinate (plain Adam) | biases |
# | `Block.whole()` | leaf | norm scales, anything unrecognised |
# | `Block.along(*axes)` | index along `axes` | output neurons (`along(-1)`), tokens (`along(0)`) |
# | `Block.heads(axis, head_dim, along=())` | head of `head_dim` coordinates along `axis` | queries and keys |
#
# The default partition reads the names on each leaf's path. This notebook runs
# it on Flax Linen, Flax NNX and Llama-style trees, then writes a partition by hand.

# %% [markdown]
# ## Setup
#
# Where `optax_adam_mini` is not importable (Colab), the next cell clones the
# repository and installs it with `pip install -e`, so that the notebook runs
# the same library and example code as the tests. In a clone installed with
# `pip install -e '.[examples]'` it does nothing.

# %%
import importlib.util
import os
import subprocess
import sys

# @markdown The repository to install when the package is not importable:
REPO_URL = 'https://github.com/optax-adam-mini/optax_adam_mini'  # @param

if importlib.util.find_spec('optax_adam_mini') is None:
  repo_dir = os.path.abspath(os.path.basename(REPO_URL))
  if not os.path.isdir(repo_dir):
    clone = ['git', 'clone', '--depth=1', REPO_URL, repo_dir]
    subprocess.run(clone, check=True)
  pip_install = [sys.executable, '-m', 'pip', 'install', '-q']
  subprocess.run([*pip_install, '-e', f'{repo_dir}[examples]'], check=True)
  # The editable install puts the clone on the path when Python starts; this
  # kernel started before it, so add the clone now.
  sys.path.insert(0, repo_dir)

import optax_adam_mini

print('optax_adam_mini', optax_adam_mini.__version__)
print('from', os.path.dirname(optax_adam_mini.__file__))

# %%
import warnings

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import linen as nn
from flax import nnx

from optax_adam_mini import Block

print('JAX', jax.__version__, 'running on', jax.devices()[0].platform.upper())


# %% [markdown]
# ## Flax Linen: `nn.MultiHeadDotProductAttention`
#
# A small Linen language model. Linen's attention keeps heads as separate axes:
# query/key/value kernels are `(D, H, Dh)` and the output kernel is
# `(H, Dh, D)`, so no head counts are needed. `jax.eval_shape` gives the
# parameter shapes without allocating anything.


# %%
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


linen_params = jax.eval_shape(
  LinenLM().init, jax.random.key(0), jnp.ones((1, 8), jnp.int32)
)
print(optax_adam_mini.partition_report(linen_params))


# %% [markdown]
# ## Flax NNX: `nnx.MultiHeadAttention`
#
# The same model in NNX. The state of an NNX module can be passed as it is
# (paths that end in `.value` are understood) or as a pure dict
# (`nnx.to_pure_dict`).


# %%
class NNXMLP(nnx.Module):
  def __init__(self, rngs):
    self.fc1 = nnx.Linear(64, 256, rngs=rngs)
    self.fc2 = nnx.Linear(256, 64, rngs=rngs)


class NNXLayer(nnx.Module):
  def __init__(self, rngs):
    self.ln_attn = nnx.LayerNorm(64, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(
      num_heads=4, in_features=64, decode=False, rngs=rngs
    )
    self.ln_mlp = nnx.LayerNorm(64, rngs=rngs)
    self.mlp = NNXMLP(rngs)


class NNXLM(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Embed(256, 64, rngs=rngs)
    self.layers = getattr(nnx, 'List', list)(
      [NNXLayer(rngs) for _ in range(2)]
    )  # nnx.List: Flax >= 0.12
    self.ln_f = nnx.LayerNorm(64, rngs=rngs)
    self.lm_head = nnx.Linear(64, 256, rngs=rngs)


nnx_state = nnx.state(NNXLM(nnx.Rngs(0)), nnx.Param)
print(optax_adam_mini.partition_report(nnx_state))


# %% [markdown]
# ## Llama-style trees, stacked layers and grouped-query attention
#
# Hugging Face style names (`self_attn/q_proj`, `mlp/gate_proj`, ...) store
# all heads in one `(D, H * Dh)` matrix, so the default partition needs
# `num_heads` (and `num_kv_heads` for grouped-query attention) to cut it into
# heads. Layers stacked on a leading axis (`nnx.vmap`/`nnx.scan`, or
# `jax.lax.scan` over layers) keep one set of blocks per layer.


# %%
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

# %% [markdown]
# Without the head counts the flattened query and key kernels cannot be cut
# into heads, and the library says so instead of guessing:

# %%
try:
  jax.eval_shape(optax_adam_mini.adam_mini(1e-3).init, llama)
except ValueError as e:
  print('ValueError:', e)

# %% [markdown]
# `value_blocks='whole'` gives the value projection one `v` per (layer and)
# leaf instead of one per output neuron; the reference implementation offers
# both.

# %%
whole = optax_adam_mini.partition_report(
  llama, num_heads=H, num_kv_heads=KV, value_blocks='whole'
)
print(
  [
    (leaf.path, leaf.num_blocks, leaf.v_shape)
    for leaf in whole.leaves
    if 'v_proj' in leaf.path
  ]
)

# %% [markdown]
# `block_rules='slim'` keeps the layouts and applies SlimAdam's rules by layer
# type instead of the reference's: one `v` per *output* neuron for queries and
# keys, per *input* neuron for values, attention outputs and MLPs, plain Adam
# for norm scales. On the convergence study's 10m Llama it matched AdamW's
# short-horizon loss (BENCHMARKS.md, section 4); the state stays about half of
# AdamW's.

# %%
slim = optax_adam_mini.partition_report(
  llama, num_heads=H, num_kv_heads=KV, block_rules='slim'
)
for ref, new in zip(report.leaves, slim.leaves):
  if ref.v_shape != new.v_shape:
    print(f'{ref.path:42} v {ref.v_shape} -> {new.v_shape}')
print(f'state / AdamW: {report.state_ratio:.4f} -> {slim.state_ratio:.4f}')


# %% [markdown]
# ## Seeing the blocks
#
# To draw which coordinates share a `v`, feed `scale_by_adam_mini` a gradient
# that is 1 at a single coordinate: exactly one entry of the new `v` becomes
# non-zero, the one of that coordinate's block. Doing this for every coordinate
# (`jax.vmap`, one `jax.jit` per matrix) colours each matrix by block.


# %%
def block_ids(block, shape):
  """The block index of every coordinate of a leaf of `shape` under `block`."""
  tx = optax_adam_mini.scale_by_adam_mini(partition=lambda p: {'w': block})
  params = {'w': jnp.zeros(shape)}
  state = tx.init(params)
  n = int(np.prod(shape))
  one_hots = jnp.eye(n).reshape(n, *shape)
  update_v = jax.jit(
    jax.vmap(lambda g: tx.update({'w': g}, state, params)[1].v)
  )
  v = update_v(one_hots)
  v = jnp.concatenate([x.reshape(n, -1) for x in jax.tree.leaves(v)], axis=1)
  return np.asarray(jnp.argmax(v != 0, axis=1)).reshape(shape)


d, heads, dh = 12, 3, 4  # a (12, 12) kernel with 3 heads of 4
demo_rules = {
  'query (D, H*Dh): Block.heads(1, 4)': (Block.heads(1, dh), (d, heads * dh)),
  'value / MLP (in, out): Block.along(1)': (Block.along(1), (d, heads * dh)),
  'embedding (vocab, D): Block.along(0)': (Block.along(0), (16, d)),
  'norm scale: Block.whole()': (Block.whole(), (1, d)),
  'bias: Block.elementwise()': (Block.elementwise(), (1, d)),
}
fig, axes = plt.subplots(1, len(demo_rules), figsize=(17, 3.8))
for ax, (title, (block, shape)) in zip(axes, demo_rules.items()):
  ids = block_ids(block, shape)
  ax.imshow(
    ids % 20,
    cmap='tab20',
    vmin=0,
    vmax=19,
    aspect='equal',
    interpolation='nearest',
  )
  ax.set_title(f'{title}\n{ids.max() + 1} blocks', fontsize=8)
  ax.set_xticks([])
  ax.set_yticks([])
plt.tight_layout()
plt.show()

# %% [markdown]
# GPT-2's fused `c_attn` kernel `(D, 3D)` holds `[q | k | v]` side by side, and
# gets a head rule for `q` and `k` and a neuron rule for `v`:

# %%
gpt2 = {'h': {'0': {'attn': {'c_attn': {'kernel': sds(12, 36)}}}}}
with (
  warnings.catch_warnings()
):  # a lone c_attn does not look like a whole model
  warnings.simplefilter('ignore')
  fused = optax_adam_mini.partition_report(gpt2, num_heads=3).leaves[0]
print(fused.rule)
ids = block_ids(fused.rule, (12, 36))
plt.figure(figsize=(8, 3))
plt.imshow(ids % 20, cmap='tab20', vmin=0, vmax=19, interpolation='nearest')
plt.title(f'c_attn (12, 3*12): {ids.max() + 1} blocks')
plt.axis('off')
plt.show()

# %% [markdown]
# ## Stating the layout of your own model
#
# Each leaf gets a **layout**: its role and what each axis is (`layers`,
# `heads`, `head_dim`, `in`, `out`, `vocab`, `parts`); the block follows from
# it. The default partition reads layouts from axis names the params carry
# (Flax logical names, NNX sharding names, penzai and haliax named axes), from
# names libraries fix, and from Flax's conventions; where it cannot tell, it
# raises an error that names the leaf and the line that fixes it.
#
# Here is a model in none of those conventions: layers scanned into axis 1 of
# each kernel (as MaxText does), `(out, in)` MLP kernels named `w_up`/`w_down`,
# and no axis names, with as many layers as the model is wide, so the norm
# scales cannot tell where the layers are either.

# %%
D, L, H, DH, F, V = 16, 16, 4, 4, 48, 100
odd_params = jax.eval_shape(
  lambda: {
    'embed': {'embedding': jnp.zeros((V, D))},
    'blocks': {
      'attn': {
        'query': {'kernel': jnp.zeros((D, L, H, DH))},
        'key': {'kernel': jnp.zeros((D, L, H, DH))},
        'value': {'kernel': jnp.zeros((D, L, H, DH))},
        'out': {'kernel': jnp.zeros((H, L, DH, D))},
      },
      'ffw': {'w_up': jnp.zeros((F, L, D)), 'w_down': jnp.zeros((D, L, F))},
      'norm': {'scale': jnp.zeros((D, L))},
    },
  }
)
try:
  optax_adam_mini.partition_report(odd_params)
except ValueError as error:
  print(str(error)[:400])

# %% [markdown]
# The error names the leaf and a `layouts=` line. A layout is
# `'<role>: <kind> <kind> ...'`, one kind per axis, keyed by a path pattern
# (a glob matched against the leaf's path or its end). Two lines cover the
# whole model:

# %%
layouts = {
  'attn/query/kernel': 'query: in layers heads head_dim',
  'attn/key/kernel': 'key: in layers heads head_dim',
  'attn/value/kernel': 'value: in layers heads head_dim',
  'attn/out/kernel': 'attention_out: heads layers head_dim out',
  'ffw/w_up': 'mlp: out layers in',
  'ffw/w_down': 'mlp: out layers in',
  'norm/scale': 'norm: out layers',
}
layout_report = optax_adam_mini.partition_report(odd_params, layouts=layouts)
for leaf in layout_report.leaves:
  print(f'{leaf.path:28} {str(leaf.layout):42} v {leaf.v_shape}')

# %% [markdown]
# Each layer keeps its own blocks (the `L` axis stays in every `v`), the
# queries and keys get one `v` per head, the MLP one per output neuron of its
# `(out, in)` kernels. Pass the same `layouts=` to `adam_mini` to train with
# them; `strict=True` turns the warning about an unrecognised leaf into an
# error.

# %%
tx = optax_adam_mini.adam_mini(1e-3, layouts=layouts, strict=True)
odd_state = jax.eval_shape(tx.init, odd_params)
print(odd_state[0].v['blocks']['attn']['query']['kernel'].shape)

# %% [markdown]
# ## Writing your own partition
#
# A partition is a function from the parameter tree to a tree of `Block`s of
# the same structure (or a tree of `Block`s itself). Here is a model whose names
# the default partition does not know: a fused `(D, 3, H, Dh)` projection,
# stacked layers, an unusual embedding name.

# %%
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

# %% [markdown]
# `Block.heads(axis, head_dim, along=...)` cuts a flattened axis into heads, and
# `along` keeps further axes, such as the layer axis of a stacked kernel. The
# same rule written for a `(L, D, H*Dh)` query kernel:

# %%
q_stacked = {'q': jnp.zeros((L, D, H * DH))}
rule = {'q': Block.heads(-1, DH, along=(0,))}  # a tree of Blocks works as well
leaf = optax_adam_mini.partition_report(q_stacked, partition=rule).leaves[0]
print(leaf.rule, '->', leaf.num_blocks, 'blocks, v shape', leaf.v_shape)

# %% [markdown]
# The partition goes straight into `adam_mini`. A few steps on a toy regression
# check that it trains:

# %%
# @markdown Adam-mini steps on the toy regression:
STEPS = 200  # @param {type:"integer"}
# @markdown Learning rate:
LR = 3e-3  # @param {type:"number"}

tx = optax_adam_mini.adam_mini(LR, partition=my_partition, weight_decay=0.0)
targets = jax.random.normal(next(key), (8, D))
tokens = jnp.arange(8)


def toy_loss(p):
  x = p['tok'][tokens]
  for i in range(L):
    x = (
      x
      + jax.nn.gelu(x @ p['blocks']['ff_in'][i] + p['blocks']['ff_in_bias'][i])
      @ p['blocks']['ff_out'][i]
    )
    x = x * p['blocks']['gain'][i]
  return jnp.mean((x - targets) ** 2)


@jax.jit
def step(p, s):
  loss, g = jax.value_and_grad(toy_loss)(p)
  u, s = tx.update(g, s, p)
  return optax.apply_updates(p, u), s, loss


p, s = my_params, tx.init(my_params)
for i in range(STEPS + 1):
  p, s, loss = step(p, s)
  if i % 50 == 0 or i == STEPS:
    print(f'step {i:3d}  loss {float(loss):.4f}')

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
# # The block structure of a transformer's Hessian
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/optax-adam-mini/optax_adam_mini/blob/main/notebooks/hessian_structure.ipynb)
#
# Adam-mini rests on an observation (Zhang et al., 2024): the Hessian of a
# transformer's loss is close to **block-diagonal**, with blocks that follow
# the architecture: one per attention head for queries and keys, one per output
# neuron for values and MLP layers. One learning rate (one `v`) per dense
# Hessian block is then nearly as good as Adam's one per coordinate.
#
# Here we compute exact Hessians of a tiny transformer (1 layer, width 16, 2
# heads) with `jax.hessian`, for its query projection, value projection and MLP
# matrices, order each matrix's coordinates by Adam-mini's blocks, and look at
# the heat maps.

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
import functools

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from matplotlib.colors import LogNorm

from examples.lm import config, data

print('JAX', jax.__version__, 'running on', jax.devices()[0].platform.upper())

# %% [markdown]
# ## A tiny transformer in plain JAX
#
# Byte-level tokens, learned positions, one pre-norm attention layer (2 heads of
# 8) and a GELU MLP (width 32), float32. The parameter names follow Llama so that
# the default partition recognises them.

# %%
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
    'mlp': {
      'up_proj': {'kernel': normal((D, F))},
      'down_proj': {'kernel': normal((F, D))},
    },
    'lm_head': {'kernel': normal((D, V))},
  }


def rms(x):
  return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6)


def loss_fn(p, batch):
  tokens, targets = batch[:, :-1], batch[:, 1:]
  b, t = tokens.shape
  x = (
    p['embed_tokens']['embedding'][tokens]
    + p['position_embeddings']['embedding'][:t]
  )
  a = p['self_attn']
  h = rms(x)
  q, k, v = (
    (h @ a[name]['kernel']).reshape(b, t, H, DH)
    for name in ('q_proj', 'k_proj', 'v_proj')
  )
  y = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(
    b, t, H * DH
  )
  x = x + y @ a['o_proj']['kernel']
  x = (
    x
    + jax.nn.gelu(rms(x) @ p['mlp']['up_proj']['kernel'])
    @ p['mlp']['down_proj']['kernel']
  )
  logits = rms(x) @ p['lm_head']['kernel']
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


# @markdown Seed of the initial weights:
SEED = 0  # @param {type:"integer"}

print(optax_adam_mini.partition_report(init(jax.random.key(SEED)), num_heads=H))

# %% [markdown]
# ## Data, and a short training run
#
# The Hessian at initialisation and after some training both show the
# structure; we look at a model trained for a few hundred Adam steps on
# byte-level text: the Python standard library's own sources, read locally and
# cut into batches by the example trainer's `examples.lm.data`.

# %%
corpus = data.load(config.DataConfig(max_bytes=300_000))
tokens = corpus.train_tokens
print(f'{corpus.description}: {len(tokens):,} training tokens')


def batch_at(step, size=32):
  """The example trainer's batch of `step`: `size` windows of T + 1 bytes."""
  return jnp.asarray(data.get_batch(tokens, step, size, T, seed=SEED))


# @markdown Adam steps before the "trained" Hessians:
TRAIN_STEPS = 400  # @param {type:"integer"}
# @markdown Adam's learning rate:
LR = 1e-2  # @param {type:"number"}

params0 = init(jax.random.key(SEED))
tx = optax.adam(LR)


@jax.jit
def train_step(p, s, batch):
  loss, g = jax.value_and_grad(loss_fn)(p, batch)
  u, s = tx.update(g, s, p)
  return optax.apply_updates(p, u), s, loss


params, state = params0, tx.init(params0)
for i in range(TRAIN_STEPS):
  params, state, loss = train_step(params, state, batch_at(i))
  if i % 100 == 0 or i == TRAIN_STEPS - 1:
    print(f'step {i:3d}  loss {float(loss):.3f}')


# %% [markdown]
# ## Hessians of single weight matrices
#
# For a kernel `W` of shape `(in, out)` we flatten it **output neuron by output
# neuron** (`W.T.reshape(-1)`), so that the coordinates of one output neuron,
# and of one head (a run of `Dh` consecutive output neurons), are contiguous.
# `jax.hessian` of the loss as a function of that vector gives the full
# `(in*out, in*out)` matrix, on a fixed batch of 16 sequences.


# %%
# `path` is static: one compile per matrix, for both sets of weights.
@functools.partial(jax.jit, static_argnums=1)
def hessian(p, path, batch):
  """Hessian of the loss w.r.t. the kernel at `path`, output-neuron-major order."""
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

  return jax.hessian(f)(w.T.reshape(-1))


probe = batch_at(10_000, size=16)  # a fixed batch of 16 sequences of 32 bytes
matrices = {
  'query  (16, 2 heads x 8)': (('self_attn', 'q_proj', 'kernel'), DH),
  'value  (16, 16)': (('self_attn', 'v_proj', 'kernel'), 1),
  'MLP up (16, 32)': (('mlp', 'up_proj', 'kernel'), 1),
}
hessians = {}
for name, (path, _) in matrices.items():
  for when, p in (('init', params0), ('trained', params)):
    hessians[name, when] = np.asarray(hessian(p, path, probe))
  print(name, hessians[name, 'trained'].shape)


# %% [markdown]
# ## Heat maps
#
# `|H|` on a log scale. Adam-mini's blocks lie on the diagonal: per head for
# the query (2 blocks of 16 x 8 = 128 coordinates, split by the white lines),
# per output neuron for the value and the MLP (16 x 16 and 32 x 32 small
# blocks of 16 coordinates, one per input feature).


# %%
def block_size(name):
  _, per_block = matrices[name]
  return per_block * D  # output neurons per block x input features


fig, axes = plt.subplots(2, 3, figsize=(16, 10))
for col, name in enumerate(matrices):
  for row, when in enumerate(('init', 'trained')):
    h = np.abs(hessians[name, when])
    ax = axes[row, col]
    floor = max(h.max() * 1e-6, 1e-12)
    im = ax.imshow(
      np.maximum(h, floor),
      norm=LogNorm(vmin=floor, vmax=h.max()),
      cmap='viridis',
      interpolation='nearest',
    )
    size = block_size(name)
    if (
      h.shape[0] // size <= 8
    ):  # grid lines between head blocks (neuron blocks: too many)
      for edge in range(size, h.shape[0], size):
        ax.axhline(edge - 0.5, color='white', lw=0.8)
        ax.axvline(edge - 0.5, color='white', lw=0.8)
    ax.set_title(
      f'{name}, {when}\n|Hessian|, {h.shape[0]} coordinates', fontsize=10
    )
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, fraction=0.046)
plt.tight_layout()
plt.show()


# %% [markdown]
# ## How much of the Hessian lies in the blocks?
#
# The share of the Hessian's squared (Frobenius) mass inside Adam-mini's
# diagonal blocks, against the share of the matrix those blocks cover (what a
# structureless matrix would put there). For comparison, the same measure for
# blocks of the same size taken **along input features** instead of output
# neurons, which is not how Adam-mini groups coordinates.


# %%
def mass_in_blocks(h, size):
  n = h.shape[0]
  mask = np.zeros_like(h, dtype=bool)
  for s in range(0, n, size):
    mask[s : s + size, s : s + size] = True
  return (h[mask] ** 2).sum() / (h**2).sum(), mask.mean()


def input_major(h, n_out):
  """Reorder an output-major Hessian so that coordinates are grouped by input feature."""
  n = h.shape[0]
  n_in = n // n_out
  perm = np.arange(n).reshape(n_out, n_in).T.reshape(-1)
  return h[np.ix_(perm, perm)]


print(
  f'{"matrix":<26} {"when":<8} {"blocks cover":>12} {"mass in blocks":>15} {"by input instead":>17}'
)
for (name, when), h in hessians.items():
  size = block_size(name)
  mass, area = mass_in_blocks(h, size)
  other, _ = mass_in_blocks(input_major(h, h.shape[0] // D), size)
  print(f'{name:<26} {when:<8} {area:>12.1%} {mass:>15.1%} {other:>17.1%}')

# %% [markdown]
# What to look for:
#
# * **Query**: the two head blocks hold most of the mass, and the entries
#   between heads are mostly an order of magnitude smaller: one `v` per head.
# * **MLP**: the small per-neuron blocks on the diagonal stand out from the
#   rest and hold a large share of the mass while covering only a few percent
#   of the matrix, far more than the same blocks taken along input features.
# * **Value**: the weakest structure of the three. At initialisation its heat
#   map shows no per-neuron diagonal; a faint one appears with training. Its
#   blocks hold less of the mass than the MLP's, and how much more than blocks
#   along input features moves with the seed and the batch. This is why the
#   value projection's block is a choice (`value_blocks='neuron'` or
#   `'whole'`) in Adam-mini.
#
# This is a 1-layer toy on a 16-sequence batch, so the numbers move with the
# seed and the batch; Zhang et al. (2024), *Adam-mini: Use Fewer Learning Rates
# To Gain More*, study the structure at scale. `partition_explorer.ipynb` shows
# how the blocks are chosen.

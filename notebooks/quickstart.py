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
# # Adam-mini quickstart
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/optax-adam-mini/optax_adam_mini/blob/main/notebooks/quickstart.ipynb)
#
# [Adam-mini](https://arxiv.org/abs/2406.16793) (Zhang et al., 2024) keeps Adam's
# per-parameter first moment `m` but only **one second-moment scalar `v` per
# block** of parameters: one per attention head for queries and keys, one per
# output neuron for values, output projections and MLPs, one per token for the
# embedding and the LM head, one per norm scale. That removes almost half of
# Adam's optimizer state, usually at no cost in loss.
#
# This notebook trains the tiny Llama-style language model of
# `examples/train_lm.py` (byte-level, on the Python standard library's own
# source code, so nothing is downloaded) with `optax.adamw` and
# `optax_adam_mini.adam_mini`, side by side, in a couple of minutes on a CPU.

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
import time

import jax
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

from examples import train_lm as lm

print('JAX', jax.__version__, 'running on', jax.devices()[0].platform.upper())

# %% [markdown]
# ## Model and data
#
# A 2-layer Llama-style decoder (RMSNorm, SwiGLU, rotary embeddings, grouped-query
# attention with 4 query and 2 key/value heads), computing in bfloat16 with
# float32 weights. Tokens are bytes, and the last 5% of the corpus is held out.

# %%
# @markdown Training steps for each optimizer:
STEPS = 800  # @param {type:"integer"}
# @markdown Sequences per batch:
BATCH = 16  # @param {type:"integer"}
# @markdown Bytes per sequence:
SEQ = 64  # @param {type:"integer"}
# @markdown Peak learning rate (warmup, then cosine decay):
LR = 3e-3  # @param {type:"number"}
# @markdown Training steps between two validation losses:
EVAL_EVERY = 100  # @param {type:"integer"}

cfg = lm.ModelConfig(
  d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=172, init_std=0.06
)
tokens, source = lm.load_corpus(None, max_bytes=2_000_000)
train_tokens, val_tokens = lm.split_train_val(tokens, 0.05)
graphdef, params = lm.init_params(cfg, seed=0)
n_params = sum(x.size for x in jax.tree.leaves(params))
print(
  f'{n_params:,} parameters; {source}: '
  f'{len(train_tokens):,} train / {len(val_tokens):,} val bytes'
)
print(repr(bytes(train_tokens[:200]).decode(errors='replace')))

# %% [markdown]
# ## The blocks Adam-mini uses
#
# `adam_mini` finds the blocks from the parameter names (`q_proj`, `k_proj`,
# `mlp/...`, `embed_tokens`, ...). Grouped-query attention needs the head counts;
# `partition_report` shows the rule, the number of blocks and the shape of `v`
# for every leaf, and the optimizer state against `optax.adamw`'s.

# %%
print(optax_adam_mini.partition_report(params, **cfg.partition_kwargs()))

# %% [markdown]
# ## With `nnx.Optimizer`
#
# `adam_mini` is an `optax.GradientTransformation`, so Flax NNX's
# `nnx.Optimizer` takes it where it would take `optax.adamw`. A few steps on a
# fresh copy of the model:

# %%
model = lm.build_model(cfg, seed=0)
optimizer = nnx.Optimizer(
  model, optax_adam_mini.adam_mini(LR, **cfg.partition_kwargs()), wrt=nnx.Param
)


@nnx.jit
def nnx_train_step(model, optimizer, batch):
  def loss_fn(model):
    logits = model(batch[:, :-1])
    labels = batch[:, 1:]
    return optax.softmax_cross_entropy_with_integer_labels(
      logits, labels
    ).mean()

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return loss


for i in range(3):
  batch = lm.get_batch(train_tokens, i, BATCH, SEQ, seed=0)
  print(
    f'nnx.Optimizer step {i}: loss {float(nnx_train_step(model, optimizer, batch)):.3f}'
  )

# %% [markdown]
# ## Train with both optimizers
#
# Same initial weights, same batches in the same order, same hyper-parameters
# (warmup + cosine schedule, weight decay on matrices only). `adam_mini` is a
# drop-in replacement for `optax.adamw`.

# %%
schedule = optax.warmup_cosine_decay_schedule(
  0.0, LR, STEPS // 10, STEPS, end_value=LR / 10
)
decay_mask = jax.tree.map(lambda x: x.ndim >= 2, params)  # no decay on norms
optimizers = {
  'adamw': optax.adamw(
    schedule, b1=0.9, b2=0.95, weight_decay=0.1, mask=decay_mask
  ),
  'adam_mini': optax_adam_mini.adam_mini(
    schedule,
    b1=0.9,
    b2=0.95,
    weight_decay=0.1,
    weight_decay_mask=decay_mask,
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
      val = [eval_loss(params, b) for b in val_set]
      history['val'].append(float(np.mean(val)))
  history['seconds'] = time.perf_counter() - start
  history['state_bytes'] = sum(x.nbytes for x in jax.tree.leaves(opt_state))
  return history


results = {}
for name, tx in optimizers.items():
  results[name] = h = train(tx)
  print(
    f'{name:>9}: val loss {h["val"][-1]:.4f}  ({h["seconds"]:.0f}s, '
    f'optimizer state {h["state_bytes"]:,} bytes)'
  )

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
for (name, h), color in zip(results.items(), ['tab:blue', 'tab:red']):
  smooth = np.convolve(h['train'], np.ones(10) / 10, mode='valid')
  ax1.plot(np.arange(10, STEPS + 1), smooth, color=color, label=name)
  label = f'{name} ({h["val"][-1]:.3f})'
  ax2.plot(h['val_step'], h['val'], 'o-', color=color, label=label)
ax1.set(
  title='train loss (10-step mean)',
  xlabel='step',
  ylabel='nats / byte',
  ylim=(None, 3.0),
)
ax2.set(title='validation loss', xlabel='step')
for ax in (ax1, ax2):
  ax.grid(alpha=0.3)
  ax.legend()
plt.tight_layout()
plt.show()
ratio = results['adam_mini']['val'][-1] / results['adamw']['val'][-1]
print(f'Adam-mini / AdamW final validation loss: {ratio:.4f}')

# %% [markdown]
# At this tiny scale Adam-mini starts a little behind (a coordinate whose
# gradients are small for its block takes smaller steps than under Adam) and
# closes most of the gap as training goes on, here to within about 1-2% of
# AdamW's validation loss, with half of the optimizer state.

# %% [markdown]
# ## Memory
#
# The optimizer state of AdamW is two float32 arrays the size of the model
# (`m` and `v`). Adam-mini keeps `m` and a few numbers per block, so its state
# is about half. `jax.eval_shape` gives the state shapes of large models without
# allocating anything (the vocabulary here is 256 bytes; with a real tokenizer
# the embedding and LM head grow, and Adam-mini's one `v` per token keeps them
# at half too).


# %%
def state_bytes(tx, params):
  state = jax.eval_shape(tx.init, params)
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


shapes = {
  'this notebook': cfg,
  'Llama, d=768, 12 layers': lm.ModelConfig(
    d_model=768, n_layers=12, n_heads=12, n_kv_heads=4, d_ff=2048
  ),
  'Llama-3.2-1B shape': lm.ModelConfig(
    d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, d_ff=8192
  ),
  'Llama-2-7B shape': lm.ModelConfig(
    d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, d_ff=11008
  ),
}
print(
  f'{"model":<26} {"params":>14} {"AdamW state":>12} {"Adam-mini":>12} '
  f'{"saved":>10}'
)
for name, c in shapes.items():
  abstract = lm.abstract_params(c)[1]
  n = sum(x.size for x in jax.tree.leaves(abstract))
  adamw = state_bytes(optax.adamw(1e-3), abstract)
  mini = state_bytes(
    optax_adam_mini.adam_mini(1e-3, **c.partition_kwargs()), abstract
  )
  print(
    f'{name:<26} {n:>14,} {adamw / 2**20:>9.1f} MiB '
    f'{mini / 2**20:>8.1f} MiB {1 - mini / adamw:>9.1%}'
  )

# %% [markdown]
# ## Next
#
# * `python examples/train_lm.py` trains both optimizers from the command line
#   (presets up to Llama-2-7B shapes, sharding with `--mesh`, Orbax checkpoints).
# * `partition_explorer.ipynb` shows how blocks are chosen and how to write your own.
# * `hessian_structure.ipynb` shows the near-block-diagonal Hessian that motivates
#   the blocks.

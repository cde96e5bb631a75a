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
# This notebook trains a tiny Llama-style language model with `optax.adamw`
# and `optax_adam_mini.adam_mini`, side by side, in a few minutes on a CPU. The
# model, the data (bytes of the Python standard library's own source code, so
# nothing is downloaded) and the training loop are those of the repository's
# example trainer, `examples/lm` (`python examples/train_lm.py` runs it from
# the command line).

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
import dataclasses
import tempfile

import jax
import optax
from flax import nnx
from IPython.display import Image, display

from examples.lm import config, data, model, presets, report, train

print('JAX', jax.__version__, 'running on', jax.devices()[0].platform.upper())

# %% [markdown]
# ## Model and data
#
# A 2-layer Llama-style decoder (RMSNorm, SwiGLU, rotary embeddings,
# grouped-query attention with 4 query and 2 key/value heads) at half the width
# of the example's `tiny` preset, computing in bfloat16 with float32 weights.
# Tokens are bytes, and the last 5% of the corpus is held out.
#
# The next cell holds the notebook's settings (a form in Colab). It is tagged
# `parameters`, papermill's convention: the repository's test runs the notebook
# with a shorter training run by adding a cell after it that sets `STEPS` and
# `EVAL_EVERY` again.

# %% tags=["parameters"]
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

# %%
corpus = data.load(config.DataConfig(max_bytes=2_000_000))
model_cfg = config.ModelConfig(
  'llama',
  vocab_size=corpus.tokenizer.vocab_size,
  d_model=64,
  num_layers=2,
  num_heads=4,
  num_kv_heads=2,
  d_ff=172,
  init_std=0.06,
)
# The tiny preset's training settings (warmup, weight decay, clipping, ...)
# with this notebook's length, batch and learning rate.
_, train_cfg = presets.from_preset(
  'tiny',
  steps=STEPS,
  batch_size=BATCH,
  seq_len=SEQ,
  lr=LR,
  eval_every=EVAL_EVERY,
)
params = model.init_params(model_cfg, seed=train_cfg.seed)
print(f'{model.param_count(params):,} parameters')
print(
  f'{corpus.description}: {len(corpus.train_tokens):,} train / '
  f'{len(corpus.val_tokens):,} val tokens'
)
print(repr(corpus.tokenizer.decode(corpus.train_tokens[:200])))

# %% [markdown]
# ## The blocks Adam-mini uses
#
# `adam_mini` finds the blocks from the parameter names (`q_proj`, `k_proj`,
# `mlp/...`, `embed_tokens`, ...). Grouped-query attention needs the head counts;
# `partition_report` shows the rule, the number of blocks and the shape of `v`
# for every leaf, and the optimizer state against `optax.adamw`'s.

# %%
print(optax_adam_mini.partition_report(params, **model_cfg.partition_kwargs()))

# %% [markdown]
# ## With `nnx.Optimizer`
#
# `adam_mini` is an `optax.GradientTransformation`, so Flax NNX's
# `nnx.Optimizer` takes it where it would take `optax.adamw`. A few steps on a
# fresh copy of the model, as an NNX module:

# %%
llama = model.build(model_cfg, seed=0)
tx = optax_adam_mini.adam_mini(LR, **model_cfg.partition_kwargs())
nnx_optimizer = nnx.Optimizer(llama, tx, wrt=nnx.Param)


@nnx.jit
def nnx_train_step(llama, nnx_optimizer, batch):
  def loss_fn(llama):
    logits = llama(batch[:, :-1])
    labels = batch[:, 1:]
    return optax.softmax_cross_entropy_with_integer_labels(
      logits, labels
    ).mean()

  loss, grads = nnx.value_and_grad(loss_fn)(llama)
  nnx_optimizer.update(llama, grads)
  return loss


for step in range(3):
  batch = data.get_batch(corpus.train_tokens, step, BATCH, SEQ, seed=0)
  loss = nnx_train_step(llama, nnx_optimizer, batch)
  print(f'nnx.Optimizer step {step}: loss {float(loss):.3f}')

# %% [markdown]
# ## Train with both optimizers
#
# The example's trainer (`examples.lm.train`), once per optimizer: the same
# initial weights, the same batches in the same order, the same
# hyper-parameters (warmup + cosine schedule, gradient clipping, weight decay
# on matrices and embeddings only). Only the second moment differs:
# `adam_mini` is a drop-in replacement for `optax.adamw`.

# %%
results = {}
for name in ('adamw', 'adam_mini'):
  opt_cfg = dataclasses.replace(train_cfg.opt, name=name)
  run_cfg = dataclasses.replace(train_cfg, opt=opt_cfg)
  run = train.train(
    model_cfg, run_cfg, corpus, progress=False, print_fn=lambda _: None
  )
  results[name] = m = run.metrics
  print(
    f'{name:>9}: val loss {m["final_val_loss"]:.4f}, '
    f'{m["tokens_per_second"]:,.0f} tokens/s, optimizer state '
    f'{report.format_bytes(m["optimizer_state_bytes"])}'
  )

# %%
loss_png = os.path.join(tempfile.mkdtemp(), 'loss.png')
report.plot_losses(results, loss_png, title='quickstart: a 2-layer Llama')
display(Image(loss_png))
print(report.summary_table(results))
ratio = report.summary(results)['val_loss_ratio_adam_mini_over_adamw']
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
# is about half. `jax.eval_shape` gives the state shapes of the example's
# larger presets without allocating anything (the vocabulary is 256 bytes;
# with a real tokenizer the embedding and LM head grow, and Adam-mini's one `v`
# per token keeps them at half too).


# %%
def state_bytes(tx, params):
  state = jax.eval_shape(tx.init, params)
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


shapes = {'this notebook': model_cfg}
for preset in ('small', 'llama-1b', 'llama2-7b'):
  description, preset_model, _ = presets.PRESETS[preset]
  shapes[f'{preset} preset ({description})'] = preset_model
for name, cfg in shapes.items():
  abstract = model.abstract_params(cfg)
  adamw = state_bytes(optax.adamw(1e-3), abstract)
  mini = state_bytes(
    optax_adam_mini.adam_mini(1e-3, **cfg.partition_kwargs()), abstract
  )
  print(
    f'{name}\n  {model.param_count(abstract):,} parameters; optimizer '
    f'state AdamW {report.format_bytes(adamw)}, Adam-mini '
    f'{report.format_bytes(mini)}: {1 - mini / adamw:.1%} saved'
  )

# %% [markdown]
# ## Next
#
# * `python examples/train_lm.py` trains both optimizers from the command line
#   (presets up to Llama-2-7B shapes, sharding with `--mesh`, Orbax checkpoints).
# * `partition_explorer.ipynb` shows how blocks are chosen and how to write your own.
# * `hessian_structure.ipynb` shows the near-block-diagonal Hessian that motivates
#   the blocks.

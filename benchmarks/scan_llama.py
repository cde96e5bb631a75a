"""The harness model: a pure-JAX Llama for the GPU benchmarks and the tests.

The one pure-JAX Llama of the project (the user-facing model is the NNX one of
``examples/``). ``train_bench.py`` (step, throughput, FSDP) and
``update_step.py`` measure with it, and the tests that need a model build it
at tiny sizes (``tests/_support/``). No Flax, no NNX: the params are plain
nested dicts with Hugging Face / Flax names, kernels in ``(in, out)`` layout,
so ``optax_adam_mini``'s default partition applies with
``num_heads``/``num_kv_heads``. Two layouts, both run by :func:`llama_loss`:

* ``stacked=True`` (training): the transformer layers' leaves carry a leading
  layer axis and the forward pass scans over it (fast to compile at 7B+);
* ``stacked=False`` (update-step benchmark, tests): one subtree per layer
  (``layers/0/...``), as a Flax/Hugging Face model holds them.

Weights are float32 (the master copy); the forward/backward pass runs in
bfloat16 by default, one layer's weights cast at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

import optax_adam_mini


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  name: str
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  d_ff: int
  vocab: int = 32000
  tie: bool = False

  @property
  def head_dim(self):
    return self.d_model // self.n_heads

  def n_params(self) -> int:
    d, f, h = self.d_model, self.d_ff, self.head_dim
    layer = d * self.n_heads * h * 2 + 2 * d * self.n_kv_heads * h + 3 * d * f
    layer += 2 * d
    emb = self.vocab * d * (1 if self.tie else 2)
    return self.n_layers * layer + emb + d

  def with_layers(self, n_layers: int) -> LlamaConfig:
    return dataclasses.replace(
      self, n_layers=n_layers, name=f'{self.name}-L{n_layers}'
    )


LLAMA = {
  # Llama-shaped trees for the update-step benchmark (vocab 32000).
  '125M': LlamaConfig('llama-125M', 768, 12, 12, 12, 2048),
  '350M': LlamaConfig('llama-350M', 1024, 24, 16, 16, 2816),
  '1.1B': LlamaConfig('llama-1.1B', 2048, 22, 32, 4, 5632),  # TinyLlama
  '1.9B': LlamaConfig('llama-1.9B', 2048, 40, 16, 16, 5632),
  '3.4B': LlamaConfig('llama-3.4B', 3200, 26, 32, 32, 8640),  # OpenLLaMA-3B
  '7B': LlamaConfig('llama-2-7B', 4096, 32, 32, 32, 11008),
  '13B': LlamaConfig('llama-2-13B', 5120, 40, 40, 40, 13824),
  '70B': LlamaConfig('llama-2-70B', 8192, 80, 64, 8, 28672),
  'llama3-8B': LlamaConfig('llama-3-8B', 4096, 32, 32, 8, 14336, vocab=128256),
  'tiny': LlamaConfig('llama-tiny', 64, 2, 4, 2, 128, vocab=256),
}


def llama_shapes(cfg: LlamaConfig, stacked: bool, dtype=jnp.float32):
  """The params as ``jax.ShapeDtypeStruct``s (HF names, Flax layout)."""
  d, f, h = cfg.d_model, cfg.d_ff, cfg.head_dim
  S = lambda *s: jax.ShapeDtypeStruct(s, dtype)  # noqa: E731

  def layer(*lead):
    return {
      'self_attn': {
        'q_proj': {'kernel': S(*lead, d, cfg.n_heads * h)},
        'k_proj': {'kernel': S(*lead, d, cfg.n_kv_heads * h)},
        'v_proj': {'kernel': S(*lead, d, cfg.n_kv_heads * h)},
        'o_proj': {'kernel': S(*lead, cfg.n_heads * h, d)},
      },
      'mlp': {
        'gate_proj': {'kernel': S(*lead, d, f)},
        'up_proj': {'kernel': S(*lead, d, f)},
        'down_proj': {'kernel': S(*lead, f, d)},
      },
      'input_layernorm': {'scale': S(*lead, d)},
      'post_attention_layernorm': {'scale': S(*lead, d)},
    }

  if stacked:
    layers = layer(cfg.n_layers)
  else:
    layers = {str(i): layer() for i in range(cfg.n_layers)}
  params = {
    'model': {
      'embed_tokens': {'embedding': S(cfg.vocab, d)},
      'layers': layers,
      'norm': {'scale': S(d)},
    }
  }
  if not cfg.tie:
    params['lm_head'] = {'kernel': S(d, cfg.vocab)}
  return params


def _init_leaf(name, shape, key, std):
  if 'norm' in name or 'ln_' in name:
    fill = jnp.ones if 'scale' in name else jnp.zeros
    return fill(shape.shape, shape.dtype)
  if 'bias' in name:
    return jnp.zeros(shape.shape, shape.dtype)
  if isinstance(key, np.random.Generator):
    return jnp.asarray(std * key.standard_normal(shape.shape), shape.dtype)
  return std * jax.random.normal(key, shape.shape, shape.dtype)


def init_from_shapes(shapes, key, std=0.02, shardings=None):
  """Random params for a shape tree (norm scales at one, biases at zero).

  ``key`` is a JAX PRNG key, or a ``numpy.random.Generator`` to draw on the
  host: the tests' tiny trees then compile no random kernels (a fresh process
  spends seconds on them). With ``shardings`` (a tree of them), each leaf is
  made by its own jitted call, in its sharding, with the same values. Its
  temporaries then stay one leaf's size: in one call (about 1.5x the params)
  they would stay behind in the GPU allocator's regions (BFC, growing, never
  shrinks) as free memory too fragmented for the train step's one large temp
  buffer.
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  if isinstance(key, np.random.Generator):
    if shardings is not None:
      raise ValueError('shardings= needs a JAX key, not a numpy Generator')
    keys = [key] * len(leaves)  # drawn one leaf after the other
  else:
    keys = jax.random.split(key, len(leaves))
  names = [jax.tree_util.keystr(path) for path, _ in leaves]
  shapes = [s for _, s in leaves]
  if shardings is None:
    out = [_init_leaf(*a, std) for a in zip(names, shapes, keys)]
  else:
    out = [
      jax.jit(functools.partial(_init_leaf, n, s, std=std), out_shardings=sh)(k)
      for n, s, k, sh in zip(names, shapes, keys, jax.tree.leaves(shardings))
    ]
  return jax.tree_util.tree_unflatten(treedef, out)


# ----------------------------------------------------------------------------
# Forward pass
# ----------------------------------------------------------------------------


def _rms(x_BxTxD, scale_D, eps=1e-5):
  xf = x_BxTxD.astype(jnp.float32)
  y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, -1, keepdims=True) + eps)
  return (y * scale_D.astype(jnp.float32)[None, None]).astype(x_BxTxD.dtype)


def _rope(x_BxTxNxH, theta=10000.0):
  t, hd = x_BxTxNxH.shape[1], x_BxTxNxH.shape[-1]
  inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
  ang = np.arange(t)[:, None] * inv[None, :]
  cos = jnp.asarray(np.cos(ang), x_BxTxNxH.dtype)[None, :, None, :]
  sin = jnp.asarray(np.sin(ang), x_BxTxNxH.dtype)[None, :, None, :]
  x1, x2 = x_BxTxNxH[..., : hd // 2], x_BxTxNxH[..., hd // 2 :]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


ATTN_IMPL = os.environ.get('BENCH_ATTN_IMPL') or None  # None: let JAX choose


def attention(q, k, v):
  return jax.nn.dot_product_attention(
    q, k, v, is_causal=True, implementation=ATTN_IMPL
  )


def _embed(table_VxD, ids_BxT):
  """``table[ids]``. Under Explicit mesh axes JAX cannot infer where the rows
  of a gather go, so they follow the ids' (batch) sharding."""
  sharding = jax.typeof(ids_BxT).sharding
  axis_types = getattr(getattr(sharding, 'mesh', None), 'axis_types', ())
  if jax.sharding.AxisType.Explicit not in tuple(axis_types):
    return table_VxD[ids_BxT]
  return table_VxD.at[ids_BxT].get(out_sharding=P(*sharding.spec, None))


POLICIES = {
  'full': jax.checkpoint_policies.nothing_saveable,
  'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  'none': None,
}


def llama_loss(
  params,
  tokens,
  cfg: LlamaConfig,
  policy='full',
  dtype=jnp.bfloat16,
  weight=None,
  act=None,
):
  """Mean next-token cross entropy; tokens (B, T+1) int32.

  The layers are scanned when stacked (a leading layer axis) and run one after
  the other when held one subtree per layer; ``policy`` (:data:`POLICIES`)
  rematerialises each layer. Two optional hooks place the computation on a
  mesh (FSDP, see ``benchmarks/train_bench.py``); without them it is plain
  JAX:

  * ``weight(path, w)``: the weight a matmul uses, from the param at ``path``
    (a tuple of dict keys) already cast to ``dtype`` (e.g. an all-gather over
    the data axis). Stacked layers' leaves come without their layer axis, one
    layer at a time inside the scanned body, at the path
    ``('model', 'layers', ...)``; per-layer leaves at their own path
    (``('model', 'layers', '0', ...)``). Default: ``w``.
  * ``act(x)``: constrains an activation ``(B, T, D)`` (e.g. batch sharded
    over the data axis): the embedding output, each layer's input and output.
    Default: ``x``.
  """
  weight = weight or (lambda path, w: w)
  act = act or (lambda x: x)

  def use(tree, prefix):
    return jax.tree_util.tree_map_with_path(
      lambda p, w: weight(prefix + tuple(k.key for k in p), w.astype(dtype)),
      tree,
    )

  inp, tgt = tokens[:, :-1], tokens[:, 1:]
  b, t = inp.shape
  emb = use(params['model']['embed_tokens'], ('model', 'embed_tokens'))
  x = act(_embed(emb['embedding'], inp))

  def body(x, lp, prefix):
    x = act(x)
    lp = use(lp, prefix)
    a = lp['self_attn']
    h = _rms(x, lp['input_layernorm']['scale'])
    q = (h @ a['q_proj']['kernel']).reshape(b, t, cfg.n_heads, cfg.head_dim)
    k = (h @ a['k_proj']['kernel']).reshape(b, t, cfg.n_kv_heads, cfg.head_dim)
    v = (h @ a['v_proj']['kernel']).reshape(b, t, cfg.n_kv_heads, cfg.head_dim)
    o = attention(_rope(q), _rope(k), v).reshape(b, t, -1)
    x = x + o @ a['o_proj']['kernel']
    m = lp['mlp']
    h = _rms(x, lp['post_attention_layernorm']['scale'])
    h = jax.nn.silu(h @ m['gate_proj']['kernel']) * (h @ m['up_proj']['kernel'])
    return act(x + h @ m['down_proj']['kernel']), None

  if policy != 'none':
    body = jax.checkpoint(
      body, policy=POLICIES[policy], prevent_cse=False, static_argnums=(2,)
    )
  layers = params['model']['layers']
  if 'self_attn' in layers:  # stacked: one leading layer axis
    x, _ = jax.lax.scan(
      lambda x, lp: body(x, lp, ('model', 'layers')), x, layers
    )
  else:
    for i in range(cfg.n_layers):
      x, _ = body(x, layers[str(i)], ('model', 'layers', str(i)))
  x = _rms(x, params['model']['norm']['scale'])
  head = (
    emb['embedding'].T
    if cfg.tie
    else use(params['lm_head'], ('lm_head',))['kernel']
  )
  logits = jnp.dot(x, head, preferred_element_type=jnp.float32)
  logz = jax.nn.logsumexp(logits, -1)
  gold = jnp.take_along_axis(logits, tgt[..., None], -1)[..., 0]
  return jnp.mean(logz - gold)


# ----------------------------------------------------------------------------
# The optimizers compared
# ----------------------------------------------------------------------------


# Adam-mini by the dtype of its first moment (int8 and int4: quantized).
_ADAM_MINI_MU_DTYPES = {
  'adam_mini': None,
  'adam_mini_bf16': jnp.bfloat16,
  'adam_mini_int8': jnp.int8,
  'adam_mini_int4': jnp.int4,
  # The library's codes, rounded to nearest (the defaults before 2026-12-02
  # were dynamic to nearest for both widths).
  'adam_mini_int8_linear': optax_adam_mini.MomentQuantization(
    bits=8, code='linear', stochastic_rounding='none'
  ),
  'adam_mini_int8_dynamic': optax_adam_mini.MomentQuantization(
    bits=8, code='dynamic', stochastic_rounding='none'
  ),
  'adam_mini_int4_linear': optax_adam_mini.MomentQuantization(
    bits=4, code='linear', stochastic_rounding='none'
  ),
}


def make_tx(
  name, lr, *, num_heads, num_kv_heads=None, b1=0.9, b2=0.95, eps=1e-8, wd=0.1
):
  """The optimizers compared, with the same hyper-parameters and decay mask.

  An Adam-mini name ending in ``_slim`` takes SlimAdam's blocks
  (``block_rules='slim'``).
  """
  mask = optax_adam_mini.default_weight_decay_mask
  block_rules = 'reference'
  if name.startswith('adam_mini') and name.endswith('_slim'):
    name, block_rules = name.removesuffix('_slim'), 'slim'
  if name == 'adamw':
    return optax.adamw(lr, b1, b2, eps, weight_decay=wd, mask=mask)
  if name == 'adamw_bf16':
    return optax.adamw(
      lr, b1, b2, eps, weight_decay=wd, mask=mask, mu_dtype=jnp.bfloat16
    )
  if name in _ADAM_MINI_MU_DTYPES:
    return optax_adam_mini.adam_mini(
      lr,
      b1,
      b2,
      eps,
      weight_decay=wd,
      mu_dtype=_ADAM_MINI_MU_DTYPES[name],
      num_heads=num_heads,
      num_kv_heads=num_kv_heads,
      block_rules=block_rules,
    )
  if name == 'adafactor':
    return optax.adafactor(lr)
  raise ValueError(name)


# ----------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------


def env_info():
  import datetime

  import flax

  d = jax.devices()[0]
  return {
    'device': d.device_kind,
    'platform': d.platform,
    'n_devices': jax.device_count(),
    'jax': jax.__version__,
    'optax': optax.__version__,
    'flax': flax.__version__,
    'python': sys.version.split()[0],
    'date': datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds'
    ),
    # Compiler flags change the kernels a timing measures.
    'xla_flags': os.environ.get('XLA_FLAGS', ''),
  }


def is_oom(e: BaseException) -> bool:
  s = str(e)
  return (
    'RESOURCE_EXHAUSTED' in s or 'Out of memory' in s or 'out of memory' in s
  )

"""A lean pure-JAX Llama / GPT-2 for the benchmarks (no Flax, no NNX).

Params are plain nested dicts with Hugging Face / Flax names, kernels in
``(in, out)`` layout, so ``optax_adam_mini``'s default partition applies with
``num_heads``/``num_kv_heads``. Two layouts:

* ``stacked=True`` (training): the transformer layers' leaves carry a leading
  layer axis and the forward pass scans over it (fast to compile at 7B+);
* ``stacked=False`` (update-step benchmark): one subtree per layer
  (``layers/0/...``), as a Flax/Hugging Face model holds them.

Weights are float32 (the master copy); the forward/backward pass runs in
bfloat16, one layer's weights cast at a time inside the scan.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

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


def init_from_shapes(shapes, key, std=0.02):
  """Random params for a shape tree (norm scales at one), jitted on device."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)

  def make(key):
    keys = jax.random.split(key, len(leaves))
    out = []
    for k, (path, s) in zip(keys, leaves):
      name = jax.tree_util.keystr(path)
      if 'norm' in name or 'ln_' in name:
        out.append(
          jnp.ones(s.shape, s.dtype)
          if 'scale' in name
          else jnp.zeros(s.shape, s.dtype)
        )
      elif 'bias' in name:
        out.append(jnp.zeros(s.shape, s.dtype))
      else:
        out.append(std * jax.random.normal(k, s.shape, s.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)

  return make(key)


# ----------------------------------------------------------------------------
# Llama forward (stacked layers, scanned)
# ----------------------------------------------------------------------------


def _rms(x, scale, eps=1e-5):
  xf = x.astype(jnp.float32)
  y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, -1, keepdims=True) + eps)
  return (y * scale.astype(jnp.float32)).astype(x.dtype)


def _rope(x, theta=10000.0):
  # x: (B, T, N, H)
  t, hd = x.shape[1], x.shape[-1]
  inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
  ang = np.arange(t)[:, None] * inv[None, :]
  cos = jnp.asarray(np.cos(ang), x.dtype)[None, :, None, :]
  sin = jnp.asarray(np.sin(ang), x.dtype)[None, :, None, :]
  x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


ATTN_IMPL = os.environ.get('BENCH_ATTN_IMPL') or None  # None: let JAX choose


def _attention(q, k, v):
  return jax.nn.dot_product_attention(
    q, k, v, is_causal=True, implementation=ATTN_IMPL
  )


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

  Two optional hooks place the computation on a mesh (FSDP, see
  ``benchmarks/train_bench.py``); without them it is plain JAX:

  * ``weight(path, w)``: the weight a matmul uses, from the param at ``path``
    (a tuple of dict keys) already cast to ``dtype``; a layer's leaves come
    without their layer axis, one layer at a time inside the scanned body
    (e.g. an all-gather over the data axis). Default: ``w``.
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
  x = act(emb['embedding'][inp])

  def body(x, lp):
    x = act(x)
    lp = use(lp, ('model', 'layers'))
    a = lp['self_attn']
    h = _rms(x, lp['input_layernorm']['scale'])
    q = (h @ a['q_proj']['kernel']).reshape(b, t, cfg.n_heads, cfg.head_dim)
    k = (h @ a['k_proj']['kernel']).reshape(b, t, cfg.n_kv_heads, cfg.head_dim)
    v = (h @ a['v_proj']['kernel']).reshape(b, t, cfg.n_kv_heads, cfg.head_dim)
    o = _attention(_rope(q), _rope(k), v).reshape(b, t, -1)
    x = x + o @ a['o_proj']['kernel']
    m = lp['mlp']
    h = _rms(x, lp['post_attention_layernorm']['scale'])
    h = jax.nn.silu(h @ m['gate_proj']['kernel']) * (h @ m['up_proj']['kernel'])
    return act(x + h @ m['down_proj']['kernel']), None

  if policy != 'none':
    body = jax.checkpoint(body, policy=POLICIES[policy], prevent_cse=False)
  x, _ = jax.lax.scan(body, x, params['model']['layers'])
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
# GPT-2 (stacked layers, scanned), byte-level vocab for the convergence run
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  name: str = 'gpt2-small'
  d_model: int = 768
  n_layers: int = 12
  n_heads: int = 12
  seq_len: int = 1024
  vocab: int = 50257

  @property
  def head_dim(self):
    return self.d_model // self.n_heads


GPT2 = {
  '124M': GPT2Config('gpt2-124M', 768, 12, 12, 1024),
  '355M': GPT2Config('gpt2-355M', 1024, 24, 16, 1024),
  '774M': GPT2Config('gpt2-774M', 1280, 36, 20, 1024),
  '1.5B': GPT2Config('gpt2-1.5B', 1600, 48, 25, 1024),
}


def gpt2_shapes(cfg: GPT2Config, stacked: bool = True, dtype=jnp.float32):
  d = cfg.d_model
  S = lambda *s: jax.ShapeDtypeStruct(s, dtype)  # noqa: E731

  def layer(*lead):
    return {
      'ln_1': {'scale': S(*lead, d), 'bias': S(*lead, d)},
      'attn': {
        'c_attn': {'kernel': S(*lead, d, 3 * d), 'bias': S(*lead, 3 * d)},
        'c_proj': {'kernel': S(*lead, d, d), 'bias': S(*lead, d)},
      },
      'ln_2': {'scale': S(*lead, d), 'bias': S(*lead, d)},
      'mlp': {
        'c_fc': {'kernel': S(*lead, d, 4 * d), 'bias': S(*lead, 4 * d)},
        'c_proj': {'kernel': S(*lead, 4 * d, d), 'bias': S(*lead, d)},
      },
    }

  h = (
    layer(cfg.n_layers)
    if stacked
    else {str(i): layer() for i in range(cfg.n_layers)}
  )
  return {
    'wte': {'embedding': S(cfg.vocab, d)},
    'wpe': {'embedding': S(cfg.seq_len, d)},
    'h': h,
    'ln_f': {'scale': S(d), 'bias': S(d)},
  }


def _ln(x, p, eps=1e-5):
  xf = x.astype(jnp.float32)
  mu = jnp.mean(xf, -1, keepdims=True)
  var = jnp.mean(jnp.square(xf - mu), -1, keepdims=True)
  y = (xf - mu) * jax.lax.rsqrt(var + eps) * p['scale'] + p['bias']
  return y.astype(x.dtype)


def gpt2_loss(
  params, tokens, cfg: GPT2Config, policy='none', dtype=jnp.bfloat16
):
  inp, tgt = tokens[:, :-1], tokens[:, 1:]
  b, t = inp.shape
  x = (params['wte']['embedding'][inp] + params['wpe']['embedding'][:t]).astype(
    dtype
  )

  def body(x, lp):
    lp = jax.tree.map(lambda w: w.astype(dtype), lp)
    h = _ln(x, lp['ln_1'])
    qkv = h @ lp['attn']['c_attn']['kernel'] + lp['attn']['c_attn']['bias']
    q, k, v = jnp.split(
      qkv.reshape(b, t, 3, cfg.n_heads, cfg.head_dim), 3, axis=2
    )
    o = _attention(q[:, :, 0], k[:, :, 0], v[:, :, 0]).reshape(b, t, -1)
    x = x + o @ lp['attn']['c_proj']['kernel'] + lp['attn']['c_proj']['bias']
    h = _ln(x, lp['ln_2'])
    h = jax.nn.gelu(h @ lp['mlp']['c_fc']['kernel'] + lp['mlp']['c_fc']['bias'])
    return x + h @ lp['mlp']['c_proj']['kernel'] + lp['mlp']['c_proj'][
      'bias'
    ], None

  if policy != 'none':
    body = jax.checkpoint(body, policy=POLICIES[policy], prevent_cse=False)
  x, _ = jax.lax.scan(body, x, params['h'])
  x = _ln(x, params['ln_f'])
  logits = jnp.dot(
    x,
    params['wte']['embedding'].T.astype(dtype),
    preferred_element_type=jnp.float32,
  )
  logz = jax.nn.logsumexp(logits, -1)
  gold = jnp.take_along_axis(logits, tgt[..., None], -1)[..., 0]
  return jnp.mean(logz - gold)


# ----------------------------------------------------------------------------
# Optimizers
# ----------------------------------------------------------------------------


def make_tx(
  name, lr, *, num_heads, num_kv_heads=None, b1=0.9, b2=0.95, eps=1e-8, wd=0.1
):
  """The optimizers compared, with the same hyper-parameters and decay mask."""
  mask = optax_adam_mini.default_weight_decay_mask
  if name == 'adamw':
    return optax.adamw(lr, b1, b2, eps, weight_decay=wd, mask=mask)
  if name == 'adamw_bf16':
    return optax.adamw(
      lr, b1, b2, eps, weight_decay=wd, mask=mask, mu_dtype=jnp.bfloat16
    )
  if name in ('adam_mini', 'adam_mini_bf16'):
    return optax_adam_mini.adam_mini(
      lr,
      b1,
      b2,
      eps,
      wd,
      num_heads=num_heads,
      num_kv_heads=num_kv_heads,
      mu_dtype=jnp.bfloat16 if name.endswith('bf16') else None,
    )
  if name == 'adafactor':
    return optax.adafactor(lr)
  raise ValueError(name)


# ----------------------------------------------------------------------------
# Misc
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
  }


def tree_bytes(tree) -> int:
  return sum(
    math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
    for x in jax.tree.leaves(tree)
  )


def is_oom(e: BaseException) -> bool:
  s = str(e)
  return (
    'RESOURCE_EXHAUSTED' in s or 'Out of memory' in s or 'out of memory' in s
  )

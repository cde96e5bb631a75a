"""The decoder-only transformer, in Flax NNX: Llama and GPT-2.

Both use the parameter names of the models they imitate, so the library's
default partition recognises every weight:

* ``llama``: RMSNorm, SwiGLU MLP, rotary position embeddings, grouped-query
  attention; ``embed_tokens``, ``layers/N/self_attn/{q,k,v,o}_proj``,
  ``layers/N/mlp/{gate,up,down}_proj``, ``input_layernorm``,
  ``post_attention_layernorm``, ``norm``, ``lm_head``.
* ``gpt2``: LayerNorm, GELU MLP, learned positions, fused QKV, output tied to
  the token embedding; ``wte``, ``wpe``, ``h/N/attn/c_attn``,
  ``attn/c_proj``, ``mlp/c_fc``, ``mlp/c_proj``, ``ln_1``, ``ln_2``,
  ``ln_f``.

Weights are float32 (the master copy the optimizer updates); the forward and
backward pass run in ``cfg.dtype``. The trainer works on pure dicts of
arrays (``init_params``, ``loss``); ``build`` gives the NNX module itself,
for ``nnx.Optimizer``. Shape suffixes: B batch, T sequence, D model width,
H heads, K key/value heads, Dh head width, F MLP width, V vocabulary.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from examples.lm import sharding
from examples.lm.config import ModelConfig

# A list of submodules: nnx.List on Flax >= 0.12, where plain lists are static.
_List = getattr(nnx, 'List', list)


def _normal(std: float):
  return nnx.initializers.normal(stddev=std)


def _dtypes(cfg: ModelConfig) -> dict:
  """Compute in ``cfg.dtype``, keep the weights in ``cfg.param_dtype``."""
  return dict(
    dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype)
  )


def _linear(cfg: ModelConfig, din, dout, rngs, *, bias, std=None):
  std = cfg.init_std if std is None else std
  return nnx.Linear(
    din,
    dout,
    use_bias=bias,
    kernel_init=_normal(std),
    rngs=rngs,
    **_dtypes(cfg),
  )


def _embed(cfg: ModelConfig, num: int, std: float, rngs) -> nnx.Embed:
  init = _normal(std)
  return nnx.Embed(
    num, cfg.d_model, embedding_init=init, rngs=rngs, **_dtypes(cfg)
  )


def _layer_norm(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(
    cfg.d_model, epsilon=cfg.norm_eps, rngs=rngs, **_dtypes(cfg)
  )


def _residual_std(cfg: ModelConfig) -> float:
  # GPT-2's scaling of the projections that write into the residual stream.
  return cfg.init_std / math.sqrt(2 * cfg.num_layers)


def _maybe_remat(cfg: ModelConfig, block: nnx.Module) -> Callable:
  call = type(block).__call__
  return nnx.remat(call) if cfg.remat else call


class RMSNorm(nnx.Module):
  """RMSNorm with a Llama-style ``weight``; statistics in float32."""

  def __init__(self, cfg: ModelConfig):
    self.weight = nnx.Param(
      jnp.ones((cfg.d_model,), jnp.dtype(cfg.param_dtype))
    )
    self.eps = cfg.norm_eps
    self.dtype = jnp.dtype(cfg.dtype)

  def __call__(self, x_BxTxD):
    x = x_BxTxD.astype(jnp.float32)
    mean_square = jnp.mean(x * x, axis=-1, keepdims=True)
    y = x * jax.lax.rsqrt(mean_square + self.eps)
    weight_1x1xD = self.weight[...].astype(jnp.float32)[None, None, :]
    return (y * weight_1x1xD).astype(self.dtype)


def rotary_tables(seq_len: int, head_dim: int, theta: float):
  """cos and sin, each ``(T, Dh)`` float32, in the "rotate half" layout."""
  inv_freq = 1.0 / (
    theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  )
  freqs = np.outer(np.arange(seq_len, dtype=np.float64), inv_freq)
  angles_TxDh = np.concatenate([freqs, freqs], axis=-1)
  return (
    jnp.asarray(np.cos(angles_TxDh), jnp.float32),
    jnp.asarray(np.sin(angles_TxDh), jnp.float32),
  )


def apply_rotary(x_BxTxHxDh, cos_TxDh, sin_TxDh):
  x = x_BxTxHxDh.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  cos, sin = cos_TxDh[None, :, None, :], sin_TxDh[None, :, None, :]
  return (x * cos + rotated * sin).astype(x_BxTxHxDh.dtype)


class LlamaAttention(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    heads, kv_heads, head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    d = cfg.d_model
    self.q_proj = _linear(cfg, d, heads * head_dim, rngs, bias=False)
    self.k_proj = _linear(cfg, d, kv_heads * head_dim, rngs, bias=False)
    self.v_proj = _linear(cfg, d, kv_heads * head_dim, rngs, bias=False)
    self.o_proj = _linear(
      cfg, heads * head_dim, d, rngs, bias=False, std=_residual_std(cfg)
    )
    self.num_heads, self.num_kv_heads = heads, kv_heads
    self.head_dim = head_dim

  def __call__(self, x_BxTxD, cos, sin):
    b, t, _ = x_BxTxD.shape
    heads, kv_heads, head_dim = self.num_heads, self.num_kv_heads, self.head_dim
    q_BxTxHxDh = self.q_proj(x_BxTxD).reshape(b, t, heads, head_dim)
    k_BxTxKxDh = self.k_proj(x_BxTxD).reshape(b, t, kv_heads, head_dim)
    v_BxTxKxDh = self.v_proj(x_BxTxD).reshape(b, t, kv_heads, head_dim)
    q_BxTxHxDh = apply_rotary(q_BxTxHxDh, cos, sin)
    k_BxTxKxDh = apply_rotary(k_BxTxKxDh, cos, sin)
    # dot_product_attention broadcasts the K key/value heads over the H.
    y_BxTxHxDh = jax.nn.dot_product_attention(
      q_BxTxHxDh, k_BxTxKxDh, v_BxTxKxDh, is_causal=True
    )
    return self.o_proj(y_BxTxHxDh.reshape(b, t, heads * head_dim))


class LlamaMLP(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d, f = cfg.d_model, cfg.d_ff
    self.gate_proj = _linear(cfg, d, f, rngs, bias=False)
    self.up_proj = _linear(cfg, d, f, rngs, bias=False)
    self.down_proj = _linear(
      cfg, f, d, rngs, bias=False, std=_residual_std(cfg)
    )

  def __call__(self, x_BxTxD):
    h_BxTxF = jax.nn.silu(self.gate_proj(x_BxTxD)) * self.up_proj(x_BxTxD)
    return self.down_proj(h_BxTxF)


class LlamaBlock(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.input_layernorm = RMSNorm(cfg)
    self.self_attn = LlamaAttention(cfg, rngs)
    self.post_attention_layernorm = RMSNorm(cfg)
    self.mlp = LlamaMLP(cfg, rngs)

  def __call__(self, x_BxTxD, cos, sin):
    x_BxTxD = x_BxTxD + self.self_attn(self.input_layernorm(x_BxTxD), cos, sin)
    return x_BxTxD + self.mlp(self.post_attention_layernorm(x_BxTxD))


class Llama(nnx.Module):
  """Llama-style decoder: tokens ``(B, T)`` to float32 logits ``(B, T, V)``."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed_tokens = _embed(cfg, cfg.vocab_size, cfg.init_std, rngs)
    self.layers = _List([LlamaBlock(cfg, rngs) for _ in range(cfg.num_layers)])
    self.norm = RMSNorm(cfg)
    self.lm_head = _linear(cfg, cfg.d_model, cfg.vocab_size, rngs, bias=False)

  def __call__(self, tokens_BxT):
    cfg = self.cfg
    cos, sin = rotary_tables(tokens_BxT.shape[1], cfg.head_dim, cfg.rope_theta)
    x_BxTxD = self.embed_tokens(tokens_BxT)
    for layer in self.layers:
      x_BxTxD = _maybe_remat(cfg, layer)(layer, x_BxTxD, cos, sin)
    return self.lm_head(self.norm(x_BxTxD)).astype(jnp.float32)


class GPT2Attention(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d = cfg.d_model
    # Fused [q | k | v], each D wide and split into heads: HF GPT-2's layout.
    self.c_attn = _linear(cfg, d, 3 * d, rngs, bias=True)
    self.c_proj = _linear(cfg, d, d, rngs, bias=True, std=_residual_std(cfg))
    self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim

  def __call__(self, x_BxTxD):
    b, t, d = x_BxTxD.shape
    qkv = jnp.split(self.c_attn(x_BxTxD), 3, axis=-1)
    q, k, v = (a.reshape(b, t, self.num_heads, self.head_dim) for a in qkv)
    y_BxTxHxDh = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    return self.c_proj(y_BxTxHxDh.reshape(b, t, d))


class GPT2MLP(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d, f = cfg.d_model, cfg.d_ff
    self.c_fc = _linear(cfg, d, f, rngs, bias=True)
    self.c_proj = _linear(cfg, f, d, rngs, bias=True, std=_residual_std(cfg))

  def __call__(self, x_BxTxD):
    return self.c_proj(jax.nn.gelu(self.c_fc(x_BxTxD), approximate=True))


class GPT2Block(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.ln_1 = _layer_norm(cfg, rngs)
    self.attn = GPT2Attention(cfg, rngs)
    self.ln_2 = _layer_norm(cfg, rngs)
    self.mlp = GPT2MLP(cfg, rngs)

  def __call__(self, x_BxTxD):
    x_BxTxD = x_BxTxD + self.attn(self.ln_1(x_BxTxD))
    return x_BxTxD + self.mlp(self.ln_2(x_BxTxD))


class GPT2(nnx.Module):
  """GPT-2-style decoder, output tied to ``wte``: float32 logits (B, T, V)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.wte = _embed(cfg, cfg.vocab_size, cfg.init_std, rngs)
    self.wpe = _embed(cfg, cfg.max_seq_len, 0.01, rngs)
    self.h = _List([GPT2Block(cfg, rngs) for _ in range(cfg.num_layers)])
    self.ln_f = _layer_norm(cfg, rngs)

  def __call__(self, tokens_BxT):
    positions_T = jnp.arange(tokens_BxT.shape[1])
    x_BxTxD = self.wte(tokens_BxT) + self.wpe(positions_T)[None]
    for block in self.h:
      x_BxTxD = _maybe_remat(self.cfg, block)(block, x_BxTxD)
    return self.wte.attend(self.ln_f(x_BxTxD)).astype(jnp.float32)


def build(cfg: ModelConfig, seed: int | jax.Array = 0) -> nnx.Module:
  """A freshly initialised NNX model; ``seed`` is an int or a ``jax.random.key``."""
  rngs = nnx.Rngs(seed)
  return Llama(cfg, rngs) if cfg.arch == 'llama' else GPT2(cfg, rngs)


@functools.lru_cache(maxsize=16)
def graphdef(cfg: ModelConfig) -> nnx.GraphDef:
  """The model's structure without its weights (what ``nnx.merge`` needs)."""
  return nnx.split(nnx.eval_shape(lambda: build(cfg, 0)))[0]


def abstract_params(cfg: ModelConfig) -> dict:
  """The weights as a dict of ``jax.ShapeDtypeStruct``; allocates nothing."""
  state = nnx.split(nnx.eval_shape(lambda: build(cfg, 0)))[1]
  return nnx.to_pure_dict(state)


@functools.lru_cache(maxsize=8)
def _init_fn(cfg: ModelConfig, mesh: jax.sharding.Mesh):
  shardings = sharding.param_shardings(abstract_params(cfg), mesh)

  def init(key):
    return nnx.to_pure_dict(nnx.state(build(cfg, key)))

  return jax.jit(init, out_shardings=shardings)


def init_params(cfg: ModelConfig, seed: int = 0, mesh=None) -> dict:
  """The initial weights, a dict of arrays created on their shards of ``mesh``.

  They depend only on ``(cfg, seed)``; the default ``mesh`` is one device.
  """
  mesh = sharding.default_mesh() if mesh is None else mesh
  return _init_fn(cfg, mesh)(jax.random.key(seed))


def apply(cfg: ModelConfig, params, tokens_BxT):
  """Float32 logits ``(B, T, V)`` of int32 tokens ``(B, T)``."""
  return nnx.merge(graphdef(cfg), params)(tokens_BxT)


def loss(cfg: ModelConfig, params, batch_BxT1):
  """Mean next-token cross-entropy; ``batch`` is ``(B, T + 1)`` int32."""
  logits_BxTxV = apply(cfg, params, batch_BxT1[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(
    logits_BxTxV, batch_BxT1[:, 1:]
  ).mean()


def param_count(params) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)))

"""A pure-JAX GPT-2 (scanned), for ``memory.py`` and ``convergence.py`` only.

Those two move to the example package's models and trainer (issues 12 and
13); this file goes with them. Params are plain nested dicts with Hugging
Face / Flax names (``wte``, ``h/ln_1``, ``attn/c_attn``, ...), kernels in
``(in, out)`` layout; the harness model of the other benchmarks is
``scan_llama.py``, whose attention and remat policies this reuses.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from benchmarks.scan_llama import POLICIES, attention


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
    o = attention(q[:, :, 0], k[:, :, 0], v[:, :, 0]).reshape(b, t, -1)
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

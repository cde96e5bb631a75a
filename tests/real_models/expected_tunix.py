"""Expected Adam-mini blocks for the google `tunix` NNX fixtures.

Written from the Adam-mini rules (FIXTURES.md) and google-tunix 0.1.7's model
code, independently of the library's partition code. Axis orders, with the
einsum that uses each weight (tunix/models/<family>/model.py):

- Gemma / Gemma 3 / Gemma 4 `Attention`: `q_einsum.w` (H, D, Dh) 'BTD,NDH->BTNH';
  `kv_einsum.w` (2, K, D, Dh) 'BSD,CKDH->CBSKH' (index 0 key, 1 value);
  `qkv_einsum.w` (3, H, D, Dh) 'BTD,SNDH->SBTNH' when H == K (q, k, v);
  `attn_vec_einsum.w` (H, Dh, D) 'BTNH,NHD->BTD'. Gemma 4 global layers use
  `num_global_kv_heads` and `global_key_size` as K and Dh, and with
  `k_eq_v_global` a single `k_einsum.w` (K, D, Dh) 'BSD,KDH->BSKH' whose output
  is used as both key and value.
- Llama 3 / Qwen 2 / Qwen 3 `Attention`: `q_proj.w` (D, H, Dh) 'BTD,DNH->BTNH',
  `k_proj.w`/`v_proj.w` (D, K, Dh) 'BSD,DKH->BSKH', `o_proj.w` (H, Dh, D)
  'BTNH,NHD->BTD'; `lm_head.w` (D, V) 'BTD,DV->BTV'; Qwen 2 `q_bias` (H*Dh,),
  `k_bias`/`v_bias` (K*Dh,).
- MLPs are `nnx.Linear` (`kernel` (in, out)).
- Qwen 3 `MoELayer`: `router` nnx.Linear (D, E); `gate_proj`/`up_proj` (E, D, F),
  `down_proj` (E, F, D).
- Gemma 4 `moe.py`: `router_logits` (D, E) 'gsd,de->gse'; `gating_einsum`
  (E, 2, F, D), transposed to (E, D, 2F) before its ragged_dot, so per expert
  D is the input and (2, F) the outputs; `linear` (E, F, D); `router_scale`
  (D,) multiplies the normalised router input; `per_expert_scale` (E,)
  multiplies each expert's output; `skip_scale` (1,) scales a layer's FFN.
- Gemma 4 per-layer inputs: `per_layer_input_embedding` (V, L, P) is read
  `[token]` and then sliced per layer; `per_layer_model_projection.w` (D, L, P)
  'BTD,DNP->BTNP'; `per_layer_input_gate.w` (D, P); `per_layer_projection.w`
  (P, D).
- Embedder `input_embedding` (V, D); Gemma's LM head reuses it (tied).

flax's examples/gemma (expected_flax_examples_gemma.py) has the same layouts
under nnx.Einsum / nnx.Embed names (`kernel`, `embedding`); these rules serve
both.
"""

ELEMENTWISE = {'elementwise': True, 'why': 'bias: plain Adam'}


def _keep(axes, why):
  return {'keep': list(axes), 'why': why}


def _einsum_heads(names, shape):
  """Gemma-family attention einsums; None when `names` is not one."""
  module = names[-2] if names[-1] in ('w', 'kernel') else None
  if module == 'q_einsum':
    return _keep([0], 'q_einsum (H, D, Dh): one v per query head')
  if module == 'k_einsum':
    return _keep(
      [0],
      'k_einsum (K, D, Dh) is both key and value (k_eq_v): the key role '
      'couples a whole head, the coarser block, so one v per KV head',
    )
  if module == 'kv_einsum':
    key = _keep([1], 'key half: one v per KV head')
    value = _keep([1, 3], 'value half: one v per output neuron (K, Dh)')
    return {'parts': {'axis': 0, 'specs': [[1, key], [1, value]]}}
  if module == 'qkv_einsum':
    query = _keep([1], 'query third: one v per head')
    key = _keep([1], 'key third: one v per head')
    value = _keep([1, 3], 'value third: one v per output neuron (H, Dh)')
    return {'parts': {'axis': 0, 'specs': [[1, query], [1, key], [1, value]]}}
  if module == 'attn_vec_einsum':
    return _keep([2], 'attn_vec_einsum (H, Dh, D): one v per output neuron')
  del shape
  return None


def expected(fixture, leaf):
  names = [str(key) for _, key in leaf['path']]
  assert names[-1] == 'value', names
  names = names[:-1]
  last = names[-1]
  parent = names[-2] if len(names) > 1 else ''
  shape = leaf['shape']

  if 'norm' in parent:
    return _keep([], 'norm scale: one v per norm leaf')
  if last in ('q_bias', 'k_bias', 'v_bias'):
    return ELEMENTWISE
  if last in ('input_embedding', 'embedding'):
    return _keep([0], 'token embedding (V, D): one v per token')
  if last == 'per_layer_input_embedding':
    return _keep(
      [0, 1], 'per-layer token embedding (V, L, P): one v per token per layer'
    )
  if parent == 'per_layer_model_projection':
    return _keep(
      [1, 2], 'projection (D, L, P): one v per output neuron (layer, P)'
    )
  heads = _einsum_heads(names, shape)
  if heads is not None:
    return heads
  if parent == 'q_proj':
    return _keep([1], 'q_proj (D, H, Dh): one v per query head')
  if parent == 'k_proj':
    return _keep([1], 'k_proj (D, K, Dh): one v per KV head')
  if parent == 'v_proj':
    return _keep([1, 2], 'v_proj (D, K, Dh): one v per output neuron')
  if parent == 'o_proj':
    return _keep([2], 'o_proj (H, Dh, D): one v per output neuron')
  if parent == 'lm_head':
    return _keep([1], 'lm_head (D, V): one v per token')
  if parent == 'router' or last == 'router_logits':
    return _keep([1], 'router (D, E): one v per output neuron (expert)')
  if last in ('gate_proj', 'up_proj', 'down_proj') and len(shape) == 3:
    return _keep([0, 2], 'expert weight (E, in, out): one v per expert output')
  if last == 'gating_einsum':
    return _keep(
      [0, 1, 2], 'expert gate|up (E, 2, F, D): one v per expert output (2, F)'
    )
  if last == 'linear' and parent == 'moe':
    return _keep([0, 2], 'expert down (E, F, D): one v per expert output')
  if last == 'per_expert_scale':
    return _keep([0], 'one learned scale per expert, experts kept apart')
  if last == 'router_scale':
    return _keep(
      [], 'scale of the normalised router input: a norm scale, one v per leaf'
    )
  if last == 'skip_scale':
    return _keep([], 'one learned scalar')
  if last in ('kernel', 'w') and len(shape) == 2:
    # nnx.Linear kernels and the 2-D Gemma 4 per-layer Einsums are (in, out).
    return _keep([1], 'dense (in, out): one v per output neuron')
  raise AssertionError(f'no rule for {names} {shape}')

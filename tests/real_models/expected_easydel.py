"""Expected Adam-mini blocks for the EasyDeL fixtures.

Written from the Adam-mini rules (FIXTURES.md) and easydel 0.3.0's code,
independently of the library's partition code:

- EasyDeL's Column/RowParallelLinear kernels are (in, out) (q_proj (D, H*Dh),
  o_proj (H*Dh, D) in the trees); norms keep their scale as `kernel` (RMSNorm)
  or `scale`/`bias` (LayerNorm); `nn.Embed` tables are (V, D); `lm_head` /
  GPT-NeoX `embed_out` are (D, V).
- layers/attention/_unified.py: separate q/k/v projections are reshaped to
  (H, Dh) / (K, Dh), heads contiguous on the out axis; a fused
  `query_key_value` without GQA is `jnp.split(qkv, 3, axis=-1)` (q | k | v,
  each H*Dh) (GPT-NeoX). Phi-3 `qkv_proj` is sliced `[:q_size]`,
  `[q_size:q_size+kv_size]`, `[q_size+kv_size:]` (q | k | v with H and K
  heads) and `gate_up_proj` is `jnp.split(.., 2)` (gate | up, both per
  neuron) (modules/phi3/modeling_phi3.py).
- MoE experts are (E, in, out) (`experts/*_proj`, Mixtral `w1`/`w2`/`w3`);
  routers (`gate`, `router`) are (D, E).
- DeepSeek-V3 MLA (_unified.py): `q_b_proj` output reshaped (H, nope + rope);
  `kv_a_proj_with_mqa` output is `[:kv_lora_rank]` (the compressed kv) then
  `[kv_lora_rank:]` (one shared rope key head); `kv_b_proj` output reshaped
  (H, nope + v), each head's key part first, then its value part.
- GPT-OSS `sinks` (H,): one learned attention-sink logit per head.
"""


def _keep(axes, why):
  return {'keep': list(axes), 'why': why}


def _heads(axis, count, why):
  return {'keep': [], 'split': {'axis': axis, 'heads': count}, 'why': why}


ELEMENTWISE = {'elementwise': True, 'why': 'bias: plain Adam'}


def _mla(module, shape, config, heads):
  """DeepSeek MLA projections; None when `module` is not one."""
  if module == 'q_a_proj':
    return _keep(
      [1],
      'q_a_proj (D, q_lora): low-rank down projection whose latent feeds '
      'every head, not head-structured: one v per output neuron',
    )
  if module == 'q_b_proj':
    return _heads(1, heads['num_heads'], 'q_b_proj: one v per query head')
  if module == 'kv_a_proj_with_mqa':
    latent = config['kv_lora_rank']
    return {
      'parts': {
        'axis': 1,
        'specs': [
          [
            latent,
            _keep([1], 'compressed kv latent: one v per output neuron'),
          ],
          [
            shape[1] - latent,
            _keep([], 'shared rope key (one head for all): one v'),
          ],
        ],
      }
    }
  if module == 'kv_b_proj':
    nope, value = config['qk_nope_head_dim'], config['v_head_dim']
    one_head = [
      [nope, _keep([], 'key (nope) part of one head: one v')],
      [value, _keep([1], 'value part of one head: one v per neuron')],
    ]
    return {'parts': {'axis': 1, 'specs': one_head * heads['num_heads']}}
  return None


def expected(fixture, leaf):
  names = [str(key) for _, key in leaf['path']]
  assert names[-1] == 'value', names
  names = names[:-1]
  last, module = names[-1], names[-2]
  shape = leaf['shape']
  heads = fixture['adam_mini_kwargs']
  config = fixture['config']

  if last == 'bias' or last == 'e_score_correction_bias':
    # Norm biases too: the reference gives every "bias" plain Adam.
    return ELEMENTWISE
  if 'norm' in module:
    return _keep([], 'norm scale: one v per norm leaf')
  if last == 'sinks':
    return _keep([0], 'one learned sink logit per head')
  if last == 'embedding':
    return _keep([0], 'token embedding (V, D): one v per token')
  assert last == 'kernel', names
  if module in ('lm_head', 'embed_out'):
    return _keep([1], 'LM head (D, V): one v per token')
  if len(shape) == 3:
    return _keep([0, 2], 'expert weight (E, in, out): one v per expert output')
  if module in ('gate', 'router'):
    return _keep([1], 'router (D, E): one v per output neuron (expert)')
  mla = _mla(module, shape, config, heads)
  if mla is not None:
    return mla
  if module == 'q_proj':
    return _heads(1, heads['num_heads'], 'q_proj: one v per query head')
  if module == 'k_proj':
    return _heads(1, heads['num_kv_heads'], 'k_proj: one v per KV head')
  if module == 'qkv_proj':
    head_dim = heads['head_dim']
    q_size = heads['num_heads'] * head_dim
    kv_size = heads['num_kv_heads'] * head_dim
    return {
      'parts': {
        'axis': 1,
        'specs': [
          [q_size, _heads(1, heads['num_heads'], 'query: one v per head')],
          [kv_size, _heads(1, heads['num_kv_heads'], 'key: one v per head')],
          [kv_size, _keep([1], 'value: one v per output neuron')],
        ],
      }
    }
  if module == 'query_key_value':
    third = shape[1] // 3
    return {
      'parts': {
        'axis': 1,
        'specs': [
          [third, _heads(1, heads['num_heads'], 'query: one v per head')],
          [third, _heads(1, heads['num_kv_heads'], 'key: one v per head')],
          [third, _keep([1], 'value: one v per output neuron')],
        ],
      }
    }
  # v_proj, o_proj, dense, MLP projections (gate_up_proj is gate | up, both
  # per neuron): one v per output neuron.
  return _keep([1], f'{module} (in, out): one v per output neuron')

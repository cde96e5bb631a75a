"""Expected Adam-mini blocks for MaxText trees (both tree forms).

Written from the Adam-mini rules (FIXTURES.md) and MaxText's own layout,
never from optax_adam_mini. Citations are to maxtext 0.2.5 (the PyPI wheel,
maxtext/...), the version in requirements/maxtext.txt.

Axes are found by MaxText's own logical axis names, which every parameter
carries (the Linen form's nn.LogicallyPartitioned `names`, the NNX form's
Variable metadata `sharding_names`): layers/dense.py DenseGeneral stores a
kernel as (in_features..., out_features...) with the names given by each
layer's `kernel_axes`, and a scanned stack inserts its stacking axis
('layers'; 'local_layers'/'scanned_blocks' for the blocks some decoders scan)
at `param_scan_axis` (layers/nnx_scan.py). Stacking and expert ('exp') axes
are always kept. The role of a leaf comes from its path; the kernel_axes
that fix its layout:

  query      (embed_attn, q_heads, kv)           layers/attentions.py:670-
  key/value  (embed_attn, kv_heads, kv_head_dim) layers/attentions.py:721-
  out        (heads, kv, embed_attn)             layers/attentions.py:805-
  qkv_proj   (embed_attn, heads, kv), heads = H q | K k | K v in that order
             (attentions.py:768, split at :799);  gpt3 (embed_attn, qkv,
             heads, kv) with qkv = q, k, v        models/gpt3.py:200-
  query of a qwen3 hybrid (gated) attention (embed_attn, q_heads, kv=2*Dh):
             per head [query | sigmoid output gate] (attentions.py:680,
             split at :1269, gate applied at :1363)
  mlp wi_0/wi_1/wi (embed, mlp), wo (mlp, embed) layers/linears.py MlpBlock
  MoE wi_0/wi_1 (exp, embed_moe, mlp_moe), wo (exp, mlp_moe, embed_moe),
             router gate (embed, <experts, unnamed>) layers/moe.py
  MLA        wq_a (embed_attn, q_lora_up_proj), q_norm, wq_b (q_lora, q_heads,
             kv), wkv_a (embed_attn, kv_lora_up_proj) = [kv_lora | rope key],
             kv_norm, wkv_b (kv_lora, kv_heads, kv_head_dim) with kv_head_dim
             = [qk_nope (key) | v_head_dim (value)]
             layers/attention_mla.py:680-745, split at :773
  embedding  (vocab, embed_vocab); logits_dense (embed_vocab, vocab)
"""

from __future__ import annotations

STACK = ('layers', 'local_layers', 'scanned_blocks')


def _names(leaf: dict) -> list | None:
  for wrapper in leaf['wrappers']:
    if 'names' in wrapper:
      return list(wrapper['names'])
    meta = wrapper.get('metadata') or {}
    for key in ('sharding_names', 'out_sharding', 'sharding'):
      if meta.get(key) is not None:
        return list(meta[key])
  return None


def _keys(leaf: dict) -> list[str]:
  out = [str(k) for kind, k in leaf['path'] if kind == 'dict']
  return out[1:] if out[:1] == ['params'] else out


def expected(fixture: dict, leaf: dict) -> dict:
  cfg = fixture['config']
  keys = _keys(leaf)
  shape = leaf['shape']
  names = _names(leaf)
  last = keys[-1]
  owner = keys[-2] if len(keys) > 1 else ''
  if last in ('kernel', 'bias', 'scale', 'embedding'):
    module, param = owner, last
  else:
    module, param = last, ''
  parent = keys[-3] if len(keys) > 2 and param else owner

  if names is None or len(names) != len(shape):
    # MaxText left this leaf without (complete) logical names: the gated
    # delta net's A_log/dt_bias/conv1d (nnx.Param without kernel_axes,
    # models/qwen3.py:588-612), some qwen3_next norms (names ['layers'] on a
    # rank-2 scale), deepseek's MoEBiasVar. Its stacking axes are then where
    # the scans put them: each enclosing scan inserts one axis at
    # param_scan_axis (layers/nnx_scan.py), the outer scan's ahead of the
    # inner one's.
    names = _fallback_names(cfg, keys, shape)

  stack = [i for i, n in enumerate(names) if n in STACK]
  exp = [i for i, n in enumerate(names) if n == 'exp']

  def keep(*wanted, extra=()):
    idx = set(stack) | set(exp) | set(extra)
    idx |= {i for i, n in enumerate(names) if n in wanted}
    return sorted(idx)

  def ax(name):
    return names.index(name)

  # Embeddings and the LM head: one v per token (per position).
  if module == 'token_embedder' and param == 'embedding':
    return {'keep': keep('vocab'), 'why': 'token embedding: one v per token'}
  if module == 'position_embedder' and param == 'embedding':
    return {
      'keep': [0],
      'why': 'learned position embedding (named vocab, embed_vocab by '
      'MaxText): one v per position',
    }
  if module == 'embed_tokens_per_layer':
    # (vocab, layers * ple_dim), each row read as (layers, ple_dim)
    # (models/gemma4_small.py:210): one table per layer, flattened.
    return {
      'keep': keep('vocab'),
      'split': {
        'axis': ax('embed_vocab'),
        'heads': cfg['num_decoder_layers'],
      },
      'why': 'per-layer token embeddings: one v per token, per layer (the '
      'flattened axis holds one table per layer, layer-major)',
    }
  if module == 'logits_dense':
    return {'keep': keep('vocab'), 'why': 'LM head: one v per token'}

  # Norm scales: one v per norm leaf (per stacked layer). Norm biases are
  # biases: the reference (adam-mini 1.1.1) gives every param whose name
  # holds 'bias' plain Adam, before any other rule.
  if param == 'scale' and 'norm' in module.lower():
    return {
      'keep': keep(),
      'why': 'norm scale: one v per norm leaf (per stacked layer)',
    }

  # Biases of linear layers: plain Adam.
  if param == 'bias' or module.endswith('_bias'):
    return {'elementwise': True, 'why': 'bias of a linear layer: plain Adam'}

  if module == 'qkv_proj':
    return _fused_qkv(cfg, names, keep)
  if (
    module in ('query', 'wq_b')
    and cfg.get('decoder_block')
    in (
      'qwen3_next',
      'qwen3_5',
    )
    and shape[ax('kv')] == 2 * cfg['head_dim']
  ):
    dh = cfg['head_dim']
    return {
      'parts': {
        'axis': ax('kv'),
        'specs': [
          [dh, {'keep': keep('q_heads')}],
          [dh, {'keep': keep('q_heads', 'kv')}],
        ],
      },
      'why': 'gated query: per head [query (one v per head) | output gate '
      '(one v per output neuron)] (attentions.py:1269)',
    }
  if module in ('query', 'wq_b'):
    return {'keep': keep('q_heads'), 'why': 'query: one v per query head'}
  if module == 'key':
    shared = cfg.get('share_kv_projections')
    return {
      'keep': keep('kv_heads'),
      'why': 'key: one v per KV head'
      + (
        ' (share_kv_projections: this kernel is also the value; the key '
        "role's per-head block is kept, it contains the value's "
        'per-neuron blocks)'
        if shared
        else ''
      ),
    }
  if module == 'wkv':
    return {
      'keep': keep('kv_heads'),
      'why': 'deepseek4 shared key=value projection: one v per KV head '
      '(the key rule; the value rule would split it finer)',
    }
  if module == 'value':
    return {
      'keep': keep('kv_heads', 'kv_head_dim'),
      'why': 'value: one v per output neuron',
    }
  if module == 'out' and parent != 'mlp':
    return {
      'keep': keep('embed_attn'),
      'why': 'attention output: one v per output neuron (embed_attn)',
    }

  # MLA low-rank projections (proposed rules).
  if module == 'wq_a':
    out = [n for n in names if n in ('q_lora_up_proj', 'q_lora')]
    return {
      'keep': keep(*out),
      'why': 'PROPOSED: MLA q down-projection into the latent: the latent is '
      'not split into heads, so one v per output (latent) neuron, as for a '
      'dense kernel',
    }
  if module == 'wkv_a':
    axis = ax('kv_lora_up_proj')
    return {
      'parts': {
        'axis': axis,
        'specs': [
          [cfg['kv_lora_rank'], {'keep': keep('kv_lora_up_proj')}],
          [cfg['qk_rope_head_dim'], {'keep': keep()}],
        ],
      },
      'why': 'PROPOSED: MLA kv down-projection = [kv latent | shared rope '
      'key]: latent one v per output neuron (dense kernel); the rope part is '
      'a key shared by every head (one KV head), so one v for it',
    }
  if module == 'wkv_b':
    axis = ax('kv_head_dim')
    return {
      'parts': {
        'axis': axis,
        'specs': [
          [cfg['qk_nope_head_dim'], {'keep': keep('kv_heads')}],
          [cfg['v_head_dim'], {'keep': keep('kv_heads', 'kv_head_dim')}],
        ],
      },
      'why': 'MLA kv up-projection per head = [key nope part | value] '
      '(attention_mla.py:773): key one v per head, value one v per output '
      'neuron',
    }

  # MLPs and MoE experts: one v per output neuron (per expert).
  if module in ('wi_0', 'wi_1', 'wi', 'ff_1', 'weights'):
    return {
      'keep': keep('mlp', 'mlp_moe'),
      'why': 'MLP in projection: one v per output neuron'
      + (' (per expert)' if exp else ''),
    }
  if module in ('wo', 'ff_2', 'layer_up_projection'):
    return {
      'keep': keep('embed', 'embed_moe'),
      'why': 'MLP out projection: one v per output neuron'
      + (' (per expert)' if exp else ''),
    }
  if module in ('gate', 'shared_expert_gate') and param == 'kernel':
    return {
      'keep': keep(extra=[len(names) - 1]),
      'why': 'router / expert gate (embed -> experts, the last, unnamed '
      'axis): one v per output neuron',
    }
  if module in (
    'per_layer_input_gate',
    'per_layer_model_projection',
  ):
    return {'keep': keep('mlp'), 'why': 'dense kernel: one v per output neuron'}
  if module == 'per_layer_projection':
    return {'keep': keep('embed'), 'why': 'dense kernel: one v per output'}

  # Learned scalars and vectors (proposed rules).
  if module == 'sinks':
    return {
      'keep': keep(extra=[i for i in range(len(names)) if i not in stack]),
      'why': 'PROPOSED: attention sink logits, one per head: each enters only '
      "its own head's softmax, so one v each (per-head blocks)",
    }
  if module == 'layer_scalar':
    return {'keep': keep(), 'why': 'PROPOSED: a learned per-layer scalar'}
  if module == 'per_expert_scale':
    return {'keep': keep(), 'why': 'PROPOSED: one learned scale per expert'}
  if module == 'pre_forward_scale_2':
    return {
      'keep': keep(),
      'why': 'PROPOSED: a learned channel scale like a norm scale: one v '
      'per leaf (per layer)',
    }
  return _other(cfg, keys, module, param, names, keep)


SCANNED_CONTAINERS = ('layers', 'local_layers', 'scanned_blocks')


def _fallback_names(cfg, keys, shape) -> list:
  names = [None] * len(shape)
  if not cfg.get('scan_layers'):
    return names
  depth = sum(1 for k in keys[:-1] if k in SCANNED_CONTAINERS)
  axis = cfg.get('param_scan_axis', 1)
  for i in range(depth):
    if axis + i < len(shape):
      names[axis + i] = 'layers'
  return names


def _fused_qkv(cfg, names, keep):
  heads, kv_heads = cfg['num_query_heads'], cfg['num_kv_heads']
  if 'qkv' in names:  # gpt3: (embed_attn, qkv, heads, kv)
    axis = names.index('qkv')
    sizes = (1, 1, 1)
  else:  # attentions.py:768 (embed_attn, heads = H + 2K, kv)
    axis = names.index('heads')
    sizes = (heads, kv_heads, kv_heads)
  return {
    'parts': {
      'axis': axis,
      'specs': [
        [sizes[0], {'keep': keep('heads')}],
        [sizes[1], {'keep': keep('heads')}],
        [sizes[2], {'keep': keep('heads', 'kv')}],
      ],
    },
    'why': 'fused q|k|v: query per head, key per KV head, value per output '
    'neuron',
  }


def _other(cfg, keys, module, param, names, keep):
  del cfg
  path = '/'.join(keys)
  # qwen3_next / qwen3_5 gated delta net (models/qwen3.py:560-626).
  if module in ('in_proj_qkvz', 'in_proj_ba'):
    return {
      'keep': keep('gdn_head'),
      'why': 'PROPOSED: gated-delta-net input projection: its q/k feed a '
      'linear recurrence, not a softmax, so the per-head argument does not '
      'carry over; one v per output neuron as for a dense kernel',
    }
  if module == 'out_proj':
    return {'keep': keep('embed_attn'), 'why': 'output projection: per output'}
  if module == 'conv1d' or keys[-2:-1] == ['conv1d']:
    return {
      'keep': keep(extra=[len(names) - 1]),
      'why': 'PROPOSED: depthwise causal conv: one v per channel (output '
      'neuron)',
    }
  if module in ('A_log', 'dt_bias'):
    return {
      'elementwise': True,
      'why': 'PROPOSED: per-head decay / time-step scalars: one v each',
    }
  # deepseek4 hyper-connections (layers/mhc.py) and compressed attention.
  if module.endswith('_alpha') or module == 'hc_fn':
    return {
      'keep': keep(extra=[len(names) - 1]),
      'why': 'PROPOSED: hyper-connection map embed -> streams: one v per '
      'output neuron',
    }
  if module.endswith(('_alpha_scale', '_beta')) or module in (
    'hc_base',
    'hc_scale',
  ):
    return {
      'elementwise': True,
      'why': 'PROPOSED: hyper-connection gains/offsets: learned scalars, '
      'plain Adam',
    }
  if module in ('gate_proj', 'kv_proj') and 'compressor' in path:
    return {
      'keep': keep('kv'),
      'why': 'PROPOSED: compressor projection: one v per output neuron',
    }
  if module == 'q_proj':
    return {
      'keep': keep('indexer_q'),
      'why': 'PROPOSED: indexer query projection: one v per output neuron',
    }
  if module == 'weights_proj':
    return {
      'keep': keep('indexer_weights'),
      'why': 'PROPOSED: indexer head-weight projection: per output neuron',
    }
  if module == 'o_a_proj':
    return {
      'keep': keep('o_groups', 'o_lora_up_proj'),
      'why': 'PROPOSED: grouped low-rank output projection: one v per output '
      'neuron of each group',
    }
  if module == 'position_bias':
    stack = [i for i, n in enumerate(names) if n in STACK]
    return {
      'keep': keep(extra=[0]),
      'why': 'PROPOSED: a learned additive bias per position of the '
      'compression window (axis 0): a position embedding, one v per position'
      + (' (per stacked layer)' if stack else ''),
    }
  if module == 'tid2eid':
    return {
      'elementwise': True,
      'why': "PROPOSED: deepseek4's integer token->expert hash table (a "
      "non-'params' collection that init_initial_state's Linen tree still "
      'hands to tx.init); not trained, so no entries may share a v',
    }
  if module == 'o_b_proj':
    return {'keep': keep('embed_attn'), 'why': 'output: per output neuron'}
  raise KeyError(f'no expectation written for MaxText leaf {path} {names}')

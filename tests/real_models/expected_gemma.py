"""Expected Adam-mini blocks for google-deepmind `gemma` (gm.nn) trees.

Written from the Adam-mini rules (FIXTURES.md) and gemma's own einsums, never
from optax_adam_mini. File/line citations are to gemma 4.0.1
(gemma/gm/nn/...), the version in requirements/gemma.txt.

Every leaf of `model.init(...)['params']` (a plain dict) is one of:
  embedder/input_embedding  (V, D)       _modules.py:70, tied: encode reads
                                         rows, decode is x @ table.T (:112)
  */scale                   (D,) / (Dh,) _layers.py:35 RMSNorm, also the
                                         qk-norms attn/_query_norm, _key_norm
  attn/q_einsum/w           (H, D, Dh)   'BTD,NDH->BTNH'        _modules.py:189
  attn/kv_einsum/w          (2, K, D, Dh) 'BSD,CKDH->CBSKH', C=0 key, 1 value
                                                                _modules.py:190
  attn/qkv_einsum/w         (3, H, D, Dh) 'BTD,SNDH->SBTNH', S=q,k,v (used when
                                         num_kv_heads == num_heads, :137, :187)
  attn/attn_vec_einsum/w    (H, Dh, D)   'BTNH,NHD->BTD'        _modules.py:298
  mlp/gating_einsum   Gemma 2 (2, D, F)  '...F,NFH->...NH'      _modules.py:367
                      Gemma 3 (2, F, D)  '...F,NHF->...NH'      _modules.py:361
                      (N=0 gate, N=1 up; in these equations F is the model
                      width and H the hidden width)
  mlp/linear                (F, D)       '...H,HF->...F'        _modules.py:390

Gemma 4 (gemma/gm/nn/gemma4/), same einsums plus:
  attn/k_einsum/w           (K, D, Dh)   'BSD,KDH->BSKH', global layers with
                                         k_eq_v_global: the key is also the
                                         value                  _modules.py:276
  mlp/gating_einsum         (2, F, D)    always transposed      _modules.py:438
  MoE mlp/gating_einsum/w   (E, 2, F, D) 'gecd,ekfd->kgecf'     _moe.py:183
      mlp/linear/w          (E, F, D)    'gecf,efd->gecd'       _moe.py:185
      mlp/router_logits/w   (D, E)       'gsd,de->gse'          _moe.py:226
      mlp/router_scale (D,), mlp/per_expert_scale (E,)          _moe.py:140-145
  skip_scale (1,)                                               _modules.py:497
  embedder/per_layer_embeddings (V, L, P), per_layer_model_projection/w
      (D, L, P) '...td,dnp->...tnp'                             _modules.py:192
  per_layer_input_gate/w (D, P) '...D,DP->...P', per_layer_projection/w
      (P, D) '...P,PD->...D'                                    _modules.py:643
Head counts and widths vary per layer in Gemma 4 (global layers use
num_global_kv_heads and global_key_size), so the rules below read them from
the leaf's shape, at the axis positions the einsums fix.
"""

from __future__ import annotations


def _path(leaf: dict) -> list[str]:
  return [str(k) for _, k in leaf['path']]


def expected(fixture: dict, leaf: dict) -> dict:
  names = _path(leaf)
  shape = leaf['shape']
  last = names[-1]
  parent = names[-2] if len(names) > 1 else ''
  cfg = fixture['config']

  if names[-2:] == ['embedder', 'input_embedding']:
    assert shape == [cfg['num_embed'], cfg['embed_dim']]
    return {
      'keep': [0],
      'why': 'token embedding, tied with the LM head: one v per token row',
    }

  if last == 'scale':
    assert len(shape) == 1
    return {'keep': [], 'why': 'norm scale: one v per norm leaf'}

  if parent == 'q_einsum' and last == 'w':
    assert len(shape) == 3 and shape[1] == cfg['embed_dim']
    return {'keep': [0], 'why': 'query (H, D, Dh): one v per query head'}

  if parent == 'kv_einsum' and last == 'w':
    assert len(shape) == 4 and shape[0] == 2 and shape[2] == cfg['embed_dim']
    return {
      'parts': {
        'axis': 0,
        'specs': [
          [1, {'keep': [1]}],  # key: one v per KV head
          [1, {'keep': [1, 3]}],  # value: one v per output (K, Dh) neuron
        ],
      },
      'why': 'fused k|v on axis 0: key per KV head, value per output neuron',
    }

  if parent == 'qkv_einsum' and last == 'w':
    assert shape == [3, cfg['num_heads'], cfg['embed_dim'], cfg['head_dim']]
    return {
      'parts': {
        'axis': 0,
        'specs': [
          [1, {'keep': [1]}],  # query: one v per head
          [1, {'keep': [1]}],  # key: one v per head (MHA: K == H)
          [1, {'keep': [1, 3]}],  # value: one v per output (H, Dh) neuron
        ],
      },
      'why': 'fused q|k|v on axis 0: q, k per head, v per output neuron',
    }

  if parent == 'attn_vec_einsum' and last == 'w':
    assert len(shape) == 3 and shape[2] == cfg['embed_dim']
    return {
      'keep': [2],
      'why': 'attention output (H, Dh, D): one v per output neuron (D)',
    }

  if parent == 'k_einsum' and last == 'w':
    assert len(shape) == 3 and shape[1] == cfg['embed_dim']
    return {
      'keep': [0],
      'why': 'k_eq_v key (K, D, Dh), also used as the value: one v per KV '
      "head (the key rule; its per-head block contains the value's "
      'per-neuron blocks)',
    }

  # MoE (Gemma 4): experts lead.
  if names[-2:] == ['gating_einsum', 'w']:
    assert len(shape) == 4 and shape[1] == 2 and shape[3] == cfg['embed_dim']
    return {
      'keep': [0, 1, 2],
      'why': 'MoE gate|up (E, 2, F, D): per expert, one v per output neuron',
    }
  if names[-2:] == ['linear', 'w'] and parent == 'linear':
    assert len(shape) == 3 and shape[2] == cfg['embed_dim']
    return {
      'keep': [0, 2],
      'why': 'MoE down (E, F, D): per expert, one v per output neuron',
    }
  if names[-2:] == ['router_logits', 'w']:
    return {
      'keep': [1],
      'why': 'MoE router (D, E): one v per output neuron (per expert)',
    }
  if last == 'router_scale':
    return {
      'keep': [],
      'why': 'PROPOSED: learned per-feature scale of the router input, like a '
      'norm scale: one v per leaf',
    }
  if last == 'per_expert_scale':
    return {
      'keep': [0],
      'why': 'PROPOSED: one learned output scale per expert: one v each',
    }
  if last == 'skip_scale':
    return {'keep': [], 'why': 'PROPOSED: a learned per-layer scalar'}

  # Gemma 3n (gemma/gm/nn/gemma3n/): AltUp, LAuReL.
  if parent == last and last.startswith(
    ('altup_projection_', 'altup_unembed_projection_')
  ):
    # '...F,FD->...D' (gemma3n/_transformer.py:500, :516)
    return {'keep': [1], 'why': 'AltUp stream projection: per output neuron'}
  if names[-2:] in (['linear_left', 'w'], ['linear_right', 'w']):
    # 'btd,dr->btr', 'btr,rd->btd' (gemma3n/_modules.py:644-645)
    return {
      'keep': [1],
      'why': 'PROPOSED: LAuReL low-rank residual factor: one v per output '
      'neuron, as for any dense kernel (the rank axis is not split into '
      'heads)',
    }
  if names[-2:] == ['modality_router', 'w']:
    # '...F,FD->...D' (gemma3n/_modules.py:569)
    return {'keep': [1], 'why': 'AltUp router (D, P): per output neuron'}
  if last == 'prediction_coefs':
    # '...p,pij->...ij' (gemma3n/_modules.py:580)
    return {
      'keep': [1, 2],
      'why': 'PROPOSED: AltUp prediction coefficients (P, I, J), a map from '
      'router outputs to an (I, J) mixing matrix: one v per output entry',
    }
  if last == 'correction_coefs':
    # '...p,pi->...i' (gemma3n/_modules.py:602)
    return {
      'keep': [1],
      'why': 'PROPOSED: AltUp correction coefficients (P, I): one v per '
      'output entry',
    }
  if last == 'correct_output_scale':
    return {
      'keep': [],
      'why': 'PROPOSED: learned per-channel output scale, like a norm scale: '
      'one v per leaf',
    }
  if last == 'per_layer_input_embedding':
    return {
      'keep': [0, 1],
      'why': 'per-layer token embeddings (V, L, P): one v per token, per layer',
    }
  if names[-2:] == ['per_layer_input_projection', 'w']:
    # '...td,dnp->...tnp' (gemma3n/_modules.py:174)
    return {'keep': [1, 2], 'why': 'projection D -> (L, P): per output neuron'}

  if last == 'per_layer_embeddings':
    return {
      'keep': [0, 1],
      'why': 'per-layer token embeddings (V, L, P): one v per token, per '
      'layer (axis 1 holds one table per layer, a stacked layer axis)',
    }
  if names[-2:] == ['per_layer_model_projection', 'w']:
    return {
      'keep': [1, 2],
      'why': 'projection D -> (L, P): one v per output neuron',
    }
  if names[-2:] == ['per_layer_input_gate', 'w']:
    return {'keep': [1], 'why': 'dense (D, P): one v per output neuron'}
  if names[-2:] == ['per_layer_projection', 'w']:
    return {'keep': [1], 'why': 'dense (P, D): one v per output neuron'}

  if last == 'gating_einsum':
    # Gemma 2 (2, D, F); Gemma 3 (transpose_gating_einsum) and Gemma 4 (no
    # such flag, always transposed) (2, F, D).
    if cfg.get('transpose_gating_einsum') is False:
      assert shape[0] == 2 and shape[1] == cfg['embed_dim']
      out_axis = 2
    else:
      assert shape[0] == 2 and shape[2] == cfg['embed_dim']
      out_axis = 1
    return {
      'keep': [0, out_axis],
      'why': 'fused gate|up MLP: one v per output neuron of each projection',
    }

  if last == 'linear' and parent in ('mlp', 'mlp2'):
    assert len(shape) == 2 and shape[1] == cfg['embed_dim']
    return {'keep': [1], 'why': 'MLP down (F, D): one v per output neuron'}

  raise KeyError(f'no expectation written for gemma leaf {"/".join(names)}')

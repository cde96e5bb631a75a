"""The names model libraries give their params and axes, in one place.

Two tables drive the default partition:

* module and leaf names, lower-cased, that say what a leaf is (its
  :class:`~optax_adam_mini.layout.Role`), from Flax, Hugging Face Flax ports,
  MaxText, gemma, Equinox, penzai and haliax/Levanter;
* logical axis names (Flax/MaxText annotations, penzai and haliax named axes)
  that say what an axis is (a :data:`~optax_adam_mini.layout.KINDS` kind).

Plus the layouts of libraries whose leaves are not plain ``(in, out)``
kernels (gemma's einsums). Extend these tables for a new library; a one-off
model is better served by ``layouts=`` (see :func:`default_partition`).
"""

from __future__ import annotations

EMBEDDING = frozenset({
    'embed_tokens', 'embed', 'embedding', 'embeddings', 'embedder', 'wte',
    'wpe', 'tok_embeddings', 'token_embedding', 'token_embeddings',
    'word_embeddings', 'position_embeddings', 'pos_embedding',
    'position_embedding', 'token_embedder', 'input_embedding',
    'embed_positions', 'shared', 'embedding_table', 'tok_embedding',
    'positional_embedding', 'position_embedder', 'per_layer_input_embedding',
    'per_layer_embeddings',
})  # fmt: skip
EMBEDDING_LEAVES = frozenset({'embedding', 'input_embedding', 'embeddings'})
OUTPUT = frozenset({
    'lm_head', 'output', 'final_layer', 'unembed', 'output_layer', 'head',
    'logits_dense', 'embed_out', 'unembedding', 'lm_head_proj',
})  # fmt: skip
QUERY = frozenset({
    'query', 'q_proj', 'wq', 'to_q', 'q_einsum', 'query_proj', 'q', 'wq_b',
    'q_attn', 'q_b_proj',
})  # fmt: skip
# Keys shared with values (Gemma 4's k_einsum, DeepSeek-V4's wkv): the key
# rule, one v per head, the coarser of the two.
KEY = frozenset(
  {'key', 'k_proj', 'wk', 'to_k', 'key_proj', 'k', 'k_einsum', 'wkv'}
)
VALUE = frozenset({'value', 'v_proj', 'wv', 'to_v', 'value_proj', 'v'})
ATTENTION_OUT = frozenset({
    'out', 'o_proj', 'out_proj', 'to_out', 'output_proj', 'attn_vec_einsum',
    'o', 'attn_out', 'wo',
})  # fmt: skip
FUSED_QKV = frozenset({
    'c_attn', 'qkv', 'qkv_proj', 'wqkv', 'query_key_value', 'in_proj',
    'qkv_einsum', 'kv_einsum', 'kv_proj', 'kv',
})  # fmt: skip
# MLA (DeepSeek): the kv down-projection [latent | shared rope key] and the kv
# up-projection, per head [key (no rope) | value].
MLA_KV_DOWN = frozenset({'wkv_a', 'kv_a_proj_with_mqa'})
MLA_KV_UP = frozenset({'wkv_b', 'kv_b_proj'})
MLA_KV_NORM = frozenset({'kv_norm', 'kv_a_layernorm'})
MLA_QUERY = frozenset({'wq_b', 'q_b_proj', 'query', 'q_proj'})
# Low-rank (MLA) down-projections: latent neurons, no heads.
LATENT = frozenset({'wq_a', 'q_a_proj'})
MLP_PROJ = frozenset({
    'gate_proj', 'up_proj', 'down_proj', 'c_fc', 'fc1', 'fc2', 'w1', 'w2',
    'w3', 'wi', 'wi_0', 'wi_1', 'dense_h_to_4h', 'dense_4h_to_h', 'fc_in',
    'fc_out', 'gating_einsum', 'linear', 'gate_up_proj', 'wo', 'ff_1', 'ff_2',
    'ff1', 'ff2',
})  # fmt: skip
# Other projections without heads: Gemma 3n's AltUp, DeepSeek-V4's
# hyper-connection maps (names as written, trailing _<n> dropped).
DENSE = frozenset({
    'altup_projection', 'altup_unembed_projection', 'correction_coefs',
    'prediction_coefs', 'hc_fn', 'post_alpha', 'pre_alpha', 'res_alpha',
})  # fmt: skip
# Modules whose projections score or compress rather than attend (DeepSeek's
# lightning indexer and compressors): their kernels are plain dense layers.
DENSE_CONTAINERS = ('indexer', 'compressor')  # matched inside module names
MLP_CONTAINERS = frozenset(
  {'mlp', 'ffn', 'feed_forward', 'feedforward', 'mlp_block', 'experts', 'moe'}
)
ROUTER = frozenset(
  {'gate', 'router', 'router_proj', 'routing', 'gate_proj_moe'}
)
# Biases: the reference gives every param whose name holds 'bias' plain Adam.
BIAS = frozenset({'b'})
# Fused q|k|v laid out per head, (H, 3, Dh) flattened: Bloom, GPT-NeoX.
INTERLEAVED_QKV = frozenset({'query_key_value'})

# Feature axes an MLP maps between: the model width and the hidden width.
# Which one is the fan-out follows from the projection's direction.
WIDTH_AXES = frozenset({
    'embed', 'embedding', 'embed_no_exp', 'model', 'd_model', 'embed_attn',
    'embed_moe', 'embed_vocab', 'embed_router',
})  # fmt: skip
HIDDEN_AXES = frozenset(
  {'mlp', 'mlp_no_fsdp', 'neurons', 'ffn', 'intermediate', 'hidden', 'mlp_moe'}
)
# MLP projections back to the model width (the rest map away from it).
DOWN_PROJ = frozenset({
    'down_proj', 'wo', 'fc2', 'c_proj', 'dense_4h_to_h', 'linear', 'w2',
    'fc_out', 'out_proj', 'output', 'out', 'proj_out', 'output_proj',
    'out_linear',
})  # fmt: skip
# Path segments that name a layer's type, not its role (penzai labels
# 'attention/query/Linear.weights'): the role is read above them.
GENERIC = frozenset(
  {'kernel', 'w', 'weight', 'weights', 'linear', 'addbias', 'dense_general'}
)
# Learned scalars, one per head or per layer (attention sinks, the decay of
# a linear recurrence): one v each.
PER_COORDINATE = frozenset({
    'sinks', 'a_log', 'layer_scalar', 'hc_base', 'hc_scale', 'post_beta',
    'pre_beta', 'res_beta', 'post_alpha_scale', 'pre_alpha_scale',
    'res_alpha_scale', 'tid2eid',
})  # fmt: skip
# Embeddings of one table per layer flattened into their feature axis
# (MaxText's Gemma 4 (V, L * P)): one v per token and layer.
PER_LAYER_EMBEDDING = frozenset({'embed_tokens_per_layer'})

# Expert axes: stacked copies, except on a router, where they are its outputs.
EXPERT_AXES = frozenset({'exp', 'expert', 'experts', 'num_experts'})

# Logical axis names -> kinds. `None` marks a feature axis (model width, MLP
# hidden, low-rank latent): an `in` or an `out` axis, by the leaf's role.
FEATURE = None
AXIS_NAMES = {
  # stacked copies
  'layers': 'layers',
  'layer': 'layers',
  'stage': 'layers',
  'stack': 'layers',
  'exp': 'layers',
  'expert': 'layers',
  'experts': 'layers',
  'num_experts': 'layers',
  'blocks': 'layers',
  'scanned_blocks': 'layers',
  'local_layers': 'layers',
  'moe_layers': 'layers',
  'dense_layers': 'layers',
  'num_activations': 'layers',
  'mlp_activations': 'layers',
  # heads
  'heads': 'heads',
  'q_heads': 'heads',
  'kv_heads': 'heads',
  'num_heads': 'heads',
  'head': 'heads',
  'q_rep': 'heads',
  'query_heads': 'heads',
  'kv_head': 'heads',
  'head_groups': 'heads',
  'gdn_head': FEATURE,
  'o_groups': 'layers',  # DeepSeek-V4's grouped output projection
  'q_heads_per_group': 'heads',
  'heads_per_group': 'heads',
  # within a head
  'kv': 'head_dim',
  'head_dim': 'head_dim',
  'kv_head_dim': 'head_dim',
  'q_head_dim': 'head_dim',
  'qkv_head_dim': 'head_dim',
  'projection': 'head_dim',
  'head_size': 'head_dim',
  'head_dims': 'head_dim',
  # tokens
  'vocab': 'vocab',
  'vocabulary': 'vocab',
  'vocab_size': 'vocab',
  'position': 'vocab',
  'positions': 'vocab',
  # fused parts
  'qkv': 'parts',
  # features
  'embed': FEATURE,
  'embedding': FEATURE,
  'embed_no_exp': FEATURE,
  'model': FEATURE,
  'd_model': FEATURE,
  'hidden': FEATURE,
  'mlp': FEATURE,
  'mlp_no_fsdp': FEATURE,
  'neurons': FEATURE,
  'ffn': FEATURE,
  'intermediate': FEATURE,
  'q_lora': FEATURE,
  'kv_lora': FEATURE,
  'norm': FEATURE,
  'embed_attn': FEATURE,
  'embed_moe': FEATURE,
  'embed_vocab': FEATURE,
  'embed_router': FEATURE,
  'mlp_moe': FEATURE,
  'q_lora_up_proj': FEATURE,
  'kv_lora_up_proj': FEATURE,
  'o_lora_up_proj': FEATURE,
  'indexer_q': FEATURE,
  'indexer_weights': FEATURE,
  'joined_kv': 'out',  # t5x: heads * head_dim flattened
}

# Leaves whose layout a library fixes by name (axis kinds of the leaf's own
# axes; extra leading axes are stacked copies). `?` marks an axis pair whose
# order differs between releases and is told apart by the model width.
LIBRARY_LAYOUTS = {
  # gemma (google-deepmind/gemma, gm.nn): gemma/gm/nn/_modules.py
  'q_einsum': 'heads in head_dim',
  'kv_einsum': 'parts heads in head_dim',
  'qkv_einsum': 'parts heads in head_dim',
  'attn_vec_einsum': 'heads head_dim out',
  # Gemma 2 stores (2, D, F), Gemma 3 (2, F, D).
  'gating_einsum': 'parts ? ?',
  # Gemma 4 (tunix): keys shared with values, per-layer inputs, MoE scales.
  'k_einsum': 'heads in head_dim',
  'per_layer_model_projection': 'in layers out',
  'per_layer_input_projection': 'in layers out',
  'prediction_coefs': 'in out out',
  'per_layer_input_embedding': 'vocab layers out',
  'per_layer_embeddings': 'vocab layers out',
  'per_expert_scale': 'layers',
  # Flax Conv kernels: (*window, in / groups, out).
  'conv1d': 'in in out',
}

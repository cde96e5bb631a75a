"""The trainer's named Adam-mini partitions (examples/lm/partitions.py).

Expected ``v`` shapes are written from the definitions (the reference's
rules for ``default``; the issue's alternatives; plain Adam for an ablated
role) and the tiny preset's shapes: d=128, 4 query heads and 2 KV heads of
32, MLP 344, vocabulary 256. Kernels are (in, out).
"""

import dataclasses
import doctest
import math
from pathlib import Path

import jax
import pytest

import optax_adam_mini
from examples.lm import config, model, optimizer, partitions, presets
from optax_adam_mini import Block
from optax_adam_mini.partition import path_names

TINY = presets.PRESETS['tiny'].model
Q, K, V, OUT = (f'layers/0/self_attn/{n}_proj/kernel' for n in 'qkvo')
GATE, DOWN = 'layers/0/mlp/gate_proj/kernel', 'layers/0/mlp/down_proj/kernel'
NORM, EMBED, HEAD = 'norm/weight', 'embed_tokens/embedding', 'lm_head/kernel'
# The reference's blocks: per head for q (4) and k (2), per output neuron
# for v, o and the MLP, per token for the embedding and the LM head, one
# per norm scale.
DEFAULT = {
  Q: (1, 4, 1), K: (1, 2, 1), V: (1, 64), OUT: (1, 128), GATE: (1, 344),
  DOWN: (1, 128), NORM: (1,), EMBED: (256, 1), HEAD: (1, 256),
}  # fmt: skip
SHAPES = {
  Q: (128, 128), K: (128, 64), V: (128, 64), OUT: (128, 128), GATE: (128, 344),
  DOWN: (344, 128), NORM: (128,), EMBED: (256, 128), HEAD: (128, 256),
}  # fmt: skip


def _v_shapes(partition, model_cfg=TINY, **opt):
  cfg = config.OptimizerConfig(partition=partition, **opt)
  params = model.abstract_params(model_cfg)
  tx = optimizer.make_optimizer(cfg, model_cfg, params)
  state = jax.eval_shape(tx.init, params)
  (mini,) = [
    s
    for s in jax.tree.leaves(
      state,
      is_leaf=lambda s: isinstance(s, optax_adam_mini.ScaleByAdamMiniState),
    )
    if isinstance(s, optax_adam_mini.ScaleByAdamMiniState)
  ]
  leaves = jax.tree_util.tree_flatten_with_path(
    mini.v, is_leaf=lambda x: isinstance(x, tuple)
  )[0]
  shapes = {}
  for path, v in leaves:
    key = '/'.join(path_names(path))
    shapes[key] = tuple(x.shape for x in v) if isinstance(v, tuple) else v.shape
  return shapes, optimizer.state_bytes(cfg, model_cfg, params)


@pytest.mark.parametrize(
  'name, changed',
  [
    ('default', {}),
    ('qk-neuron', {Q: (1, 128), K: (1, 64)}),
    ('vom-input', {V: (128, 1), OUT: (128, 1), GATE: (128, 1), DOWN: (344, 1)}),
    (
      'slim',
      {
        Q: (1, 128), K: (1, 64), V: (128, 1), OUT: (128, 1), GATE: (128, 1),
        DOWN: (344, 1), NORM: (128,),
      },
    ),
    ('adam:query+key', {Q: SHAPES[Q], K: SHAPES[K]}),
    ('adam:attention', {n: SHAPES[n] for n in (Q, K, V, OUT)}),
    ('adam:mlp', {GATE: SHAPES[GATE], DOWN: SHAPES[DOWN]}),
    ('adam:norm', {NORM: SHAPES[NORM]}),
    ('adam:embedding+output', {EMBED: SHAPES[EMBED], HEAD: SHAPES[HEAD]}),
    ('elementwise', SHAPES),
  ],
)  # fmt: skip
def test_named_partitions_give_their_blocks(name, changed):
  shapes, state_bytes = _v_shapes(name)
  for path, expected in {**DEFAULT, **changed}.items():
    assert shapes[path] == expected, (name, path)
  # The state in bytes is AdamW's with each float32 v as large as these
  # shapes say (so plain Adam's is AdamW's exactly).
  params = model.abstract_params(TINY)
  adamw = optimizer.state_bytes(
    config.OptimizerConfig(name='adamw'), TINY, params
  )
  v_size = sum(math.prod(shape) for shape in shapes.values())
  assert state_bytes == adamw - 4 * model.param_count(params) + 4 * v_size
  if name == 'elementwise':
    assert state_bytes == adamw


def test_partition_names_are_checked():
  config.OptimizerConfig(partition='adam:value+attention_out+norm')
  for bad in ('rows', 'adam:', 'adam:heads', 'adam:query+'):
    with pytest.raises(config.UsageError, match='--partition'):
      config.OptimizerConfig(partition=bad)


def test_layouts_apply_on_top_of_a_partition():
  layouts = ((Q, Block.whole()),)
  for name in ('default', 'qk-neuron'):
    shapes, _ = _v_shapes(name, layouts=layouts)
    assert shapes[Q] == (1, 1), name
  shapes, _ = _v_shapes('qk-neuron', layouts=layouts)
  assert shapes[K] == (1, 64)
  with pytest.raises(config.UsageError, match='layouts'):
    config.OptimizerConfig(partition='elementwise', layouts=layouts)


def test_gpt2_fused_qkv():
  gpt2 = presets.PRESETS['tiny-gpt2'].model
  c_attn = 'h/0/attn/c_attn/kernel'
  # q | k | v fused in (128, 384): per head for q and k (4 heads of 32) by
  # default, per output neuron with qk-neuron; v per neuron either way.
  shapes, _ = _v_shapes('default', gpt2)
  assert shapes[c_attn] == ((1, 4, 1), (1, 4, 1), (1, 128))
  shapes, _ = _v_shapes('qk-neuron', gpt2)
  assert shapes[c_attn] == ((1, 128), (1, 128), (1, 128))
  # SlimAdam's rules (the library's block_rules='slim'): q and k per
  # output neuron, v per input neuron.
  shapes, _ = _v_shapes('slim', gpt2)
  assert shapes[c_attn] == ((1, 128), (1, 128), (128, 1))
  shapes, _ = _v_shapes('adam:attention', gpt2)
  assert shapes[c_attn] == (128, 384)
  for name in ('vom-input', 'adam:query'):
    with pytest.raises(config.UsageError, match='fuses q, k and v'):
      _v_shapes(name, gpt2)


def test_study_presets_are_the_sizes_they_say():
  # Non-embedding parameters, by hand: per layer q and o d*d, k and v
  # d*(kv_heads*64), the MLP 3*d*d_ff, two norms d; one final norm.
  def by_hand(d, layers, kv_heads, d_ff):
    layer = 2 * d * d + 2 * d * kv_heads * 64 + 3 * d * d_ff + 2 * d
    return layers * layer + d

  for name, (d, layers, kv, d_ff) in {
    'study-10m': (384, 6, 2, 1024),
    'study-40m': (768, 6, 4, 2048),
  }.items():
    cfg = presets.PRESETS[name].model
    assert (cfg.d_model, cfg.num_layers, cfg.num_kv_heads, cfg.d_ff) == (
      d,
      layers,
      kv,
      d_ff,
    )
    assert cfg.init_std == 0.02 and cfg.vocab_size == 16384
    params = model.abstract_params(cfg)
    embedding = 2 * 16384 * d  # untied embedding and LM head
    assert model.param_count(params) - embedding == by_hand(d, layers, kv, d_ff)
  assert by_hand(384, 6, 2, 1024) == 9_442_176
  assert by_hand(768, 6, 4, 2048) == 37_758_720


def test_every_preset_has_a_standard_init_and_a_vocabulary():
  for name, preset in presets.PRESETS.items():
    assert preset.model.init_std == 0.02, name
    data_cfg = presets.data_config(name)
    vocab = preset.model.vocab_size
    if vocab == 256:
      assert data_cfg.tokenizer == 'byte', name
    else:
      assert data_cfg.tokenizer == 'bpe' and 8192 <= vocab <= 32768, name
      assert data_cfg.vocab_size == vocab
  # Flags replace the preset's choice.
  assert presets.data_config('tiny', tokenizer='bpe').vocab_size is None
  assert presets.data_config('small', tokenizer='byte').tokenizer == 'byte'
  cfg = dataclasses.replace(presets.data_config('small'), vocab_size=8192)
  assert cfg.vocab_size == 8192


def test_benchmarks_state_ratios_are_these_partitions():
  """BENCHMARKS.md's table of alternatives gives each one's state bytes."""
  text = (Path(__file__).resolve().parents[1] / 'BENCHMARKS.md').read_text()
  cfg = presets.PRESETS['study-10m'].model
  params = model.abstract_params(cfg)
  adamw = optimizer.state_bytes(
    config.OptimizerConfig(name='adamw'), cfg, params
  )
  for name in ('default', 'qk-neuron', 'vom-input', 'slim'):
    opt = config.OptimizerConfig(partition=name)
    ratio = optimizer.state_bytes(opt, cfg, params) / adamw
    (row,) = [
      line for line in text.splitlines() if line.startswith(f'| `{name}` |')
    ]
    assert row.endswith(f'| {ratio:.4f} |'), (name, ratio, row)


def test_docstring_examples_run():
  for module in (partitions, presets):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted and not result.failed, module.__name__

"""Fixtures: Hugging Face `transformers` 4.x Flax models (`model.params`).

Runs in its own venv (requirements/transformers.txt): transformers 4.57 is the
last release line that ships the Flax classes (v5 removed them). Each model is
built by the library's own init under `jax.eval_shape` (`_do_init=False` makes
`FlaxPreTrainedModel.__init__` evaluate `init_weights` abstractly and keep the
result as `_params_shape_tree`, the structure `model.params` has), tiny sizes.

  /work/envs/transformers/bin/python tests/real_models/build_transformers.py
"""

try:
  from tests.real_models import record_tree
except ImportError:  # run as a script: this folder is on sys.path
  import record_tree

VOCAB = 64
WIDTH = 32
HEADS = 4
LAYERS = 2
MLP = 40
POSITIONS = 16

TREE_FORM = (
  'model.params of a Flax*PreTrainedModel: the plain nested dict of the Linen'
  " module's 'params' collection (no {'params': ...} wrapper), as HF's Flax"
  ' examples hand it to optax via TrainState.create(params=model.params)'
)


def _model_specs():
  """(name, model class, config class, config kwargs, adam-mini head counts)."""
  import transformers as t  # noqa: PLC0415 (only in its own venv)

  mha = {'num_heads': HEADS, 'num_kv_heads': HEADS, 'head_dim': WIDTH // HEADS}
  gqa = {'num_heads': HEADS, 'num_kv_heads': 2, 'head_dim': WIDTH // HEADS}
  gpt2 = dict(
    vocab_size=VOCAB,
    n_positions=POSITIONS,
    n_embd=WIDTH,
    n_layer=LAYERS,
    n_head=HEADS,
    n_inner=MLP,
  )
  llama_like = dict(
    vocab_size=VOCAB,
    hidden_size=WIDTH,
    intermediate_size=MLP,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    num_key_value_heads=2,
    max_position_embeddings=POSITIONS,
  )
  bert_like = dict(
    vocab_size=VOCAB,
    hidden_size=WIDTH,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    intermediate_size=MLP,
    max_position_embeddings=POSITIONS,
    type_vocab_size=2,
  )
  t5 = dict(
    vocab_size=VOCAB,
    d_model=WIDTH,
    d_kv=12,
    d_ff=MLP,
    num_layers=LAYERS,
    num_heads=HEADS,
    relative_attention_num_buckets=8,
  )
  t5_heads = {'num_heads': HEADS, 'num_kv_heads': HEADS, 'head_dim': 12}
  return [
    ('gpt2', t.FlaxGPT2LMHeadModel, t.GPT2Config, gpt2, mha),
    (
      'gpt2_untied',
      t.FlaxGPT2LMHeadModel,
      t.GPT2Config,
      dict(gpt2, tie_word_embeddings=False),
      mha,
    ),
    (
      'gpt2_cross_attention',
      t.FlaxGPT2LMHeadModel,
      t.GPT2Config,
      dict(gpt2, add_cross_attention=True),
      mha,
    ),
    (
      'gptj',
      t.FlaxGPTJForCausalLM,
      t.GPTJConfig,
      dict(gpt2, rotary_dim=4),
      mha,
    ),
    (
      'gpt_neo',
      t.FlaxGPTNeoForCausalLM,
      t.GPTNeoConfig,
      dict(
        vocab_size=VOCAB,
        max_position_embeddings=POSITIONS,
        hidden_size=WIDTH,
        num_layers=LAYERS,
        attention_types=[[['global', 'local'], 1]],
        num_heads=HEADS,
        intermediate_size=MLP,
        window_size=8,
      ),
      mha,
    ),
    (
      'opt',
      t.FlaxOPTForCausalLM,
      t.OPTConfig,
      dict(
        vocab_size=VOCAB,
        hidden_size=WIDTH,
        num_hidden_layers=LAYERS,
        ffn_dim=MLP,
        num_attention_heads=HEADS,
        max_position_embeddings=POSITIONS,
        word_embed_proj_dim=WIDTH,
      ),
      mha,
    ),
    (
      # opt-350m style: embeddings narrower than the model, project_in/out.
      'opt_projected',
      t.FlaxOPTForCausalLM,
      t.OPTConfig,
      dict(
        vocab_size=VOCAB,
        hidden_size=WIDTH,
        num_hidden_layers=LAYERS,
        ffn_dim=MLP,
        num_attention_heads=HEADS,
        max_position_embeddings=POSITIONS,
        word_embed_proj_dim=16,
        do_layer_norm_before=False,
      ),
      mha,
    ),
    ('llama', t.FlaxLlamaForCausalLM, t.LlamaConfig, llama_like, gqa),
    ('mistral', t.FlaxMistralForCausalLM, t.MistralConfig, llama_like, gqa),
    (
      # Gemma is the one HF Flax decoder whose head_dim is free; its rope table
      # is cut to max_position_embeddings columns, so that must be >= 2*head_dim.
      'gemma',
      t.FlaxGemmaForCausalLM,
      t.GemmaConfig,
      dict(llama_like, head_dim=12, max_position_embeddings=64),
      dict(gqa, head_dim=12),
    ),
    (
      'bloom',
      t.FlaxBloomForCausalLM,
      t.BloomConfig,
      dict(vocab_size=VOCAB, hidden_size=WIDTH, n_layer=LAYERS, n_head=HEADS),
      mha,
    ),
    (
      'xglm',
      t.FlaxXGLMForCausalLM,
      t.XGLMConfig,
      dict(
        vocab_size=VOCAB,
        max_position_embeddings=POSITIONS,
        d_model=WIDTH,
        ffn_dim=MLP,
        num_layers=LAYERS,
        attention_heads=HEADS,
      ),
      mha,
    ),
    ('bert', t.FlaxBertForMaskedLM, t.BertConfig, bert_like, mha),
    ('roberta', t.FlaxRobertaForMaskedLM, t.RobertaConfig, bert_like, mha),
    ('t5', t.FlaxT5ForConditionalGeneration, t.T5Config, t5, t5_heads),
    (
      't5_v1_1',
      t.FlaxT5ForConditionalGeneration,
      t.T5Config,
      dict(t5, feed_forward_proj='gated-gelu', tie_word_embeddings=False),
      t5_heads,
    ),
    (
      'bart',
      t.FlaxBartForConditionalGeneration,
      t.BartConfig,
      dict(
        vocab_size=VOCAB,
        d_model=WIDTH,
        encoder_layers=LAYERS,
        decoder_layers=LAYERS,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=MLP,
        decoder_ffn_dim=MLP,
        max_position_embeddings=POSITIONS,
      ),
      mha,
    ),
  ]


def build():
  import transformers  # noqa: PLC0415 (only in its own venv)

  fixtures = []
  for name, model_cls, config_cls, kwargs, heads in _model_specs():
    config = config_cls(**kwargs)
    model = model_cls(config, _do_init=False)
    params = model._params_shape_tree
    fixtures.append(
      {
        'name': name,
        'library': 'transformers',
        'library_version': transformers.__version__,
        'python': record_tree.python_version(),
        'versions': record_tree.versions(
          'transformers', 'jax', 'jaxlib', 'flax'
        ),
        'model': f'{model_cls.__name__} ({config.model_type})',
        'config': kwargs,
        'tree_form': TREE_FORM,
        'adam_mini_kwargs': heads,
        'leaves': record_tree.record_leaves(params),
      }
    )
  return fixtures


if __name__ == '__main__':
  record_tree.main('transformers', build)

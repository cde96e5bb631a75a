"""A small language-model trainer for comparing Adam-mini with AdamW.

The one home, in this repository, of the example model, its data, tokenizer,
schedule, optimizer construction, sharding rules and preset names. The
command line (``examples/train_lm.py``) only parses flags into these
configs; benchmarks, tests and notebooks import the modules directly. Run
from the repository root, with the project installed (``pip install -e
'.[examples]'``) so that ``examples`` is importable.

The modules, in the order a reader needs them:

* ``config``: ``ModelConfig``, ``TrainConfig`` (with an ``OptimizerConfig``),
  ``DataConfig``; ``UsageError``.
* ``presets``: ``PRESETS`` (named model shapes with their settings),
  ``from_preset`` and ``data_config`` (the preset's tokenizer).
* ``model``: the Flax NNX Llama and GPT-2; ``build`` (an ``nnx.Module``),
  ``abstract_params``, ``init_params``, ``apply``, ``loss``.
* ``tokenizer``: text to int32 ids and back (``make``: bytes, or a
  byte-level BPE trained on the training split and cached).
* ``data``: ``load`` (files, folders or the standard library's sources,
  filtered and capped, whole files held out, tokenized), ``get_batch`` (a
  pure function of ``(seed, step)``), ``val_batches``.
* ``partitions``: Adam-mini's blocks by ``--partition`` name (the library's
  default, plain Adam, one per leaf, the alternatives and role ablations of
  the convergence study).
* ``optimizer``: ``learning_rate_schedule``, ``make_optimizer`` (AdamW or
  Adam-mini, the same hyper-parameters), ``partition_report``.
* ``sharding``: ``RULES`` (one table, by weight name), ``parse_mesh``,
  ``make_mesh``, ``param_shardings``, ``batch_sharding``.
* ``checkpoint``: Orbax checkpoints and the fingerprint that lets a run
  resume only itself.
* ``step``: ``make_train_step`` and ``compile_run`` (ahead of time, with a
  memory check).
* ``train``: ``train(model_cfg, train_cfg, corpus) -> RunResult`` (metrics,
  params, opt_state), ``Throughput``, ``NonFiniteLoss``.
* ``report``: ``metrics.json``, ``loss.png``, ``summary.json`` and the table.

For example, ten small steps of the tiny Llama with Adam-mini on 100 kB of
the standard library's sources:

>>> from examples.lm import config, data, model, presets, train
>>> model_cfg, train_cfg = presets.from_preset(
...   'tiny', steps=10, batch_size=4, seq_len=32, eval_every=5, eval_batches=1
... )
>>> corpus = data.load(config.DataConfig(max_bytes=100_000))
>>> result = train.train(
...   model_cfg, train_cfg, corpus, progress=False, print_fn=lambda _: None
... )
>>> result.metrics['steps'], result.metrics['history']['val_step']
(10, [0, 5, 10])
>>> model.abstract_params(model_cfg)['lm_head']['kernel'].shape
(128, 256)
"""

"""Examples of ``optax_adam_mini``: the language-model trainer in ``examples.lm``."""

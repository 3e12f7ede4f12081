"""How the embedded model is built: its tokenizer, language model and dictionaries, from scratch.

Nothing here runs when a model is loaded (that is :mod:`sae_circuits.zoo`); these modules rebuild
the committed files and write the model card ``docs/zoo.md``::

    python -m sae_circuits.recipes.build all            # corpus, tokenizer, model, dictionaries
    python -m sae_circuits.recipes.build all --smoke    # a tiny version of every stage, ~30 s
    python -m sae_circuits.recipes.base64_steering      # the steering measurement of the card

- :mod:`~sae_circuits.recipes.build`: the stages and their command line;
- :mod:`~sae_circuits.recipes.tokenizer`: the byte-level BPE;
- :mod:`~sae_circuits.recipes.pack`: tokenizing and packing a corpus into fixed-length rows;
- :mod:`~sae_circuits.recipes.train_lm`: the GPT-2 training loop (:class:`~sae_circuits.recipes.
  train_lm.LMTrainConfig`), also for your own corpus (:func:`~sae_circuits.recipes.train_lm.
  train_on_texts`, see ``docs/automata_tutorial.md``);
- :mod:`~sae_circuits.recipes.dictionaries`: the residual SAEs and MLP transcoders, evaluated;
- :mod:`~sae_circuits.recipes.base64_steering`: the base64 feature and state steering measurements;
- :mod:`~sae_circuits.recipes.random_model`: randomly initialised GPT-2s of any shape, for tests
  and benchmarks.

The corpus itself (and the synthetic languages in it) is :mod:`sae_circuits.languages`.
"""

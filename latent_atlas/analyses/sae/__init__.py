"""Run kinds ``sae`` (harvest an SAE's latents over a corpus) and ``sae_train`` (train a demo SAE).

Modules (one job each; see each module's docstring for its invariants):

* ``source``: where an SAE comes from (``SaeSource``), loading with sae-lens
  (``load_sae``, ``SaeLoadError``), the hook convention (``sae_hook``,
  ``sae_hook_layer``), the before-queueing check (``check_sae_fits``) and the
  decoder maths every view shares (``decoder_rows``, ``decoder_bias``);
* ``activations``: the residual stream at one point of one block from a
  forward pass that stops there (no later block runs);
* ``train``: the ``sae_train`` run (sae-lens's ``SAETrainer`` fed by ``activations``);
* ``corpus_demo``: the offline demo corpus of natural English.
"""

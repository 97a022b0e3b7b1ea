"""Run kinds ``sae`` (harvest an SAE's latents over a corpus) and ``sae_train`` (train a demo SAE).

Modules (one job each; see each module's docstring for its invariants):

* ``source``: where an SAE comes from (``SaeSource``), loading with sae-lens
  (``load_sae``, ``SaeLoadError``), the hook convention (``sae_hook``,
  ``sae_hook_layer``), the before-queueing check (``check_sae_fits``) and the
  decoder maths every view shares (``decoder_rows``, ``decoder_bias``);
* ``activations``: the residual stream at one point of one block from a
  forward pass that stops there (no later block runs);
* ``train_params`` / ``train``: the ``sae_train`` run's bounded parameters and
  the run itself (sae-lens's ``SAETrainer`` fed by ``activations``; the SAE
  stored as ``sae__*`` arrays + ``sae_cfg``, ``write_sae_dir`` writes it back);
* ``corpus_demo``: the offline demo corpus of natural English (Debian packages).

The harvest's modules (``params``, ``harvest``, ``reducers``, ...) are listed
in their own docstrings; ``device_reducers`` holds the torch twins of the
numpy reducers that run on the activations' device.
"""

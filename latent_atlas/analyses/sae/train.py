"""The ``sae_train`` run: a TopK / BatchTopK SAE trained by sae-lens on one layer's residual stream.

Steps: read the corpus (demo, file or hub dataset) -> cut it into windows of
``context_len`` tokens, split (seeded) into training and held-out windows ->
``SAETrainer.fit`` (sae-lens's own trainer: Adam, its LR schedule, its
activation-norm scaling folded into the weights at the end, its dead-latent
auxiliary loss) fed by ``ActivationStream`` (the model stopped at the layer) ->
``save_inference_model`` (sae-lens's format; a BatchTopK SAE is saved as a
JumpReLU SAE) -> ``SAE.load_from_disk`` of that directory -> evaluation on
the held-out windows with the loaded SAE.

Result (invariants the views and ``load_sae`` rely on):

* arrays ``loss_step`` (int64), ``loss_value``, ``loss_mse`` (float32): the
  training loss of every step (sae-lens's total, and its MSE part);
* arrays ``sae__<tensor>``: every tensor of the saved ``sae_weights.safetensors``
  (float32), and summary ``sae_cfg``: the saved ``cfg.json``.
  ``write_sae_dir(summary, arrays, dir)`` writes them back as a directory that
  ``SAE.load_from_disk`` loads, identical in every tensor to what sae-lens saved;
* summary ``metrics``: ``variance_explained``, ``l0`` (mean latents firing per
  held-out token), ``dead_fraction`` (latents that never fired on the
  held-out tokens), ``mse``, plus sae-lens's own end-of-training ``l0`` and
  dead-latent count over its last sampling window.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy

from latent_atlas.analyses.base import Progress, Result
from latent_atlas.analyses.corpus import CorpusError, guess_format, read_corpus, sample_sequences
from latent_atlas.analyses.sae.activations import (
    ActivationStream,
    activations_at,
    drop_outliers,
    rows_of,
)
from latent_atlas.analyses.sae.source import parse_hook_name
from latent_atlas.analyses.sae.train_params import SaeTrainParams, TrainCorpus, check_layer
from latent_atlas.lm.loading import LanguageModel

__all__ = ["ARRAY_PREFIX", "evaluate_sae", "load_documents", "materialise_sae_dir", "run_sae_train",
           "write_sae_dir"]

ARRAY_PREFIX = "sae__"
SKIP_POSITIONS = 1
CHARS_PER_TOKEN_BUDGET = 8  # characters read per token wanted (English is ~4-5 per token)
NORM_ESTIMATE_BATCHES = 4
PROGRESS_EVERY_S = 1.0


def _corpora_dir() -> Path:
    from latent_atlas.settings import get_settings

    return get_settings().data_dir / "corpora"


def load_documents(corpus: TrainCorpus, max_chars: int, seed: int) -> tuple[list[str], str]:
    """Documents of ``corpus`` (shuffled with ``seed``), at most about ``max_chars`` characters; and a note."""
    from latent_atlas.analyses.sae.corpus_demo import DEMO_CORPUS_FILE

    if corpus.kind == "hub":
        from latent_atlas.analyses.hub_corpus import HubDataset, read_hub_dataset

        documents = read_hub_dataset(HubDataset(corpus.dataset, corpus.config, corpus.split, corpus.text_field),
                                     max_chars=max_chars)
    else:
        name = DEMO_CORPUS_FILE if corpus.kind == "demo" else str(corpus.file)
        path = _corpora_dir() / name
        if not path.is_file():
            hint = ("fetch it with `latent-atlas fetch-demo-corpus` (make up does)" if corpus.kind == "demo"
                    else "upload it again")
            raise CorpusError(f"corpus {name!r} is not in {path.parent}: {hint}")
        fmt = "jsonl" if corpus.kind == "demo" else (corpus.format or guess_format(name))
        documents = read_corpus(name, path.read_bytes(), fmt)
    order = np.random.default_rng(seed).permutation(len(documents))
    picked, total = [], 0
    for index in order:
        picked.append(documents[int(index)])
        total += len(picked[-1])
        if total >= max_chars:
            break
    return picked, corpus.describe()


def _windows(lm: LanguageModel, params: SaeTrainParams) -> tuple[list[list[int]], list[list[int]], dict[str, Any]]:
    """Disjoint training and held-out windows of ``context_len`` tokens; and what was found."""
    per_window = params.context_len - SKIP_POSITIONS
    n_train = math.ceil(params.training_tokens / per_window)
    n_eval = math.ceil(params.eval_tokens / per_window)
    wanted_tokens = (n_train + n_eval) * params.context_len
    documents, note = load_documents(params.corpus, CHARS_PER_TOKEN_BUDGET * wanted_tokens, params.seed)
    sample = sample_sequences(lm.tokenizer, documents, n_train + n_eval, params.context_len, params.seed)
    windows = sample.token_ids
    if len(windows) < 2:
        raise CorpusError(f"{note} has {sample.stream_tokens} tokens: fewer than two windows of {params.context_len}")
    order = np.random.default_rng(params.seed + 1).permutation(len(windows))
    n_eval_used = min(n_eval, max(1, len(windows) // 5))
    eval_windows = [windows[int(i)] for i in order[:n_eval_used]]
    train_windows = [windows[int(i)] for i in order[n_eval_used:]]
    info = {
        "corpus": note,
        "corpus_documents": len(documents),
        "corpus_tokens": sample.stream_tokens,
        "train_windows": len(train_windows),
        "eval_windows": len(eval_windows),
        "unique_training_tokens": len(train_windows) * per_window,
        "eval_tokens_used": len(eval_windows) * per_window,
    }
    if len(train_windows) < n_train:
        info["corpus_note"] = (
            f"the corpus has {len(train_windows) * per_window:,} training tokens, fewer than the "
            f"{params.training_tokens:,} asked: training cycles over them "
            f"{params.training_tokens / max(1, len(train_windows) * per_window):.1f} times"
        )
    return train_windows, eval_windows, info


def _training_sae(params: SaeTrainParams, lm: LanguageModel, device: str) -> Any:
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    metadata = SAEMetadata(model_name=lm.name, hook_name=params.hook_name, context_size=params.context_len,
                           prepend_bos=False, dataset_path=params.corpus.describe())
    common = {"d_in": lm.d_model, "d_sae": params.d_sae, "k": params.k, "device": device, "dtype": "float32",
              "normalize_activations": "expected_average_only_in", "rescale_acts_by_decoder_norm": True,
              "metadata": metadata}
    if params.architecture == "batchtopk":
        return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common))
    return TopKTrainingSAE(TopKTrainingSAEConfig(**common))


def _trainer_class() -> Any:
    from sae_lens import SAETrainer

    class RecordingTrainer(SAETrainer):
        """sae-lens's trainer, recording each step's losses and reporting progress (which may cancel)."""

        def __init__(self, *args: Any, on_step: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.on_step = on_step

        def step(self, batch: torch.Tensor) -> Any:
            output = super().step(batch)
            self.on_step(self, output)
            return output

    return RecordingTrainer


@torch.no_grad()
def evaluate_sae(sae: Any, lm: LanguageModel, windows: list[list[int]], hook_name: str,
                 seqs_per_forward: int = 8) -> dict[str, float]:
    """Variance explained, L0, MSE and the dead fraction of ``sae`` on ``windows``.

    Position 0 and norm outliers (``drop_outliers``) are left out, as in training.

    Variance explained = 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over all held-out rows.
    """
    hook = parse_hook_name(hook_name)
    d_sae = int(sae.cfg.d_sae)
    fired = torch.zeros(d_sae, dtype=torch.bool)
    n = 0
    outliers = 0
    sq_err = 0.0
    l0_sum = 0.0
    sums = torch.zeros(lm.d_model, dtype=torch.float64)
    sq_sums = 0.0
    device = next(sae.parameters()).device
    for start in range(0, len(windows), seqs_per_forward):
        ids = torch.tensor(windows[start:start + seqs_per_forward], dtype=torch.long)
        x, dropped = drop_outliers(rows_of(activations_at(lm, ids, None, hook), None, SKIP_POSITIONS).float())
        outliers += dropped
        x = x.to(device)
        acts = sae.encode(x)
        recon = sae.decode(acts)
        sq_err += float((recon - x).double().pow(2).sum())
        active = acts != 0
        l0_sum += float(active.sum())
        fired |= active.any(0).cpu()
        sums += x.double().sum(0).cpu()
        sq_sums += float(x.double().pow(2).sum())
        n += x.shape[0]
    total_var = sq_sums - float(sums.pow(2).sum()) / n
    return {
        "variance_explained": 1.0 - sq_err / total_var,
        "l0": l0_sum / n,
        "mse": sq_err / n,
        "dead_fraction": float((~fired).float().mean()),
        "eval_tokens": n,
        "eval_outliers_dropped": outliers,
    }


def write_sae_dir(summary: Mapping[str, Any], arrays: Mapping[str, np.ndarray], directory: Path) -> Path:
    """Write a ``sae_train`` run's SAE (summary ``sae_cfg`` + ``sae__*`` arrays) as a sae-lens directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name[len(ARRAY_PREFIX):]: np.ascontiguousarray(array)
               for name, array in arrays.items() if name.startswith(ARRAY_PREFIX)}
    if not tensors or "sae_cfg" not in summary:
        raise ValueError("this run stored no SAE (no sae_cfg / sae__ arrays)")
    save_numpy(tensors, str(directory / "sae_weights.safetensors"))
    (directory / "cfg.json").write_text(json.dumps(summary["sae_cfg"]))
    return directory


def materialise_sae_dir(
    summary: Mapping[str, Any], load_arrays: Callable[[], Mapping[str, np.ndarray]], target: Path
) -> Path:
    """``target`` holding a ``sae_train`` run's SAE as a sae-lens directory, written at most once.

    Invariant: readers never see half a directory. It is written to a staging
    directory beside ``target`` and renamed into place; when another process
    won the race its copy is identical and is kept. ``load_arrays`` is only
    called when the directory is missing.
    """
    target = Path(target)
    if (target / "cfg.json").is_file() and (target / "sae_weights.safetensors").is_file():
        return target
    if "sae_cfg" not in summary:
        raise ValueError("this run saved no SAE (only a sae_train run does)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex}"
    try:
        write_sae_dir(summary, load_arrays(), staging)
        try:
            os.replace(staging, target)
        except OSError:  # another process finished first: its copy is identical
            if not (target / "cfg.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def run_sae_train(params: SaeTrainParams, lm: LanguageModel, progress: Progress) -> Result:
    """Train, save, reload and evaluate one SAE; see the module docstring for the result."""
    from sae_lens import SAE
    from sae_lens.config import SAETrainerConfig

    check_layer(params.layer, lm.n_layers, lm.name)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    progress(0.0, "reading the corpus")
    torch.manual_seed(params.seed)
    train_windows, eval_windows, info = _windows(lm, params)
    timings["corpus_s"] = round(time.perf_counter() - started, 3)

    device = str(lm.device)
    sae = _training_sae(params, lm, device)
    hook = parse_hook_name(params.hook_name)
    stream = ActivationStream(lm, hook, train_windows, batch_rows=params.batch_size, seed=params.seed,
                              seqs_per_forward=max(1, min(32, 2048 // params.context_len)))
    total_steps = params.training_tokens // params.batch_size
    steps: list[int] = []
    losses: list[float] = []
    mses: list[float] = []
    last_report = [0.0]

    def on_step(trainer: Any, output: Any) -> None:
        steps.append(trainer.n_training_steps)
        losses.append(float(output.loss.detach()))
        mses.append(float(output.losses["mse_loss"].detach()))
        now = time.perf_counter()
        if now - last_report[0] >= PROGRESS_EVERY_S or len(steps) == total_steps:
            last_report[0] = now
            progress(0.02 + 0.9 * len(steps) / max(1, total_steps),
                     f"training: step {len(steps)}/{total_steps}, loss {losses[-1]:.4g}")

    config = SAETrainerConfig(
        total_training_samples=total_steps * params.batch_size,
        train_batch_size_samples=params.batch_size,
        lr=params.lr,
        lr_end=params.lr / 10,
        lr_warm_up_steps=max(1, total_steps // 20),
        lr_decay_steps=total_steps // 5,
        device=device,
        dead_feature_window=max(1, min(1000, total_steps // 4)),
        feature_sampling_window=max(1, min(2000, total_steps // 2)),
        n_batches_for_norm_estimate=NORM_ESTIMATE_BATCHES,
    )
    started = time.perf_counter()
    progress(0.02, "training")
    trainer = _trainer_class()(config, sae, stream, on_step=on_step)
    trained = trainer.fit()
    timings["train_s"] = round(time.perf_counter() - started, 3)

    progress(0.93, "saving and evaluating on held-out tokens")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="atlas-sae-") as tmp:
        trained.save_inference_model(tmp)
        loaded = SAE.load_from_disk(tmp, device=device)
        loaded.eval()
        metrics = evaluate_sae(loaded, lm, eval_windows, params.hook_name)
        sae_cfg = json.loads((Path(tmp) / "cfg.json").read_text())
        weights = load_numpy(str(Path(tmp) / "sae_weights.safetensors"))
    timings["eval_s"] = round(time.perf_counter() - started, 3)
    metrics["trainer_l0"] = float(trained.cfg.metadata.l0 or 0.0)
    metrics["trainer_dead_latents"] = int(trained.cfg.metadata.num_dead_features or 0)

    arrays: dict[str, np.ndarray] = {
        "loss_step": np.asarray(steps, dtype=np.int64),
        "loss_value": np.asarray(losses, dtype=np.float32),
        "loss_mse": np.asarray(mses, dtype=np.float32),
    }
    arrays.update({ARRAY_PREFIX + name: np.ascontiguousarray(value) for name, value in weights.items()})
    summary = {
        "hook_name": params.hook_name,
        "architecture": params.architecture,
        "saved_architecture": sae_cfg.get("architecture"),
        "d_in": lm.d_model,
        "d_sae": params.d_sae,
        "k": params.k,
        "training_tokens": config.total_training_samples,
        "steps": len(steps),
        "epochs": stream.epochs,
        "training_outliers_dropped": stream.dropped,
        "metrics": metrics,
        "sae_cfg": sae_cfg,
        "timings": timings,
        **info,
    }
    return Result(arrays=arrays, summary=summary)

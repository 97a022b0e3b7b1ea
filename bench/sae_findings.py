"""The README's SAE finding: weekday / month / number clusters of the demo SAE on the demo model.

Usage::

    python bench/sae_findings.py [--figure docs/findings/sae-demo-clusters.png] [--retrain] [--reharvest]
                                 [--random-tokens 16000] [--out .atlas/findings/sae-demo]

Steps (library functions only, no portal):

1. Train the demo SAE exactly as the README's tour does: ``run_sae_train`` with the
   defaults of ``SaeTrainParams`` (demo model, layer 12 ``resid_post``, 1,024 TopK latents,
   k = 32, 150 k training tokens of the demo corpus). Saved under ``--out/sae`` (a
   sae-lens directory, reused unless ``--retrain``).
2. Count weekday, month and number words in the demo corpus (printed: the corpus is thin
   in weekday names).
3. Harvest (``run_sae``, every reducer, decoder geometry) over a probe corpus drawn from
   the demo corpus only: one 32-token window around every occurrence of a weekday or
   month name (the word near the window's end, so the model has read the context), plus
   ``--random-tokens`` of random 32-token windows. Saved as ``--out/harvest.npz``
   (reused unless ``--reharvest``).
4. Look for the clusters: latents whose top-activating examples are mostly weekday /
   month / number tokens; the Engels et al. spectral cluster and top-2 component of each;
   the cluster point cloud (``cloud.ClusterCloud`` from the CSC, PCA 2-D) of each group's
   latents, with the angular order of each name's centroid around the cloud centre
   (a circle in calendar order is the paper's finding). Prints Markdown; ``--figure``
   writes a PNG (matplotlib) of the three clouds.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _model import REPO_ROOT, load_bench_model  # noqa: E402

from latent_atlas.analyses.sae.cloud import ClusterCloud, latent_slice  # noqa: E402

WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
DIGITS = [str(i) for i in range(10)]
WINDOW = 32
AFTER = 6  # tokens kept after a probed name
TOP_SHARE = 0.5  # a latent "is" a weekday latent when at least half of its top examples are weekday tokens


def train_or_load(lm: Any, out: Path, retrain: bool) -> tuple[Path, dict[str, Any]]:
    from latent_atlas.analyses.sae.train import run_sae_train, write_sae_dir
    from latent_atlas.analyses.sae.train_params import SaeTrainParams
    from latent_atlas.settings import DEMO_MODEL_NAME

    sae_dir, info_file = out / "sae", out / "train.json"
    if not retrain and (sae_dir / "cfg.json").is_file() and info_file.is_file():
        return sae_dir, json.loads(info_file.read_text())
    params = SaeTrainParams(model=DEMO_MODEL_NAME, layer=12)
    started = time.perf_counter()
    result = run_sae_train(params, lm, lambda f, s: None)
    summary = dict(result.summary)
    write_sae_dir(summary, result.arrays, sae_dir)
    info = {"params": params.model_dump(mode="json"), "metrics": summary["metrics"],
            "wall_s": round(time.perf_counter() - started, 1), "timings": summary["timings"],
            "training_outliers_dropped": summary["training_outliers_dropped"]}
    info_file.write_text(json.dumps(info, indent=1))
    return sae_dir, info


def corpus_counts(documents: list[str]) -> dict[str, dict[str, int]]:
    text = "\n".join(documents)
    words = {}
    for name, group in (("weekdays", WEEKDAYS), ("months", MONTHS), ("numbers", NUMBERS)):
        words[name] = {w: len(re.findall(rf"\b{w}\b", text)) for w in group}
    return words


def probe_windows(tokenizer: Any, documents: list[str], names: list[str]) -> list[list[int]]:
    """One window of ``WINDOW`` tokens per occurrence of a name (the name ``AFTER`` tokens before the end)."""
    pattern = re.compile(r"\b(" + "|".join(names) + r")\b")
    windows = []
    for doc in documents:
        if not pattern.search(doc):
            continue
        enc = tokenizer(doc, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        starts = np.array([s for s, _ in offsets])
        for match in pattern.finditer(doc):
            at = int(np.searchsorted(starts, match.start(), side="right") - 1)
            end = min(len(ids), at + AFTER)
            begin = max(0, end - WINDOW)
            windows.append([int(t) for t in ids[begin:end]])
    return windows


def harvest_or_load(lm: Any, sae_dir: Path, out: Path, reharvest: bool, random_tokens: int,
                    documents: list[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from sae_lens import SAE

    from latent_atlas.analyses.corpus import sample_sequences
    from latent_atlas.analyses.sae.params import SaeParams
    from latent_atlas.analyses.sae.run import run_sae
    from latent_atlas.settings import DEMO_MODEL_NAME

    npz, info_file = out / "harvest.npz", out / "harvest.json"
    if not reharvest and npz.is_file() and info_file.is_file():
        with np.load(npz) as data:
            return {k: data[k] for k in data.files}, json.loads(info_file.read_text())
    probes = probe_windows(lm.tokenizer, documents, WEEKDAYS + MONTHS)
    background = sample_sequences(lm.tokenizer, documents, max(1, random_tokens // WINDOW), WINDOW, seed=0).token_ids
    sequences = [w for w in probes + background if len(w) > 1]
    n_tokens = sum(len(s) for s in sequences)
    params = SaeParams.model_validate({
        "model": DEMO_MODEL_NAME, "sae": {"kind": "disk", "path": str(sae_dir)},
        "corpus": {"kind": "tokens", "token_ids": sequences,
                   "info": {"source": "the demo corpus: probe windows + random windows", "format": "jsonl",
                            "documents": len(documents), "sequences": len(sequences),
                            "tokens_per_sequence": WINDOW, "seed": 0}},
        "n_tokens": n_tokens, "context_len": WINDOW, "skip_positions": 1, "seed": 0})
    started = time.perf_counter()
    # the directory is outside <data>/saes (a portal rule for users); load it directly with sae-lens
    result = run_sae(params, lm, sae_loader=lambda source, device: SAE.load_from_disk(str(sae_dir), device=str(device)))
    wall = time.perf_counter() - started
    arrays = {k: np.asarray(v) for k, v in result.arrays.items()}
    np.savez(npz, **arrays)
    summary = {k: result.summary[k] for k in ("n_tokens", "tokens_encoded", "mean_l0", "dead_fraction",
                                              "n_clusters", "timings", "corpus_note")}
    summary.update({"wall_s": round(wall, 1), "probe_windows": len(probes), "background_windows": len(background)})
    info_file.write_text(json.dumps(summary, indent=1))
    return arrays, summary


def token_groups(tokenizer: Any) -> dict[str, dict[int, int]]:
    """token id -> index in its group, for the single-token forms (with and without a leading space)."""
    groups: dict[str, dict[int, int]] = {}
    for name, words in (("weekday", WEEKDAYS), ("month", MONTHS), ("number", NUMBERS), ("digit", DIGITS)):
        ids: dict[int, int] = {}
        for i, w in enumerate(words):
            for form in (w, " " + w, w.lower(), " " + w.lower(), w.capitalize(), " " + w.capitalize()):
                enc = tokenizer.encode(form, add_special_tokens=False)
                if len(enc) == 1:
                    ids.setdefault(int(enc[0]), i)
        groups[name] = ids
    return groups


def group_latents(a: dict[str, np.ndarray], ids: dict[int, int]) -> list[tuple[int, float, int]]:
    """(latent, share of its top examples in the group, examples) for latents with share >= TOP_SHARE."""
    top, token_id = a["top_token"], a["token_id"]
    out = []
    for lat in range(top.shape[0]):
        seen = top[lat][top[lat] >= 0]
        if seen.size < 5:
            continue
        share = float(np.mean([int(token_id[t]) in ids for t in seen]))
        if share >= TOP_SHARE:
            out.append((lat, share, int(seen.size)))
    return out


def cloud_of(a: dict[str, np.ndarray], latents: list[int], ids: dict[int, int]) -> dict[str, Any]:
    """PCA 2-D of the cloud of ``latents``; each group name's centroid angle and the calendar-order test."""
    ptr, tok, val, rows = a["lat_ptr"], a["lat_token"], a["lat_value"], a["decoder"]
    cloud = ClusterCloud(a["token_id"].size, rows.shape[1], lambda j: latent_slice(ptr, tok, val, j),
                         lambda j: rows[j])
    for lat in latents:
        cloud.add(int(lat))
    proj = cloud.project(2)
    member = np.array([ids.get(int(a["token_id"][t]), -1) for t in proj.tokens])
    present = sorted(set(member[member >= 0].tolist()))
    xy = proj.coords.astype(np.float64)
    centres = {i: xy[member == i].mean(0) for i in present}
    order = None
    if len(present) >= 3:
        centre = np.mean(list(centres.values()), axis=0)
        angle = {i: float(np.arctan2(*(centres[i] - centre)[::-1])) for i in present}
        order = sorted(present, key=lambda i: angle[i])
    return {"proj": proj, "member": member, "present": present, "order": order,
            "explained": proj.explained[:2].tolist(), "n_points": int(proj.tokens.size),
            "n_named": int((member >= 0).sum())}


def circular_rank_agreement(order: list[int]) -> float:
    """Fraction of consecutive pairs (around the circle) of ``order`` that are calendar neighbours
    (either direction; a full circle in calendar order gives 1.0)."""
    if not order or len(order) < 3:
        return float("nan")
    pairs = [(order[j], order[(j + 1) % len(order)]) for j in range(len(order))]
    present = sorted(order)
    nxt = {present[j]: present[(j + 1) % len(present)] for j in range(len(present))}
    forward = np.mean([nxt[p] == q for p, q in pairs])
    backward = np.mean([nxt[q] == p for p, q in pairs])
    return float(max(forward, backward))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figure", type=Path)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / ".atlas" / "findings" / "sae-demo")
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--reharvest", action="store_true")
    parser.add_argument("--random-tokens", type=int, default=16_000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    lm = load_bench_model(None, device="cpu")

    from latent_atlas.analyses.corpus import read_corpus
    from latent_atlas.analyses.sae.corpus_demo import demo_corpus_path
    from latent_atlas.settings import get_settings

    path = demo_corpus_path(get_settings().data_dir)
    documents = read_corpus(path.name, path.read_bytes(), "jsonl")
    counts = corpus_counts(documents)
    print("## Demo corpus word counts\n")
    for name, c in counts.items():
        print(f"- {name}: {sum(c.values()):,} ({', '.join(f'{w} {n}' for w, n in c.items())})")

    sae_dir, train = train_or_load(lm, args.out, args.retrain)
    m = train["metrics"]
    print(f"\n## Demo SAE\n\nvariance explained {m['variance_explained']:.3f}, L0 {m['l0']:.1f}, "
          f"dead {m['dead_fraction']:.1%} (trained in {train['wall_s']} s wall)")
    a, info = harvest_or_load(lm, sae_dir, args.out, args.reharvest, args.random_tokens, documents)
    print(f"\n## Harvest\n\n{info['n_tokens']:,} tokens ({info['probe_windows']} probe windows + "
          f"{info['background_windows']} random windows), mean L0 {info['mean_l0']:.1f}, "
          f"{info['n_clusters']} spectral clusters, {info['wall_s']} s wall")

    groups = token_groups(lm.tokenizer)
    token_count = {name: int(np.isin(a["token_id"], list(ids)).sum()) for name, ids in groups.items()}
    print(f"\nnamed tokens in the harvest: {token_count}")
    spectral, components = a["cluster_spectral"], a["cluster_components"]
    clouds: dict[str, dict[str, Any]] = {}
    report: dict[str, Any] = {}
    for name, ids in groups.items():
        found = group_latents(a, ids)
        print(f"\n### {name} latents (>= {TOP_SHARE:.0%} of top examples are {name} tokens): {len(found)}\n")
        for lat, share, n in found[:20]:
            cl = int(spectral[lat])
            comp = int(components[lat])
            mates = np.flatnonzero(spectral == cl)
            comp_size = int((components == comp).sum()) if comp >= 0 else 1
            words = {}
            for t in a["top_token"][lat][a["top_token"][lat] >= 0]:
                w = lm.tokenizer.decode([int(a["token_id"][t])])
                words[w] = words.get(w, 0) + 1
            top_words = ", ".join(f"{w!r}×{c}" for w, c in sorted(words.items(), key=lambda x: -x[1])[:6])
            group_mates = [int(x) for x in mates if x in {f[0] for f in found}]
            print(f"- latent {lat}: share {share:.2f} of {n}; spectral cluster {cl} ({mates.size} latents, "
                  f"{len(group_mates)} of this group); top-2 component size {comp_size}; top tokens {top_words}")
        report[name] = [f[0] for f in found]
        if found:
            cloud = cloud_of(a, [f[0] for f in found], ids)
            clouds[name] = cloud
            agreement = circular_rank_agreement(cloud["order"] or [])
            print(f"\ncloud of the {len(found)} {name} latents: {cloud['n_points']:,} tokens "
                  f"({cloud['n_named']:,} of them {name} tokens), PCA explained {cloud['explained'][0]:.2f} + "
                  f"{cloud['explained'][1]:.2f}; angular order of the centroids "
                  f"{cloud['order']}; calendar-neighbour agreement {agreement:.2f}")
            report[f"{name}_cloud"] = {"explained": cloud["explained"], "order": cloud["order"],
                                       "agreement": agreement, "points": cloud["n_points"]}
    print(f"\n{json.dumps(report)}\ntotal wall {time.perf_counter() - started:.0f} s")
    if args.figure:
        write_figure(args.figure, clouds, groups)


def write_figure(path: Path, clouds: dict[str, dict[str, Any]], groups: dict[str, dict[int, int]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {"weekday": WEEKDAYS, "month": MONTHS, "number": NUMBERS, "digit": DIGITS}
    shown = [n for n in ("weekday", "month", "number", "digit") if n in clouds]
    fig, axes = plt.subplots(1, max(1, len(shown)), figsize=(4.2 * max(1, len(shown)), 4.0), squeeze=False)
    for ax, name in zip(axes[0], shown, strict=False):
        cloud = clouds[name]
        xy = cloud["proj"].coords
        member = cloud["member"]
        ax.scatter(xy[member < 0, 0], xy[member < 0, 1], s=4, c="#cccccc", label="other tokens")
        cmap = plt.get_cmap("hsv")
        labels = names[name]
        for i in cloud["present"]:
            sel = member == i
            ax.scatter(xy[sel, 0], xy[sel, 1], s=10, color=cmap(i / len(labels)), label=labels[i])
            centre = xy[sel].mean(0)
            ax.annotate(labels[i][:3], centre, fontsize=8, ha="center", weight="bold")
        e = cloud["explained"]
        ax.set_title(f"{name} latents: {cloud['n_points']:,} tokens", fontsize=10)
        ax.set_xlabel(f"PC1 ({e[0]:.0%})")
        ax.set_ylabel(f"PC2 ({e[1]:.0%})")
        ax.tick_params(labelsize=7)
    fig.suptitle("Demo SAE (SmolLM2-135M layer 12, 1,024 TopK latents): cluster point clouds", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()

"""The README's "Findings": a geometry run of the demo model over ``FINDINGS_PROMPTS``.

Usage: ``python bench/geometry_findings.py [--figures docs/findings]``

Prints the numbers (attention/MLP separation per layer, position-0 norm ratio,
norm growth) as Markdown and, with ``--figures``, writes a PNG per view there
(kaleido + Chromium). The same numbers are asserted by
``tests/unit/test_geometry_findings.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import plotly.io as pio

from latent_atlas.analyses.geometry import GeometryParams, run_geometry
from latent_atlas.analyses.geometry.findings import FINDINGS_OPTIONS, FINDINGS_PROMPTS, findings
from latent_atlas.lm import fetch_demo_model, load_model
from latent_atlas.settings import DEMO_GGUF_FILE, DEMO_MODEL_NAME
from webapp.render import CHROMIUM_CANDIDATES

REPO_ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("layer-evolution", "attention-vs-mlp", "position-0-norm", "positional-structure", "layer-norms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figures", type=Path, help="write a PNG per view into this directory")
    args = parser.parse_args()
    directory = fetch_demo_model(REPO_ROOT / ".atlas" / "models" / "smollm2")
    lm = load_model(str(directory), gguf_file=DEMO_GGUF_FILE, name=DEMO_MODEL_NAME,
                    tokenizer_cache_dir=REPO_ROOT / ".atlas" / "tokenizers",
                    gguf_cache_dir=REPO_ROOT / ".atlas" / "converted")
    started = time.perf_counter()
    result = run_geometry(GeometryParams(model=DEMO_MODEL_NAME, prompts=FINDINGS_PROMPTS, store_states=False,
                                         logit_lens=False, batch_size=8, **FINDINGS_OPTIONS), lm)
    seconds = time.perf_counter() - started
    found = findings(result)
    print(f"{found['n_prompts']} prompts, {found['n_tokens']} tokens, {found['n_points']:,} points "
          f"({seconds:.0f} s on {lm.device})\n")
    print("| layer | attn/MLP linear acc. | silhouette 2D | resid_post pos-0 ratio | mean norm pos 0 | "
          "mean norm rest |\n|---|---|---|---|---|---|")
    for layer in found["separation_layers"]:
        sil = found["silhouette_2d"][layer]
        print(f"| {layer} | {found['separation_accuracy'][layer]:.3f} | "
              f"{'—' if sil is None else f'{sil:.2f}'} | {found['position0_ratio_resid_post'][layer]:.1f}× | "
              f"{found['resid_post_mean_position0'][layer]:,.0f} | {found['resid_post_mean_rest'][layer]:,.0f} |")
    print()
    print(json.dumps({k: found[k] for k in ("separation_accuracy_min", "separation_accuracy_median",
                                            "separation_overall", "position0_ratio_overall",
                                            "growth_resid_post", "growth_resid_post_excluding_position0")},
                     indent=1))
    if args.figures:
        import os

        from webapp.views.geometry.page import export_figures

        os.environ.setdefault("BROWSER_PATH", next(p for p in CHROMIUM_CANDIDATES if Path(p).exists()))
        args.figures.mkdir(parents=True, exist_ok=True)
        views = [v for v in export_figures(result.arrays, result.summary) if v[0] in FIGURES]
        paths = [args.figures / f"{slug}.png" for slug, *_ in views]
        pio.write_images([fig for *_, fig in views], [str(p) for p in paths], width=1100, height=650)
        for path in paths:
            print("wrote", path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path)
    assert np.isfinite(result.arrays["coords"]).all()


if __name__ == "__main__":
    main()

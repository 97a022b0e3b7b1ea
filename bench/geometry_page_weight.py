"""Weight and render time of a geometry run page's six figures: a baseline commit vs this tree.

Two result shapes, with the demo model's sizes (30 layers, width 576): the
3-prompt run of ``bench/submit_to_view.py`` (3 x 32 tokens = 11,520 points)
and the large run of ``bench/geometry_scale.py`` (256 x 64 tokens =
1,966,080 points; figures draw a seeded sample of at most ``MAX_POINTS``).
The arrays are synthetic with those shapes (coordinates, norms, lens ids and
token strings of realistic length); the figures are built by the view code of
``--baseline`` (default ``HEAD``, extracted with ``git archive``) and of the
working tree, each in its own process, and serialised as Dash sends them
(``plotly.io.json.to_json_plotly``). Headless Chromium then draws every
figure with Plotly.js, baseline and tree interleaved, ``--repeats`` times.

Prints bytes per page and per view, and p50 / p95 of the time to draw all six
views, with the ratio tree / baseline from this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHAPES = {"3 prompts x 32 tokens": (3, 32), "256 x 64 tokens (geometry_scale)": (256, 64)}
N_LAYERS = 30

BUILD = r"""
import json, sys, time
import numpy as np
from plotly.io.json import to_json_plotly
from webapp.views.geometry import page as gp

n_prompts, n_tokens, n_layers, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(0)
words = [" the", " model", " reads", " this", " text", ",", " and", " we", " watch", " its", " states",
         " Paris", " quick", " brown", " fox", " universe", " geometry", " layer", "."]
tokens = [["<|im_start|>"] + [words[(p * 7 + t) % len(words)] for t in range(n_tokens - 1)]
          for p in range(n_prompts)]
per_block = n_prompts * n_tokens
n = n_layers * 4 * per_block
prompt = np.repeat(np.arange(n_prompts), n_tokens).astype(np.int32)
position = np.tile(np.arange(n_tokens), n_prompts).astype(np.int32)
layer = np.repeat(np.arange(n_layers), 4 * per_block).astype(np.int16)
component = np.tile(np.repeat(np.arange(4), per_block), n_layers).astype(np.int8)
positions = np.tile(position, n_layers * 4)
attn_mlp = int(np.isin(component, [0, 2]).sum())
arrays = {
    "coords": rng.normal(size=(n, 3)).astype(np.float32), "layer": layer, "component": component,
    "position": positions, "prompt_index": np.tile(prompt, n_layers * 4),
    "token_id": rng.integers(0, 49152, n).astype(np.int32),
    "norm": (rng.random(n) * 100 + 1).astype(np.float32),
    "explained_variance_ratio": np.array([0.21, 0.08, 0.03], dtype=np.float32),
    "layer_norm_mean": rng.random((n_layers, 4)).astype(np.float32),
    "attn_mlp_coords": rng.normal(size=(attn_mlp, 2)).astype(np.float32),
    "attn_mlp_explained": np.array([0.3, 0.1], dtype=np.float32),
    "positional_coords": rng.normal(size=(n_tokens, 3)).astype(np.float32),
    "positional_position": np.arange(n_tokens, dtype=np.int32),
    "positional_count": np.full(n_tokens, n_prompts, dtype=np.int32),
    "positional_explained": np.array([0.5, 0.3, 0.1], dtype=np.float32),
    "lens_ids": rng.integers(0, len(words), (n, 5)).astype(np.int32),
    "lens_probs": rng.random((n, 5)).astype(np.float16),
}
summary = {
    "components": ["attn_out", "resid_mid", "mlp_out", "resid_post"], "n_layers": n_layers,
    "d_model": 576, "n_points": n, "dims": 3, "reduction": "pca", "tokens": tokens, "model": "demo",
    "n_prompts": n_prompts, "n_tokens": [n_tokens] * n_prompts, "unit_normalise": True,
    "exclude_position0": True, "average": "none",
    "separation": {"layers": list(range(n_layers)), "lda_accuracy": [0.95] * n_layers,
                   "silhouette_2d": [0.4] * n_layers, "overall_lda_accuracy": 0.95,
                   "overall_silhouette_2d": 0.4},
    "positional": {"kind": "mean", "layer": 15, "reason": "mean state per position"},
    "norm_stats": {"position0_ratio_overall": 47.0}, "states": {"stored": True},
    "lens": {"enabled": True, "computed": n, "points": n,
             "tokens": {str(i): w for i, w in enumerate(words)}},
}
report = {}
for view in gp.FIGURES:
    started = time.perf_counter()
    text = to_json_plotly(view.figure(arrays, summary))
    report[view.slug] = {"bytes": len(text.encode()), "build_s": time.perf_counter() - started}
    with open(f"{out}/{view.slug}.json", "w") as handle:
        handle.write(text)
print(json.dumps(report))
"""

DRAW = """
const done = arguments[arguments.length - 1];
const figures = arguments[0];
(async () => {
  const started = performance.now();
  for (const fig of figures) {
    const div = document.createElement('div');
    div.style.width = '900px'; div.style.height = '640px';
    document.body.appendChild(div);
    await Plotly.newPlot(div, fig.data, fig.layout, {});
    if (fig.frames) { await Plotly.addFrames(div, fig.frames); }
    await new Promise(r => requestAnimationFrame(() => r()));
    Plotly.purge(div); div.remove();
  }
  done(performance.now() - started);
})();
"""


def build(source: Path, shape: tuple[int, int], out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{source}{os.pathsep}{REPO}"}
    result = subprocess.run([sys.executable, "-c", BUILD, str(shape[0]), str(shape[1]), str(N_LAYERS), str(out)],
                            env=env, cwd=out, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                 "--use-gl=swiftshader", "--enable-unsafe-swiftshader"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    driver.set_script_timeout(600)
    return driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", default="HEAD", help="commit whose view code is the baseline")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import plotly

    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        baseline = root / "baseline"
        baseline.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline, "webapp", "latent_atlas",
                                  "models"], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
        page = root / "page.html"
        page.write_text(f"<html><body><script src='{plotly_js.as_uri()}'></script></body></html>")
        driver = browser()
        try:
            driver.get(page.as_uri())
            for label, shape in SHAPES.items():
                results = {}
                for name, source in (("baseline", baseline), ("tree", REPO)):
                    out = root / f"{name}-{shape[0]}"
                    out.mkdir()
                    report = build(source, shape, out)
                    figures = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
                    results[name] = {"report": report, "figures": figures, "times": []}
                for _ in range(args.repeats):
                    for name in ("baseline", "tree"):
                        results[name]["times"].append(driver.execute_async_script(DRAW, results[name]["figures"]))
                print(f"\n{label}")
                print(f"{'':10} {'page bytes':>12} {'draw p50 ms':>12} {'draw p95 ms':>12}  per view (kB)")
                for name in ("baseline", "tree"):
                    r = results[name]
                    times = sorted(r["times"])
                    p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
                    total = sum(v["bytes"] for v in r["report"].values())
                    views = ", ".join(f"{k} {v['bytes'] / 1000:.0f}" for k, v in r["report"].items())
                    r["total"], r["p50"], r["p95"] = total, statistics.median(times), p95
                    print(f"{name:10} {total:>12,d} {r['p50']:>12.0f} {p95:>12.0f}  {views}")
                b, t = results["baseline"], results["tree"]
                print(f"{'tree/base':10} {t['total'] / b['total']:>12.2f} {t['p50'] / b['p50']:>12.2f} "
                      f"{t['p95'] / b['p95']:>12.2f}")
                time.sleep(0.1)
        finally:
            driver.quit()


if __name__ == "__main__":
    main()

"""Scan run kind: worker time against a bare forward, the fit, the page payload, frame switches.

Usage::

    python bench/scan.py [--tokens 512] [--repeats 2] [--device auto] [--model-dir DIR]
                         [--no-browser] [--frames 31]

On the demo model (30 blocks: 31 frames of embeddings + residuals) with two
prompts of ``--tokens`` tokens each (B is A with one word changed in the middle):

* baseline: one bare forward of both prompts in one padded batch with
  ``output_hidden_states=True`` (what any script would do), best of
  ``--repeats``;
* ``run_scan`` in diff mode without the hover lens (forward + capture + hook
  check + PCA fit + projection + last-token lens + divergence), best of
  ``--repeats``; the target is (run - fit) <= 1.5 x baseline; the run with the
  hover lens on every point is timed once too (on a CPU the lens is capped at
  ``LENS_CPU_MAX_POINTS``);
* the fit: ``summary["seconds"]["fit"]`` (PCA over every state of every frame
  and both prompts, and the projection);
* page payload: the JSON bytes of the animation figure (as the run page sends
  it), the divergence curve and the heatmap, and the time to build them;
* frame switch: the animation as a self-contained HTML page in headless
  Chromium; each frame is shown with ``Plotly.animate`` (as the page's script
  does) and timed until the promise resolves and the next animation frame has
  been painted; mean, median and p95 over every frame, twice through (target
  under 50 ms), next to the floor: two painted animation frames with nothing
  changed, on the same page. Headless Chromium renders WebGL in software (SwiftShader), so
  this is a pessimistic figure for a desktop browser with a GPU.

Times are wall-clock on a possibly shared machine; compare the ratios, which
come from the same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import plotly.io as pio
import torch
from _model import load_bench_model

from latent_atlas.analyses.scan import ScanParams, run_scan
from latent_atlas.lm import LanguageModel
from webapp.render import standalone_html
from webapp.views.scan import ScanData, animation_figure, divergence_figure, heatmap_figure

WORDS = ("the river ran past the old mill where the miller kept his accounts in a ledger bound in "
         "green cloth and every evening he counted the sacks of flour that the carts had taken to "
         "the town beyond the hill while the children played by the water").split()
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def prompts_of(lm: LanguageModel, tokens: int) -> tuple[str, str]:
    """A (at most ``tokens`` tokens, as close as words allow) and B (one word in the middle changed)."""
    def count(text: str) -> int:
        return len(lm.tokenizer(text)["input_ids"])

    words = [WORDS[i % len(WORDS)] for i in range(tokens * 2)]
    low, high = 1, len(words)
    while low < high:  # the most words whose text fits
        mid = (low + high + 1) // 2
        low, high = (mid, high) if count(" ".join(words[:mid])) <= tokens else (low, mid - 1)
    a_words = words[:low]
    b_words = list(a_words)
    b_words[len(b_words) // 2] = "castle" if b_words[len(b_words) // 2] != "castle" else "tower"
    a, b = " ".join(a_words), " ".join(b_words)
    while count(b) > tokens:
        b_words.pop()
        b = " ".join(b_words)
    return a, b


def bare_forward(lm: LanguageModel, a: str, b: str) -> float:
    encoded = lm.tokenizer([a, b], return_tensors="pt", padding=True)
    started = time.perf_counter()
    with torch.inference_mode():
        out = lm.model(input_ids=encoded["input_ids"].to(lm.device),
                       attention_mask=encoded["attention_mask"].to(lm.device), output_hidden_states=True,
                       use_cache=False)
        _ = [h.float().cpu() for h in out.hidden_states]  # the states in host memory, like the run
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def timed_run(params: ScanParams, lm: LanguageModel):
    started = time.perf_counter()
    result = run_scan(params, lm)
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, result


FRAME_SCRIPT = """
const done = arguments[arguments.length - 1];
const gd = document.getElementById('atlas-figure');
const n = gd._fullLayout.sliders[0].steps.length;
const times = [];
const painted = () => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
async function show(i, animate) {
  const t0 = performance.now();
  if (animate) {
    await Plotly.animate(gd, [String(i)], {mode: 'immediate', frame: {duration: 0, redraw: true},
                                           transition: {duration: 0}});
  }
  await painted();
  return performance.now() - t0;
}
(async () => {
  const idle = [];
  for (let i = 0; i < n; i++) { idle.push(await show(i, false)); }
  for (let round = 0; round < 2; round++) { for (let i = 0; i < n; i++) { times.push(await show(i, true)); } }
  done([times, idle]);
})().catch(e => done(String(e)));
"""


def frame_switch_ms(figure) -> tuple[list[float], list[float]]:
    """(ms per frame switch, ms for two painted animation frames with nothing changed: the page's floor)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    html = standalone_html(figure, title="bench", view_title="scan", description="")
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "scan.html"
        page.write_text(html, encoding="utf-8")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                    "--enable-unsafe-swiftshader"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            driver.set_script_timeout(600)
            driver.get(page.as_uri())
            time.sleep(1.0)
            times = driver.execute_async_script(FRAME_SCRIPT)
        finally:
            driver.quit()
    if isinstance(times, str):
        raise RuntimeError(f"the frame script failed: {times}")
    return [float(t) for t in times[0]], [float(t) for t in times[1]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()

    lm = load_bench_model(args.model_dir, device=args.device)
    a, b = prompts_of(lm, args.tokens)
    n_a, n_b = (len(lm.tokenizer(p)["input_ids"]) for p in (a, b))
    print(f"model {lm.name}: {lm.n_layers} blocks, width {lm.d_model}, device {lm.device}; "
          f"prompts of {n_a} and {n_b} tokens")
    params = ScanParams(model=lm.name, mode="diff", prompt_a=a, prompt_b=b, max_tokens=args.tokens, lens=False)
    bare_forward(lm, a, b)  # warm-up
    run_scan(params, lm)
    bare, runs = [], []
    for _ in range(args.repeats):
        bare.append(bare_forward(lm, a, b))
        seconds, result = timed_run(params, lm)
        runs.append((seconds, result))
    base = min(bare)
    total, result = min(runs, key=lambda r: r[0])
    fit = result.summary["seconds"]["fit"]
    frames = result.summary["n_frames"]
    print(f"bare forward with output_hidden_states: {base:.3f} s (best of {args.repeats})")
    print(f"scan run (diff, no hover lens): {total:.3f} s; fit + projection {fit:.3f} s over "
          f"{frames} frames x {n_a + n_b} tokens; (run - fit) / forward = {(total - fit) / base:.2f} "
          f"(target <= 1.5); stages {result.summary['seconds']}")
    lens_seconds, lens_result = timed_run(params.model_copy(update={"lens": True}), lm)
    print(f"scan run with the hover lens: {lens_seconds:.3f} s ({lens_result.summary['lens']['computed']:,} "
          f"points decoded, {lens_result.summary['lens']['positions']}; cap {lens_result.summary['lens']['cap']:,})")

    data = ScanData.from_arrays("BENCH", lens_result.summary, lens_result.arrays)
    started = time.perf_counter()
    figure = animation_figure(data)
    curve, heat = divergence_figure(data), heatmap_figure(data)
    sizes = [len(pio.to_json(f)) for f in (figure, curve, heat)]
    build = time.perf_counter() - started
    print(f"page payload: animation {sizes[0] / 1e6:.2f} MB, curve {sizes[1] / 1e3:.0f} kB, heatmap "
          f"{sizes[2] / 1e3:.0f} kB (built and serialised in {build:.2f} s); render {figure.layout.meta['render']}")
    first = result.summary["diff"]["first_crossing_label"]
    print(f"divergence: first crossing of {params.threshold_metric} > {params.threshold}: {first}; "
          f"shared prefix {result.summary['diff']['shared_prefix']} tokens")
    if args.no_browser:
        return
    times, idle = frame_switch_ms(figure)
    print(f"frame switch in headless Chromium over {len(times)} switches: mean {statistics.mean(times):.1f} ms, "
          f"median {statistics.median(times):.1f} ms, p95 {np.percentile(times, 95):.1f} ms (target < 50 ms); "
          f"two painted frames with no change (the floor, same page): median {statistics.median(idle):.1f} ms")


if __name__ == "__main__":
    main()

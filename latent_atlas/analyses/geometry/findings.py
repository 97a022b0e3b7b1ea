"""What a geometry run shows on a model, in numbers: the "Findings" of the README.

``FINDINGS_PROMPTS`` are 36 short, varied English prompts (prose, code, facts,
dialogue) used by the findings test on the demo model and by
``bench/geometry_findings.py``; ``findings(result)`` reduces a geometry
``Result`` to the three questions the README answers:

* how separable attention and MLP outputs are per layer (held-out linear
  accuracy in the full hidden space, from ``summary["separation"]``);
* how much larger the residual stream is at position 0 than elsewhere, per
  layer (``resid_post``) and over all points;
* whether the residual norm grows through the layers (with and without
  position 0, whose outlier norm would otherwise dominate the means).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from latent_atlas.analyses.base import Result

__all__ = ["FINDINGS_OPTIONS", "FINDINGS_PROMPTS", "findings"]

# As in the paper's figures: directions, not lengths (position 0's outlier norm would dominate).
FINDINGS_OPTIONS = {"unit_normalise": True, "exclude_position0": True}

FINDINGS_PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n    if n < 2:\n        return n",
    "The mitochondria is the powerhouse of the cell because",
    "In 1969, Neil Armstrong became the first person to",
    "To make a cup of tea, first boil the water and then",
    "The quick brown fox jumps over the lazy dog.",
    "Photosynthesis converts light energy into chemical energy in",
    "My favourite book is about a detective who solves",
    "The stock market fell sharply today after the announcement that",
    "Water boils at 100 degrees Celsius at sea level, but",
    "She opened the door slowly and saw",
    "The theory of relativity was developed by",
    "Please translate the following sentence into Spanish:",
    "The best way to learn a new language is to",
    "import numpy as np\nx = np.zeros((3, 3))\nprint(",
    "The Great Wall of China stretches across",
    "Dear customer, thank you for your recent purchase of",
    "Rain fell all night, and by morning the river had",
    "The recipe calls for two cups of flour, one egg and",
    "A prime number is a natural number greater than one that",
    "The football match ended in a draw after",
    "Shakespeare wrote many plays, including Hamlet and",
    "The spacecraft entered orbit around Mars and began to",
    "If you want to be happy, you should",
    "The meeting has been moved to Thursday because",
    "Climate change is causing sea levels to rise, which",
    "He played the piano every evening until",
    "The largest planet in our solar system is",
    "SELECT name, age FROM users WHERE",
    "The children laughed as the puppy chased",
    "According to the latest research, regular exercise can",
    "The train to London leaves at",
    "Music has the power to",
    "The human brain contains about 86 billion",
    "After years of war, the two countries finally signed",
]


def findings(result: Result) -> dict[str, Any]:
    """The README's numbers from a geometry result with all four components and no averaging."""
    summary = result.summary
    separation = summary["separation"]
    stats = summary["norm_stats"]
    resid_post = 3

    def column(table: list[list[float | None]]) -> list[float]:
        return [float("nan") if row[resid_post] is None else float(row[resid_post]) for row in table]

    accuracy = np.array([np.nan if v is None else v for v in separation["lda_accuracy"]])
    return {
        "n_prompts": summary["n_prompts"],
        "n_tokens": int(sum(summary["n_tokens"])),
        "n_points": summary["n_points"],
        "separation_layers": separation["layers"],
        "separation_accuracy": accuracy.tolist(),
        "separation_accuracy_min": float(np.nanmin(accuracy)),
        "separation_accuracy_median": float(np.nanmedian(accuracy)),
        "separation_overall": separation["overall_lda_accuracy"],
        "silhouette_2d": separation["silhouette_2d"],
        "position0_ratio_resid_post": column(stats["position0_ratio"]),
        "position0_ratio_overall": stats["position0_ratio_overall"],
        "resid_post_mean_position0": column(stats["position0_mean"]),
        "resid_post_mean_rest": column(stats["rest_mean"]),
        "growth_resid_post": stats["growth"]["resid_post"],
        "growth_resid_post_excluding_position0": stats["growth_excluding_position0"]["resid_post"],
    }

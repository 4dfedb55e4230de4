"""Evaluation of TC-AE tokenizers: reconstruction metrics, Fréchet distances, latent diagnostics.

Modules: ``metrics`` (PSNR, SSIM, LPIPS, exact running means), ``features`` (feature networks for
Fréchet distances, weights resolution), ``fid`` (streamed statistics, Fréchet distance, reference
``.npz`` files, Inception Score), ``diagnostics`` (latent statistics, effective rank, linear
probes, structural loss), ``judges`` (classifiers of a data set's classes: FD-<data>, class
agreement), ``evaluate`` (the dataset loop: :class:`Evaluator`), ``grid`` (reconstruction PNGs),
``report`` (JSON, tables, multi-model comparison).

Typical use::

    from tcae import TCAE
    from tcae.evaluation import evaluate, format_table

    model = TCAE.from_pretrained("runs/tiny/model")
    result = evaluate(model, "builtin:photos", metrics="psnr,ssim")
    print(format_table(result))
"""

from tcae.evaluation.diagnostics import (
    LatentChannelStats,
    diagnose,
    effective_rank,
    latent_channel_stats,
    linear_probe,
    structural_loss,
    write_latent_stats,
)
from tcae.evaluation.evaluate import DEFAULT_METRICS, Evaluator, evaluate, parse_metrics
from tcae.evaluation.features import (
    CUSTOM_LABEL,
    FeatureNetwork,
    MissingWeightsError,
)
from tcae.evaluation.fid import FeatureStats, frechet_distance, inception_score
from tcae.evaluation.fid_protocol import load_stats, save_stats
from tcae.evaluation.grid import reconstruction_grid, save_grid
from tcae.evaluation.judges import DigitsJudge, FashionJudge, Judge, class_agreement, judge_for_data
from tcae.evaluation.metrics import MetricSums, psnr_per_image, ssim_per_image
from tcae.evaluation.networks import build_feature_network, weights_available
from tcae.evaluation.report import compare, comparison_markdown, format_table, results_to_json

__all__ = [
    "CUSTOM_LABEL", "DEFAULT_METRICS", "DigitsJudge", "Evaluator", "FashionJudge", "FeatureNetwork", "FeatureStats",
    "Judge",
    "LatentChannelStats", "MetricSums", "MissingWeightsError", "build_feature_network", "class_agreement", "compare",
    "comparison_markdown", "diagnose", "effective_rank", "evaluate", "format_table",
    "frechet_distance", "inception_score", "judge_for_data", "latent_channel_stats", "linear_probe", "load_stats",
    "parse_metrics", "psnr_per_image", "reconstruction_grid", "results_to_json", "save_grid", "save_stats",
    "ssim_per_image", "structural_loss", "weights_available", "write_latent_stats",
]

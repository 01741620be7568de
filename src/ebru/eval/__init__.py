"""ebru.eval: the numbers users choose models, samplers and step counts by.

- Sample quality over any feature network: :func:`fid` (:mod:`.frechet`), :func:`kid`,
  :func:`precision_recall`, with real-data features cached per data and network
  (:func:`reference_set`).
- ebru's own Fashion-MNIST feature network (:func:`load_feature_net`, SHA-256 checked) and
  :func:`class_agreement`.
- Likelihood: :func:`ode_log_likelihood` (PF-ODE, exact or Hutchinson trace),
  :func:`variational_bound`, :func:`bits_per_dim`.
- :func:`evaluate_images`, :func:`nll_on_data`, :func:`bound_on_data`: the figures of ``ebru eval``'s report
  (sampling a model package and scoring it is ``ebru.pipelines.evaluate.evaluate_model``).
"""

from .evaluate import METRICS, bound_on_data, evaluate_images, format_report, nll_on_data, parse_metrics
from .feature_net import FashionFeatureNet, class_agreement, load_feature_net
from .features import extract_features, network_fingerprint
from .frechet import FeatureStats, fid, frechet_distance
from .kid import kid, mmd2_unbiased
from .likelihood import bits_per_dim, dequantize, ode_log_likelihood, variational_bound
from .precision_recall import precision_recall
from .reference import ReferenceSet, reference_set

__all__ = [
    "METRICS",
    "FashionFeatureNet",
    "FeatureStats",
    "ReferenceSet",
    "bits_per_dim",
    "bound_on_data",
    "class_agreement",
    "dequantize",
    "evaluate_images",
    "extract_features",
    "fid",
    "format_report",
    "frechet_distance",
    "kid",
    "load_feature_net",
    "mmd2_unbiased",
    "network_fingerprint",
    "nll_on_data",
    "ode_log_likelihood",
    "parse_metrics",
    "precision_recall",
    "reference_set",
    "variational_bound",
]

"""ebru.eval: evaluation - ebru's own Fashion-MNIST feature network and class agreement (more to come)."""

from .feature_net import FashionFeatureNet, class_agreement, load_feature_net

__all__ = ["FashionFeatureNet", "class_agreement", "load_feature_net"]

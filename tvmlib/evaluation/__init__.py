"""Evaluation: W2 and Frechet distances, the project's classifiers and Inception features,
Lipschitz probes, the committed small models, and scoring a network by its samples."""

from tvmlib.evaluation.classifier import classifier_fd, classifier_features, load_classifier
from tvmlib.evaluation.evaluate import evaluate_net, evaluate_run
from tvmlib.evaluation.metrics import feature_stats, frechet_distance, w2
from tvmlib.evaluation.pretrained import load_2d, load_fashion

__all__ = ["classifier_fd", "classifier_features", "evaluate_net", "evaluate_run",
           "feature_stats", "frechet_distance", "load_2d", "load_classifier", "load_fashion", "w2"]

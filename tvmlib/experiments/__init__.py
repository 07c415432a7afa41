"""Experiments: the one runner for a run or a YAML list of runs (``configs/experiments/``), and
reading its results."""

from tvmlib.experiments.runner import run_experiment, train_run

__all__ = ["run_experiment", "train_run"]

"""Training: one loop for every loss, one typed config schema, one build path, CUDA graphs,
checkpoints and weights on disk, several processes."""

from tvmlib.training.build import build, build_loss, build_model, build_source, load_run, sampler
from tvmlib.training.config import (
    ConfigError,
    RunConfig,
    config_from_dict,
    load_config,
    load_experiment,
)
from tvmlib.training.loop import TrainConfig, TrainState, train
from tvmlib.training.weights import load_weights

__all__ = ["ConfigError", "RunConfig", "TrainConfig", "TrainState", "build", "build_loss",
           "build_model", "build_source", "config_from_dict", "load_config", "load_experiment",
           "load_run", "load_weights", "sampler", "train"]

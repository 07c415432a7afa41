"""tvmlib: Terminal Velocity Matching and Consistency Mid-Training, one concept per module.

Convention everywhere (TVM's): t = 0 is data, t = 1 is noise, x_t = (1 - t) x0 + t eps,
velocity target v = eps - x0, and one network signature ``F = net(x, t, s, y=None, w=None)``.

Layers, bottom up (a module imports only from its own layer or below): ``utils``; ``core``
(math), ``nn`` and ``kernels`` (networks); ``data``; ``training``; ``evaluation``;
``experiments`` (the runner); then ``teach`` and ``apps``, which use the library. The names
below are the public API.
"""

from tvmlib.core import (
    EMA,
    SOLVERS,
    CMTLoss,
    FMLoss,
    MeanFlowLoss,
    Samples,
    TVMLoss,
    displacement,
    displacement_and_dfds,
    flow_map,
    interpolate,
    sample,
    sample_gap_times,
    time_grid,
    velocity,
    velocity_target,
)
from tvmlib.data import TensorSource, ToySource, load_mnist, sample_toy2d
from tvmlib.evaluation import classifier_fd, evaluate_net, evaluate_run, frechet_distance, w2
from tvmlib.experiments import run_experiment, train_run
from tvmlib.nn import MLP2D, DiT, LipschitzConfig, dit_from_preset
from tvmlib.training import (
    RunConfig,
    TrainConfig,
    build,
    config_from_dict,
    load_config,
    load_weights,
    train,
)

__version__ = "0.2.0"
__all__ = ["CMTLoss", "DiT", "EMA", "FMLoss", "LipschitzConfig", "MLP2D", "MeanFlowLoss",
           "RunConfig", "SOLVERS", "Samples", "TVMLoss", "TensorSource", "ToySource",
           "TrainConfig", "build", "classifier_fd", "config_from_dict", "displacement",
           "displacement_and_dfds", "dit_from_preset", "evaluate_net", "evaluate_run",
           "flow_map", "frechet_distance", "interpolate", "load_config", "load_mnist",
           "load_weights", "run_experiment", "sample", "sample_gap_times", "sample_toy2d",
           "time_grid", "train", "train_run", "velocity", "velocity_target", "w2"]

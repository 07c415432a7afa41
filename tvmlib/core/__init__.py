"""Core math: the linear path and its time samplers, the flow map and its s-derivative, the
losses (FM, TVM, MeanFlow, CMT), the EMA, and every sampler (``solvers``)."""

from tvmlib.core.ema import EMA
from tvmlib.core.flowmap import displacement, displacement_and_dfds, flow_map, velocity
from tvmlib.core.losses import CMTLoss, FMLoss, MeanFlowLoss, TVMLoss
from tvmlib.core.path import interpolate, sample_gap_times, sample_time, velocity_target
from tvmlib.core.solvers import SOLVERS, Samples, sample, time_grid

__all__ = ["CMTLoss", "EMA", "FMLoss", "MeanFlowLoss", "SOLVERS", "Samples", "TVMLoss",
           "displacement", "displacement_and_dfds", "flow_map", "interpolate", "sample",
           "sample_gap_times", "sample_time", "time_grid", "velocity", "velocity_target"]

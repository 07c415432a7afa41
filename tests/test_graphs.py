"""CUDA-graph replay of the loss and backward (tvmlib.training.graphs): the same training as
eager mode.

The equivalence tests need a GPU (they run on the device machine, not in CI); the refusals with
their messages are checked everywhere.
"""

import pytest
import torch

from tvmlib.core.losses import FMLoss, MeanFlowLoss, TVMLoss
from tvmlib.data.images import TensorSource
from tvmlib.nn.dit import dit_from_preset
from tvmlib.training.graphs import GraphedLossBackward, check_graph_support
from tvmlib.training.loop import TrainConfig, train

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def _dit(device, seed=0):
    torch.manual_seed(seed)
    return dit_from_preset("DiT-T/4", input_size=16, in_channels=1, num_classes=10,
                           guidance=True, attn_backend="math").to(device)


def _data(device, n=64):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 1, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)
    return x.to(device), y.to(device)


def test_cpu_net_is_refused_with_reason():
    net = _dit("cpu")
    with pytest.raises(ValueError, match="CUDA device"):
        check_graph_support(net, FMLoss())
    x, y = _data("cpu")
    with pytest.raises(ValueError, match="cuda_graph: false"):
        train(net, FMLoss(), TensorSource(x, y, 8, seed=0), TrainConfig(steps=1, cuda_graph=True))


@cuda
def test_unsafe_loss_and_micro_batches_are_refused():
    net = _dit("cuda")

    def loss_fn(net, batch):  # a plain function: not declared graph_safe
        return net(batch[0], 0.5, 0.5, batch[1]).square().mean(), {}

    with pytest.raises(ValueError, match="graph_safe"):
        check_graph_support(net, loss_fn)
    with pytest.raises(ValueError, match="micro_batches"):
        check_graph_support(net, FMLoss(), micro_batches=0)


def _train(loss_name, cuda_graph, steps=6, amp="off", micro_batches=1, jvp="fused",
           log_every=1, sync_every=1):
    net = _dit("cuda")
    net.jvp = jvp  # how the TVM loss gets dF/ds
    loss = {"fm": lambda: FMLoss(label_dropout=0.1, num_classes=10),
            "meanflow": lambda: MeanFlowLoss(num_classes=10, label_dropout=0.1),
            "tvm": lambda: TVMLoss(net, num_classes=10, cfg_scale=2.0)}[loss_name]()
    x, y = _data("cuda")
    cfg = TrainConfig(steps=steps, lr=1e-3, betas=(0.9, 0.95), grad_clip=1.0, ema_decay=0.9,
                      log_every=log_every, seed=3, amp=amp, progress=False,
                      cuda_graph=cuda_graph, micro_batches=micro_batches, sync_every=sync_every)
    return train(net, loss, TensorSource(x, y, 16, seed=0), cfg)


@cuda
@pytest.mark.parametrize("loss_name,micro,jvp", [("fm", 1, "fused"), ("tvm", 1, "fused"),
                                                 ("tvm", 2, "fused"), ("meanflow", 1, "fused"),
                                                 ("tvm", 1, "compiled")])
def test_graphed_training_matches_eager(loss_name, micro, jvp):
    """fp32: same batches, same seeds per micro-batch, so the same losses and weights as eager
    mode, also when each step accumulates two micro-batches, and with the compiled dF/ds
    (torch.compile's kernels captured in the graph)."""
    eager, graphed = (_train(loss_name, g, micro_batches=micro, jvp=jvp) for g in (False, True))
    le = [r["loss"] for r in eager.history]
    lg = [r["loss"] for r in graphed.history]
    assert len(le) == len(lg) == 6
    assert le == pytest.approx(lg, rel=1e-4, abs=1e-6)
    for a, b in zip(eager.net.parameters(), graphed.net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(eager.ema.module.parameters(), graphed.ema.module.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@cuda
def test_graphed_training_read_back_every_few_steps_logs_the_same():
    """With ``sync_every`` the graph's static log outputs are copied each step before the next
    replay overwrites them: the same rows and weights as reading back every step."""
    every, lazy = (_train("tvm", True, steps=12, log_every=4, sync_every=n) for n in (1, 6))
    assert [r["step"] for r in lazy.history] == [r["step"] for r in every.history] == [4, 8, 12]
    for a, b in zip(every.history, lazy.history):  # atomics in a backward: not bitwise
        assert set(a) == set(b)
        assert [b[k] for k in a if k != "seconds"] == pytest.approx(
            [a[k] for k in a if k != "seconds"], rel=1e-5, abs=1e-7)
    for a, b in zip(every.net.parameters(), lazy.net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@cuda
def test_graphed_bf16_tvm_trains():
    state = _train("tvm", True, steps=30, amp="bf16")
    losses = [r["loss"] for r in state.history]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) < sum(losses[:5])


@cuda
def test_replay_is_seeded_and_reads_new_batches():
    net = _dit("cuda")
    step = GraphedLossBackward(net, FMLoss(), lambda: torch.autocast("cuda", enabled=False))
    x, y = _data("cuda", 16)
    weight = net.final_layer.linear.weight  # adaLN-zero: at init only the last layers get grads
    a = float(step((x, y), seed=1)[0])
    grad_a = weight.grad.clone()
    assert grad_a.abs().sum() > 0
    assert float(step((x, y), seed=1)[0]) == a  # same seed, same batch: same loss
    torch.testing.assert_close(weight.grad, 2 * grad_a)  # accumulated
    step.zero_grad()
    assert float(step((x, y), seed=2)[0]) != a  # new noise
    assert float(step((x + 1, y), seed=1)[0]) != a  # the new batch is read
    step.zero_grad()
    step((x, y), seed=1)
    torch.testing.assert_close(weight.grad, grad_a)  # zeroed, then one replay
    with pytest.raises(ValueError, match="shape"):
        step((x[:8], y[:8]), seed=1)

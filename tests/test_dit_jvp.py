"""tvmlib.nn.dit_jvp: the DiT's (F, dF/ds) from one tangent-carrying pass, against
``torch.func.jvp`` through the math backend in float64 (values and parameter gradients), per
layer, per Lipschitz option, and in the TVM loss; the switch in ``displacement_and_dfds``."""

import copy
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tvmlib.nn.dit_jvp as J
from tvmlib.core.flowmap import displacement_and_dfds
from tvmlib.core.losses import TVMLoss
from tvmlib.nn import MLP2D, DiT, LipschitzConfig
from tvmlib.nn.attention import AttentionJVPError, attention_jvp, math_attention
from tvmlib.nn.embedding import sinusoidal_embedding, sinusoidal_embedding_jvp

D = torch.float64
OFF = LipschitzConfig.off()
VARIANTS = {"on": LipschitzConfig(), "on_time_spectral": LipschitzConfig(time_spectral_init=True),
            "off": OFF, **{flag: replace(OFF, **{flag: True})
                           for flag in ("rmsnorm", "qk_norm", "mod_norm", "spectral_init")}}


def rel_err(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


def tiny_dit(lipschitz=None, patch_size=2, num_classes=5, guidance=True, depth=2, **kw) -> DiT:
    """A float64 DiT on 3x8x8 inputs whose zero-initialised layers (adaLN outputs, final
    linear) get random values, so that every path of the tangent is live."""
    torch.manual_seed(0)
    net = DiT(input_size=8, patch_size=patch_size, in_channels=3, hidden_size=32, depth=depth,
              num_heads=2, num_classes=num_classes, guidance=guidance, lipschitz=lipschitz,
              time_scale=2.0, **kw).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.zero_init_linears():
            for p in (m.weight, m.bias):
                p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=D))
    return net


def inputs(num_classes=5, guidance=True, B=4):
    """x, t, s, y, w with t = s for sample 0 and t > s for the others."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, 3, 8, 8, generator=g, dtype=D)
    t = 0.2 + 0.8 * torch.rand(B, generator=g, dtype=D)
    s = t * torch.rand(B, generator=g, dtype=D)
    s[0] = t[0]
    y = torch.tensor([0, 4, num_classes, 1])[:B] if num_classes else None  # 5 = null class
    w = torch.tensor([1.0, 2.0, 3.0, 1.5], dtype=D)[:B] if guidance else None
    return x, t, s, y, w


class ExplicitLayerNorm(nn.Module):
    """LayerNorm without affine, written out. The reference needs it: PyTorch's layer_norm
    tangent is not correctly differentiable by reverse mode (its backward treats the saved
    mean and rstd as constants; cf. pytorch/pytorch#196700), so gradients through
    ``torch.func.jvp`` of a LayerNorm DiT are wrong, while the values are right."""

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        xc = x - x.mean(-1, keepdim=True)
        return xc / torch.sqrt(xc.square().mean(-1, keepdim=True) + self.eps)


def func_reference(net: DiT) -> DiT:
    """A copy of ``net`` on the func path, its LayerNorms written out (see ExplicitLayerNorm)."""
    ref = copy.deepcopy(net)
    ref.jvp = "func"
    for name, m in list(ref.named_modules()):
        if isinstance(m, nn.LayerNorm):
            parent, leaf = name.rsplit(".", 1)
            setattr(ref.get_submodule(parent), leaf, ExplicitLayerNorm(m.eps))
    return ref


def func_jvp(net, x, t, s, y, w):
    return torch.func.jvp(lambda s_: net(x, t, s_, y, w), (s,), (torch.ones_like(s),))


def grads_of_both(net, F_, dF):
    """Parameter gradients of <G1, F> + <G2, dF/ds> for fixed random G1, G2 (None: unused)."""
    g = torch.Generator().manual_seed(3)
    g1, g2 = (torch.randn(F_.shape, generator=g, dtype=F_.dtype).to(F_.device) for _ in range(2))
    return torch.autograd.grad((F_ * g1).sum() + (dF * g2).sum(), list(net.parameters()),
                               allow_unused=True)


def assert_same_grads(got, want, names, tol):
    for name, a, b in zip(names, got, want):
        assert (a is None) == (b is None), name
        if b is not None and b.norm() > 0:
            assert rel_err(a, b) < tol, (name, rel_err(a, b))


# ------------------------------------------------------------------------- the whole DiT
# every variant with (patch, classes, guidance) both on and both off; the mixed ones on "on"
# and "off" only (a tiny float64 DiT each)
SETTINGS = [(v, setting) for v in VARIANTS for setting in ((2, 5, True), (4, 0, False))] + \
    [(v, setting) for v in ("on", "off") for setting in ((4, 5, False), (2, 0, True))]


@pytest.mark.parametrize("variant, setting", SETTINGS,
                         ids=[f"{v}-p{p}-K{k}-{'w' if g else 'nw'}" for v, (p, k, g) in SETTINGS])
def test_F_dFds_and_gradients_match_torch_func_jvp_float64(variant, setting):
    patch_size, num_classes, guidance = setting
    net = tiny_dit(VARIANTS[variant], patch_size, num_classes, guidance)
    ref = func_reference(net)
    x, t, s, y, w = inputs(num_classes, guidance)
    F_ref, dF_ref = func_jvp(ref, x, t, s, y, w)
    F_, dF = net.forward_and_dfds(x, t, s, y, w)
    assert F_.dtype == dF.dtype == D and F_.shape == dF.shape == x.shape
    assert rel_err(F_, F_ref) < 1e-12 and rel_err(dF, dF_ref) < 1e-12
    assert dF[1:].abs().amax() > 1e-3  # the tangent is live
    names = [n for n, _ in net.named_parameters()]
    assert_same_grads(grads_of_both(net, F_, dF), grads_of_both(ref, F_ref, dF_ref), names, 1e-11)


def test_layer_norm_gradients_match_finite_differences():
    """An independent check of the LayerNorm DiT's gradients through dF/ds (the reference above
    replaces torch's layer_norm): central differences in two weights."""
    net = tiny_dit(OFF)
    x, t, s, y, w = inputs()

    def loss():
        return net.forward_and_dfds(x, t, s, y, w)[1].sin().sum()

    def moved(p, idx, delta):  # the loss with p[idx] moved by delta
        with torch.no_grad():
            p[idx] += delta
        value = loss().item()
        with torch.no_grad():
            p[idx] -= delta
        return value

    loss().backward()
    for name, idx in (("blocks.0.attn.qkv.weight", (7, 3)), ("blocks.1.mlp.0.weight", (5, 2))):
        p = net.get_parameter(name)
        fd = (moved(p, idx, 1e-6) - moved(p, idx, -1e-6)) / 2e-6
        assert abs(p.grad[idx].item() - fd) < 1e-6 * abs(fd) + 1e-9, name


def test_bf16_autocast_keeps_dtypes_and_agrees_within_bf16():
    """Under bf16 autocast (the GPU runs' precision; on the GPU too when there is one) the error
    against fp32 is at most twice that of torch.func.jvp under the same autocast; on a GPU the
    compiled blocks (``jvp="compiled"``, inductor's GPU kernels) too."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = tiny_dit().float().to(device)
    x, t, s, y, w = (v.to(device, torch.float32) if v.is_floating_point() else v.to(device)
                     for v in inputs())
    F_ref, dF_ref = func_jvp(net, x, t, s, y, w)
    with torch.autocast(device, dtype=torch.bfloat16):
        F_func, dF_func = func_jvp(net, x, t, s, y, w)
    err_func = max(rel_err(F_func, F_ref), rel_err(dF_func, dF_ref))
    for compiled in (False, True) if device == "cuda" else (False,):
        with torch.autocast(device, dtype=torch.bfloat16):
            F_, dF = J.forward_and_dfds(net, x, t, s, y, w, compiled=compiled)
        assert F_.dtype == dF.dtype == torch.float32
        assert max(rel_err(F_, F_ref), rel_err(dF, dF_ref)) < 2 * err_func + 1e-3, compiled


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("compiled", [False, True], ids=["fused", "compiled"])
def test_bf16_autocast_parameter_gradients_agree_within_bf16(compiled):
    """The parameter gradients of <G1, F> + <G2, dF/ds> under bf16 autocast, fused or compiled
    (inductor's GPU kernels), against those of torch.func.jvp in fp32: for each parameter, the
    error at most twice that of torch.func.jvp under the same autocast."""
    device = "cuda"
    net = tiny_dit().float().to(device)
    ref = func_reference(net)  # the same weights, on the func path
    x, t, s, y, w = (v.to(device, torch.float32) if v.is_floating_point() else v.to(device)
                     for v in inputs())
    want = grads_of_both(ref, *func_jvp(ref, x, t, s, y, w))
    with torch.autocast(device, dtype=torch.bfloat16):
        F_func, dF_func = func_jvp(ref, x, t, s, y, w)
        F_, dF = J.forward_and_dfds(net, x, t, s, y, w, compiled=compiled)
    grads_func, got = grads_of_both(ref, F_func, dF_func), grads_of_both(net, F_, dF)
    for (name, _), a, b, c in zip(net.named_parameters(), got, grads_func, want):
        assert (a is None) == (c is None), name
        if c is not None and c.norm() > 0:
            err, err_func = rel_err(a, c), rel_err(b, c)
            assert err < 2 * err_func + 1e-3, (name, err, err_func)


# --------------------------------------------------------------------------- layer by layer
def _jvp(fn, x, tx):
    return torch.func.jvp(fn, (x,), (tx,))


def test_layer_jvps_match_torch_func_jvp():
    g = torch.Generator().manual_seed(4)
    x, tx, h, th = (torch.randn(2, 5, 8, generator=g, dtype=D) for _ in range(4))
    pairs = [(torch.randn(2, 8, generator=g, dtype=D), torch.randn(2, 8, generator=g, dtype=D))
             for _ in range(3)]
    weight = torch.randn(8, generator=g, dtype=D)
    lin = nn.Linear(8, 6).double()
    cases = {
        "linear": (J.linear_jvp(lin, x, tx), _jvp(lin, x, tx)),
        "silu": (J.silu_jvp(x, tx), _jvp(F.silu, x, tx)),
        "gelu": (J.gelu_jvp(x, tx), _jvp(lambda z: F.gelu(z, approximate="tanh"), x, tx)),
        "rms_norm": (J.norm_jvp(x, tx, 1e-6, weight=weight),
                     _jvp(lambda z: F.rms_norm(z, (8,), weight, 1e-6), x, tx)),
        "layer_norm": (J.norm_jvp(x, tx, 1e-6, center=True),
                       _jvp(lambda z: F.layer_norm(z, (8,), eps=1e-6), x, tx)),
    }
    (sh, tsh), (sc, tsc), (gt, tgt) = pairs
    cases["modulate"] = (J.modulate_jvp(x, tx, pairs[0], pairs[1]), torch.func.jvp(
        lambda a, b, c: a * (1 + c[:, None]) + b[:, None], (x, sh, sc), (tx, tsh, tsc)))
    cases["gated_residual"] = (J.gated_residual_jvp(x, tx, pairs[2], h, th), torch.func.jvp(
        lambda a, b, c: a + b[:, None] * c, (x, gt, h), (tx, tgt, th)))
    for name, ((y, ty), (y_ref, ty_ref)) in cases.items():
        assert rel_err(y, y_ref) < 1e-14 and rel_err(ty, ty_ref) < 1e-13, name
    # a zero tangent (None) on the token stream, as before the first modulation
    assert J.norm_jvp(x, None, 1e-6)[1] is None
    ty0 = J.modulate_jvp(x, None, pairs[0], pairs[1])[1]
    assert rel_err(ty0, x * tsc[:, None] + tsh[:, None]) < 1e-15


def test_gelu_derivative_is_the_tanh_formula():
    """The derivative kernel against GELU'(x) of the tanh form, written out."""
    x = torch.linspace(-6, 6, 241, dtype=D)
    u = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
    dgelu = 0.5 * (1 + u.tanh()) + 0.5 * x * (1 - u.tanh() ** 2) * math.sqrt(2 / math.pi) * (
        1 + 3 * 0.044715 * x**2)
    tx = torch.randn_like(x)
    torch.testing.assert_close(J.gelu_jvp(x, tx)[1], dgelu * tx, rtol=1e-14, atol=1e-14)


def test_sinusoidal_embedding_jvp():
    t = torch.tensor([0.0, 0.3, 1.0], dtype=D)
    dt = torch.tensor([-1.0, 2.0, 0.5], dtype=D)
    e, de = sinusoidal_embedding_jvp(t, dt, 16, scale=7.0)
    e_ref, de_ref = _jvp(lambda v: sinusoidal_embedding(v, 16, scale=7.0), t, dt)
    torch.testing.assert_close(e, e_ref, rtol=0, atol=0)
    torch.testing.assert_close(de, de_ref, rtol=1e-14, atol=1e-14)


def test_math_attention_jvp_values_and_gradients():
    g = torch.Generator().manual_seed(5)
    q, k, v, tq, tk, tv = (torch.randn(2, 2, 7, 4, generator=g, dtype=D, requires_grad=True)
                           for _ in range(6))
    ins = (q, k, v, tq, tk, tv)
    o, to = attention_jvp(*ins, backend="math")
    o_ref, to_ref = torch.func.jvp(math_attention, (q, k, v), (tq, tk, tv))
    assert rel_err(o, o_ref) < 1e-14 and rel_err(to, to_ref) < 1e-14
    g1, g2 = torch.randn_like(o), torch.randn_like(o)
    got = torch.autograd.grad((o * g1).sum() + (to * g2).sum(), ins)
    want = torch.autograd.grad((o_ref * g1).sum() + (to_ref * g2).sum(), ins)
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-13
    with pytest.raises(AttentionJVPError, match="'math'"):
        attention_jvp(*ins, backend="sdpa")


# ----------------------------------------------------------------- the switch and the loss
def _tvm_step(net, jvp):
    net.jvp = jvp
    net.zero_grad(set_to_none=True)
    loss_fn = TVMLoss(net, num_classes=5, cfg_scale=2.0, label_dropout=0.5)
    g = torch.Generator().manual_seed(6)
    batch = (torch.randn(6, 3, 8, 8, generator=g, dtype=D), torch.randint(0, 5, (6,), generator=g))
    torch.manual_seed(7)
    loss, logs = loss_fn(net, batch)
    loss.backward()
    return loss.detach(), logs["terminal"], [p.grad.clone() for p in net.parameters()]


def test_tvm_loss_and_gradients_equal_with_fused_and_func():
    net = tiny_dit()
    loss_f, term_f, grads_f = _tvm_step(net, "fused")
    loss_r, term_r, grads_r = _tvm_step(net, "func")
    assert term_r > 0  # the terminal term (the one through dF/ds) is in the comparison
    assert abs(loss_f - loss_r) < 1e-13 * loss_r and abs(term_f - term_r) < 1e-13 * term_r
    for a, b in zip(grads_f, grads_r):
        assert rel_err(a, b) < 1e-12


def test_fused_path_is_used_and_never_falls_back(monkeypatch):
    """A DiT with jvp="fused" (the default, also from a config) must not reach torch.func.jvp,
    and a fused request the network cannot serve raises instead of falling back."""
    from tvmlib.training.build import build_model
    from tvmlib.training.config import config_from_dict

    cfg = config_from_dict({"model": {"preset": "DiT", "depth": 1, "hidden_size": 32,
                                      "num_heads": 2, "patch_size": 4, "input_size": 8}})
    assert build_model(cfg).jvp == "fused" and tiny_dit().jvp == "fused"
    net = tiny_dit()
    x, t, s, y, w = inputs()
    want = displacement_and_dfds(net, x, t, s, y, w, scale_param=True)

    def no_func_jvp(*args, **kwargs):
        raise AssertionError("torch.func.jvp was called on the fused path")

    monkeypatch.setattr(torch.func, "jvp", no_func_jvp)
    got = displacement_and_dfds(net, x, t, s, y, w, scale_param=True)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    net.attn_backend = "sdpa"  # no JVP there: an error, not torch.func.jvp
    with pytest.raises(AttentionJVPError):
        displacement_and_dfds(net, x, t, s, y, w)
    monkeypatch.undo()
    net.attn_backend, net.jvp = "math", "func"
    calls = []
    monkeypatch.setattr(net, "forward_and_dfds", lambda *a: calls.append(a))
    displacement_and_dfds(net, x, t, s, y, w)
    assert not calls  # "func" means torch.func.jvp
    mlp = MLP2D()
    mlp.jvp = "fused"
    with pytest.raises(AttributeError, match="forward_and_dfds"):
        displacement_and_dfds(mlp, torch.randn(2, 2), torch.ones(2), torch.zeros(2))
    net.jvp = "fuse"
    with pytest.raises(ValueError, match="'fused', 'compiled' or 'func'"):
        displacement_and_dfds(net, x, t, s, y, w)
    with pytest.raises(ValueError, match="unknown jvp mode 'fuse'"):
        tiny_dit(jvp="fuse")


def test_dfds_is_the_product_rule_of_the_scaled_displacement():
    """d/ds [(s - t) w F] = w (F + (s - t) dF/ds), and = w F at s = t."""
    net = tiny_dit()
    x, t, s, y, w = inputs()
    f, dfds = displacement_and_dfds(net, x, t, s, y, w, scale_param=True)
    F_, dF = net.forward_and_dfds(x, t, s, y, w)
    wb, gap = w.view(-1, 1, 1, 1), (s - t).view(-1, 1, 1, 1)
    torch.testing.assert_close(f, gap * wb * F_, rtol=1e-14, atol=0)
    torch.testing.assert_close(dfds, wb * (F_ + gap * dF), rtol=1e-14, atol=0)
    torch.testing.assert_close(dfds[0], w[0] * F_[0], rtol=1e-14, atol=0)  # sample 0: s = t


# ------------------------------------------------- the Triton kernel (CPU: the interpreter)
def test_triton_attention_in_the_dit_matches_the_math_path():
    """fp32, 16 tokens: F, dF/ds and the parameter gradients through both, with the fused
    kernel's attention_with_jvp (the Triton interpreter without a GPU) against the math JVP."""
    pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = tiny_dit(depth=1).float().to(device)
    x, t, s, y, w = (v.to(device, torch.float32) if v.is_floating_point() else v.to(device)
                     for v in inputs())
    net.attn_backend = "math"
    F_m, dF_m = net.forward_and_dfds(x, t, s, y, w)
    grads_m = grads_of_both(net, F_m, dF_m)
    net.attn_backend = "triton"
    F_t, dF_t = net.forward_and_dfds(x, t, s, y, w)
    assert rel_err(F_t, F_m) < 1e-5 and rel_err(dF_t, dF_m) < 1e-5
    names = [n for n, _ in net.named_parameters()]
    assert_same_grads(grads_of_both(net, F_t, dF_t), grads_m, names, 5e-5)


def test_training_runs_agree_with_fused_and_func(tmp_path):
    """Four optimizer steps of the Fashion-MNIST TVM smoke run (two micro-batches each, EMA
    target, AdamW) give the same losses and weights on all three paths (fused, torch.func.jvp,
    fused through torch.compile), up to fp32 rounding."""
    from pathlib import Path

    from tvmlib.training.build import build
    from tvmlib.training.config import load_config
    from tvmlib.training.loop import train

    config = Path(__file__).resolve().parents[1] / "configs" / "fashion_tvm_smoke.yaml"
    runs = {}
    for jvp in ("fused", "func", "compiled"):
        cfg = load_config(config, [f"out_dir={tmp_path / jvp}", "train.steps=4", 'train.amp="off"',
                                   "train.global_batch=4", "train.per_gpu_batch=2",
                                   f"model.jvp={jvp}"])
        built = build(cfg, device="cpu")
        assert built.net.jvp == jvp and built.loop.micro_batches == 2
        runs[jvp] = train(built.net, built.loss, built.source, built.loop)
    losses = {k: torch.tensor([row["loss"] for row in r.history]) for k, r in runs.items()}
    assert len(losses["fused"]) == 4
    for other in ("func", "compiled"):
        torch.testing.assert_close(losses["fused"], losses[other], rtol=1e-4, atol=0)
        for a, b in zip(runs["fused"].net.parameters(), runs[other].net.parameters()):
            assert rel_err(a.detach(), b.detach()) < 1e-4


def test_compiled_fm_training_matches_eager_and_its_ema_keeps_its_own_weights(tmp_path):
    """``model.jvp: compiled`` for FM compiles the whole network (as the benchmark's compiled FM
    step): four steps give eager's losses, weights and EMA up to fp32 rounding, dynamo captured
    the forward, and the EMA copy evaluates its own weights. MeanFlow is refused."""
    from pathlib import Path

    from torch._dynamo.utils import counters

    from tvmlib.training.build import build
    from tvmlib.training.config import load_config
    from tvmlib.training.loop import train

    config = Path(__file__).resolve().parents[1] / "configs" / "fashion_tvm_smoke.yaml"
    fm = ["loss.name=fm", "loss.cfg_scale=null", "loss.scale_param=false", "train.steps=4",
          'train.amp="off"', "train.global_batch=4", "model.guidance=false", "model.depth=2"]
    runs = {}
    for jvp in ("fused", "compiled"):
        torch._dynamo.reset()
        counters.clear()
        cfg = load_config(config, [f"out_dir={tmp_path / jvp}", f"model.jvp={jvp}", *fm])
        built = build(cfg, device="cpu")
        runs[jvp] = train(built.net, built.loss, built.source, built.loop)
        assert (counters["stats"]["unique_graphs"] > 0) == (jvp == "compiled")
    losses = {k: torch.tensor([row["loss"] for row in r.history]) for k, r in runs.items()}
    torch.testing.assert_close(losses["fused"], losses["compiled"], rtol=1e-4, atol=0)
    eager, compiled = runs["fused"], runs["compiled"]
    for a, b in zip(eager.ema.module.parameters(), compiled.ema.module.parameters()):
        assert rel_err(a, b) < 1e-4
    x = torch.randn(2, 1, 32, 32)
    t, y = torch.full((2,), 0.5), torch.tensor([1, 2])
    with torch.no_grad():  # the EMA's output is the EMA weights', not the trained net's
        torch.testing.assert_close(compiled.ema.module(x, t, t, y), eager.ema.module(x, t, t, y),
                                   rtol=1e-3, atol=1e-4)
        assert rel_err(compiled.ema.module(x, t, t, y), compiled.net(x, t, t, y)) > 1e-3
    cfg = load_config(config, [f"out_dir={tmp_path / 'mf'}", "model.jvp=compiled", *fm,
                               "loss.name=meanflow"])
    with pytest.raises(ValueError, match="meanflow"):
        build(cfg, device="cpu")


def test_compiled_blocks_match_the_math_in_float64_and_compile_once_for_all_blocks():
    """``jvp="compiled"`` (each block's non-attention work through torch.compile, inductor on
    the CPU here) gives torch.func.jvp's F, dF/ds and parameter gradients in float64, and the
    three blocks of the net share each compiled graph (no compilation per block)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    net = tiny_dit(VARIANTS["on"], depth=3, jvp="compiled")
    ref = func_reference(net)
    x, t, s, y, w = inputs()
    F_ref, dF_ref = func_jvp(ref, x, t, s, y, w)
    F_, dF = net.forward_and_dfds(x, t, s, y, w)
    assert rel_err(F_, F_ref) < 1e-12 and rel_err(dF, dF_ref) < 1e-12
    names = [n for n, _ in net.named_parameters()]
    assert_same_grads(grads_of_both(net, F_, dF), grads_of_both(ref, F_ref, dF_ref), names, 1e-11)
    # before and after the attention, each once for the first block (no incoming tangent)
    # and once for the other two
    assert counters["stats"]["unique_graphs"] == 4, dict(counters["stats"])
    F2, dF2 = net.forward_and_dfds(x, t, s, y, w)  # a second call: no new graph
    assert counters["stats"]["unique_graphs"] == 4 and torch.equal(F2, F_)

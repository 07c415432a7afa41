"""tvmlib.nn.attention: backends agree, math has correct JVPs, sdpa refuses them clearly."""

import sys

import pytest
import torch
import torch.autograd.forward_ad as fwAD

import tvmlib.nn.attention as attn_mod
from tvmlib.nn.attention import (
    AttentionJVPError,
    attention,
    get_attention_backend,
    set_attention_backend,
    use_attention,
)


def _qkv(dtype=torch.float32, B=2, H=3, Nq=7, Nk=5, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, n, d, generator=g, dtype=dtype) for n in (Nq, Nk, Nk))


def test_math_matches_sdpa_float32():
    q, k, v = _qkv()
    out = attention(q, k, v, backend="math")
    assert out.shape == q.shape
    torch.testing.assert_close(out, attention(q, k, v, backend="sdpa"), atol=1e-5, rtol=1e-5)


def test_math_matches_loop_reference_float64():
    """Independent per-row reference: o_i = sum_j p_ij v_j, p_ij ~ exp(q_i . k_j / sqrt d)."""
    q, k, v = _qkv(torch.float64, B=1, H=2, Nq=4, Nk=3, d=5)
    ref = torch.empty_like(q)
    for h in range(2):
        for i in range(4):
            logits = torch.stack([q[0, h, i] @ k[0, h, j] for j in range(3)]) / 5**0.5
            p = torch.exp(logits - logits.max())
            ref[0, h, i] = (p / p.sum()) @ v[0, h]
    torch.testing.assert_close(attention(q, k, v, backend="math"), ref, atol=1e-12, rtol=0)


def test_math_jvp_matches_finite_difference_float64():
    q, k, v = _qkv(torch.float64)
    tq, tk, tv = _qkv(torch.float64, seed=1)
    out, tangent = torch.func.jvp(lambda *a: attention(*a, backend="math"), (q, k, v), (tq, tk, tv))
    h = 1e-6
    fd = (attention(q + h * tq, k + h * tk, v + h * tv, backend="math")
          - attention(q - h * tq, k - h * tk, v - h * tv, backend="math")) / (2 * h)
    torch.testing.assert_close(out, attention(q, k, v, backend="math"))
    assert ((tangent - fd).norm() / fd.norm()).item() < 1e-8


def test_math_jvp_tangent_is_differentiable():
    """Reverse mode through the forward-mode tangent (TVM's double-mode AD), by gradcheck."""
    q, k, v = _qkv(torch.float64, B=1, H=1, Nq=3, Nk=3, d=2)
    tq, tk, tv = _qkv(torch.float64, B=1, H=1, Nq=3, Nk=3, d=2, seed=1)

    def tangent(q, k, v):
        return torch.func.jvp(lambda *a: attention(*a, backend="math"), (q, k, v), (tq, tk, tv))[1]

    inputs = tuple(x.requires_grad_() for x in (q, k, v))
    assert torch.autograd.gradcheck(tangent, inputs)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_sdpa_refuses_torch_func_jvp(which):
    q, k, v = _qkv()

    def f(x):
        args = [q, k, v]
        args[which] = x
        return attention(*args, backend="sdpa")

    x = (q, k, v)[which]
    with pytest.raises(AttentionJVPError) as err:
        torch.func.jvp(f, (x,), (torch.ones_like(x),))
    assert "'math'" in str(err.value) and "'triton'" in str(err.value)


def test_sdpa_refuses_forward_ad():
    q, k, v = _qkv()
    with fwAD.dual_level():
        kd = fwAD.make_dual(k, torch.ones_like(k))
        with pytest.raises(AttentionJVPError, match="'math'.*'triton'"):
            attention(q, kd, v, backend="sdpa")


def test_sdpa_refuses_jvp_hidden_under_grad():
    """torch.func.grad inside torch.func.jvp hides the tangent; the kernel's failure is caught."""
    q, k, v = _qkv()

    def outer(scale):
        return torch.func.grad(lambda q_: attention(q_ * scale, k, v, backend="sdpa").sum())(q)

    with pytest.raises(AttentionJVPError, match="'math'"):
        torch.func.jvp(outer, (torch.tensor(1.0),), (torch.tensor(1.0),))


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
def test_sdpa_reverse_mode_and_transforms_without_tangents_work():
    """No false alarms: backward, torch.func.grad and vmap through sdpa are fine."""
    q, k, v = _qkv()
    q1 = q.clone().requires_grad_()
    q2 = q.clone().requires_grad_()
    attention(q1, k, v, backend="sdpa").square().sum().backward()
    attention(q2, k, v, backend="math").square().sum().backward()
    torch.testing.assert_close(q1.grad, q2.grad, atol=1e-5, rtol=1e-4)
    g = torch.func.grad(lambda x: attention(x, k, v, backend="sdpa").square().sum())(q)
    torch.testing.assert_close(g, q2.grad, atol=1e-5, rtol=1e-4)
    stacked = [torch.stack([x, 2 * x]) for x in (q, k, v)]  # (2, B, H, N, d): vmap over dim 0
    vm = torch.func.vmap(lambda a, b, c: attention(a, b, c, backend="sdpa"))(*stacked)
    torch.testing.assert_close(vm[1], attention(2 * q, 2 * k, 2 * v, backend="math"),
                               atol=1e-5, rtol=1e-5)


def test_unknown_backend_raises_value_error_listing_valid_ones():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="'math', 'sdpa', 'triton'"):
        attention(q, k, v, backend="flash")
    with pytest.raises(ValueError, match="unknown attention backend"):
        set_attention_backend("flash")
    with pytest.raises(ValueError, match="unknown attention backend"):
        with use_attention("flash"):
            pass
    assert get_attention_backend() == "math"


def test_default_backend_switch_and_restore():
    q, k, v = _qkv()
    jvp = lambda: torch.func.jvp(lambda x: attention(x, k, v), (q,), (q,))  # noqa: E731
    assert get_attention_backend() == "math"
    jvp()  # math by default: fine
    with use_attention("sdpa"):
        assert get_attention_backend() == "sdpa"
        with pytest.raises(AttentionJVPError):
            jvp()
        jvp_math = torch.func.jvp(lambda x: attention(x, k, v, backend="math"), (q,), (q,))
        assert jvp_math[1].shape == q.shape  # an explicit backend wins over the default
    assert get_attention_backend() == "math"
    try:
        set_attention_backend("sdpa")
        with pytest.raises(AttentionJVPError):
            jvp()
    finally:
        set_attention_backend("math")


def test_triton_unavailable_raises_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tvmlib.kernels", None)  # makes the import fail
    q, k, v = _qkv()
    with pytest.raises(RuntimeError, match="'triton' is unavailable.*halted") as err:
        attention(q, k, v, backend="triton")
    assert isinstance(err.value.__cause__, ImportError)
    assert "'math'" in str(err.value)


def test_triton_backend_calls_kernel_attention(monkeypatch):
    """When tvmlib.kernels imports, "triton" dispatches to tvmlib.kernels.attention."""
    fake = type(sys)("tvmlib.kernels")
    fake.attention = lambda q, k, v: attn_mod.math_attention(q, k, v) + 1.0
    monkeypatch.setitem(sys.modules, "tvmlib.kernels", fake)
    q, k, v = _qkv()
    torch.testing.assert_close(attention(q, k, v, backend="triton"),
                               attention(q, k, v, backend="math") + 1.0)


def test_bad_shapes_raise():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"\(B, H, N, d\)"):
        attention(q[0], k[0], v[0])
    with pytest.raises(ValueError, match="equal B, H, d"):
        attention(q, k[..., :4], v[..., :4])
    with pytest.raises(ValueError, match="equal B, H, d"):
        attention(q, k, v[:, :, :3])

"""Triton JVP attention kernels vs float64 references (docs/jvp_attention.md §5).

Without CUDA the kernels run in the Triton CPU interpreter: ``TRITON_INTERPRET=1`` is set here,
before anything imports the kernel module (``tvmlib.kernels`` imports it on first use), so the
sizes stay tiny. With CUDA the same tests run on the GPU, plus bf16 and long-sequence tests.
"""

import os

import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

import pytest  # noqa: E402
from torch import nn  # noqa: E402

pytest.importorskip("triton")

import tvmlib.kernels as K  # noqa: E402
from tvmlib.kernels.autograd import JVPAttentionFunction  # noqa: E402
from tvmlib.kernels.reference import (  # noqa: E402
    attention_ref,
    blockwise_jvp_attention,
    jvp_grads_ref,
    jvp_ref,
    lse_mu_ref,
)

DEVICE = "cuda" if CUDA else "cpu"
LN2 = 0.6931471805599453
# max |x - ref| / max |ref|: fp32 dots run in IEEE fp32 ("ieee"); fp16 uses the rule of doc §5.2
TOL = {torch.float64: 1e-12, torch.float32: 2e-5}
# fp64 runs only in the interpreter; on a GPU the "exact" tests use fp32
EXACT = torch.float32 if CUDA else torch.float64
NO_FP64 = pytest.mark.skipif(CUDA, reason="fp64 kernels run only in the CPU interpreter")


def rand(*shape, dtype=torch.float32, gen=None, scale=1.0):
    x = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale
    return x.to(device=DEVICE, dtype=dtype)


def rel_err(x, ref):
    x, ref = x.detach().double(), ref.detach().double().to(x.device)
    return float((x - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def make_problem(B, H, n_q, n_k, d, dtype, seed=0, qk_scale=1.0):
    """q, k, v, tq, tk, tv, g_o, g_t as unit normals (q, k times qk_scale for peaky rows)."""
    gen = torch.Generator().manual_seed(seed)
    q = rand(B, H, n_q, d, dtype=dtype, gen=gen, scale=qk_scale)
    k = rand(B, H, n_k, d, dtype=dtype, gen=gen, scale=qk_scale)
    v = rand(B, H, n_k, d, dtype=dtype, gen=gen)
    tq, tk, tv = (rand(*x.shape, dtype=dtype, gen=gen) for x in (q, k, v))
    g_o, g_t = rand(B, H, n_q, d, dtype=dtype, gen=gen), rand(B, H, n_q, d, dtype=dtype, gen=gen)
    return q, k, v, tq, tk, tv, g_o, g_t


def f64(*xs):
    return [x.detach().double().cpu() for x in xs]


CASES = {  # B, H, Nq, Nk, d, causal, scale, qk_scale
    "square_d32": (1, 2, 17, 17, 32, False, None, 1.0),
    "causal_d48_padded_nq_gt_nk": (1, 2, 100, 70, 48, True, None, 1.0),
    "causal_peaky_nq_lt_nk_d64": (1, 1, 40, 100, 64, True, 0.3, 3.0),
}


@pytest.mark.parametrize("dtype", [pytest.param(torch.float64, marks=NO_FP64), torch.float32,
                                   torch.float16], ids=["fp64", "fp32", "fp16"])
@pytest.mark.parametrize("case", list(CASES))
def test_outputs_stats_and_six_grads_match_float64(case, dtype):
    """O, Ȯ, LSE, μ and the grads of <g_o, O> + <g_t, Ȯ> w.r.t. all six inputs vs float64."""
    B, H, n_q, n_k, d, causal, scale, qk_scale = CASES[case]
    q, k, v, tq, tk, tv, g_o, g_t = make_problem(B, H, n_q, n_k, d, dtype, qk_scale=qk_scale)
    ins = [x.clone().requires_grad_(True) for x in (q, k, v, tq, tk, tv)]
    o, to, lse2, mu = JVPAttentionFunction.apply(*ins, causal, scale, None)
    grads = torch.autograd.grad((o * g_o).sum() + (to * g_t).sum(), ins)

    ref_o, ref_to, ref_grads = jvp_grads_ref(*f64(q, k, v, tq, tk, tv, g_o, g_t),
                                             causal=causal, scale=scale)
    ref_lse, ref_mu = lse_mu_ref(*f64(q, k, tq, tk), causal=causal, scale=scale)
    if dtype == torch.float16:  # err <= 2 err(PyTorch in fp16) + floor (doc §5.2)
        base = jvp_grads_ref(q, k, v, tq, tk, tv, g_o, g_t, causal=causal, scale=scale)
        tols = [2 * rel_err(b, r) + 1e-3 for b, r in zip((base[0], base[1], *base[2]),
                                                         (ref_o, ref_to, *ref_grads))]
    else:
        tols = [TOL[dtype]] * 8
    assert o.dtype == to.dtype == dtype and o.shape == to.shape == q.shape
    assert rel_err(o, ref_o) < tols[0]
    assert rel_err(to, ref_to) < tols[1]
    stat_tol = 1e-12 if dtype == torch.float64 else 1e-5  # stats are fp32 (fp64 for fp64)
    assert rel_err(lse2 * LN2, ref_lse) < stat_tol
    assert rel_err(mu, ref_mu) < stat_tol
    for name, g, ref, tol in zip(("q", "k", "v", "tq", "tk", "tv"), grads, ref_grads, tols[2:]):
        assert g.dtype == dtype and g.shape == ref.shape, name
        assert rel_err(g, ref) < tol, name


@pytest.mark.parametrize("which", ["o_only", "t_only", "both"])
def test_backward_with_one_or_both_upstream_gradients(which):
    """gO only (FlashAttention-2 path: tangent grads None), gT only, and both, in fp64."""
    q, k, v, tq, tk, tv, g_o, g_t = make_problem(2, 1, 33, 47, 32, EXACT, seed=1)
    g_o = None if which == "t_only" else g_o
    g_t = None if which == "o_only" else g_t
    ins = [x.clone().requires_grad_(True) for x in (q, k, v, tq, tk, tv)]
    o, to = K.attention_with_jvp(*ins, causal=True)
    loss = sum((out * g).sum() for out, g in ((o, g_o), (to, g_t)) if g is not None)
    grads = torch.autograd.grad(loss, ins, allow_unused=True)
    _, _, ref = jvp_grads_ref(*f64(q, k, v, tq, tk, tv),
                              *(None if g is None else f64(g)[0] for g in (g_o, g_t)),
                              causal=True)
    for i, (g, r) in enumerate(zip(grads, ref)):
        if which == "o_only" and i >= 3:  # O does not depend on the tangents
            assert g is None
        else:
            assert rel_err(g, r) < TOL[EXACT], i


def test_split_key_value_backward_matches_reference():
    """split_kv=True (K̄, K̇̄ and V̄, V̇̄ in two launches, the d = 128 default) vs float64."""
    from tvmlib.kernels import jvp_attention as ja
    q, k, v, tq, tk, tv, g_o, g_t = make_problem(1, 2, 45, 38, 32, EXACT, seed=9)
    tiles = ja.Tiles(16, 32, 4, 2)
    cfg = ja.AttentionConfig(tiles, tiles, tiles, split_kv=True)
    o, to, lse2, mu = ja.jvp_forward(q, k, v, tq, tk, tv, causal=True, config=cfg)
    grads = ja.attention_backward(q, k, v, tq, tk, tv, o, to, lse2, mu, g_o, g_t, causal=True,
                                  config=cfg)
    _, _, ref = jvp_grads_ref(*f64(q, k, v, tq, tk, tv, g_o, g_t), causal=True)
    for g, r in zip(grads, ref):
        assert rel_err(g, r) < TOL[EXACT]


def test_fp32_gpu_tiles_match_float64():
    """The fp32 tiles of a GPU (16 x 16, chosen for compile time) on a padded head dim, causal,
    in float32 vs the float64 reference (in the interpreter without CUDA)."""
    from tvmlib.kernels import jvp_attention as ja
    q, k, v, tq, tk, tv, g_o, g_t = make_problem(1, 2, 33, 41, 80, torch.float32, seed=4)
    cfg = ja.AttentionConfig(ja.IEEE_TILES, ja.IEEE_TILES, ja.IEEE_TILES)
    o, to, lse2, mu = ja.jvp_forward(q, k, v, tq, tk, tv, causal=True, config=cfg)
    grads = ja.attention_backward(q, k, v, tq, tk, tv, o, to, lse2, mu, g_o, g_t, causal=True,
                                  config=cfg)
    ref_o, ref_to, ref = jvp_grads_ref(*f64(q, k, v, tq, tk, tv, g_o, g_t), causal=True)
    for g, r in zip((o, to, *grads), (ref_o, ref_to, *ref)):
        assert rel_err(g, r) < TOL[torch.float32]


def test_zero_tangents_give_exactly_zero_and_plain_output():
    q, k, v, *_ = make_problem(1, 2, 50, 50, 32, torch.float32, seed=2)
    zeros = [torch.zeros_like(x) for x in (q, k, v)]
    o, to, lse2, mu = JVPAttentionFunction.apply(q, k, v, *zeros, True, None, None)
    assert bool((to == 0).all()) and bool((mu == 0).all())
    o_plain = K.attention(q, k, v, causal=True)
    if CUDA:  # separately compiled kernels may round differently
        assert rel_err(o, o_plain) < 1e-6
    else:
        assert torch.equal(o, o_plain)


@NO_FP64
def test_tangent_matches_central_finite_differences():
    """Ȯ and μ against (f(x + εt) − f(x − εt)) / 2ε of the kernel's own O and LSE, fp64."""
    from tvmlib.kernels import jvp_attention as ja
    q, k, v, tq, tk, tv, *_ = make_problem(1, 2, 29, 29, 32, torch.float64, seed=3)
    _, to, _, mu = ja.jvp_forward(q, k, v, tq, tk, tv, causal=True)
    eps = 1e-6
    o_p, lse_p = ja.attention_forward(q + eps * tq, k + eps * tk, v + eps * tv, causal=True)
    o_m, lse_m = ja.attention_forward(q - eps * tq, k - eps * tk, v - eps * tv, causal=True)
    assert rel_err(to, (o_p - o_m) / (2 * eps)) < 1e-8
    assert rel_err(mu, (lse_p - lse_m) * LN2 / (2 * eps)) < 1e-8


class TinyAttention(nn.Module):
    """x (B, N, C) -> qkv -> heads (B, H, N, d) as strided views -> attention -> (B, N, C)."""

    def __init__(self, attn, dim=64, heads=2):
        super().__init__()
        self.attn, self.heads = attn, heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        o = self.attn(qkv[0], qkv[1], qkv[2])  # non-contiguous (B, H, N, d) views
        return self.proj(o.transpose(1, 2).reshape(B, N, C))


def test_torch_func_jvp_through_module_then_backward_through_tangent():
    """TVM's use: torch.func.jvp of a model using tvmlib.kernels.attention, grads through Ȯ."""
    torch.manual_seed(4)
    dtype = EXACT
    model = TinyAttention(K.attention).to(DEVICE, dtype)
    ref_model = TinyAttention(attention_ref).to(DEVICE, dtype)
    ref_model.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(5)
    x, tx, g_o, g_t = (rand(2, 24, 64, dtype=dtype, gen=gen) for _ in range(4))

    def run(m):
        xi, txi = x.clone().requires_grad_(True), tx.clone().requires_grad_(True)
        out, tout = torch.func.jvp(m, (xi,), (txi,))
        params = list(m.parameters())
        grads = torch.autograd.grad((out * g_o).sum() + (tout * g_t).sum(), [xi, txi, *params])
        return out, tout, grads

    out, tout, grads = run(model)
    ref_out, ref_tout, ref_grads = run(ref_model)
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    assert rel_err(out, ref_out) < tol
    assert rel_err(tout, ref_tout) < tol
    for g, r in zip(grads, ref_grads):
        assert rel_err(g, r) < tol


def test_power_iteration_probe_runs_and_func_vjp_is_refused_clearly():
    """tvmlib.evaluation.lipschitz's Jacobian power iteration (jvp + autograd.grad) works through
    the kernel and matches the float64 reference; torch.func.vjp (functorch wrappers) gets a
    clear error."""
    from tvmlib.evaluation.lipschitz import jacobian_spectral_norm

    gen = torch.Generator().manual_seed(9)
    q, k, v = (rand(2, 2, 16, 16, dtype=EXACT, gen=gen) for _ in range(3))
    sig = [jacobian_spectral_norm(lambda q_, f=f: f(q_, k, v), q, 6,
                                  generator=torch.Generator().manual_seed(0))
           for f in (K.attention, attention_ref)]
    assert rel_err(sig[0], sig[1]) < (1e-10 if EXACT == torch.float64 else 1e-4)
    _, vjp_fn = torch.func.vjp(lambda q_: K.attention(q_, k, v), q)
    with pytest.raises(RuntimeError, match="torch.autograd.grad"):
        vjp_fn(torch.ones_like(q))


def test_plain_attention_and_grads_with_noncontiguous_inputs():
    """No JVP: O and the FlashAttention-2 gradients; inputs with stride(-1) != 1 are copied."""
    gen = torch.Generator().manual_seed(6)
    q = rand(1, 2, 32, 20, dtype=torch.float32, gen=gen).transpose(-1, -2)  # (1, 2, 20, 32)
    k = rand(1, 2, 32, 45, dtype=torch.float32, gen=gen).transpose(-1, -2)
    v = rand(1, 2, 45, 32, dtype=torch.float32, gen=gen)
    g_o = rand(1, 2, 20, 32, dtype=torch.float32, gen=gen)
    ins = [x.clone().requires_grad_(True) for x in (q, k, v)]
    o = K.attention(*ins, causal=True, scale=0.2)
    grads = torch.autograd.grad((o * g_o).sum(), ins)
    ref_ins = [x.detach().double().cpu().requires_grad_(True) for x in (q, k, v)]
    ref_o = attention_ref(*ref_ins, causal=True, scale=0.2)
    ref_grads = torch.autograd.grad((ref_o * g_o.double().cpu()).sum(), ref_ins)
    assert rel_err(o, ref_o) < 2e-5
    for g, r in zip(grads, ref_grads):
        assert rel_err(g, r) < 2e-5


@pytest.mark.parametrize("causal", [False, True])
def test_blockwise_reference_matches_torch_func_jvp(causal):
    """The notebook's plain-PyTorch online-softmax JVP (doc §1.1) vs torch.func.jvp, fp64."""
    gen = torch.Generator().manual_seed(7)
    q, tq = (torch.randn(2, 3, 19, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    k, v, tk, tv = (torch.randn(2, 3, 23, 8, generator=gen, dtype=torch.float64)
                    for _ in range(4))
    o, to, lse, mu = blockwise_jvp_attention(q, k, v, tq, tk, tv, block=5, causal=causal)
    ref_o, ref_to = jvp_ref(q, k, v, tq, tk, tv, causal=causal)
    ref_lse, ref_mu = lse_mu_ref(q, k, tq, tk, causal=causal)
    for x, r in ((o, ref_o), (to, ref_to), (lse, ref_lse), (mu, ref_mu)):
        assert rel_err(x, r) < 1e-13


def test_invalid_inputs_raise():
    q = rand(1, 2, 8, 32)
    with pytest.raises(ValueError, match="one head dim"):
        K.attention(q, rand(1, 2, 8, 16), rand(1, 2, 8, 16))
    with pytest.raises(ValueError, match="one dtype"):
        K.attention(q, q.double(), q)
    with pytest.raises(ValueError, match="tangent tk"):
        K.attention_with_jvp(q, q, q, q, rand(1, 2, 9, 32), q)
    if not CUDA:
        with pytest.raises(RuntimeError, match="bf16 is not supported"):
            K.attention(*(q.bfloat16(),) * 3)


@pytest.mark.skipif(CUDA, reason="checks the CPU error without the interpreter")
def test_cpu_without_interpreter_raises_clear_error():
    code = ("import torch, tvmlib.kernels as K\n"
            "x = torch.randn(1, 1, 4, 16)\n"
            "try:\n    K.attention(x, x, x)\nexcept RuntimeError as e:\n    print(e)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert "TRITON_INTERPRET=1" in out.stdout and "CUDA" in out.stdout, out.stderr[-2000:]


@pytest.mark.parametrize("impl", ["triton", "triton_func"])
def test_first_call_benchmark_times_both_paths(impl):
    from tvmlib.apps.bench.first_call import one_call
    device = "cuda" if CUDA else "cpu"
    out = one_call(impl, 1, 2, 24, 32, "fp16" if CUDA else "fp32", True, device)
    assert set(out) == {"first_s", "warm_ms"} and out["first_s"] > 0 and out["warm_ms"] > 0


# ----------------------------------------------------------------------------------------------
# GPU only


def _math_jvp_grads(q, k, v, tq, tk, tv, g_o, g_t, causal):
    """PyTorch math attention in the inputs' dtype (the same-dtype baseline of doc §5.2)."""
    ins = [x.clone().requires_grad_(True) for x in (q, k, v, tq, tk, tv)]
    o, to = jvp_ref(*ins, causal=causal)
    grads = torch.autograd.grad((o * g_o).sum() + (to * g_t).sum(), ins)
    return (o, to, *grads)


def _check_against_rule(n, dtype, floor_o, floor_rest, causal, B=1, H=2, d=64, func=False):
    """err(kernel) <= 2 err(PyTorch same dtype) + floor, errors vs a float32 reference.

    ``func``: through ``torch.func.jvp`` of ``attention`` instead of ``attention_with_jvp``.
    """
    q, k, v, tq, tk, tv, g_o, g_t = make_problem(B, H, n, n, d, dtype, seed=8)
    ins = [x.clone().requires_grad_(True) for x in (q, k, v, tq, tk, tv)]
    if func:
        o, to = torch.func.jvp(lambda a, b, c: K.attention(a, b, c, causal=causal),
                               tuple(ins[:3]), tuple(ins[3:]))
    else:
        o, to = K.attention_with_jvp(*ins, causal=causal)
    got = (o, to, *torch.autograd.grad((o * g_o).sum() + (to * g_t).sum(), ins))
    base = _math_jvp_grads(q, k, v, tq, tk, tv, g_o, g_t, causal)
    ref = _math_jvp_grads(*(x.float() for x in (q, k, v, tq, tk, tv, g_o, g_t)), causal)
    for i, (x, b, r) in enumerate(zip(got, base, ref)):
        err = float((x.float() - r).abs().max())
        err_pt = float((b.float() - r).abs().max())
        assert err <= 2 * err_pt + (floor_o if i == 0 else floor_rest), (i, err, err_pt)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("func", [False, True], ids=["explicit", "torch_func"])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_bf16_within_twice_pytorch_error(causal, func):
    _check_against_rule(256, torch.bfloat16, 1.6e-2, 3e-2, causal, B=2, H=4, func=func)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_long_sequence_fp16_and_bf16():
    _check_against_rule(4096, torch.float16, 2e-3, 5e-3, causal=False)
    _check_against_rule(4096, torch.bfloat16, 1.6e-2, 3e-2, causal=True)


# ---- compiling a call's kernels ahead, in parallel (tvmlib.kernels.ahead) ---------------------

def _call(path: str, x: dict, causal: bool) -> None:
    """One forward + backward of ``path`` through the public entry points."""
    prim = [x[n].clone().requires_grad_() for n in ("q", "k", "v")]
    tang = [x[n].clone().requires_grad_() for n in ("tq", "tk", "tv")]
    if path == "jvp":
        outs = K.attention_with_jvp(*prim, *tang, causal=causal)
    elif path == "func":
        outs = torch.func.jvp(lambda a, b, c: K.attention(a, b, c, causal=causal),
                              tuple(prim), tuple(tang))
    else:
        outs = (K.attention(*prim, causal=causal),)
    torch.autograd.grad(outs, prim + tang, (x["go"], x["gt"])[:len(outs)], allow_unused=True)


def _variant(kernel, args, kwargs) -> tuple:
    """What decides a kernel's compiled variant: its name, each tensor's dtype and strides, the
    other arguments, the constexprs and launch options."""
    desc = tuple((a.dtype, a.stride()) if torch.is_tensor(a) else a for a in args)
    return kernel.fn.__name__, desc, tuple(sorted((k, str(v)) for k, v in kwargs.items()))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("path", ["jvp", "func", "plain"])
def test_rehearsal_launches_the_kernel_variants_of_a_real_call(path, causal, monkeypatch):
    """compile_ahead compiles what ``rehearse`` launches: that must be exactly the variants the
    real forward + backward launches (else the real call would compile its own)."""
    from tvmlib.kernels import ahead

    ja = importlib.import_module("tvmlib.kernels.jvp_attention")
    gen = torch.Generator().manual_seed(0)
    names = ("q", "k", "v", "tq", "tk", "tv", "go", "gt")
    shapes = [(1, 2, 40, 24)] + [(1, 2, 56, 24)] * 5 + [(1, 2, 40, 24)] * 2
    shapes[3] = shapes[6]  # tq like q
    x = {n: rand(*s, gen=gen) for n, s in zip(names, shapes)}
    real, rehearsed = set(), set()

    def record_and_run(kernel, grid, *args, **kwargs):
        real.add(_variant(kernel, args, kwargs))
        kernel[grid](*args, **kwargs)

    monkeypatch.setattr(ja, "_launch", record_and_run)
    _call(path, x, causal)
    monkeypatch.setattr(ja, "_launch", lambda k, grid, *a, **kw: rehearsed.add(_variant(k, a, kw)))
    ahead.rehearse(path, *(torch.empty_like(x[n]) for n in ("q", "k", "v")), True, causal)
    assert rehearsed == real
    assert len(real) >= {"jvp": 4, "func": 8, "plain": 3}[path]


def test_compile_ahead_refuses_unknown_paths_and_skips_the_interpreter():
    from tvmlib.kernels.ahead import compile_ahead

    q = rand(1, 1, 8, 16)
    with pytest.raises(ValueError, match="path must be one of"):
        compile_ahead("fused", q, q, q)
    if not CUDA:
        assert compile_ahead("jvp", q, q, q) is False


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("path", ["jvp", "func"])
def test_gpu_call_after_compile_ahead_compiles_nothing(path):
    from tvmlib.kernels.ahead import compile_ahead

    ja = importlib.import_module("tvmlib.kernels.jvp_attention")
    kernels = (ja._fwd_kernel, ja._bwd_preprocess_kernel, ja._bwd_kv_kernel, ja._bwd_q_kernel)
    x = {n: rand(1, 3, 72, 40, dtype=torch.float16) for n in
         ("q", "k", "v", "tq", "tk", "tv", "go", "gt")}
    assert compile_ahead(path, x["q"], x["k"], x["v"], causal=True)
    assert not compile_ahead(path, x["q"], x["k"], x["v"], causal=True)  # once per shape

    def compiled():
        return sum(len(c[0]) for kern in kernels for c in kern.device_caches.values())

    before = compiled()
    _call(path, x, causal=True)
    torch.cuda.synchronize()
    assert compiled() == before


def test_entry_point_tells_a_torch_func_call_from_a_plain_one():
    """``attention`` picks the rehearsal of the path it is on: under ``torch.func.jvp`` or
    forward-mode AD its inputs carry tangents."""
    from tvmlib.kernels.autograd import _dual

    x = rand(1, 1, 8, 16)
    seen = []
    torch.func.jvp(lambda a: seen.append(_dual(a)) or a * 2, (x,), (torch.ones_like(x),))
    with torch.autograd.forward_ad.dual_level():
        seen.append(_dual(torch.autograd.forward_ad.make_dual(x, torch.ones_like(x))))
    assert seen == [True, True] and not _dual(x, x.clone().requires_grad_())


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_first_call_under_torch_func_compiles_ahead_without_warning():
    from tvmlib.kernels import ahead

    x = {n: rand(2, 2, 24, 48, dtype=torch.float16) for n in
         ("q", "k", "v", "tq", "tk", "tv", "go", "gt")}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed rehearsal warns
        _call("func", x, causal=False)
    assert any(key[0] == "func" and key[7][0] == (2, 2, 24, 48) for key in ahead._done)


def test_interpreter_problem_names_the_versions_that_cannot_run_the_kernels():
    """Triton 3.6's interpreter with numpy >= 2.4 fails inside a loop over a runtime bound
    (int() of a one-element array); that pair gets an error saying what to install."""
    from tvmlib.kernels.jvp_attention import interpreter_problem

    problem = interpreter_problem("3.6.0", "2.4.6")
    assert "numpy<2.4" in problem and "3.6.0" in problem and "2.4.6" in problem
    assert interpreter_problem("3.6.0", "2.3.5") is None
    assert interpreter_problem("3.8.0", "2.4.6") is None
    assert interpreter_problem("3.6.0+git1234", "2.5.0rc1") is not None

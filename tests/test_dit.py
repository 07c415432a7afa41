"""tvmlib.nn.dit: TVM's Lipschitz switches, init, conditioning, shapes, JVP in s, presets."""

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

import tvmlib.nn.dit as dit_mod
from tvmlib.nn import DIT_PRESETS, DiT, LipschitzConfig, dit_from_preset, use_attention
from tvmlib.nn.attention import AttentionJVPError
from tvmlib.nn.dit import sincos_pos_embed_2d

TINY = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=64, depth=2, num_heads=2,
            num_classes=5)
NORMS = {"blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1", "blocks.1.norm2", "final_layer.norm"}
QK_NORMS = {f"blocks.{i}.attn.{n}_norm" for i in range(2) for n in "qk"}


def tiny(lipschitz=None, seed=0, **kwargs) -> DiT:
    torch.manual_seed(seed)
    return DiT(**{**TINY, **kwargs}, lipschitz=lipschitz)


def randomize_zero_layers(net: DiT, std: float = 0.3) -> DiT:
    """adaLN outputs and the final linear start at 0 (output F = 0): give them random values."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.zero_init_linears():
            for p in (m.weight, m.bias):
                p.copy_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def inputs(B: int = 3, dtype=torch.float32):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, 3, 8, 8, generator=g).to(dtype)
    t = (0.2 + 0.8 * torch.rand(B, generator=g)).to(dtype)
    s = t * torch.rand(B, generator=g).to(dtype)
    y = torch.tensor([0, 4, 5])[:B]  # 5 = null class
    return x, t, s, y


def rel_err(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


# ------------------------------------------------------------------------ Lipschitz switches
@pytest.mark.parametrize("switch", ["rmsnorm", "qk_norm", "mod_norm", "spectral_init"])
def test_each_switch_changes_exactly_its_layers(switch):
    base = tiny(LipschitzConfig.off())
    flip = tiny(replace(LipschitzConfig.off(), **{switch: True}))
    types_b = {n: type(m) for n, m in base.named_modules()}
    types_f = {n: type(m) for n, m in flip.named_modules()}
    assert types_b.keys() == types_f.keys()
    changed = {n for n in types_b if types_b[n] is not types_f[n]}
    assert changed == {"rmsnorm": NORMS, "qk_norm": QK_NORMS}.get(switch, set())
    keys_b, keys_f = set(base.state_dict()), set(flip.state_dict())
    added = {f"{n}.weight" for n in QK_NORMS} if switch == "qk_norm" else set()
    assert keys_f == keys_b | added

    # Behaviour, with the same weights: undoing just this switch's effect gives DiT's output.
    randomize_zero_layers(base)
    flip.load_state_dict(base.state_dict(), strict=False)  # leaves the q/k scales at 1
    x, t, s, y = inputs()
    ref, out = base(x, t, s, y), flip(x, t, s, y)
    if switch == "spectral_init":  # init only: same weights, same function
        torch.testing.assert_close(out, ref)
        return
    assert rel_err(out, ref) > 1e-2
    if switch == "rmsnorm":  # parameter-free RMSNorm of centered input == LayerNorm
        for name in NORMS:
            norm = flip.get_submodule(name)
            assert isinstance(norm, nn.RMSNorm) and norm.weight is None and norm.eps == 1e-6
            norm.register_forward_pre_hook(lambda m, a: (a[0] - a[0].mean(-1, keepdim=True),))
    elif switch == "qk_norm":
        for name in QK_NORMS:
            norm = flip.get_submodule(name)
            assert isinstance(norm, nn.RMSNorm) and norm.weight.shape == (32,)  # head dim
        seen = []
        flip.blocks[0].attn.q_norm.register_forward_hook(lambda m, a, o: seen.append(o))
        flip(x, t, s, y)
        assert seen[0].shape == (3, 2, 16, 32)  # (B, H, N, d): normalized per head
        rms = seen[0].square().mean(-1).sqrt()
        torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-4, rtol=0)
        for name in QK_NORMS:
            attn_name, norm_name = name.rsplit(".", 1)
            setattr(flip.get_submodule(attn_name), norm_name, nn.Identity())
    else:  # mod_norm
        for layer in [*flip.blocks, flip.final_layer]:
            layer.mod_norm = False
    torch.testing.assert_close(flip(x, t, s, y), ref, atol=1e-5, rtol=1e-5)


def test_mod_norm_every_chunk_has_unit_rms(monkeypatch):
    net = randomize_zero_layers(tiny())  # TVM config: mod_norm on
    seen = []
    for layer in [*net.blocks, net.final_layer]:  # spy on the chunks the forward pass uses
        def spy(c, normalized=True, _orig=layer.modulation):
            seen.append(_orig(c, normalized))
            return seen[-1]
        monkeypatch.setattr(layer, "modulation", spy)
    x, t, s, y = inputs()
    net(x, t, s, y)
    assert [len(chunks) for chunks in seen] == [6, 6, 2]
    for chunk in (c for chunks in seen for c in chunks):
        assert chunk.shape == (3, 64)
        rms = chunk.square().mean(-1).sqrt()  # per sample, over the hidden dim
        assert (rms - 1).abs().max().item() < 1e-4
    mods = net.modulations(x, t, s, y)
    for chunks, named in zip(seen, mods):
        for a, b in zip(chunks, named.values()):
            torch.testing.assert_close(a, b)
    raw_all = net.modulations(x, t, s, y, normalized=False)
    raw = raw_all[0]["scale_msa"]
    assert (raw.square().mean(-1).sqrt() - 1).abs().min().item() > 0.1  # not normalized
    for raw_chunks, chunks in zip(raw_all, mods):  # each chunk by its own RMS, in float64
        for r, c in zip(raw_chunks.values(), chunks.values()):
            r = r.double()
            ref = r / (r.square().mean(-1, keepdim=True) + 1e-6).sqrt()
            torch.testing.assert_close(c.double(), ref, atol=1e-5, rtol=1e-5)


def _linears_by_role(net: DiT):
    zero = net.zero_init_linears()
    time = [lin for e in net.time_embedders() for lin in (e.mlp[0], e.mlp[2])]
    spectral = [m for m in net.modules()
                if isinstance(m, nn.Linear) and all(m is not z for z in zero + time)]
    return spectral, time, zero


def _sigma(w: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2).item()


def test_spectral_init_and_its_exceptions():
    net = tiny(guidance=True)  # TVM config: spectral init, time MLPs N(0, 0.02)
    spectral, time, zero = _linears_by_role(net)
    assert len(spectral) == 2 * 4 and len(time) == 3 * 2 and len(zero) == 2 + 2
    for w in [m.weight for m in spectral] + [net.x_embedder.weight]:
        assert abs(_sigma(w) - 1) < 1e-3
    for m in zero:
        assert not m.weight.any() and not m.bias.any()
    for m in spectral + time:
        assert not m.bias.any()
    assert not net.x_embedder.bias.any()
    for w in [m.weight for m in time] + [net.y_embedder.weight]:
        assert 0.018 < w.std().item() < 0.022 and abs(w.mean().item()) < 0.002

    timed = tiny(LipschitzConfig(time_spectral_init=True), guidance=True)
    for m in _linears_by_role(timed)[1]:
        assert abs(_sigma(m.weight) - 1) < 1e-3

    with pytest.raises(ValueError, match="needs spectral_init"):
        LipschitzConfig(spectral_init=False, time_spectral_init=True)


def test_standard_dit_init_is_xavier_uniform():
    net = tiny(LipschitzConfig.off())
    spectral, _, zero = _linears_by_role(net)
    patch = net.x_embedder.weight.reshape(64, -1)  # xavier on the (D, C p p) matrix
    for w in [m.weight for m in spectral] + [patch]:
        bound = (6 / sum(w.shape)) ** 0.5
        assert w.abs().max().item() <= bound and w.abs().max().item() > 0.9 * bound
        assert abs(_sigma(w) - 1) > 0.05
    for m in zero:
        assert not m.weight.any()


# --------------------------------------------------------------------- signature and shapes
def test_output_shape_scalars_and_null_class():
    net = randomize_zero_layers(tiny())
    x, t, s, y = inputs()
    out = net(x, t, s, y)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(net(x, t, s), net(x, t, s, torch.full((3,), 5)))  # None = null
    assert rel_err(net(x, t, s, torch.zeros(3, dtype=torch.long)),
                   net(x, t, s, torch.ones(3, dtype=torch.long))) > 1e-3
    torch.testing.assert_close(net(x, 0.7, 0.3, y), net(x, torch.full((3,), 0.7),
                                                        torch.full((3,), 0.3), y))
    torch.testing.assert_close(net(x, t, None, y), net(x, t, t, y))  # s defaults to t
    assert rel_err(net(x, t, s, y), net(x, t, t, y)) > 1e-3  # the gap t - s is an input
    with pytest.raises(ValueError, match="unconditional DiT"):
        tiny(num_classes=0)(x, t, s, y)


def test_w_changes_output_only_when_guidance_conditioned():
    x, t, s, y = inputs()
    plain = randomize_zero_layers(tiny())
    assert plain.beta_embedder is None
    torch.testing.assert_close(plain(x, t, s, y, w=3.0), plain(x, t, s, y))
    guided = randomize_zero_layers(tiny(guidance=True))
    torch.testing.assert_close(guided(x, t, s, y), guided(x, t, s, y, w=1.0))  # w defaults to 1
    assert rel_err(guided(x, t, s, y, w=3.0), guided(x, t, s, y, w=1.0)) > 1e-3
    mixed = guided(x, t, s, y, w=torch.tensor([1.0, 3.0, 3.0]))  # per-sample w
    torch.testing.assert_close(mixed[0], guided(x, t, s, y, w=1.0)[0])
    torch.testing.assert_close(mixed[1:], guided(x, t, s, y, w=3.0)[1:])


def test_bad_inputs_raise_clear_errors():
    net = tiny()
    x, t, s, y = inputs()
    for bad in (torch.randn(3, 1, 8, 8), torch.randn(3, 3, 16, 16), torch.randn(3, 8, 8)):
        with pytest.raises(ValueError, match=r"expects x of shape \(B, 3, 8, 8\)"):
            net(bad, t, s, y)
    with pytest.raises(ValueError, match=r"t must be a scalar or of shape \(3,\)"):
        net(x, torch.rand(2), s, y)
    with pytest.raises(ValueError, match="integer labels"):
        net(x, t, s, y.float())
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        DiT(**{**TINY, "input_size": 9})
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        DiT(**{**TINY, "num_heads": 3})


def test_patch_order_pos_embed_and_unpatchify():
    net = tiny()
    x = torch.randn(1, 3, 8, 8)
    tokens = torch.empty(1, 16, 12)  # token i*4 + j, feature (p1*2 + p2)*3 + c
    for i in range(4):
        for j in range(4):
            for p1 in range(2):
                for p2 in range(2):
                    tokens[0, i * 4 + j, (p1 * 2 + p2) * 3:(p1 * 2 + p2) * 3 + 3] = \
                        x[0, :, 2 * i + p1, 2 * j + p2]
    torch.testing.assert_close(net.unpatchify(tokens), x)
    x2 = x.clone()
    x2[0, 1, 2 * 2 + 1, 2 * 3] += 1.0  # a pixel of patch (2, 3)
    diff = (net.x_embedder(x2) - net.x_embedder(x)).flatten(2).transpose(1, 2).abs().sum(-1)
    assert diff[0].nonzero().flatten().tolist() == [2 * 4 + 3]  # conv tokens are row-major too
    pos = sincos_pos_embed_2d(64, 4, 4)  # rows in channels [0, 32), columns in [32, 64)
    assert pos.shape == (16, 64)
    r, c = 2, 3
    assert torch.allclose(pos[r * 4 + c, [0, 16, 32, 48]],
                          torch.tensor([r, r, c, c]).float().sin() * torch.tensor([1, 0, 1, 0])
                          + torch.tensor([r, r, c, c]).float().cos() * torch.tensor([0, 1, 0, 1]))
    torch.testing.assert_close(net.pos_embed[0], pos)


# -------------------------------------------------------------------------- JVP and autocast
def _jvp_in_s(net, x, t, s, y, w=None):
    """TVM's tangents: 0 on x and t, 1 on s ([P] Eq. 17)."""
    return torch.func.jvp(lambda x_, t_, s_: net(x_, t_, s_, y, w), (x, t, s),
                          (torch.zeros_like(x), torch.zeros_like(t), torch.ones_like(s)))


def test_jvp_in_s_matches_finite_difference_float64():
    net = randomize_zero_layers(tiny(guidance=True)).double()
    x, t, s, y = inputs(dtype=torch.float64)
    out, tangent = _jvp_in_s(net, x, t, s, y, w=2.0)
    torch.testing.assert_close(out, net(x, t, s, y, 2.0))
    h = 3e-7
    fd = (net(x, t, s + h, y, 2.0) - net(x, t, s - h, y, 2.0)) / (2 * h)
    assert rel_err(tangent, fd) < 1e-6


def test_gradients_flow_through_the_jvp_tangent():
    net = randomize_zero_layers(tiny()).double()
    x, t, s, y = inputs(dtype=torch.float64)

    def loss() -> torch.Tensor:
        return _jvp_in_s(net, x, t, s, y)[1].square().mean()

    loss().backward()
    for name in ("gap_embedder.mlp.0.weight", "blocks.0.attn.qkv.weight",
                 "blocks.0.attn.q_norm.weight", "blocks.1.adaln.1.weight", "x_embedder.weight",
                 "final_layer.linear.weight"):
        assert net.get_parameter(name).grad.abs().sum() > 0, name
    h = 1e-6  # the gradient of the tangent loss against a finite difference in a weight
    for name, idx in (("gap_embedder.mlp.2.weight", (3, 7)), ("blocks.1.mlp.0.weight", (5, 2))):
        p = net.get_parameter(name)
        with torch.no_grad():
            p[idx] += h
            up = loss()
            p[idx] -= 2 * h
            down = loss()
            p[idx] += h
        fd = (up - down) / (2 * h)
        assert abs(p.grad[idx].item() - fd.item()) < 1e-5 * abs(fd.item()) + 1e-9, name


def test_attention_backend_per_model_and_default():
    net = randomize_zero_layers(tiny())
    x, t, s, y = inputs()
    assert net.attn_backend is None  # follows tvmlib.nn.attention's default, "math"
    out_math, _ = _jvp_in_s(net, x, t, s, y)
    net.attn_backend = "sdpa"
    torch.testing.assert_close(net(x, t, s, y), out_math, atol=1e-5, rtol=1e-5)
    with pytest.raises(AttentionJVPError, match="'math'"):
        _jvp_in_s(net, x, t, s, y)
    with pytest.raises(ValueError, match="unknown attention backend"):
        net.attn_backend = "flash"
    net.attn_backend = None
    with use_attention("sdpa"), pytest.raises(AttentionJVPError):
        _jvp_in_s(net, x, t, s, y)
    with use_attention("sdpa"):
        net.attn_backend = "math"  # the model's own backend wins over the default
        _jvp_in_s(net, x, t, s, y)


def test_bf16_autocast_keeps_times_fp32():
    net = randomize_zero_layers(tiny())
    x, t, s, y = inputs()
    ref = net(x, t, s, y)
    seen = []
    net.gap_embedder.register_forward_pre_hook(lambda m, a: seen.append(a[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, t.bfloat16(), s, y)
        _, tangent = _jvp_in_s(net, x, t, s, y)
    assert seen == [torch.float32, torch.float32]
    assert out.dtype == torch.float32 and tangent.dtype == torch.float32
    assert rel_err(out, ref) < 0.05 and torch.isfinite(tangent).all()


# ---------------------------------------------------------------------------------- presets
def test_presets_table_and_errors(monkeypatch):
    expected = {f"DiT-{size}/{p}": (*dims, p)
                for size, dims in {"T": (6, 192, 3), "S": (12, 384, 6), "B": (12, 768, 12),
                                   "L": (24, 1024, 16), "XL": (28, 1152, 16)}.items()
                for p in (2, 4, 8)}
    expected["DiT-XL/2-18h"] = (28, 1152, 18, 2)
    assert set(DIT_PRESETS) == set(expected)
    monkeypatch.setattr(dit_mod, "DiT", lambda **kw: kw)  # record arguments, build nothing
    for name, dims in expected.items():
        kw = dit_from_preset(name, num_classes=10)
        assert (kw["depth"], kw["hidden_size"], kw["num_heads"], kw["patch_size"]) == dims
        assert kw["num_classes"] == 10
    with pytest.raises(ValueError, match="unknown DiT preset 'DiT_XL_2_18h'"):
        dit_from_preset("DiT_XL_2_18h")  # one spelling: "DiT-XL/2-18h"
    with pytest.raises(ValueError, match=r"unknown DiT preset 'DiT-M/2'.*'DiT-S/2'"):
        dit_from_preset("DiT-M/2")


def test_tiny_preset_runs_on_mnist_shapes():
    torch.manual_seed(0)
    net = dit_from_preset("DiT-T/4", input_size=28, in_channels=1, num_classes=10)
    assert net.blocks[0].attn.head_dim == 64 and len(net.blocks) == 6
    out = net(torch.randn(2, 1, 28, 28), 0.5, 0.2, torch.tensor([3, 10]))
    assert out.shape == (2, 1, 28, 28)


# ---- operator count of a TVM step per variant (tvmlib.apps.bench.op_count) -------------------
def test_op_count_per_variant(tmp_path):
    from tvmlib.apps.bench import op_count

    out = tmp_path / "ops.json"
    res = op_count.main(["--preset", "DiT-T/8", "--variants", "off", "spectral_init", "mod_norm",
                         "on", "--jvp", "fused", "--time", "1", "--out", str(out)])
    ops = {r["variant"]: r["top_level"] for r in res["rows"]}
    assert json.loads(out.read_text())["results"]["rows"] == res["rows"]
    assert ops["spectral_init"] == ops["off"]  # an initialisation adds no operator
    assert ops["off"] < ops["mod_norm"] < ops["on"]
    # mod_norm normalizes each layer's chunks in one call (about 60 operators per layer for
    # forward, JVP and backward); one call per chunk cost about 300
    layers = len(dit_from_preset("DiT-T/8").blocks) + 1
    assert ops["mod_norm"] - ops["off"] < 120 * layers
    assert all(r["jvp"] == "fused" and len(r["ms_all"]) == 1 and r["ms_median"] > 0
               for r in res["rows"])
    # the fused dF/ds launches fewer operators than torch.func.jvp (dispatch-level count)
    fused = next(r for r in res["rows"] if r["variant"] == "on")
    func = op_count.count_step_ops("DiT-T/8", "on", jvp="func")
    assert fused["kernels"] < 0.85 * func["kernels"]
    with pytest.raises(ValueError, match="unknown variant"):
        op_count.count_step_ops("DiT-T/8", "of")
    assert all(r["saved_mb"] > 0 for r in res["rows"])


def test_saved_mb_counts_each_saved_activation_once_and_no_parameter():
    from tvmlib.apps.bench import op_count

    w = torch.nn.Parameter(torch.randn(1000))  # float32: 4000 bytes
    x = torch.randn(1000)

    def step():
        h = x * w  # saves x (for w's gradient); not w, since x needs no gradient
        (torch.sin(h) + torch.cos(h)).sum().backward()  # sin and cos both save h: one storage

    step.params = {w.untyped_storage().data_ptr()}
    assert op_count.saved_mb(step) == pytest.approx(8000 / 1e6)
    step.params = set()  # then w would count too if it were saved: it is not
    assert op_count.saved_mb(step) == pytest.approx(8000 / 1e6)


# ---- where a step's peak memory goes (tvmlib.apps.bench.step_memory) -------------------------
def test_live_storages_counts_new_storages_until_freed():
    from tvmlib.apps.bench.step_memory import LiveStorages

    with LiveStorages() as mode:
        a = torch.empty(1000)  # 4000 bytes
        b = torch.empty(2000)  # 8000: live 12000, the peak
        del a  # freed: live 8000
        b.add_(1)  # in place: nothing new
        view = b[:10]  # a view: nothing new
        c = torch.empty(500)  # 2000: live 10000
    assert (mode.peak, mode.live) == (12000, 10000)
    assert sorted(size for size, _ in mode.at_peak.values()) == [4000, 8000]
    assert all("empty" in site for site in mode.by_site(5))
    del b, c, view
    assert mode.live == 0


def test_step_memory_attributes_the_fused_steps_tensors_to_dit_jvp(tmp_path):
    from tvmlib.apps.bench import step_memory

    res = step_memory.main(["--device", "cpu", "--backend", "math", "--models", "DiT-T/8",
                            "--batch", "2", "--warmup", "1", "--out", str(tmp_path / "m.json")])
    rows = {r["jvp"]: r for r in res["rows"]}
    assert set(rows) == {"fused", "func"} and (tmp_path / "m.json").exists()
    for r in rows.values():
        assert r["tracked_peak_mb"] >= r["tracked_after_mb"] > 0 and r["peak_alloc_mb"] is None
        assert 0 < sum(r["at_peak"].values()) <= r["tracked_peak_mb"] + 1e-3
        assert any(site.startswith("backward: ") for site in r["at_peak"])
    assert any("nn/dit_jvp.py" in site for site in rows["fused"]["at_peak"])
    assert not any("nn/dit_jvp.py" in site for site in rows["func"]["at_peak"])

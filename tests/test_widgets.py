"""The committed 2D checkpoints (tvmlib.evaluation.pretrained, made by
tvmlib.apps.checkpoints2d) and the sampling explorer (tvmlib.teach.explore2d, explore_images),
headless: NFE and W2 of each setting against independent recomputations, figure layouts, the
widget wiring, and clear errors for missing or corrupt checkpoints; and the image side on the
Fashion-MNIST checkpoints: sample counts, NFE and the FD each view shows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tvmlib.apps import checkpoints2d as maker  # noqa: E402
from tvmlib.core.solvers import sample  # noqa: E402
from tvmlib.data.images import load_mnist  # noqa: E402
from tvmlib.evaluation import pretrained as P  # noqa: E402
from tvmlib.evaluation.classifier import classifier_fd  # noqa: E402
from tvmlib.evaluation.metrics import w2  # noqa: E402
from tvmlib.nn import MLP2D  # noqa: E402
from tvmlib.teach.explore2d import (  # noqa: E402
    compare_grid,
    explore_2d,
    make_explorer,
    setting_data,
)
from tvmlib.teach.explore_images import (  # noqa: E402
    compare_images,
    explore_images,
    image_fd_floor,
    image_setting,
    make_image_explorer,
)
from tvmlib.training.weights import sha256_file  # noqa: E402

N = 200  # samples per setting: small, the tests check bookkeeping, not quality


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ---- committed files ---------------------------------------------------------------------------

@pytest.mark.parametrize("method,dataset", P.MODELS_2D)
def test_committed_checkpoint_loads_and_matches_manifest(method, dataset):
    path = P.checkpoint_path_2d(method, dataset)
    entry = P.read_manifest_2d(path.parent)[path.name]
    assert path.stat().st_size == entry["bytes"] < 1_000_000
    assert sha256_file(path) == entry["sha256"]
    assert entry["command"].endswith(f"--only {P.model_name(method, dataset)}")
    net = P.load_2d(method, dataset)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(net, MLP2D) and raw["kwargs"]["num_classes"] == net.num_classes
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    out = net(torch.zeros(3, 2), torch.ones(3), torch.zeros(3))
    assert out.shape == (3, 2) and torch.isfinite(out).all()


def _copy_committed(folder: Path, method="tvm", dataset="checkerboard") -> Path:
    src = P.checkpoint_path_2d(method, dataset)
    shutil.copy(src, folder / src.name)
    manifest = {src.name: P.read_manifest_2d(src.parent)[src.name]}
    (folder / P.MANIFEST_2D).write_text(json.dumps(manifest))
    return folder / src.name


def test_missing_checkpoint_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m tvmlib.apps.checkpoints2d --only "
                                                "tvm_checkerboard"):
        P.load_2d("tvm", "checkerboard", tmp_path)
    path = _copy_committed(tmp_path)
    (tmp_path / P.MANIFEST_2D).write_text("{}")  # file present, no manifest entry
    with pytest.raises(FileNotFoundError, match="(?s)no sha256.*--only tvm_checkerboard"):
        P.load_2d("tvm", "checkerboard", tmp_path)
    assert path.exists()


def test_corrupt_checkpoint_names_the_command(tmp_path):
    path = _copy_committed(tmp_path)
    assert isinstance(P.load_2d("tvm", "checkerboard", tmp_path), MLP2D)  # intact copy loads
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="(?s)corrupt or stale.*--only tvm_checkerboard"):
        P.load_2d("tvm", "checkerboard", tmp_path)
    # A file whose sha256 matches but that torch cannot read gets the same advice.
    path.write_bytes(b"not a torch file")
    (tmp_path / P.MANIFEST_2D).write_text(json.dumps({path.name: {"sha256": sha256_file(path)}}))
    with pytest.raises(RuntimeError, match="(?s)could not load.*--only tvm_checkerboard"):
        P.load_2d("tvm", "checkerboard", tmp_path)


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="valid: fm_checkerboard"):
        P.load_2d("meanflow", "spiral")


def test_cli_writes_atomic_checkpoint_manifest_and_readme(tmp_path):
    maker.main(["--only", "tvm_checkerboard", "--steps", "3", "--out-dir", str(tmp_path)])
    path = tmp_path / "2d_tvm_checkerboard.pt"
    manifest = json.loads((tmp_path / P.MANIFEST_2D).read_text())
    entry = manifest[path.name]
    assert entry["sha256"] == sha256_file(path) and entry["bytes"] == path.stat().st_size
    assert entry["command"] == ("python -m tvmlib.apps.checkpoints2d --only tvm_checkerboard "
                                "--steps 3")
    assert entry["w2_nfe"] == 1 and entry["w2"] > 0
    assert not list(tmp_path.glob("*.tmp"))
    raw = torch.load(path, weights_only=True)
    assert raw["kwargs"] == {"dim": 2, "hidden": 128, "depth": 3, "time_scale": 1.0,
                             "num_classes": 0, "guidance": False}
    assert raw["method"] == "tvm" and raw["dataset"] == "checkerboard"
    readme = (tmp_path / "README_2d.md").read_text()
    assert path.name in readme and entry["sha256"] in readme
    assert isinstance(P.load_2d("tvm", "checkerboard", tmp_path), MLP2D)


# ---- explore_2d: NFE, W2, samples against hand-written samplers ---------------------------------

@torch.no_grad()
def _euler_reference(net, noise, steps, y=None, w=None):
    """Euler from t = 1 to 0 written out, with CFG u_null + w (u_y - u_null) when w is given."""
    x, ts = noise.clone(), torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    for t, s in zip(ts[:-1].tolist(), ts[1:].tolist()):
        tv = torch.full((len(x),), t)
        u = net(x, tv, tv, y)
        if w is not None:
            u_null = net(x, tv, tv, torch.full_like(y, net.num_classes))
            u = u_null + w * (u - u_null)
        x = x + (s - t) * u
    return x


@torch.no_grad()
def _jumps_reference(net, noise, steps, y=None, w=None, scaled=False):
    """k uniform flow-map jumps x <- x + (s - t) [w] F(x, t, s, y, w), written out."""
    x, ts = noise.clone(), torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    for t, s in zip(ts[:-1].tolist(), ts[1:].tolist()):
        tv, sv = torch.full((len(x),), t), torch.full((len(x),), s)
        F = net(x, tv, sv, y, None if w is None else torch.full((len(x),), w))
        x = x + (s - t) * (w if scaled and w is not None else 1.0) * F
    return x


CASES = [  # method, dataset, steps, label, guidance, expected NFE
    ("fm", "checkerboard", 4, None, None, 4),
    ("meanflow", "checkerboard", 3, None, None, 3),
    ("tvm", "checkerboard", 2, None, None, 2),
    ("fm", "8gaussians", 3, None, 1.5, 6),  # CFG: 2 NFE per Euler step
    ("fm", "8gaussians", 3, 5, 1.0, 3),  # w = 1 is plain conditional sampling: 1 NFE per step
    ("tvm", "8gaussians", 2, 3, 2.5, 2),  # guidance is a network input: 1 NFE per jump
]


@pytest.mark.parametrize("method,dataset,steps,label,guidance,nfe", CASES)
def test_explore_2d_nfe_w2_and_samples(method, dataset, steps, label, guidance, nfe):
    fig, v = explore_2d(method, steps, seed=7, dataset=dataset, label=label, guidance=guidance,
                        n=N, n_traj=10)
    assert v["nfe"] == nfe and v["steps"] == steps and v["samples"].shape == (N, 2)
    assert len(fig.axes) == 2
    assert v["w2"] == pytest.approx(w2(v["samples"], v["reference"]), rel=1e-12)
    noise, y, ref = setting_data(dataset, N, 7, label)
    assert torch.equal(ref, v["reference"])
    if label is not None:
        assert bool((y == label).all())
    net = P.load_2d(method, dataset)
    if method == "fm":
        expected = _euler_reference(net, noise, steps, y, guidance if guidance != 1.0 else None)
    else:
        expected = _jumps_reference(net, noise, steps, y, guidance, scaled=method == "tvm")
    torch.testing.assert_close(v["samples"], expected, rtol=1e-5, atol=1e-5)


def test_reference_does_not_depend_on_the_sampling_seed():
    _, a = explore_2d("tvm", 1, seed=0, n=N)
    _, b = explore_2d("tvm", 1, seed=1, n=N)
    assert torch.equal(a["reference"], b["reference"])
    assert not torch.equal(a["samples"], b["samples"])


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="tvm", steps=17), "1..16"),
    (dict(method="fm", steps=129), "1..128"),
    (dict(method="fm", steps=0), "1..128"),
    (dict(method="tvm", steps=1, label=2), "unconditional"),
    (dict(method="meanflow", steps=1, dataset="8gaussians"), "no 'meanflow' model"),
    (dict(method="tvm", steps=1, dataset="8gaussians", guidance=5.0), r"w in \[1.0, 3.0\]"),
    (dict(method="tvm", steps=1, dataset="8gaussians", label=8), "0..7"),
])
def test_explore_2d_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        explore_2d(n=N, **kwargs)


def test_compare_grid_layout_and_values():
    fig, res = compare_grid("checkerboard", steps=(1, 2), n=N)
    assert len(fig.axes) == 3 * 3  # 3 methods x (data column + 2 step counts)
    assert list(res) == ["fm", "meanflow", "tvm"]
    _, single = explore_2d("meanflow", 2, 0, "checkerboard", n=N)
    assert res["meanflow"]["2"] == {"nfe": 2, "w2": single["w2"]}
    titles = [ax.get_title() for ax in fig.axes]
    assert any(f"W2 {single['w2']:.3f}" in t for t in titles)
    fig, res = compare_grid("8gaussians", steps=(1, 4), n=N)
    assert len(fig.axes) == 2 * 3 and res["fm"]["4"]["nfe"] == 8 and res["tvm"]["4"]["nfe"] == 4
    fig, again = compare_grid("8gaussians", steps=(1, 4), n=N, show_data=False)
    assert len(fig.axes) == 2 * 2 and again == res  # the data under every panel instead


# ---- the widgets, headless --------------------------------------------------------------------

def test_make_explorer_wires_controls_to_explore_2d():
    ex = make_explorer(n=N)
    c = ex.controls
    assert ex.last["method"] == "tvm" and ex.last["nfe"] == 1
    assert c["steps"].max == 16 and c["label"].disabled and c["guidance"].disabled
    c["method"].value = "fm"
    assert c["steps"].max == 128
    c["steps"].value = 100
    assert ex.last["method"] == "fm" and ex.last["nfe"] == 100
    c["dataset"].value = "8gaussians"
    assert list(c["method"].options) == ["fm", "tvm"] and not c["guidance"].disabled
    assert ex.last["dataset"] == "8gaussians" and ex.last["nfe"] == 200  # CFG 1.5: 2 NFE/step
    c["label"].value = 4
    c["method"].value = "tvm"
    assert c["steps"].max == 16 and c["steps"].value == 16  # clipped to the flow-map range
    assert ex.last["label"] == 4 and ex.last["nfe"] == 16
    _, direct = explore_2d("tvm", 16, 0, "8gaussians", label=4, guidance=1.5, n=N)
    assert ex.last["w2"] == direct["w2"]


def test_data_floor_compares_two_data_sets_with_the_same_labels():
    from tvmlib.teach.explore2d import REF_SEED, data_floor, data_floor_runs

    _, y, ref = setting_data("8gaussians", N, 3)
    others = [P.class_matched_data("8gaussians", y, torch.Generator().manual_seed(REF_SEED - 1 - i))
              for i in range(3)]
    want = [w2(ref, o) for o in others]
    assert data_floor_runs("8gaussians", N, 3, pairs=3) == pytest.approx(want, rel=1e-12)
    assert data_floor("8gaussians", N, 3, pairs=3) == pytest.approx(sum(want) / 3, rel=1e-12)
    assert 0 < data_floor("checkerboard", N) < 0.5  # two samples of one distribution


# ---- images: the Fashion-MNIST DiT-T/2 models ---------------------------------------------------

N_IMG = 20  # images per setting: DiT-T/2 costs about 25 ms per image and NFE on 2 CPU cores


def _test_class(label):
    x, y = load_mnist("fashion-mnist", "test")
    return x[y == label]


@pytest.mark.parametrize("method,steps,label", [
    ("tvm_cmt", 2, None), ("tvm_scratch", 1, 7), ("fm_teacher", 3, None)])
def test_explore_images_samples_nfe_and_fd(method, steps, label):
    fig, v = explore_images(method, steps, seed=5, label=label, n=N_IMG)
    assert v["samples"].shape == (N_IMG, 1, 32, 32) and v["nfe"] == steps
    assert v["samples"].abs().max() <= 1.0
    # The FD shown is classifier_fd of the returned samples, to the test split or its class.
    ref = None if label is None else _test_class(label)
    assert v["fd"] == pytest.approx(classifier_fd(v["samples"], ref, "fashion-mnist"), rel=1e-9)
    assert f"FD {v['fd']:.1f}" in fig.axes[0].get_title() and len(fig.axes) == 1
    # The samples are those of the model's own sampler from image_setting's noise and labels.
    noise, y = image_setting(N_IMG, 5, label)
    assert torch.equal(y, v["labels"])
    net = P.load_fashion(method)
    if method == "fm_teacher":  # DPM-Solver++(2M) on the log-SNR grid, the CMT teacher's
        expected = sample(net, noise, steps, "dpm++2m", grid="logsnr", y=y).x
    else:
        expected = _jumps_reference(net, noise, steps, y)
    torch.testing.assert_close(v["samples"], expected.clamp(-1, 1))


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="tvm_cmt", steps=17), "1..16"),
    (dict(method="fm_teacher", steps=129), "1..128"),
    (dict(method="tvm_cmt", steps=1, label=10), "0..9"),
    (dict(method="tvm", steps=1), "valid: fm_teacher, tvm_scratch, tvm_cmt"),
])
def test_explore_images_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        explore_images(n=N_IMG, **kwargs)


def test_compare_images_layout_and_values():
    settings = (("fm_teacher", 2), ("tvm_cmt", 1))
    fig, res = compare_images(settings, seed=1, n=N_IMG, per_class=1)
    assert len(fig.axes) == 3  # data + 2 settings
    floor, x, y = image_fd_floor(N_IMG, 1)
    assert res["data"] == {"fd": floor} and torch.equal(y, image_setting(N_IMG, 1)[1])
    _, single = explore_images("tvm_cmt", 1, 1, n=N_IMG)
    assert res["tvm_cmt"]["1"] == {"nfe": 1, "fd": single["fd"]}
    assert res["fm_teacher"]["2"]["nfe"] == 2
    assert f"FD {single['fd']:.1f}" in fig.axes[2].get_title()


def test_make_image_explorer_wires_controls_to_explore_images():
    ex = make_image_explorer(n=10)
    c = ex.controls
    assert ex.last["method"] == "tvm_cmt" and ex.last["nfe"] == 1 and c["steps"].max == 16
    assert not c["steps"].continuous_update  # one render per release, not per slider tick
    assert ex._repr_mimebundle_()["image/jpeg"]  # static views get the last figure
    assert ex.status.value == (f"CMT -> TVM, 1 jump: NFE 1, FD {ex.last['fd']:.1f} "
                               "(10 samples vs the test split)")
    c["method"].value = "fm_teacher"
    assert c["steps"].max == 128 and ex.last["method"] == "fm_teacher"
    c["steps"].value = 20
    c["label"].value = 4
    assert ex.last["nfe"] == 20 and ex.last["label"] == 4
    assert ex.status.value.startswith("FM teacher, 20 steps: NFE 20, FD ")
    assert ex.status.value.endswith("(10 samples vs test Coat)")
    c["method"].value = "tvm_scratch"
    assert c["steps"].max == 16 and c["steps"].value == 16  # clipped to the jump range
    assert ex.last["method"] == "tvm_scratch" and ex.last["nfe"] == 16
    _, direct = explore_images("tvm_scratch", 16, 0, label=4, n=10)
    assert ex.last["fd"] == direct["fd"] and ex.last["samples"].shape == (10, 1, 32, 32)

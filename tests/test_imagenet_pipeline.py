"""The ImageNet pipeline, end to end on a CPU: a generated ImageNet-style folder (two classes of
tiny PNGs) and a tiny random ``diffusers.AutoencoderKL`` (saved and loaded by path) go through
encoding -> LatentSource -> training (CLI) -> stop and resume -> evaluation with a tiny feature
extractor; plus the paper configs against [P] Table 6 and the training-step benchmark."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import AutoencoderKL
from PIL import Image

from tvmlib.apps import latents as A
from tvmlib.data import latents as L
from tvmlib.data.images import image_folder
from tvmlib.evaluation.metrics import feature_stats, frechet_distance
from tvmlib.training.config import ConfigError, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]
RES = 16  # images 16x16 -> latents 4x8x8 (the tiny VAE downsamples by 2)

FEATURES_PY = '''
import torch

def features(images):
    """A fixed random projection of 4x4-pooled, 8-bit-quantized images: (B, 3, H, W) -> (B, 6)."""
    u = ((images.float() + 1) * 127.5).round().clamp(0, 255) / 255
    pooled = torch.nn.functional.adaptive_avg_pool2d(u, 4).flatten(1)  # (B, 48)
    proj = torch.randn(pooled.shape[1], 6, generator=torch.Generator().manual_seed(0))
    return pooled.double() @ proj.double()
'''


# ---- fixtures: images, a tiny VAE, encoded latents --------------------------------------------

@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    """Image folder (2 classes x 5 PNGs of 20x24), a tiny VAE folder, a features file."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["n0001", "n0002"]):
        (root / "train" / name).mkdir(parents=True)
        for i in range(5):
            a = (rng.random((20, 24, 3)) * 255).astype(np.uint8)
            a[..., c] = 255 - a[..., c] // 4  # class c is tinted towards channel c
            Image.fromarray(a).save(root / "train" / name / f"img{i}.png")
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                        layers_per_block=1, norm_num_groups=4, sample_size=RES)
    vae.save_pretrained(root / "vae")
    (root / "feats.py").write_text(FEATURES_PY)
    return {"root": root, "folder": root / "train", "vae": root / "vae",
            "features": f"{root / 'feats.py'}:features"}


def _encode(work, out, *extra):
    return A.main(["--folder", str(work["folder"]), "--out", str(out), "--resolution", str(RES),
                   "--vae", str(work["vae"]), "--shard-size", "4", "--batch", "3",
                   "--workers", "0", *extra])


@pytest.fixture(scope="module")
def latents(work) -> Path:
    out = work["root"] / "latents"
    _encode(work, out)
    return out


# ---- encoding ---------------------------------------------------------------------------------

def test_encoder_stores_the_vae_posterior_labels_and_exact_stats(work, latents):
    meta = L.read_meta(latents)
    assert meta["complete"] and meta["num_images"] == 10 and meta["num_shards"] == 3
    assert meta["classes"] == ["n0001", "n0002"] and meta["latent_shape"] == [4, 8, 8]
    data = image_folder(work["folder"], RES)
    vae = L.load_vae(work["vae"])
    x = torch.stack([data[i][0] for i in range(len(data))])  # (10, 3, 16, 16)
    with torch.no_grad():
        post = vae.encode(x).latent_dist
    mean, std = post.mean.double(), post.std.double()  # independent of the encoder's batching
    shards = [torch.load(latents / L.shard_name(i), weights_only=True) for i in range(3)]
    assert [len(s["labels"]) for s in shards] == [4, 4, 2]
    got_mean = torch.cat([s["mean"] for s in shards]).double()
    got_std = torch.cat([s["std"] for s in shards]).double()
    assert shards[0]["mean"].dtype == torch.float16
    torch.testing.assert_close(got_mean, mean, rtol=1e-3, atol=1e-3)  # float16 storage
    torch.testing.assert_close(got_std, std, rtol=1e-3, atol=1e-4)
    assert torch.equal(torch.cat([s["labels"] for s in shards]), torch.tensor(data.targets))
    assert torch.equal(torch.cat([s["index"] for s in shards]), torch.arange(10))
    # stats of z = mean + std * eps: E[z] = E[mean], Var z = E[mean^2 + std^2] - E[z]^2 per channel
    mu = mean.mean((0, 2, 3))
    sd = ((mean.square() + std.square()).mean((0, 2, 3)) - mu.square()).sqrt()
    np.testing.assert_allclose(meta["stats"]["mean"], mu.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(meta["stats"]["std"], sd.numpy(), rtol=1e-5)


def test_encoding_resumes_skipping_finished_shards(work, latents, tmp_path):
    out = tmp_path / "latents"
    shutil.copytree(latents, out)
    before = {i: (out / L.shard_name(i)).stat().st_mtime_ns for i in range(3)}
    original = torch.load(out / L.shard_name(1), weights_only=True)
    (out / L.shard_name(1)).unlink()
    (out / (L.shard_name(1) + ".tmp")).write_bytes(b"torn write of a killed run")
    _encode(work, out)
    for i in (0, 2):  # untouched
        assert (out / L.shard_name(i)).stat().st_mtime_ns == before[i]
    redone = torch.load(out / L.shard_name(1), weights_only=True)
    for key in ("mean", "std", "labels", "index", "moments"):
        torch.testing.assert_close(redone[key], original[key], rtol=0, atol=1e-3)
    assert not list(out.glob("*.[0-9]*.tmp"))  # the rewrite left no temporary file of its own
    assert L.read_meta(out)["complete"]
    with pytest.raises(ValueError, match="resolution=16.*resolution=32"):
        _encode(work, out, "--resolution", "32")  # argparse: the last value wins


def test_missing_vae_and_missing_folder_errors_say_what_to_do(work, tmp_path):
    with pytest.raises(FileNotFoundError, match="VAE folder .*no-such-vae does not exist"):
        L.load_vae(tmp_path / "no-such-vae")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match="(?s)could not load the VAE.*Pass a local folder"):
        L.load_vae(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="python -m tvmlib.apps.latents"):
        L.LatentSource(tmp_path, 4)


# ---- the latent batch source ------------------------------------------------------------------

def _synthetic_latents(path: Path, n: int = 10, shard: int = 4, res: int = 256,
                       vae: str = "/models/sd-vae-ft-ema", std_scale: float = 0.5) -> tuple:
    """A latents folder written with the encoder's own writer; label i = index i."""
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(n, 4, 2, 2, generator=g) * 3 + torch.arange(n).view(n, 1, 1, 1)
    std = std_scale * (0.5 + torch.rand(n, 4, 2, 2, generator=g))
    labels = torch.arange(n)
    path.mkdir(parents=True)
    meta = {"format_version": 1, "resolution": res, "vae": vae, "num_images": n,
            "shard_size": shard, "num_shards": -(-n // shard),
            "classes": [f"c{i}" for i in range(n)], "dtype": "float32"}
    (path / "meta.json").write_text(json.dumps(meta))
    for i in range(meta["num_shards"]):
        sl = slice(i * shard, (i + 1) * shard)
        A.write_shard(path / L.shard_name(i), mean[sl], std[sl], labels[sl],
                      torch.arange(n)[sl], "float32")
    A.finalize(path)
    return mean, std, labels


def test_latent_source_replays_exactly(tmp_path):
    _synthetic_latents(tmp_path / "lat")
    src = L.LatentSource(tmp_path / "lat", 3, seed=0, norm="shards")
    first = [src.next_batch() for _ in range(2)]
    state = src.state_dict()
    expected = [src.next_batch() for _ in range(5)]  # crosses epoch boundaries (10 items)
    again = L.LatentSource(tmp_path / "lat", 3, seed=0, norm="shards")
    again.load_state_dict(state)
    for (x, y), (x2, y2) in zip(expected, [again.next_batch() for _ in range(5)]):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    other = L.LatentSource(tmp_path / "lat", 3, seed=1, norm="shards")
    assert not torch.equal(other.next_batch()[0], first[0][0])
    # the state survives a checkpoint round trip (torch.save / torch.load)
    torch.save(state, tmp_path / "state.pt")
    third = L.LatentSource(tmp_path / "lat", 3, seed=5, norm="shards")
    third.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert torch.equal(third.next_batch()[0], expected[0][0])


def test_latent_source_samples_the_posterior_and_normalizes(tmp_path):
    mean, std, _ = _synthetic_latents(tmp_path / "lat")
    src = L.LatentSource(tmp_path / "lat", 5, seed=0, norm="none")
    eps, seen = [], []
    for _ in range(400):  # 200 epochs: every index exactly once per epoch
        x, idx = src.next_batch()  # label i = index i
        eps.append((x - mean[idx]) / std[idx])
        seen.append(idx)
    eps = torch.cat(eps).flatten().double()  # should be N(0, 1): 32000 values
    assert abs(eps.mean()) < 0.03 and abs(eps.std() - 1) < 0.03
    per_epoch = torch.cat(seen).view(-1, 10).sort(1).values
    assert torch.equal(per_epoch, torch.arange(10).expand_as(per_epoch))
    # "paper": (z - raw_mean) / raw_std with [P] section 6's 256 px stats; "auto" picks it
    # for the SD-VAE ft-EMA at 256 px
    m, s = (torch.tensor(v).view(1, 4, 1, 1) for v in L.PAPER_STATS[256])
    src = L.LatentSource(tmp_path / "lat", 5, seed=3, norm="auto")
    assert src.norm == "paper"
    raw = L.LatentSource(tmp_path / "lat", 5, seed=3, norm="none")
    torch.testing.assert_close(src.next_batch()[0], (raw.next_batch()[0] - m) / s)
    # "shards": standardizes each channel (exact stats in meta.json)
    meta = L.read_meta(tmp_path / "lat")
    x = L.normalize(mean, *(torch.tensor(meta["stats"][k]) for k in ("mean", "std")))
    var = x.square().mean((0, 2, 3)) + (std / torch.tensor(meta["stats"]["std"]).view(
        1, 4, 1, 1)).square().mean((0, 2, 3))
    torch.testing.assert_close(x.mean((0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(var, torch.ones(4), atol=1e-5, rtol=0)


def test_normalization_choice(tmp_path):
    meta = {"resolution": 512, "vae": "stabilityai/sd-vae-ft-ema", "stats": {
        "mean": [0.0] * 4, "std": [2.0] * 4}, "latent_shape": [4, 64, 64]}
    name, mu, sd = L.resolve_norm(meta, "auto")
    assert name == "paper" and torch.equal(sd, torch.tensor(L.PAPER_STATS[512][1]))
    assert L.resolve_norm({**meta, "vae": "/tmp/my_vae"}, "auto")[0] == "shards"
    assert L.resolve_norm({**meta, "resolution": 128}, "auto")[0] == "shards"
    with pytest.raises(ValueError, match="256, 512"):
        L.resolve_norm({**meta, "resolution": 128}, "paper")
    with pytest.raises(ValueError, match="valid: auto, paper, shards, none"):
        L.resolve_norm(meta, "standard")
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(L.denormalize(L.normalize(x, mu, sd), mu, sd), x)


# ---- configs ----------------------------------------------------------------------------------

# docs/tvm.md section 6 ([P] Table 6 and the official configs): w, scaled parameterization,
# spectral time-embedding init, latent side, max_grad_norm.
PAPER_RUNS = {
    "im256_w2": (2.0, True, True, 32, None),
    "im256_w1p75": (1.75, True, False, 32, None),
    "im512_w2p5": (2.5, False, False, 64, 1.0),
    "im512_w2p25": (2.25, True, True, 64, 1.0),
}


@pytest.mark.parametrize("name", PAPER_RUNS)
def test_paper_configs_match_table6(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    w, scale_param, time_spec, side, clip = PAPER_RUNS[name]
    assert cfg.name == name and cfg.data.dataset == "latents"
    assert (cfg.loss.name, cfg.loss.cfg_scale, cfg.loss.scale_param) == ("tvm", w, scale_param)
    assert (cfg.loss.label_dropout, cfg.loss.target_decay, cfg.loss.frac_equal) == (0.1, 0.99, 0)
    assert cfg.loss.detach_jvp is False
    assert cfg.model.preset == "DiT-XL/2-18h" and cfg.model.lipschitz.time_spectral_init is \
        time_spec
    assert (cfg.model.input_size, cfg.model.in_channels, cfg.model.num_classes) == (side, 4, 1000)
    t = cfg.train
    assert (t.steps, t.global_batch, t.lr, t.betas, t.weight_decay) == (
        300_000, 2048, 1e-4, [0.9, 0.95], 0.0)
    assert (t.ema_decay, t.amp, t.tf32, t.grad_clip) == (0.9999, "bf16", False, clip)
    assert t.global_batch % (8 * t.per_gpu_batch) == 0  # splits over 8 GPUs
    assert cfg.eval.num_samples == 50_000 and cfg.eval.metric == "inception_fid"


def test_paper_model_is_678m_params_with_18_heads():
    from tvmlib.training.build import build_model

    cfg = load_config(ROOT / "configs" / "im256_w2.yaml")
    with torch.device("meta"):  # no memory, no init cost
        net = build_model(cfg)
    assert round(sum(p.numel() for p in net.parameters()) / 1e6) == 678  # [P] Table 6
    assert net.num_heads == 18 and net.hidden_size // net.num_heads == 64
    assert net.grid == (16, 16)  # 256 tokens


def test_small_configs_use_the_same_pipeline():
    for name in ("fashion_tvm", "fashion_tvm_smoke", "im256_dit_b2"):
        cfg = load_config(ROOT / "configs" / f"{name}.yaml")
        assert cfg.loss.name == "tvm" and cfg.loss.cfg_scale and cfg.model.guidance
    assert load_config(ROOT / "configs" / "im256_dit_b2.yaml").model.preset == "DiT-B/2"


@pytest.mark.parametrize("values,message", [
    ({"data": {"latent_normm": "paper"}}, "data.latent_normm: unknown key"),
    ({"data": {"latent_norm": "papr"}}, "data.latent_norm must be one of auto, paper"),
    ({"data": {"latent_norm": 1}}, "data.latent_norm must be a string"),
    ({"eval": {"vae": 3}}, "eval.vae must be a string"),
    ({"eval": {"weights": "best"}}, "eval.weights must be a list"),
    ({"eval": {"weights": ["best"]}}, "eval.weights must be a non-empty list of ema, net"),
    ({"eval": {"metric": "fid"}}, "eval.metric must be one of classifier_fd"),
    ({"eval": {"solver": "rk4"}}, "eval.solver must be one of auto, euler, heun"),
    ({"train": {"tf32": "yes"}}, "train.tf32 must be true or false"),
    ({"model": {"attn_backend": "flash"}}, "model.attn_backend must be one of math"),
])
def test_latent_and_eval_keys_are_checked(values, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        config_from_dict(values)


def test_bad_key_fails_before_any_work(tmp_path, capsys):
    from tvmlib.apps.train import main

    with pytest.raises(SystemExit):
        main(["--config", str(ROOT / "configs" / "im256_w2.yaml"), "--set",
              "data.latent_norm=standard", "--set", f"out_dir={tmp_path / 'x'}"])
    assert capsys.readouterr().err.startswith("error: data.latent_norm must be one of")
    assert not (tmp_path / "x").exists()


# ---- train (CLI), stop, resume, evaluate ------------------------------------------------------

def _latent_config(tmp_path: Path, latents: Path) -> Path:
    cfg = {"name": "latent_smoke",
           "data": {"dataset": "latents", "path": str(latents), "latent_norm": "shards"},
           "model": {"preset": "DiT-T/2", "input_size": 8, "in_channels": 4, "num_classes": 2,
                     "guidance": True, "attn_backend": "math"},
           "loss": {"name": "tvm", "cfg_scale": 1.5, "scale_param": True},
           "train": {"steps": 5, "global_batch": 4, "lr": 1e-3, "ema_decay": 0.5,
                     "log_every": 1, "ckpt_every": 1, "seed": 0},
           "eval": {"num_samples": 6, "batch_size": 4, "steps": [1, 2], "metric": "none"}}
    path = tmp_path / "latent_smoke.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_encode_train_stop_resume_evaluate(work, latents, tmp_path):
    from tvmlib.apps import evaluate as E
    from tvmlib.apps.train import main as train_main
    from tvmlib.data.latents import denormalize, load_vae
    from tvmlib.evaluation.features import load_feature_fn
    from tvmlib.training.build import build_model

    config = _latent_config(tmp_path, latents)
    # uninterrupted 5 steps through the real CLI
    env = {**os.environ, "TVMLIB_QUIET": "1", "OMP_NUM_THREADS": "1"}
    full = tmp_path / "full"
    proc = subprocess.run([sys.executable, "-m", "tvmlib.apps.train", "--config", str(config),
                           "--set", f"out_dir={full}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    # stopped after step 3, then resumed to 5 (same CLI entry point, in this process)
    part = tmp_path / "part"
    torch.set_num_threads(1)
    train_main(["--config", str(config), "--set", "train.steps=3", "--set", f"out_dir={part}"])
    at3 = torch.load(part / "checkpoint.pt", weights_only=True)
    assert at3["step"] == 3
    train_main(["--config", str(config), "--set", f"out_dir={part}"])
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(part / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 5
    for group in ("net", "ema"):
        sa = a[group] if group == "net" else a[group]["module"]
        sb = b[group] if group == "net" else b[group]["module"]
        for key, v in sa.items():
            torch.testing.assert_close(v, sb[key], rtol=1e-5, atol=1e-6, msg=f"{group}.{key}")
    for key, v in a["loss"]["target"]["module"].items():
        torch.testing.assert_close(v, b["loss"]["target"]["module"][key], rtol=1e-5, atol=1e-6)
    assert a["source"]["batches"] == b["source"]["batches"] == 5
    assert [r["step"] for r in b["history"]] == [1, 2, 3, 4, 5]
    assert any(not torch.allclose(v, at3["net"][k]) for k, v in b["net"].items())

    # reference stats of the real images with the tiny feature extractor, then evaluate
    ref = tmp_path / "ref.npz"
    E.main(["--make-ref-stats", str(ref), "--folder", str(work["folder"]), "--resolution",
            str(RES), "--features", work["features"]])
    results = E.main(["--run", str(full), "--features", work["features"], "--ref-stats",
                      str(ref), "--num-samples", "6", "--batch-size", "4", "--steps", "1", "2",
                      "--save-samples", "--figures", "06_test"])
    saved = json.loads((full / "eval.json").read_text())
    assert saved["results"] == json.loads(json.dumps(results))
    assert saved["provenance"]["train_step"] == 5 and results["metric"] == "features_fd"
    assert results["sampler"] == {"solver": "flowmap", "w": 1.5, "cfg_scale": None,
                                  "scale_param": True}
    feats = load_feature_fn(work["features"])
    with np.load(ref) as f:
        mu_ref, sigma_ref = f["mu"], f["sigma"]
    data = image_folder(work["folder"], RES)
    real = torch.stack([data[i][0] for i in range(len(data))])
    mu_np, sigma_np = feature_stats(feats(real))
    np.testing.assert_allclose(mu_ref, mu_np, rtol=1e-10)
    np.testing.assert_allclose(sigma_ref, sigma_np, rtol=1e-8, atol=1e-12)
    for k in (1, 2):
        with np.load(full / f"samples_{k}step.npz") as f:
            images, labels = f["images"], f["labels"]
        assert images.shape == (6, 3, RES, RES) and images.dtype == np.uint8
        x = torch.from_numpy(images).double() / 127.5 - 1
        fd = frechet_distance(*feature_stats(feats(x)), mu_ref, sigma_ref)
        assert results["steps"][str(k)]["fd"] == pytest.approx(fd, rel=1e-6)
        assert (full / f"samples_{k}step.png").exists()
    # the figures copies (TVMLIB_FIGURES is a tmp folder in tests)
    figures = Path(os.environ["TVMLIB_FIGURES"])
    assert (figures / "06_test_eval.json").exists()
    assert (figures / "06_test_samples_1step.png").exists()
    log = json.loads((figures / "06_test_log.json").read_text())
    assert [r["step"] for r in log["results"]["history"]] == [1, 2, 3, 4, 5]

    # independent 1-step sample: EMA weights, w = 1.5, scaled parameterization, un-normalized
    # with the shard stats, decoded by the VAE
    cfg = load_config(full / "config.yaml")
    net = build_model(cfg)
    net.load_state_dict(a["ema"]["module"])
    net.eval()
    g = torch.Generator().manual_seed(0)  # eval seed 0, batch 0
    noise = torch.randn(4, 4, 8, 8, generator=g)
    y = torch.arange(4) % 2  # balanced labels
    assert torch.equal(torch.from_numpy(labels[:4]), y)
    with torch.no_grad():
        x0 = noise + (0.0 - 1.0) * 1.5 * net(noise, torch.ones(4), torch.zeros(4), y, 1.5)
        stats = L.read_meta(latents)["stats"]
        z = denormalize(x0, torch.tensor(stats["mean"]), torch.tensor(stats["std"]))
        img = load_vae(work["vae"]).decode(z).sample.clamp(-1, 1)
    with np.load(full / "samples_1step.npz") as f:
        got = torch.from_numpy(f["images"][:4]).int()
    expected = ((img + 1) * 127.5).round().int()
    assert (got - expected).abs().max() <= 1


def test_evaluate_errors_name_the_missing_flag(tmp_path):
    from tvmlib.apps.train import main as train_main
    from tvmlib.evaluation.evaluate import evaluate_run
    from tvmlib.evaluation.features import metric_setup

    run = tmp_path / "fs"
    train_main(["--config", str(ROOT / "configs" / "fashion_tvm_smoke.yaml"), "--set",
                "train.steps=1", "--set", f"out_dir={run}"])
    with pytest.raises(ValueError, match="--inception PATH"):
        evaluate_run(run, {"metric": "inception_fid"})
    with pytest.raises(FileNotFoundError, match="--inception"):
        evaluate_run(run, {"metric": "inception_fid", "inception_weights": str(tmp_path / "x")})
    with pytest.raises(ValueError, match="--ref-stats PATH"):
        evaluate_run(run, {"metric": "features_fd", "features": "math:sqrt"})
    with pytest.raises(FileNotFoundError, match="--ref-stats"):
        evaluate_run(run, {"metric": "features_fd", "features": "math:sqrt",
                         "reference_stats": str(tmp_path / "ref.npz")})
    with pytest.raises(FileNotFoundError, match="config.yaml does not exist"):
        evaluate_run(tmp_path / "nothing")
    latent_cfg = config_from_dict({**yaml.safe_load((run / "config.yaml").read_text()),
                                   "data": {"dataset": "latents"}})
    with pytest.raises(ValueError, match="classifier_fd exists for"):
        metric_setup(latent_cfg, "cpu")


@pytest.mark.slow
def test_evaluate_classifier_fd_on_fashion(tmp_path):
    """Fashion-MNIST through the same evaluation: the reported FD equals classifier_fd of the
    saved samples against the real test split."""
    from tvmlib.apps.train import main as train_main
    from tvmlib.evaluation.classifier import classifier_fd
    from tvmlib.evaluation.evaluate import evaluate_run

    run = tmp_path / "fs"
    train_main(["--config", str(ROOT / "configs" / "fashion_tvm_smoke.yaml"), "--set",
                "train.steps=2", "--set", f"out_dir={run}"])
    res = evaluate_run(run, {"num_samples": 24, "batch_size": 10, "steps": [1, 2]},
                     save_samples=True, grid_size=20)
    for k in ("1", "2"):
        with np.load(run / f"samples_{k}step.npz") as f:
            x = torch.from_numpy(f["images"]).float() / 127.5 - 1
            assert x.shape == (24, 1, 32, 32) and sorted(set(f["labels"])) <= list(range(10))
        assert res["steps"][k]["fd"] == pytest.approx(classifier_fd(x, None, "fashion-mnist"),
                                                      rel=1e-6)
    grid = Image.open(run / "samples_1step.png")
    assert grid.mode == "L" and grid.size == (10 * 34 + 2, 2 * 34 + 2)  # 10 classes x 2 rows


def test_moments_match_numpy_covariance():
    from tvmlib.evaluation.metrics import Moments

    f = torch.randn(37, 5, dtype=torch.float64) * torch.arange(1, 6) + 3
    m = Moments()
    for chunk in f.split(10):
        m.add(chunk)
    mu, sigma = m.stats()
    np.testing.assert_allclose(mu, f.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f.numpy(), rowvar=False), rtol=1e-10)


# ---- the training-step benchmark --------------------------------------------------------------

def test_train_step_benchmark_rows_on_cpu(tmp_path, monkeypatch):
    from tvmlib.apps.bench import train_step as B

    out = tmp_path / "bench.json"
    B.main(["--device", "cpu", "--models", "DiT-T/2", "--batch", "2", "--input-size", "4",
            "--steps", "2", "--warmup", "1", "--backends", "math", "sdpa", "triton",
            "--no-amp", "--jvp", "func", "fused", "--out", str(out)])
    saved = json.loads(out.read_text())
    rows = {r["backend"]: r for r in saved["results"]["rows"]}  # the fused rows (listed last)
    keys = {"model", "backend", "batch", "jvp", "ms_per_step", "images_per_s", "peak_mem_gb",
            "status"}
    assert all(keys <= set(r) for r in rows.values())
    func = [r for r in saved["results"]["rows"] if r["jvp"] == "func"]
    assert [r["backend"] for r in func] == ["math", "sdpa", "triton"]
    assert rows["math"]["jvp"] == "fused" and func[0]["status"] == "ok"
    assert rows["math"]["loss"] == pytest.approx(func[0]["loss"], rel=1e-4)  # the same step
    assert rows["math"]["status"] == "ok" and rows["math"]["ms_per_step"] > 0
    assert rows["math"]["images_per_s"] == pytest.approx(2e3 / rows["math"]["ms_per_step"])
    assert np.isfinite(rows["math"]["loss"]) and len(rows["math"]["ms_all"]) == 2
    assert rows["math"]["warmup_s"] > 0
    assert rows["sdpa"]["status"].startswith("error: AttentionJVPError")  # no JVP through SDPA
    assert rows["triton"]["status"].startswith("unavailable")
    assert saved["provenance"]["device"].startswith("cpu")

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80 GiB")

    monkeypatch.setattr(B, "make_step", oom)
    row = B.bench_one("DiT-XL/2-18h", "math", 1024, torch.device("cpu"))
    assert row["status"] == "oom" and row["ms_per_step"] is None


def test_train_step_benchmark_runs_fm_compiled_beside_eager(tmp_path):
    """With --jvp compiled the FM reference runs twice, eagerly and through torch.compile (FM at
    its best for the TVM/FM ratio): the same first step, both rows ok."""
    from tvmlib.apps.bench import train_step as B

    out = tmp_path / "bench.json"
    B.main(["--device", "cpu", "--models", "DiT-T/8", "--batch", "2", "--input-size", "8",
            "--steps", "1", "--warmup", "1", "--no-amp", "--losses", "fm", "--jvp", "compiled",
            "--out", str(out)])
    rows = json.loads(out.read_text())["results"]["rows"]
    assert [(r["loss_name"], r["jvp"], r["status"]) for r in rows] == [
        ("fm", None, "ok"), ("fm", "compiled", "ok")]
    assert rows[0]["loss"] == pytest.approx(rows[1]["loss"], rel=1e-4)


def test_train_step_benchmark_fused_adamw_is_the_same_step(tmp_path, monkeypatch):
    """--adamw foreach fused: a row per AdamW kernel choice (train.fused_adamw); after the same
    optimizer steps both give the same loss, so only the time and memory may differ."""
    from tvmlib.apps.bench import train_step as B

    made = []
    real = B.make_optimizer
    monkeypatch.setattr(B, "make_optimizer",
                        lambda net, cfg: made.append(real(net, cfg)) or made[-1])
    out = tmp_path / "bench.json"
    B.main(["--device", "cpu", "--models", "DiT-T/8", "--batch", "2", "--input-size", "8",
            "--steps", "2", "--warmup", "1", "--no-amp", "--backends", "math",
            "--adamw", "foreach", "fused", "--out", str(out)])
    rows = json.loads(out.read_text())["results"]["rows"]
    assert [(r["fused_adamw"], r["status"]) for r in rows] == [(False, "ok"), (True, "ok")]
    assert rows[0]["loss"] == pytest.approx(rows[1]["loss"], rel=1e-5)
    assert [opt.defaults["fused"] for opt in made] == [None, True]


def test_inception_features_use_the_local_weights_file(tmp_path, monkeypatch):
    """The FID Inception network (torch-fidelity's) is built from the local file given with
    --inception, never downloaded, and gets uint8 RGB images (grayscale repeated)."""
    from torch_fidelity import feature_extractor_inceptionv3 as fi

    from tvmlib.evaluation.features import inception_features, to_uint8

    calls = {}

    class FakeInception(torch.nn.Module):  # records how it is built and what it is fed
        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kw):
            super().__init__()
            calls.update(name=name, features=features_list, path=feature_extractor_weights_path)

        def forward(self, x):
            calls["input"] = x
            return (x.double().mean((2, 3)),)

    monkeypatch.setattr(fi, "FeatureExtractorInceptionV3", FakeInception)
    (tmp_path / "w.pth").write_bytes(b"weights")
    features = inception_features(tmp_path / "w.pth", "cpu")
    assert calls == {"name": "inception-v3-compat", "features": ["2048"],
                     "path": str(tmp_path / "w.pth")}
    x = torch.rand(2, 1, 5, 5) * 2 - 1
    f = features(x)
    assert calls["input"].dtype == torch.uint8 and calls["input"].shape == (2, 3, 5, 5)
    assert torch.equal(calls["input"][:, 2], to_uint8(x)[:, 0])
    torch.testing.assert_close(f[:, 0], ((x[:, 0] + 1) * 127.5).round().double().mean((1, 2)))
    with pytest.raises(FileNotFoundError, match="--inception"):
        inception_features(tmp_path / "missing.pth", "cpu")


def test_sampling_benchmark_rows_on_cpu(tmp_path):
    from tvmlib.apps.bench import sampling as S

    out = tmp_path / "sampling.json"
    S.main(["--device", "cpu", "--models", "DiT-T/2", "--batches", "1", "2", "--jumps", "1", "2",
            "--input-size", "4", "--steps", "2", "--warmup", "1", "--no-amp", "--out", str(out)])
    saved = json.loads(out.read_text())
    rows = saved["results"]["rows"]
    assert [(r["batch"], r["jumps"]) for r in rows] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(r["finite"] and r["ms"] > 0 and len(r["ms_all"]) == 2 for r in rows)
    assert rows[2]["images_per_s"] == pytest.approx(2e3 / rows[2]["ms"])
    assert saved["provenance"]["command"].startswith("python -m tvmlib.apps.bench.sampling")

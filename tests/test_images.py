"""Image loaders: real MNIST / Fashion-MNIST files, the search order and its error, the
replayable TensorSource, and ImageFolder on generated PNGs."""

import gzip
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import tvmlib.utils.paths
from tvmlib.data.images import TensorSource, image_folder, load_mnist, read_idx

# Label counts from ../shared/data/README.md ("Verification").
COUNTS = {
    ("mnist", "train"): [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    ("mnist", "test"): [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    ("fashion-mnist", "train"): [6000] * 10,
    ("fashion-mnist", "test"): [1000] * 10,
}
STEM = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}


def _data_root() -> Path:
    root = Path(os.environ.get("TVMLIB_DATA", ""))
    if not (root / "mnist").is_dir():
        pytest.skip("real MNIST files not found (set TVMLIB_DATA, see data/README.md)")
    return root


def _readme_parse(path: Path) -> np.ndarray:
    """The shared data README's reference parser, written out independently of read_idx."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


@pytest.mark.parametrize("name,split", list(COUNTS))
def test_real_files_shapes_range_labels(name, split):
    root = _data_root()
    x, y = load_mnist(name, split)
    n = 60000 if split == "train" else 10000
    assert x.shape == (n, 1, 32, 32) and x.dtype == torch.float32
    assert y.shape == (n,) and y.dtype == torch.int64
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (x[:, 0, border] == -1.0).all()  # the 2-pixel padding is black
    assert torch.bincount(y, minlength=10).tolist() == COUNTS[(name, split)]
    # the interior is u8 / 127.5 - 1 of the file, parsed here by the README's recipe
    ref = _readme_parse(root / name / f"{STEM[split]}.gz")[:500].astype(np.float64) / 127.5 - 1
    np.testing.assert_allclose(x[:500, 0, 2:30, 2:30].double().numpy(), ref, atol=1e-6)


def test_loader_returns_fresh_tensors():
    _data_root()
    x1, y1 = load_mnist("mnist", "test")
    x1.fill_(0.0)
    y1.fill_(3)
    x2, y2 = load_mnist("mnist", "test")
    assert x2.min().item() == -1.0 and torch.bincount(y2).tolist() == COUNTS[("mnist", "test")]


def _write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)


def _fake_split(folder: Path, n: int, value: int, gz: bool) -> None:
    _write_idx(folder / ("t10k-images-idx3-ubyte" + ".gz" * gz), np.full((n, 28, 28), value), gz)
    _write_idx(folder / ("t10k-labels-idx1-ubyte" + ".gz" * gz), np.arange(n) % 10, gz)


@pytest.fixture
def fake_dirs(tmp_path, monkeypatch):
    """TVMLIB_DATA -> tmp/env, repository data/ -> tmp/repo/data, both empty."""
    env, repo = tmp_path / "env", tmp_path / "repo"
    env.mkdir()
    (repo / "data").mkdir(parents=True)
    monkeypatch.setenv("TVMLIB_DATA", str(env))
    monkeypatch.setattr(tvmlib.utils.paths, "repo_root", lambda: repo)
    return env, repo / "data"


def test_missing_data_names_every_searched_folder(fake_dirs):
    env, repo_data = fake_dirs
    with pytest.raises(FileNotFoundError) as err:
        load_mnist("fashion-mnist", "train")
    msg = str(err.value)
    for folder in (env / "fashion-mnist", env / "FashionMNIST" / "raw",
                   repo_data / "fashion-mnist", repo_data / "FashionMNIST" / "raw"):
        assert str(folder) in msg
    assert "data/README.md" in msg and "train-images-idx3-ubyte" in msg


def test_search_order_raw_torchvision_layout_and_gz(fake_dirs):
    env, repo_data = fake_dirs
    _fake_split(repo_data / "mnist", 4, 255, gz=True)  # found only after $TVMLIB_DATA
    x, y = load_mnist("mnist", "test")
    assert x.shape == (4, 1, 32, 32) and (x[:, :, 2:30, 2:30] == 1.0).all()
    _fake_split(env / "MNIST" / "raw", 3, 0, gz=False)  # raw IDX, torchvision layout, first
    x, y = load_mnist("mnist", "test")
    assert x.shape == (3, 1, 32, 32) and (x == -1.0).all() and y.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="unknown data set"):
        load_mnist("cifar10", "test")
    with pytest.raises(ValueError, match="unknown split"):
        load_mnist("mnist", "val")


def test_truncated_idx_file_is_rejected(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    _write_idx(path, np.zeros((2, 28, 28)), gz=False)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(path)


def test_tensor_source_covers_each_index_once_per_epoch():
    n, b = 10, 3
    x = torch.arange(n, dtype=torch.float32)[:, None]  # the data reveals the index
    y = torch.arange(n) * 7
    src = TensorSource(x, y, batch_size=b, seed=1)
    xs, ys = zip(*(src.next_batch() for _ in range(10)))  # 30 indices = 3 epochs
    idx = torch.cat(xs)[:, 0].long()
    assert torch.equal(torch.cat(ys), idx * 7)  # labels travel with their images
    for e in range(3):
        assert sorted(idx[e * n:(e + 1) * n].tolist()) == list(range(n))
    assert not torch.equal(idx[:n], idx[n:2 * n])  # a new permutation each epoch
    x0, y0 = TensorSource(x, y, b, labels=False).next_batch()
    assert y0 is None and x0.shape == (b, 1)


def test_tensor_source_resume_replays_exactly(tmp_path):
    x, y = torch.randn(23, 2, 4, 4), torch.randint(0, 10, (23,))
    src = TensorSource(x, y, batch_size=5, seed=0)
    for _ in range(6):  # stop mid-epoch (30 indices into a 23-item set)
        src.next_batch()
    torch.save(src.state_dict(), tmp_path / "src.pt")
    expected = [src.next_batch() for _ in range(12)]  # crosses two more epoch boundaries
    resumed = TensorSource(x, y, batch_size=5, seed=99)  # a different seed: state must win
    resumed.load_state_dict(torch.load(tmp_path / "src.pt", weights_only=True))
    for (xe, ye), (xr, yr) in zip(expected, (resumed.next_batch() for _ in range(12))):
        assert torch.equal(xe, xr) and torch.equal(ye, yr)
    with pytest.raises(ValueError, match="saved for 23 items"):
        TensorSource(x[:10], y[:10], 5).load_state_dict(src.state_dict())


def _png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def test_image_folder_shape_and_range(tmp_path):
    rng = np.random.default_rng(0)
    _png(tmp_path / "cat" / "a.png", np.full((40, 60, 3), 255, np.uint8))  # white, RGB
    _png(tmp_path / "cat" / "b.png", rng.integers(0, 256, (50, 30, 3), dtype=np.uint8))
    _png(tmp_path / "dog" / "c.png", np.zeros((20, 20), np.uint8))  # black, grayscale
    ds = image_folder(tmp_path, 16)
    assert ds.classes == ["cat", "dog"] and len(ds) == 3
    for i in range(3):
        x, label = ds[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
        assert -1.0 <= x.min().item() and x.max().item() <= 1.0
    assert (ds[0][0] == 1.0).all() and (ds[2][0] == -1.0).all() and ds[2][1] == 1
    assert ds[1][0].min().item() < -0.5 and ds[1][0].max().item() > 0.5
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_folder(tmp_path / "missing", 16)

"""The pinned environments: requirements.lock pins every requirement of requirements.txt inside
its range (and, when make installed the lock, the installed versions are the pinned ones);
requirements-gpu.txt records the versions the GPU results in figures/*.json were made with."""

from __future__ import annotations

import json
import os
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
GPU = ROOT / "requirements-gpu.txt"


def _requirements(path: Path) -> list[Requirement]:
    lines = (ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines())
    return [Requirement(ln) for ln in lines if ln and not ln.startswith("-")]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for req in _requirements(path):
        (spec,) = req.specifier
        assert spec.operator == "==", f"{path.name}: {req} is not an exact pin"
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_lock_pins_every_requirement_within_its_range():
    pins = _pins(LOCK)
    for req in _requirements(ROOT / "requirements.txt"):
        name = canonicalize_name(req.name)
        assert name in pins, f"requirements.lock lacks {req.name}: run make lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {req.name}=={pins[name]}, outside {req}: run make lock")
    assert pins["torch"] != "2.13.0", "torch 2.13.0 resolves to a CPU wheel torchvision rejects"


@pytest.mark.skipif(os.environ.get("TVMLIB_REQUIREMENTS") != "requirements.lock",
                    reason="the environment was not installed from requirements.lock by make")
def test_installed_versions_are_the_locked_ones():
    wrong = {}
    for name, pinned in _pins(LOCK).items():
        try:
            got = version(name)
        except PackageNotFoundError:
            got = None
        if got is None or Version(got) != Version(pinned):
            wrong[name] = (pinned, got)
    assert not wrong, f"installed versions differ from requirements.lock (pinned, got): {wrong}"


def test_gpu_versions_match_the_gpu_results():
    pins = _pins(GPU)
    python = re.search(r"^# python (\S+)$", GPU.read_text(), re.M)
    assert python, "requirements-gpu.txt must record the GPU machine's python (# python X.Y.Z)"
    runs = [json.loads(p.read_text())["provenance"] for p in sorted((ROOT / "figures").glob(
        "*.json"))]
    gpu = [r for r in runs if str(r.get("device", "")).startswith("NVIDIA")]
    assert gpu, "no GPU result in figures/*.json"
    for run in gpu:
        assert (run["torch"], run["triton"], run["python"]) == (
            pins["torch"], pins["triton"], python[1]), run["command"]
    torch_v, vision_v = Version(pins["torch"]), Version(pins["torchvision"])
    assert (vision_v.major, vision_v.minor) == (0, torch_v.minor + 15), "not torch's pair"
    assert vision_v.local == torch_v.local  # the same CUDA build

"""The README's results tables are generated from the committed JSON and match it."""

import json
from pathlib import Path

import pytest

from tvmlib.apps import readme
from tvmlib.utils.prose import mean_std
from tvmlib.utils.provenance import commits

ROOT = Path(__file__).resolve().parents[1]


def test_readme_tables_match_the_committed_json():
    assert readme.update(ROOT / "README.md", check=True), "run `make readme`"


def test_tables_carry_the_json_numbers():
    text = readme.render()
    bench = json.loads((ROOT / "figures" / "jvp_attention_h100.json").read_text())
    row = next(r for r in bench["rows"] if r["impl"] == "triton" and r["pass"] == "fwd_jvp_bwd"
               and r["N"] == 4096 and r["d"] == 64)
    assert f"| {readme._fmt(row['ms'])} |" in text
    toys = json.loads((ROOT / "figures" / "02_equal_compute.json").read_text())["results"]
    tvm = [toys["runs"][f"checkerboard-tvm-s{i}"]["final"]["ema"]["1"] for i in range(3)]
    assert f"| {mean_std(tvm)} |" in text
    assert bench["provenance"]["device"] in text


def test_update_rewrites_only_the_marked_block(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(f"intro\n{readme.START}\nstale\n{readme.END}\noutro\n")
    assert not readme.update(path, check=True)
    assert not readme.update(path)
    text = path.read_text()
    assert text.startswith("intro\n") and text.endswith("\noutro\n") and "stale" not in text
    assert readme.update(path, check=True)
    path.write_text("no markers")
    with pytest.raises(ValueError, match="results:start"):
        readme.update(path)


def test_commits_of_merged_parts_in_order_once_each():
    prov = {"commit": "a" * 40, "parts": [{"commit": "a" * 40},
                                          {"commit": "b" * 40, "parts": [{"commit": "c" * 12}]},
                                          {"commit": "b" * 40}]}
    assert commits(prov) == ["a" * 10, "b" * 10, "c" * 10]
    assert commits({}) == ["?"]

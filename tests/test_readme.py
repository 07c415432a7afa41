"""The README's results tables are generated from the committed JSON and match it."""

import json
import statistics
from pathlib import Path

import pytest

from tvmlib.apps import readme, readme_format, readme_images
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
    assert f"| {readme_format.fmt(row['ms'])} |" in text
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


def test_step_summary_takes_the_fastest_step_of_each_loss_and_jvp():
    from tvmlib.experiments.timing import step_summary

    def row(loss, jvp, ms, graph, status="ok", model="M"):
        return {"model": model, "loss_name": loss, "jvp": jvp, "ms_per_step": ms,
                "cuda_graph": graph, "status": status}

    rows = [row("tvm", "fused", 50.0, False), row("tvm", "fused", 40.0, True),
            row("tvm", "func", 60.0, True), row("tvm", "func", 1.0, True, status="oom"),
            row("fm", None, 12.0, False), row("fm", None, 10.0, True),
            row("tvm", "fused", 5.0, True, model="no FM row")]
    (got,) = step_summary(rows)
    assert got["model"] == "M" and got["fm_ms"] == 10.0 and got["tvm_ms"] == 40.0
    assert got["by_jvp"] == {"fused": 40.0, "func": 60.0} and got["ratio"] == 4.0
    text = readme.table_train_step()
    saved = json.loads((ROOT / "figures" / "train_step_nvidia-h200.json").read_text())
    for r in step_summary(saved["results"]["rows"]):
        fm_ms, fused_ms = readme_format.fmt(r["fm_ms"]), readme_format.fmt(r["by_jvp"]["fused"])
        assert f"| {r['model']} | {fm_ms} | {fused_ms} |" in text


def test_compile_speedups_take_the_fastest_graph_step_of_each_and_need_all_four():
    from tvmlib.experiments.timing import compile_speedups

    def row(loss, jvp, ms, graph=True, status="ok"):
        return {"loss_name": loss, "jvp": jvp, "ms_per_step": ms, "cuda_graph": graph,
                "status": status}

    rows = [row("fm", None, 20.0), row("fm", None, 18.0), row("fm", None, 5.0, graph=False),
            row("fm", "compiled", 9.0), row("tvm", "fused", 80.0), row("tvm", "func", 70.0),
            row("tvm", "compiled", 40.0), row("tvm", "compiled", 1.0, status="oom")]
    assert compile_speedups(rows) == {"fm": 18.0, "fm_compiled": 9.0, "tvm": 80.0,
                                      "tvm_compiled": 40.0, "tvm_func": 70.0}
    assert compile_speedups(rows[:3] + rows[4:]) is None  # no compiled FM step measured
    saved = json.loads((ROOT / "figures" / "train_step_small_nvidia-h200.json").read_text())
    ms = compile_speedups(saved["results"]["rows"])
    fmt = readme_format.fmt
    assert (f"makes FM's step {fmt(ms['fm'] / ms['fm_compiled'])}x faster ({fmt(ms['fm'])} -> "
            f"{fmt(ms['fm_compiled'])} ms)") in readme_images.table_glance()


def test_glance_row_takes_the_better_tvm_and_fm_best_of_the_mnist_json():
    runs = json.loads((ROOT / "figures" / "06_mnist_equal_time.json").read_text())["results"]
    runs = runs["runs"]

    def one_jump(name):  # the last 2000-sample evaluation of one run
        return runs[name]["evals"]["fd_1"][-1]

    unguided = [one_jump(n) for n in ("tvm", "tvm_seed1", "tvm_seed2")]
    assert sum(unguided) / 3 < one_jump("tvm_w15")  # so the glance row must name `tvm`
    fm_best = [min(r["fd"] for r in runs[n]["sweep"]) for n in ("fm", "fm_seed1", "fm_seed2")]
    row = next(line for line in readme_images.table_glance().splitlines()
               if line.startswith("| MNIST, 300 GPU s |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    mean_sd = statistics.mean(unguided), statistics.stdev(unguided)
    assert cells[1] == readme_format.pm(*mean_sd, 3) + " (tvm, 3 seeds)"
    # FM: each training seed's best sampler, mean ± std over the three seeds
    fm_mean_sd = statistics.mean(fm_best), statistics.stdev(fm_best)
    assert cells[3] == readme_format.pm(*fm_mean_sd, 3) + " (3 seeds)"
    # MeanFlow's 4 jumps: the better of its variants there, one seed each on MNIST
    mf4 = min(("meanflow", "meanflow_w15"), key=lambda n: runs[n]["evals"]["fd_4"][-1])
    assert cells[6] == f"{readme_format.fmt(runs[mf4]['evals']['fd_4'][-1])} ({mf4})"


def test_saved_memory_table_reads_the_op_count_file():
    from tvmlib.apps import readme

    rows = json.loads((ROOT / "figures" / "jvp_saved_DiT-S-2.json").read_text())["results"]["rows"]
    text = readme._saved_memory("jvp_saved_DiT-S-2.json")
    fused = next(r["saved_mb"] for r in rows if r["jvp"] == "fused")
    for r in rows:
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {r['jvp']} |"))
        assert readme_format.fmt(r["saved_mb"] / fused) in line
    assert readme._saved_memory("no_such_file.json") == ""

"""The 2D toys at equal compute (``configs/experiments/toy2d_equal_compute.yaml``, notebook
02): runs grouped by data set and method, each run's W2 by NFE, the headline table and issue 15's
targets."""

from __future__ import annotations

from tvmlib.experiments.results import mean_sd, ordered
from tvmlib.utils.prose import mean_std


def toy_groups(runs: dict[str, dict]) -> dict[str, dict[str, list[dict]]]:
    """{dataset: {method: [records, by seed]}} for runs named "<dataset>-<method>-s<seed>"."""
    out: dict[str, dict[str, list[dict]]] = {}
    for name in sorted(runs, key=lambda n: int(n.rsplit("-s", 1)[1])):
        dataset, method, _ = name.split("-")
        out.setdefault(dataset, {}).setdefault(method, []).append(runs[name])
    return out


def toy_curve(rec: dict, solver: str | None = None, key: str = "w2") -> dict[int, float]:
    """{NFE: score} of a toy run: with ``solver`` None its own sampler's (the final evaluation
    of its first weights), else that solver's rows of the sweep. ``key``: "w2" (its
    reference) or "w2_data"."""
    if solver is not None:
        return {r["nfe"]: r[key] for r in rec["sweep"] if r["solver"] == solver}
    c = rec["config"]
    guided_fm = c["loss"]["name"] == "fm" and c["eval"]["cfg_scale"] not in (None, 1.0)
    weights = c["eval"]["weights"][0]
    if key == "w2":
        return {int(k) * (2 if guided_fm else 1): v for k, v in rec["final"][weights].items()}
    return {r["nfe"]: r[key] for r in rec["sweep"]} if rec["sweep"] else {}


def toy_best(rec: dict, key: str = "w2") -> float:
    """The run's lowest score at any NFE and with any solver it was evaluated with."""
    return min([*toy_curve(rec, key=key).values(), *(r[key] for r in rec["sweep"])])


TOY_ROWS = (("FM, Euler", "fm", None), ("FM, Heun", "fm", "heun"),
            ("MeanFlow", "meanflow", None), ("TVM", "tvm", None))


def toy_table(dataset: str, m: dict[str, list[dict]]) -> str:
    """Markdown of one data set's headline runs ``m`` ({method: [records, by seed]}): a line
    naming the reference, the seeds and the floor (the spread of single reference-vs-reference
    pairs, as each model score is one evaluation), then W2 mean +- std over seeds at every NFE
    of FM (Euler, Heun), MeanFlow and TVM ("–" where not every seed has that NFE)."""
    nfes = sorted({k for meth in ("fm", "meanflow", "tvm") for r in m[meth] for k in toy_curve(r)})
    lines = ["| method | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
             "|" + "---|" * (len(nfes) + 1)]
    for label, method, solver in TOY_ROWS:
        curves = [toy_curve(r, solver) for r in m[method]]
        cells = [mean_std([c[k] for c in curves]) if all(k in c for c in curves) else "–"
                 for k in nfes]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    fl = m["tvm"][0]["floor"]
    ref = "data" if fl["reference"] == "data" else f"exact guided ODE (w = {fl['guidance']})"
    pairs = [w for r in m["tvm"] for w in r["floor"].get("runs", [r["floor"]["w2"]])]
    head = (f"**{dataset}** (W2 to the {ref}, mean +- std over {len(m['tvm'])} seeds, every "
            f"model trained for the same FLOPs; floor {mean_std(pairs)}: W2 between two "
            f"independent sets of the reference, mean +- std over {len(pairs)} such pairs, each "
            "scored as one model evaluation is)")
    return head + "\n\n" + "\n".join(lines)


def toy_targets(groups: dict[str, dict[str, list[dict]]], ratio: float = 1.3) -> list[dict]:
    """Issue 15's targets per data set, on the means over seeds: TVM's 1-jump W2 <= ``ratio`` x
    FM's best W2 at any NFE (each seed's best, then the mean), and TVM's 1-jump W2 < MeanFlow's.
    Each {"dataset", "target", "value", "value_sd", "bound", "hit", "resolved"}: ``resolved``
    when the value lies more than two of TVM's seed stds from the bound."""
    rows = []
    for dataset, m in groups.items():
        tvm1, sd = mean_sd([toy_curve(r)[1] for r in m["tvm"]])
        fm_best = mean_sd([toy_best(r) for r in m["fm"]])[0]
        mf1 = mean_sd([toy_curve(r)[1] for r in m["meanflow"]])[0]
        for target, bound, hit in ((f"TVM 1 jump <= {ratio} x FM best", ratio * fm_best,
                                    tvm1 <= ratio * fm_best),
                                   ("TVM 1 jump < MeanFlow 1 jump", mf1, tvm1 < mf1)):
            rows.append({"dataset": dataset, "target": target, "value": tvm1, "value_sd": sd,
                         "bound": bound, "hit": hit, "resolved": ordered(tvm1, bound, sd)})
    return rows


def verdict(t: dict) -> str:
    """"**hit**" or "**miss**" of a :func:`toy_targets` row, saying when the margin lies within
    two of TVM's seed stds."""
    word = f"**{'hit' if t['hit'] else 'miss'}**"
    return word if t["resolved"] else f"{word} (by the means; within two of TVM's seed stds)"

"""The study's statistics and its one table: ``results.json`` and ``results.md`` (docs/study.md)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from opplan.stats import verdict
from opplan.study.config import StudyConfig
from opplan.study.run import correctness
from opplan.study.stats import t_interval, two_level_bootstrap


def compare(results: list[dict[str, Any]], op: str, hs: str, cfg: StudyConfig) -> dict[str, Any]:
    """OP side ``op`` against HS side ``hs``: the two-level bootstrap, the t-interval over
    replicates, the verdict at delta (from the bootstrap interval), in top-1 fractions."""
    a, b = correctness(results, op), correctness(results, hs)
    boot = two_level_bootstrap(a, b, delta=cfg.delta / 100, reps=cfg.bootstrap, level=cfg.level)
    per_rep = (a.mean(axis=1) - b.mean(axis=1)).tolist()
    return {"op": op, "hs": hs, "bootstrap": boot.to_json(), "t_interval": t_interval(per_rep, cfg.level).to_json(),
            "per_replicate_diff": per_rep, "op_per_replicate": a.mean(axis=1).tolist(),
            "hs_per_replicate": b.mean(axis=1).tolist(),
            "verdict": verdict(boot.diff.low, boot.diff.high, cfg.delta / 100),
            "verdict_t": verdict(*_t_bounds(per_rep, cfg.level), cfg.delta / 100)}


def _t_bounds(values: list[float], level: float) -> tuple[float, float]:
    t = t_interval(values, level)
    return t.low, t.high


def summarize(cfg: StudyConfig, results: list[dict[str, Any]], provenance: dict[str, Any]) -> dict[str, Any]:
    arms = list(cfg.arms)
    primary = arms[0]
    comparisons = {arm: compare(results, f"op:{arm}", "hs", cfg) for arm in arms}
    matched = {arm: compare(results, f"op:{arm}", f"matched:{arm}", cfg)
               if all(doc["matched"][arm].get("retrain") for doc in results) else None for arm in arms}
    costs = {arm: {"core_seconds": [d["arms"][arm]["core_seconds"] for d in results],
                   "epochs": [d["arms"][arm]["epochs"] for d in results],
                   "resumed": [d["arms"][arm]["resumed"] for d in results]} for arm in arms}
    grid_core = [d["hs"]["grid_core_seconds"] for d in results]
    grid_epochs = [d["hs"]["grid_epochs"] for d in results]
    ratios = {arm: {"core_seconds": float(np.sum(grid_core) / np.sum(costs[arm]["core_seconds"])),
                    "epochs": float(np.sum(grid_epochs) / np.sum(costs[arm]["epochs"]))} for arm in arms}
    picks = [{"seed": d["seed"], "pick": d["hs"]["pick"]["name"], "val_top1": d["hs"]["pick"]["val_top1"],
              "interior": d["hs"]["interior"], "extension": d["hs"]["extension"],
              "matched": (d["matched"][primary]["pick"] or {}).get("name"),
              "matched_taken": len(d["matched"][primary]["taken"]),
              "matched_arms": {arm: {"pick": (d["matched"][arm]["pick"] or {}).get("name"),
                                     "taken": len(d["matched"][arm]["taken"])} for arm in arms},
              "candidates": len(d["hs"]["candidates"]),
              "op_path": d["arms"][primary]["path"],
              "op_paths": {arm: d["arms"][arm]["path"] for arm in arms}} for d in results]
    return {"study": cfg.name, **{k: v for k, v in provenance.items()}, "delta_points": cfg.delta,
            "replicates": cfg.replicates, "test_videos": len(results[0]["video_ids"]),
            "comparisons": comparisons, "matched_budget": matched[primary], "matched_budgets": matched, "cost": costs,
            "grid_cost": {"core_seconds": grid_core, "epochs": grid_epochs}, "ratios": ratios, "picks": picks,
            "replicate_wall_seconds": [d.get("wall_seconds") for d in results]}


def _pct(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.1f}"


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _matched_pick(pick: dict[str, Any], arm: str) -> dict[str, Any]:
    """One replicate's matched-budget pick for an arm (results before arms had their own: the primary's)."""
    return (pick.get("matched_arms") or {arm: {"pick": pick["matched"], "taken": pick["matched_taken"]}})[arm]


def markdown(doc: dict[str, Any]) -> str:
    """The one table: per side top-1 with its two-level interval and per-replicate values,
    then OP - HS with the verdict at delta, the picks and the cost ratios."""
    level = "95%"
    arms = list(doc["comparisons"])
    primary = arms[0]
    first = doc["comparisons"][primary]
    lines = [f"# Study `{doc['study']}`", "",
             f"Config `{doc['config_path']}` sha256 `{doc['config_sha256'][:16]}`, commit `{(doc['commit'] or '?')[:12]}`"
             + (f" — **not the committed config: {doc['dirty']}** (--allow-dirty)" if doc["dirty"] else "")
             + (" (code had uncommitted changes)" if doc.get("code_dirty") else "") + ".",
             f"{len(doc['replicates'])} replicates (seeds {', '.join(map(str, doc['replicates']))}), "
             f"{doc['test_videos']} held-out videos, delta = {doc['delta_points']:g} points.", "",
             f"| Side | Top-1 (%) | {level} two-level interval | per replicate | core-s (mean) | epochs (mean) |",
             "|---|---|---|---|---|---|"]

    def row(label: str, boot_side: dict[str, float], per_rep: list[float], core: float | None,
            epochs: float | None) -> str:
        reps = ", ".join(_pct(v) for v in per_rep)
        c = "–" if core is None else f"{core:.0f}"
        e = "–" if epochs is None else f"{epochs:.0f}"
        return (f"| {label} | {_pct(boot_side['mean'])} | [{_pct(boot_side['low'])}, {_pct(boot_side['high'])}] | "
                f"{reps} | {c} | {e} |")

    for arm in arms:
        cmp = doc["comparisons"][arm]
        cost = doc["cost"][arm]
        lines.append(row(f"OP `{arm}` (planned path, retrained)", cmp["bootstrap"]["a"], cmp["op_per_replicate"],
                         float(np.mean(cost["core_seconds"])), float(np.mean(cost["epochs"]))))
    picks = "; ".join(f"{p['pick']} (interior: {'yes' if p['interior'] else 'no'})" for p in doc["picks"])
    lines.append(row(f"HS: validation pick of the full grid — {picks}", first["bootstrap"]["b"],
                     first["hs_per_replicate"], float(np.mean(doc["grid_cost"]["core_seconds"])),
                     float(np.mean(doc["grid_cost"]["epochs"]))))
    matched = doc.get("matched_budgets") or {primary: doc["matched_budget"]}  # older results: the primary's only
    for arm, m in matched.items():
        mp = "; ".join(f"{_matched_pick(p, arm)['pick'] or 'none'} (of {_matched_pick(p, arm)['taken']} cheapest)"
                       for p in doc["picks"])
        if m is not None:
            lines.append(row(f"HS at OP `{arm}`'s budget — {mp}", m["bootstrap"]["b"], m["hs_per_replicate"],
                             None, None))
        else:
            lines.append(f"| HS at OP `{arm}`'s budget — {mp} | – | – | – | – | – |")
    lines += ["", "| OP − HS | points | two-level interval | t-interval over replicates | per replicate | "
              "p (= 0) | p (<= −delta) | verdict at delta |", "|---|---|---|---|---|---|---|---|"]
    rows = [(f"OP `{a}` − HS (full grid)", doc["comparisons"][a]) for a in arms]
    rows += [(f"OP `{a}` − HS (matched budget)", m) for a, m in matched.items() if m is not None]
    for label, cmp in rows:
        d, t = cmp["bootstrap"]["diff"], cmp["t_interval"]
        lines.append(f"| {label} | {_pts(d['mean'])} | [{_pts(d['low'])}, {_pts(d['high'])}] | "
                     f"[{_pts(t['low'])}, {_pts(t['high'])}] | {', '.join(_pts(v) for v in cmp['per_replicate_diff'])} | "
                     f"{cmp['bootstrap']['p_zero_text']} | {cmp['bootstrap']['p_margin_text']} | "
                     f"**{cmp['verdict']}** (t: {cmp['verdict_t']}) |")
    lines += [""] + [f"Grid : OP `{a}` = {r['core_seconds']:.1f} : 1 in core-seconds, {r['epochs']:.1f} : 1 in epochs "
                     f"(grid: {doc['picks'][0]['candidates']} candidates incl. extensions; both sides' training and "
                     f"scoring)." for a, r in doc["ratios"].items()]
    for p in doc["picks"]:
        ext = f"; extension trained: {', '.join(p['extension'])}" if p["extension"] else ""
        paths = p.get("op_paths") or {primary: p["op_path"]}
        op = "; ".join(f"OP `{a}` path {' → '.join(path)}" for a, path in paths.items())
        lines.append(f"- seed {p['seed']}: {op}; HS pick {p['pick']} (val {_pct(p['val_top1'])}%){ext}")
    if any(any(c["resumed"]) for c in doc["cost"].values()):
        lines.append("- a planning was resumed after an interruption: its core-seconds count only the last part")
    return "\n".join(lines) + "\n"

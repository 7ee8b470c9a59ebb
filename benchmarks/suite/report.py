"""Summaries of the suite's runs: rate selection, statistics, the table.

Rate selection (the rule the suite's docstring states): for a grid
baseline, each rate's mean final VALIDATION loss over seeds is compared,
rates with a non-finite run are excluded, and the rate with the lowest
mean is chosen; the reported numbers are that rate's TEST loss and
metric. Nothing is chosen on test data.
"""

import math

import numpy as np


def _values(runs, key):
    return [r[key] for r in runs if r["finite"] and r[key] is not None]


def stats(runs, metric):
    """Mean and sd over the finite runs of test loss and test metric."""
    losses = _values(runs, "test_loss")
    metrics = _values(runs, f"test_{metric}")
    nan = float("nan")
    return {
        "test_loss_mean": float(np.mean(losses)) if losses else nan,
        "test_loss_sd": float(np.std(losses)) if losses else nan,
        "test_metric_mean": float(np.mean(metrics)) if metrics else nan,
        "test_metric_sd": float(np.std(metrics)) if metrics else nan,
        "val_loss_mean": (float(np.mean(_values(runs, "val_loss")))
                          if losses else nan),
        "nonfinite": sum(not r["finite"] for r in runs),
        "runs": len(runs),
    }


def select_rate(runs_by_rate):
    """The rate whose runs have the lowest mean validation loss.

    Args:
        runs_by_rate: {rate: [run dicts]}.

    Returns:
        (rate, {rate: mean validation loss or None}); rate is None when
        every rate had a non-finite run.
    """
    means = {}
    for rate, runs in runs_by_rate.items():
        ok = runs and all(r["finite"] and r["val_loss"] is not None
                          for r in runs)
        means[rate] = float(np.mean([r["val_loss"] for r in runs])) if ok \
            else None
    finite = {k: v for k, v in means.items() if v is not None}
    return (min(finite, key=finite.get) if finite else None), means


def summarize(runs, groups, metric):
    """Per-optimizer summary of one (workload, steps) cell.

    Args:
        runs: {spec key: [run dict per seed]}.
        groups: {optimizer name: ("grid", {rate: spec key}) or
            ("single", spec key)}.
        metric: the workload's metric name.
    """
    out = {}
    for name, (kind, keys) in groups.items():
        if kind == "single":
            out[name] = dict(stats(runs[keys], metric), rate=None)
            continue
        rate, means = select_rate({r: runs[k] for r, k in keys.items()})
        chosen = runs[keys[rate]] if rate is not None else []
        entry = stats(chosen, metric) if chosen else stats([], metric)
        entry.update(rate=rate, val_loss_by_rate=means,
                     grid_nonfinite=sum(not r["finite"] for k in keys.values()
                                        for r in runs[k]))
        out[name] = entry
    base = out.get("adam_best", {}).get("test_loss_mean")
    for entry in out.values():
        entry["ratio_to_adam_best"] = (entry["test_loss_mean"] / base
                                       if base else float("nan"))
    return out


def table_rows(workload, steps, summary):
    """Rows of the stdout table for one (workload, steps) cell."""
    rows = []
    for name, e in summary.items():
        rows.append([
            workload, steps, name,
            "" if e["rate"] is None else f"{e['rate']:g}",
            f"{e['test_loss_mean']:.4g} ± {e['test_loss_sd']:.2g}",
            f"{e['ratio_to_adam_best']:.3f}",
            f"{e['test_metric_mean']:.4g}",
            f"{e['nonfinite']}/{e['runs']}"])
    return rows


TABLE_HEADER = ["workload", "steps", "optimizer", "rate",
                "test loss mean ± sd", "/adam_best", "test metric",
                "non-finite"]


def goal_counts(cells, learned_names):
    """Per learned optimizer and step count: on how many workloads its
    mean test loss is <= Adam-best, <= 1.2x Adam-best, < Adam(1e-3), and
    `mean_log_ratio`, the mean over workloads of log(its mean test loss /
    Adam-best's): the dev set's selection score (lower is better; inf with
    a non-finite run)."""
    out = {}
    for name in learned_names:
        for (workload, steps), summary in cells.items():
            if name not in summary or "adam_best" not in summary:
                continue
            e, best = summary[name], summary["adam_best"]
            c = out.setdefault(name, {}).setdefault(str(steps), {
                "workloads": 0, "le_adam_best": 0, "le_1.2x_adam_best": 0,
                "lt_adam_1e-3": 0, "nonfinite": 0, "mean_log_ratio": 0.0})
            ratio = e["test_loss_mean"] / best["test_loss_mean"]
            log_ratio = (math.log(ratio) if e["nonfinite"] == 0
                         and ratio > 0 else math.inf)
            c["mean_log_ratio"] += (log_ratio - c["mean_log_ratio"]) / (
                c["workloads"] + 1)
            c["workloads"] += 1
            c["le_adam_best"] += int(ratio <= 1.0)
            c["le_1.2x_adam_best"] += int(ratio <= 1.2)
            if "adam_1e-3" in summary:
                c["lt_adam_1e-3"] += int(e["test_loss_mean"] <
                                         summary["adam_1e-3"]["test_loss_mean"])
            c["nonfinite"] += e["nonfinite"]
    return out

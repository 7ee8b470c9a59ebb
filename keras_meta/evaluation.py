"""Few-shot evaluation: query loss after adaptation, with confidence intervals."""

import math

import numpy as np

# Two-sided normal quantiles; 1,000+ tasks make the normal approximation tight.
_Z = {0.9: 1.6449, 0.95: 1.9600, 0.99: 2.5758}


def mean_confidence_interval(values, confidence=0.95):
    """Mean of `values` and the half-width of its confidence interval.

    Args:
        values: 1-D array of per-task results.
        confidence: 0.9, 0.95 or 0.99.

    Returns:
        `(mean, half_width)` such that the interval is mean +- half_width.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size < 2:
        raise ValueError(
            f"A confidence interval needs at least 2 values; got {values.size}."
        )
    if confidence not in _Z:
        raise ValueError(
            f"`confidence` must be one of {sorted(_Z)}; got {confidence!r}."
        )
    half = _Z[confidence] * values.std(ddof=1) / math.sqrt(values.size)
    return float(values.mean()), float(half)


def adaptation_results(maml, episodes, num_tasks, steps):
    """Per-task results of adapting to new tasks.

    Args:
        maml: a compiled `keras_meta.MAML`.
        episodes: an iterable (e.g. a `tf.data.Dataset`) of episode batches.
        num_tasks: how many tasks to evaluate.
        steps: the number of inner steps.

    Returns:
        A dict of numpy arrays: `losses` [num_tasks, steps + 1], the query
        loss after 0..steps inner steps; `accuracy` [num_tasks], the query
        accuracy after `steps` steps (argmax of the predictions; only for
        integer class targets).
    """
    losses, accuracy, seen = [], [], 0
    for batch in episodes:
        results = maml.task_results(batch, steps=steps)
        losses.append(results["losses"].numpy())
        labels = np.asarray(batch["query_y"])
        if np.issubdtype(labels.dtype, np.integer):
            predicted = np.argmax(results["predictions"].numpy(), axis=-1)
            accuracy.append((predicted == labels).mean(axis=1))
        seen += len(losses[-1])
        if seen >= num_tasks:
            break
    if seen < num_tasks:
        raise ValueError(
            f"The episodes ran out after {seen} tasks; {num_tasks} were asked."
        )
    out = {"losses": np.concatenate(losses)[:num_tasks]}
    if accuracy:
        out["accuracy"] = np.concatenate(accuracy)[:num_tasks]
    return out


def few_shot_table(maml, make_episodes, shots=(5, 10, 20), steps=(1, 10),
                   num_tasks=1000, confidence=0.95):
    """Query loss after adaptation for several support sizes and step counts.

    Args:
        maml: a compiled `keras_meta.MAML`.
        make_episodes: `fn(shots) -> dataset` of held-out episode batches.
        shots: support sizes K.
        steps: numbers of inner steps.
        num_tasks: tasks per K.
        confidence: confidence level of the intervals.

    Returns:
        A list of dicts with keys shots, steps, mean, ci, tasks, and the
        `divergence_counts` keys non_finite, above_1e3 and median.
    """
    table = []
    for k in shots:
        losses = adaptation_results(maml, make_episodes(k), num_tasks,
                                    max(steps))["losses"]
        for s in steps:
            mean, ci = mean_confidence_interval(losses[:, s], confidence)
            table.append(dict(shots=k, steps=s, mean=mean, ci=ci,
                              tasks=num_tasks,
                              **divergence_counts(losses[:, s])))
    return table


def divergence_counts(values, large=1e3):
    """How many per-task results are not finite or implausibly large.

    A diverged inner loop turns a mean into inf/NaN or a huge number; these
    counts (and the median) say whether a few tasks or all of them did.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return dict(
        non_finite=int(values.size - finite.size),
        above_1e3=int((finite > large).sum()),
        median=float(np.median(finite)) if finite.size else float("nan"),
    )


def format_table(table, metric="query MSE", scale=1.0, digits=3):
    """Formats table rows (dicts with the keys below) as Markdown.

    Rows carry `mean`, `ci` and `tasks`, and may carry `ways`, `shots` and
    `steps`, which become columns when present.
    """
    keys = [k for k in ("ways", "shots", "steps") if k in table[0]]
    titles = {"ways": "N", "shots": "K", "steps": "steps"}
    diverged = "non_finite" in table[0]
    extra = " median | diverged (non-finite / > 1e3) |" if diverged else ""
    lines = ["| " + " | ".join(titles[k] for k in keys)
             + f" | {metric} (mean +- 95% CI) |{extra} tasks |",
             "|" + " --- |" * (len(keys) + 2 + 2 * diverged)]
    for row in table:
        cells = [str(row[k]) for k in keys]
        cells.append(f"{scale * row['mean']:.{digits}f} +- "
                     f"{scale * row['ci']:.{digits}f}")
        if diverged:
            cells.append(f"{scale * row['median']:.{digits}f}")
            cells.append(f"{row['non_finite']} / {row['above_1e3']}")
        cells.append(str(row["tasks"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

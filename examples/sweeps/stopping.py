"""Early stopping of clearly bad trials: the median stopping rule.

The rule of Google Vizier (Golovin et al., 2017): a running trial is stopped
at step s if its best progress value so far is worse than the median of the
best values, up to step s, of the other trials that have reached step s.
It needs no synchronisation between trials (unlike successive halving), so
it works with any `--parallel`, including 1, and never pauses a trial.
"""

import dataclasses
import statistics

from examples.sweeps import goals


def best_so_far(curve, step, goal):
    """Best finite value of `curve` (`[(step, value)]`) at steps <= `step`,
    or None if there is none."""
    values = [v for s, v in curve if s <= step and goals.is_finite(v)]
    if not values:
        return None
    return min(values) if goal == "minimize" else max(values)


def diverged(curve):
    """True if the latest progress value is NaN or infinite."""
    return bool(curve) and not goals.is_finite(curve[-1][1])


@dataclasses.dataclass(frozen=True)
class MedianStoppingRule:
    """Stops a trial whose best value is worse than the median of its peers.

    Attributes:
        goal: "minimize" or "maximize" (of the progress metric).
        grace_steps: never stop a trial before this step.
        min_trials: the fewest peers that must have reached the step.

    Example:
        >>> rule = MedianStoppingRule(grace_steps=2, min_trials=3)
        >>> peers = [[(2, 1.0)], [(2, 2.0)], [(2, 3.0)]]
        >>> rule.should_stop([(1, 9.0), (2, 5.0)], peers)
        True
        >>> rule.should_stop([(1, 9.0), (2, 1.5)], peers)
        False
    """

    goal: str = "minimize"
    grace_steps: int = 0
    min_trials: int = 3

    def should_stop(self, curve, peers):
        """Whether the trial with progress `curve` should stop now.

        Args:
            curve: this trial's `[(step, value)]`, sorted by step.
            peers: the other trials' curves (finished or still running).
        """
        if not curve:
            return False
        step = curve[-1][0]
        if step < self.grace_steps:
            return False
        mine = best_so_far(curve, step, self.goal)
        if mine is None:
            return False  # Non-finite: `diverged` says so.
        references = []
        for peer in peers:
            if not peer or peer[-1][0] < step:
                continue  # Not there yet: no fair comparison.
            best = best_so_far(peer, step, self.goal)
            references.append(goals.sort_key(best, self.goal))
        if len(references) < self.min_trials:
            return False
        return goals.sort_key(mine, self.goal) > statistics.median(
            references)

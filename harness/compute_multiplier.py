"""
An effect as a compute multiplier: how much more training compute the baseline needs to reach the candidate's
final val_bpb, divided by the compute the candidate used.

A bpb delta means different things at different scales and horizons; a compute multiplier carries across them
and translates into time-to-target (a 1.1x multiplier is ~10% less time to the same loss at equal throughput).
The baseline's learning curve (val_bpb at each evaluation against training FLOPs so far, averaged over the
decision's seeds) is interpolated linearly in log-log between the two evaluations that bracket the candidate's
final val_bpb. A candidate better than the baseline's last evaluation lies beyond the curve: the last segment is
extended (flagged `extrapolated`); that segment spans the end of the learning-rate warm-down, where the curve is
steepest, so extrapolated multipliers lean small. Intermediate evaluations come from a run that had not finished
its warm-down, so they sit above what a run budgeted to that point would reach: interpolated multipliers of
worse candidates lean towards 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ComputeMultiplier:
    value: float | None             # baseline compute to reach the candidate's val_bpb / candidate compute
    extrapolated: bool              # the candidate's val_bpb lies outside the baseline's curve

    def describe(self) -> str:
        if self.value is None:
            return "n/a"
        return f"{self.value:.3g}x" + (" (extrapolated)" if self.extrapolated else "")


def compute_multiplier(curve: list[tuple[float, float]], candidate_bpb: float, candidate_compute: float) -> ComputeMultiplier:
    """`curve`: the baseline's (compute, val_bpb) points (any order; points at zero compute are skipped). The
    compute the baseline needs to reach `candidate_bpb` over `candidate_compute`."""
    points = sorted((c, v) for c, v in curve if c > 0 and v > 0 and math.isfinite(v))
    if len(points) < 2 or not candidate_bpb > 0 or not candidate_compute > 0:
        return ComputeMultiplier(None, False)
    logs = [(math.log(c), math.log(v)) for c, v in points]
    target = math.log(candidate_bpb)
    # The first evaluation at or below the target: the baseline reaches it between that point and the one before.
    reached = next((i for i, (_, y) in enumerate(logs) if y <= target), None)
    if reached is not None and reached > 0:
        (x0, y0), (x1, y1) = logs[reached - 1], logs[reached]
        extrapolated = False
    elif reached == 0:  # worse than the baseline's first evaluation: extend the first segment backwards
        (x0, y0), (x1, y1) = logs[0], logs[1]
        extrapolated = y0 != target
    else:  # better than anything the baseline reached: extend the last segment
        (x0, y0), (x1, y1) = logs[-2], logs[-1]
        extrapolated = True
    if y1 == y0:
        return ComputeMultiplier(None, extrapolated)
    x = x0 + (target - y0) * (x1 - x0) / (y1 - y0)
    if extrapolated and y1 >= y0:  # a flat or rising end says nothing about where the curve would go
        return ComputeMultiplier(None, True)
    return ComputeMultiplier(math.exp(x) / candidate_compute, extrapolated)

"""Summary statistics of repeated timings: the 20th, 50th (primary) and 80th percentiles."""
import math

PERCENTILES = (20, 50, 80)


def percentile(values, q):
    """The q-th percentile (0..100) with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def summarize(values):
    """{'p20', 'p50', 'p80'} of `values`."""
    return {f"p{q}": percentile(values, q) for q in PERCENTILES}


def speedup(baseline_ms, candidate_ms):
    """How many times faster `candidate` is than `baseline` (> 1 means faster); None if either is missing."""
    if baseline_ms is None or candidate_ms is None or candidate_ms <= 0:
        return None
    return baseline_ms / candidate_ms

"""The naive baseline: the seed design followed literally, for the benchmark's ratios."""

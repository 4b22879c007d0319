"""Analysis over a sweep's stored results: paired verdicts, divergence maps, budget curves, profiles, trajectories."""

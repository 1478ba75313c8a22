"""Ray Train: the per-worker loop, one optimisation step, the driver's fit, resume, throughput and the live metrics."""

"""Ray Train: the per-worker loop (`train_worker`), one optimisation step (`train_step`), the driver's fit
(`trainer`), the run's recorded config (`run_record`), throughput and the live metrics (`watch`). Where a run
resumes from is `data.resume`."""

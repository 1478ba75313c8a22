"""gemini_ray: distil a large teacher LM into a small student with KD + contrastive learning, on Ray."""

import os

# Ray Data shares the cluster between running datasets through a coordinator. A dataset whose executor
# dies with its Train run (the training stream, stopped at max_steps) keeps its share until its request
# expires, 180 s by default, and on a small machine the next run's stream gets nothing until then. Live
# requests are renewed every ~10 s, so 30 s is safe. Read when Ray Data is imported and inherited by the
# processes of a Ray instance this process starts (set it on the nodes of a cluster you start yourself).
os.environ.setdefault("RAY_DATA_AUTOSCALING_REQUEST_EXPIRE_TIME_S", "30")
# Ray Train V2 hands a worker's report to the controller through a queue of one, and the controller
# empties it once per health check, every 2 s by default: a worker that reports more often than that
# waits (measured here: 2.0 s per step with train.log_every=1 on a model whose steps take milliseconds).
# A 0.25 s poll keeps that wait below a small step's own time.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")

__version__ = "0.1.0"

"""gemini_ray: distil a large teacher LM into a small student with KD + contrastive learning, on Ray."""

import os

# Ray Data shares the cluster between running datasets through a coordinator. A dataset whose executor
# dies with its Train run (the training stream, stopped at max_steps) keeps its share until its request
# expires, 180 s by default, and on a small machine the next run's stream gets nothing until then. Live
# requests are renewed every ~10 s, so 30 s is safe. Read when Ray Data is imported and inherited by the
# processes of a Ray instance this process starts (set it on the nodes of a cluster you start yourself).
os.environ.setdefault("RAY_DATA_AUTOSCALING_REQUEST_EXPIRE_TIME_S", "30")

__version__ = "0.1.0"

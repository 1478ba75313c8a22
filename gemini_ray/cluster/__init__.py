"""The Ray edge of every command: resolving the teacher and joining Ray (`session`), the resource plan
checked against the nodes (`placement`), and the lock that keeps one command per run folder (`run_lock`)."""

"""The Ray edge of every command: joining Ray, the resource plan checked against the nodes, and the lock that keeps one run per folder."""

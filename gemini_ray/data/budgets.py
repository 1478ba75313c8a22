"""What each Ray Data stage asks of a CPU, and how large its blocks are. The stages read them from here, and
so does `cluster.placement`, which checks a run's resource plan against the nodes before anything starts.
How the values were chosen is in docs/performance.md."""

LIGHT_CPUS = 0.1
"""CPUs per task of the cheap row operations (filter, column selection) in datasets that stream beside the
trainer. On a small machine the Train workers and the teacher pool hold almost every CPU, and an operation
that asks for a whole one would wait forever."""

STREAM_TOKENIZE_CPUS = 0.2
"""CPUs per tokenize-and-pair task of a corpus that streams beside the trainer (its reads take LIGHT_CPUS):
the default plan on 2 CPUs leaves 0.3 beside one Train worker, the teacher actor and the miner."""

PASS_READ_CPUS = 0.1
"""CPUs per read task of a corpus pass that runs alone (before a trainer starts, or `gemini-ray label`): the
tokenize actors leave this much of every CPU free, so reads run beside them."""

PASS_TOKENIZE_CPUS = 0.9
"""CPUs per tokenize-and-pair actor of a corpus pass that runs alone: one actor per CPU of the cluster. An
actor keeps its next blocks queued, where a task pool leases a worker and fetches a block after every task."""

CACHE_READ_CPUS = 0.25
"""CPUs per cache-read task: a Tune trial's driver and trainer hold the rest."""

CORPUS_BLOCK_BYTES = 4 * 1024 * 1024
"""Target block size of the corpus dataset (documents, then examples): a block is the unit of parallelism of
the tokenize tasks and of streaming, so a one-file corpus is cut into many as it is read. Each task costs Ray
a fixed ~0.2 s beside its work; a 4 MiB block tokenizes in about two seconds."""

STREAM_BLOCK_BYTES = 1024 * 1024
"""Target block size of a corpus that streams beside the trainer through the online teacher: its blocks (and
the teacher stage's after it) are what the trainer waits for, so they are smaller than a pass's."""

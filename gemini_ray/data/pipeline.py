"""Ray Data assembly after the corpus pass (`gemini_ray.data.corpus_pass`): teacher (actor pool) → hard-negative
mining, and the teacher-signal cache (written by `gemini-ray label`, streamed by distill and tune).

The stages themselves are plain callables in `gemini_ray.data`; this module only wires them onto Ray.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data
from ray.data import ActorPoolStrategy

from gemini_ray.config import Config
from gemini_ray.data.budgets import CACHE_READ_CPUS, LIGHT_CPUS
from gemini_ray.data.corpus_pass import to_arrays
from gemini_ray.data.mining import HardNegativeMiner
from gemini_ray.data.resume import drop_trained, encode
from gemini_ray.data.teacher_stage import teacher_backend
from gemini_ray.data.vllm_teacher import engine_placement
from gemini_ray.errors import GeminiRayError
from gemini_ray.paths import open_dir

__all__ = ["label_rows", "label_and_mine", "teacher_actor_args", "teacher_token_counter", "read_cache",
           "read_cached_signal", "read_held_out", "TRAIN_COLUMNS", "STREAM_COLUMNS"]

TRAIN_COLUMNS = ["input_ids", "attention_mask", "label_mask", "topk_ids", "topk_logits", "topk_mass",
                 "teacher_embedding", "neg_input_ids", "neg_attention_mask", "neg_mask", "teacher_tokens", "random_negatives",
                 "missing_negatives", "doc_id", "span_hash"]
"""What a cache stores for the trainer (example ids and the split name stay behind); document ids and span
hashes say which rows of a batch may serve as each other's negatives."""

STREAM_COLUMNS = TRAIN_COLUMNS + ["position"]
"""What the trainer reads: the cache's columns and each row's position in its pass (what a resume skips)."""


@ray.remote(num_cpus=0)
class TeacherTokenCounter:
    """Counts tokens pushed through teacher forwards in this Ray session (the cache's proof of work), and the
    teacher actors started (each loads the teacher)."""

    def __init__(self) -> None:
        self.tokens = 0
        self.actors = 0

    def add(self, n: int) -> None:
        self.tokens += n

    def total(self) -> int:
        return self.tokens

    def started(self) -> None:
        self.actors += 1

    def starts(self) -> int:
        return self.actors


COUNTER_NAME = "gemini_ray_teacher_tokens"


def teacher_token_counter():
    """The session's counter actor (created on first use)."""
    return TeacherTokenCounter.options(name=COUNTER_NAME, get_if_exists=True, lifetime="detached").remote()


class CountingTeacherLabeler:
    """The teacher actor: the backend `teacher.backend` names (`teacher_stage.BACKENDS`), reporting every
    forward's real tokens to the session's counter actor. (Fault tests find its actors by this class name.)"""

    def __init__(self, teacher_cfg: dict, span_length: int | None = None):
        self.teacher = teacher_backend(teacher_cfg.get("backend", "hf"))(teacher_cfg, span_length=span_length)
        self.counter = teacher_token_counter()
        self.counter.started.remote()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.teacher(batch)
        self.counter.add.remote(int(out["teacher_tokens"].sum()))
        return out


def teacher_actor_args(cfg: Config) -> dict[str, Any]:
    """map_batches arguments of the teacher actor pool: the actor holds its GPUs and custom resources; an
    actor of a vLLM engine over several GPUs holds none itself and is placed in a placement group of its own
    that the engine's workers fill (`vllm_teacher.engine_placement`, as `ray.data.llm` places engines)."""
    t = cfg.teacher
    teacher_cfg = dataclasses.asdict(t)
    args: dict[str, Any] = {
        "fn_constructor_kwargs": {"teacher_cfg": teacher_cfg, "span_length": cfg.data.span_length},
        "compute": ActorPoolStrategy(size=t.num_actors),
        "batch_size": max(1, t.batch_size // 2),  # one example holds two windows
        "num_cpus": t.num_cpus,
        "num_gpus": t.num_gpus,
        "resources": dict(t.resources) or None,  # e.g. {teacher: 1}: only nodes that offer it
    }
    if t.backend == "vllm" and t.tensor_parallel_size * t.pipeline_parallel_size > 1:
        args.update(num_gpus=0, ray_remote_args_fn=functools.partial(engine_placement, teacher_cfg))
    return args


def _teacher_stage(cfg: Config, examples: ray.data.Dataset) -> ray.data.Dataset:
    return examples.map_batches(CountingTeacherLabeler, batch_format="numpy", **teacher_actor_args(cfg))


def label_and_mine(cfg: Config, examples: ray.data.Dataset) -> ray.data.Dataset:
    """Online: teacher top-k + embeddings on a fixed actor pool, then hard negatives per window (lazy)."""
    labelled = _teacher_stage(cfg, examples)
    return labelled.map_batches(
        StreamMiner,
        fn_constructor_kwargs={"num_negatives": cfg.loss.num_negatives, "seed": cfg.mining.seed,
                               "span_length": cfg.data.span_length},
        compute=ActorPoolStrategy(size=1),
        batch_size=cfg.mining.window,
        num_cpus=LIGHT_CPUS,
        batch_format="numpy",
    )


class StreamMiner(HardNegativeMiner):
    """HardNegativeMiner that keeps only the columns the trainer reads (STREAM_COLUMNS): in the miner's own
    task, not in a column-selection operator after it that could wait for a CPU (see _pair_documents)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        mined = super().__call__(batch)
        return {k: mined[k] for k in STREAM_COLUMNS}


def label_rows(cfg: Config, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """A few tokenized rows (the held-out ones, one dict of column arrays) labelled by the teacher pool and
    mined, as one dict again."""
    from ray.data.block import BlockAccessor

    return to_arrays(label_and_mine(cfg, ray.data.from_arrow(BlockAccessor.batch_to_block(rows))))


# --------------------------------------------------------------------------- the teacher-signal cache


def shard_order(shards: list[int], seed: int, epoch: int, shuffle_first: bool = False) -> list[int]:
    """The order in which pass `epoch` (0-based) reads the cache's training shards: ascending on the first pass
    (unless shuffle_first: train.shuffle_first_pass), then a permutation seeded by the seed and the pass (a
    shard is a hash bucket of example ids, so each order is a fresh mix of the corpus; `train.shuffle_buffer`
    mixes the rows within it)."""
    ordered = sorted(shards)
    if epoch == 0 and not shuffle_first:
        return ordered
    return [ordered[i] for i in np.random.default_rng([seed, epoch]).permutation(len(ordered))]


def _read_shard(fs: Any, path: str, shard: int, num_negatives: int) -> dict[str, np.ndarray]:
    """One cache shard's training columns with its first `num_negatives` negatives, each row with its
    position (shard, row in the file)."""
    import pyarrow.parquet as pq
    from ray.data.block import BlockAccessor

    from gemini_ray.data.cache import shard_name

    where = f"{path}/{shard_name(shard)}"
    try:
        table = pq.read_table(where, filesystem=fs, columns=TRAIN_COLUMNS + ["row"])
    except (OSError, pa.ArrowException) as exc:  # damaged after check_shards looked, or in its data pages
        raise GeminiRayError(
            f"teacher-signal cache shard '{where}' does not read ({str(exc).strip()[:200]}). Delete it and "
            "run 'gemini-ray label' with the same config: it labels the missing shard again.") from None
    part = BlockAccessor.for_block(table).to_batch_format("numpy")
    for key in ("neg_input_ids", "neg_attention_mask", "neg_mask"):
        part[key] = np.ascontiguousarray(part[key][:, :num_negatives])
    part["position"] = encode(np.full(len(part["row"]), shard, dtype=np.int64), part.pop("row"))
    return part


def read_held_out(directory: str, manifest: dict, num_negatives: int) -> dict[str, np.ndarray] | None:
    """The cache's held-out rows as one dict of arrays (None without any): its held-out shards in order, cut
    to the manifest's `val_rows` (data.max_val_examples; the first held-out examples in corpus order). Read
    here: they are a few hundred rows."""
    if not manifest["shards_val"]:
        return None
    fs, path = open_dir(directory)
    cap = manifest.get("val_rows")
    parts, held = [], 0
    for shard in manifest["shards_val"]:
        if cap is not None and held >= cap:
            break
        parts.append(_read_shard(fs, path, shard, num_negatives))
        held += len(parts[-1]["position"])
    rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return rows if cap is None else {k: v[:cap] for k, v in rows.items()}


def read_cache(directory: str, shards: list[int], num_negatives: int, plan=None,
               consumed: frozenset[int] = frozenset(), seed: int = 0, shuffle_first: bool = False) -> ray.data.Dataset:
    """Stream the given cache shards, keeping the first (hardest) `num_negatives` negatives, each row with its
    position in the pass: (shard, row in the shard's file), so that a shard left out does not move the
    others. Less the rows a StreamPlan says were trained, and without reading the `consumed` shards (every
    row trained: a resumed run that ends within this pass).

    One task per shard file, and which file a task reads is decided when it runs: the plan says which pass
    the trainer is on, and the task takes its slot of that pass's `shard_order` (without a plan: the first
    pass's). The same stream so serves every pass of a fit in a different order, and a resumed pass in the
    same order as before."""
    fs, path = open_dir(directory)
    slots = len([s for s in shards if s not in consumed])

    def read_slot(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        epoch = 0 if plan is None else ray.get(plan.pass_number.remote())
        order = [s for s in shard_order(shards, seed, epoch, shuffle_first) if s not in consumed]
        parts = [drop_trained(_read_shard(fs, path, order[slot], num_negatives), plan)
                 for slot in batch["slot"].tolist()]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    # fractional CPUs: on a small machine the trainer (and a Tune trial's driver) hold most of them
    return ray.data.from_items([{"slot": i} for i in range(slots)], override_num_blocks=max(slots, 1)).map_batches(
        read_slot, batch_size=1, batch_format="numpy", num_cpus=CACHE_READ_CPUS)


def read_cached_signal(directory: str, manifest: dict, num_negatives: int, plan=None,
                       consumed: frozenset[int] = frozenset(), seed: int = 0,
                       shuffle_first: bool = False) -> tuple[ray.data.Dataset, dict | None]:
    """(training stream, held-out rows as one dict of arrays or None) from a complete cache. The held-out
    rows are small: read once, before a trainer holds its CPUs. consumed: training shards left unread;
    seed: of the shard order of passes after the first, and of the first with shuffle_first (`shard_order`)."""
    from gemini_ray.data.cache import check_shards

    check_shards(directory, manifest)  # a damaged shard: refused now, not by a Ray Data retry mid-run
    stream = read_cache(directory, manifest["shards_train"], num_negatives, plan, consumed, seed, shuffle_first)
    return stream, read_held_out(directory, manifest, num_negatives)

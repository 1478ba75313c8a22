"""`gemini-ray eval MODEL_DIR`: a student (and its teacher, for reference) on a fixed protocol.

Protocol (every number in the report comes from here):
* Language modelling on the held-out documents of the training corpus (the `data.val_fraction` share
  chosen by content hash, never trained on): windows of `eval.lm_window` tokens, at most
  `eval.lm_max_tokens` of them. Causal models: next-token perplexity; masked models: pseudo-perplexity at
  `eval.mlm_probability` seeded masked positions. With the teacher's tokenizer: KL(teacher ‖ model) and
  top-1 agreement with the teacher at the same positions. Each also by range of the predicted token's
  position in its window (1-31, 32-63, 64-127, ...: `by_position`), and, for a student whose training window
  (its recorded `data.seq_length`; `data.span_length` before that key) is not `eval.lm_window`, all of it
  again at its training window (`lm_train_window`), for the teacher too.
* The embedding tasks of `gemini_ray.evaluation.tasks.TASKS`, each with a 95 % bootstrap interval over its
  items: Lee similarity (Spearman between the 1,225 human ratings and the cosine of the models' embeddings)
  and Rotten Tomatoes (a logistic-regression probe on frozen embeddings, train/test split by film).
* Cost: parameters; forward tokens/s of model and teacher timed alternately in one process on the same
  batch; peak resident memory of a fresh process that loads the model and runs that batch.
Embeddings are `models.embed` (mean of the last hidden states over real tokens), the pooling the
contrastive loss trains.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from gemini_ray.config import Config, EvalConfig, TrainConfig
from gemini_ray.errors import GeminiRayError
from gemini_ray.evaluation import tasks as evaluation_tasks
from gemini_ray.evaluation import teacher_row
from gemini_ray.evaluation.metrics import (TokenStats, bootstrap_interval, causal_targets, merge_by_position,
                                           perplexity_ratios, token_stats_by_position)
from gemini_ray.evaluation.tasks import EvalTask
from gemini_ray.process_memory import peak_rss_mib

__all__ = ["Model", "load_model", "evaluate", "evaluate_students", "corpus_against_sets", "markdown_table",
           "read_student_meta", "recorded_settings", "training_window", "position_table",
           "write_report", "versus_teacher", "embedding_scores", "paired_differences", "paired_perplexity",
           "noise_verdict", "compare_pair", "protocol_settings"]


@dataclass
class Model:
    name: str
    source: str
    model: torch.nn.Module
    tokenizer: Any
    kind: str
    vocab: str

    @property
    def device(self) -> torch.device:
        """Where the inputs go: the first layer's device (the CPU, or the first of the task's GPUs)."""
        first = next(self.model.parameters(), None)
        return first.device if first is not None else torch.device("cpu")


def _check_model_dir(path: str, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise GeminiRayError(f"{what} '{path}' does not exist or is not a directory. "
                             "Give a directory written by 'gemini-ray distill' (…/student) or save_pretrained.")
    if not (p / "config.json").is_file():
        raise GeminiRayError(f"{what} '{path}' holds no config.json: not a Hugging Face model directory.")
    if not any(p.glob("*.safetensors")) and not any(p.glob("pytorch_model*.bin")):
        raise GeminiRayError(f"{what} '{path}' holds no weights (*.safetensors). Export the model again.")
    if not any((p / name).is_file() for name in _TOKENIZER_FILES):
        raise GeminiRayError(
            f"{what} '{path}' holds no tokenizer ({', '.join(_TOKENIZER_FILES[:3])}, ...): the evaluation tokenizes "
            "its texts with the model's own. Save it beside the model (tokenizer.save_pretrained(dir), as "
            "'gemini-ray distill' does), or copy the tokenizer files of the model it was made from.")
    return p.resolve()


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model",
                    "spiece.model", "sentencepiece.bpe.model")
"""Files of which a model directory holds at least one when AutoTokenizer can load a tokenizer from it."""

_LOAD_FIX = ("Check the model directory: it needs the config.json, weights and tokenizer files that save_pretrained "
             "writes (an export of 'gemini-ray distill' has them).")


def position_limit(model_dir: Path) -> tuple[str, int] | None:
    """(config key, the most tokens the model reads in one sequence) from its config.json
    (`models.build.position_limit`), or None when it names none or has no readable config.json."""
    from gemini_ray.models.build import position_limit as config_limit

    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # loading the model reports it
    return config_limit(config)


def check_positions(model_dir: Path, e: EvalConfig, what: str, train_window: int | None = None) -> None:
    """Refuse an evaluation whose windows are longer than the model reads: a model with learned positions
    (BERT, GPT-2) fails on the first longer window with an index error, one with rotary positions (Llama)
    scores positions it never learned. Checked from config.json, before the corpus is read. train_window:
    the student's training window, scored as well (`training_window`)."""
    found = position_limit(model_dir)
    if found is None:
        return
    key, limit = found
    if train_window is not None and train_window > limit:
        from gemini_ray.models.export import STUDENT_META

        fix = ("Evaluate against a teacher (--teacher) that reads at least that many positions."
               if what == "the teacher" else "Its recorded settings do not fit it: export it again.")
        raise GeminiRayError(
            f"the student's training window, {train_window} tokens (data.seq_length in its "
            f"{STUDENT_META}), is longer than {what} '{model_dir}' reads: {limit} positions ({key} in its "
            f"config.json); the evaluation scores both models at that window too. {fix}")
    for setting, value, role in (("eval.lm_window", e.lm_window, "the held-out language-modelling window"),
                                 ("eval.max_length", e.max_length, "the tokens kept per embedded text")):
        if value > limit:
            raise GeminiRayError(
                f"{setting}={value}, {role}, is longer than {what} '{model_dir}' reads: {limit} positions "
                f"({key} in its config.json). Set {setting}={limit} (or lower) on the command line or in the "
                "--config file's eval section.")


def training_window(meta: dict[str, Any]) -> int | None:
    """The window a student trained KD on, from its recorded meta (`read_student_meta`): its data.seq_length,
    or its data.span_length when exported before data.seq_length existed (it then trained on spans, each its
    own sequence). None for a model with no recorded data settings."""
    data = meta.get("data") or {}
    window = data.get("seq_length", data.get("span_length"))
    return int(window) if window is not None else None


def read_student_meta(model_dir: str) -> dict[str, Any]:
    """What `distill` recorded next to an exported student ({} for other models)."""
    from gemini_ray.models.export import STUDENT_META

    path = Path(model_dir).expanduser() / STUDENT_META
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def load_model(name: str, source: str, kind: str = "auto") -> Model:
    from gemini_ray.data.cache import vocab_hash
    from gemini_ray.models.build import load_teacher, load_tokenizer

    fix = None if name == "teacher" else _LOAD_FIX  # None: the teacher's own advice (check teacher.model)
    gpus = torch.cuda.device_count()  # the GPUs Ray gave the evaluation task (the teacher's), or none
    device_map = "auto" if gpus > 1 else ("cuda:0" if gpus == 1 else None)
    model, resolved = load_teacher(source, kind, device_map=device_map, **({"fix": fix} if fix else {}))
    tok = load_tokenizer(source, **({"fix": fix} if fix else {}))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return Model(name, source, model, tok, resolved, vocab_hash(tok))


# --------------------------------------------------------------------------- batching


def _pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        att[i, : len(r)] = 1
    return ids, att


@torch.no_grad()
def embed_texts(m: Model, texts: list[str], max_length: int, batch_size: int) -> np.ndarray:
    """(n, H) float32 embeddings; texts are batched by length (less padding), returned in input order."""
    from gemini_ray.models.build import embed

    ids = m.tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = np.zeros((len(texts), m.model.config.hidden_size), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch_ids, att = _pad([ids[i] or [m.tokenizer.pad_token_id] for i in idx], m.tokenizer.pad_token_id)
        out[idx] = embed(m.model, batch_ids.to(m.device), att.to(m.device)).float().cpu().numpy()
    return out


def lm_windows(m: Model, documents: list[str], window: int, max_tokens: int) -> list[list[int]]:
    """Held-out documents cut into windows of `window` tokens (the last, shorter piece of a document is
    kept if it has at least 8 tokens), in corpus order, until `max_tokens`."""
    windows, total = [], 0
    for doc in documents:
        ids = m.tokenizer(doc, add_special_tokens=m.kind == "masked")["input_ids"]
        for start in range(0, len(ids), window):
            piece = ids[start : start + window]
            if len(piece) < 8 or total >= max_tokens:
                continue
            windows.append(piece)
            total += len(piece)
    return windows


def _mask(ids: torch.Tensor, att: torch.Tensor, tok, probability: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded masked-LM corruption: (masked input ids, positions to score)."""
    special = torch.tensor([[t in tok.all_special_ids for t in row] for row in ids.tolist()])
    gen = torch.Generator().manual_seed(seed)
    positions = (torch.rand(ids.shape, generator=gen) < probability) & att.bool() & ~special
    masked = ids.masked_fill(positions, tok.mask_token_id)
    return masked, positions


@torch.no_grad()
def lm_metrics(m: Model, windows: list[list[int]], batch_size: int, reference: Model | None,
               mlm_probability: float, seed: int) -> dict[str, Any]:
    """Perplexity (and, with a reference teacher of the same vocabulary, KL and agreement) over windows, the
    same per range of the predicted token's position in its window (`by_position`, from the same forward),
    and each window's NLL sum and scored tokens (`items`), which paired comparisons between models resample."""
    ranges, window_nll, window_tokens = [], [], []
    offset = 1 if m.kind == "causal" else 0  # the logit at p - 1 predicts token p; a masked token's at p
    for b, start in enumerate(range(0, len(windows), batch_size)):
        ids, att = _pad(windows[start : start + batch_size], m.tokenizer.pad_token_id)
        if m.kind == "causal":
            inputs = ids
            targets, positions = causal_targets(ids, att)
        else:
            inputs, positions = _mask(ids, att, m.tokenizer, mlm_probability, seed + b)
            targets = ids
        logits = m.model(input_ids=inputs.to(m.device), attention_mask=att.to(m.device)).logits.cpu()
        if reference is m:
            ref = logits
        elif reference is not None:
            ref = reference.model(input_ids=inputs.to(reference.device), attention_mask=att.to(reference.device)).logits.cpu()
        else:
            ref = None
        for r in range(len(ids)):  # per window: (1, L, V) slices
            by_range = token_stats_by_position(logits[r : r + 1], targets[r : r + 1], positions[r : r + 1],
                                               None if ref is None else ref[r : r + 1], offset)
            window = TokenStats.total(by_range.values())
            ranges.append(by_range)
            window_nll.append(round(window.nll, 4))
            window_tokens.append(window.count)
    by_position = merge_by_position(ranges)
    with_teacher = reference is not None
    items = {"window_nll": window_nll, "window_tokens": window_tokens}
    return {**TokenStats.total(by_position.values()).summary(with_teacher),
            "by_position": {label: s.summary(with_teacher) for label, s in by_position.items()}, "items": items}


# --------------------------------------------------------------------------- cost


def _peak_rss_child(source: str, kind: str, batch: tuple[int, int], conn) -> None:  # pragma: no cover (child)
    from gemini_ray.models.build import load_teacher

    torch.set_num_threads(1)
    model, _ = load_teacher(source, kind)
    with torch.no_grad():
        model(input_ids=torch.ones(batch, dtype=torch.long), attention_mask=torch.ones(batch, dtype=torch.long))
    conn.send(peak_rss_mib())
    conn.close()


def peak_memory_mib(m: Model, batch: tuple[int, int]) -> float:
    """Peak resident memory (MiB) of a fresh process that loads the model and runs one forward of `batch`."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_peak_rss_child, args=(m.source, m.kind, batch, child))
    proc.start()
    try:
        value = parent.recv() if parent.poll(600) else float("nan")
    except EOFError:
        value = float("nan")
    proc.join(30)
    return float(value)


@torch.no_grad()
def forward_times(models: list[Model], batch: tuple[int, int], rounds: int, seed: int = 0) -> dict[str, list[float]]:
    """Seconds per forward pass of each model in each of `rounds` rounds, after one warm-up round: per round
    one random batch for all, the models back to back, in reverse order every other round (none always runs
    first, on a cache the other warmed). A ratio within one round cancels the machine's slow moments."""
    gen = torch.Generator().manual_seed(seed)
    vocab = min(m.model.config.vocab_size for m in models)
    times: dict[str, list[float]] = {m.name: [] for m in models}
    for r in range(rounds + 1):
        ids = torch.randint(0, vocab, batch, generator=gen)
        for m in models if r % 2 == 0 else models[::-1]:
            t0 = time.perf_counter()
            m.model(input_ids=ids.to(m.device), attention_mask=torch.ones_like(ids).to(m.device))
            if m.device.type == "cuda":
                torch.cuda.synchronize(m.device)
            if r:
                times[m.name].append(time.perf_counter() - t0)
    return times


def throughput(models: list[Model], batch: tuple[int, int], repeats: int = 10) -> dict[str, float]:
    """Forward tokens/s per model: the median over `repeats` rounds of `forward_times`."""
    times = forward_times(models, batch, repeats)
    return {name: batch[0] * batch[1] / float(np.median(t)) for name, t in times.items()}


# --------------------------------------------------------------------------- the protocol


def _corpus(cfg: Config, eval_sets: dict[str, list[str]], max_held_out: int) -> tuple[list[str], dict[str, int]]:
    """(the first `max_held_out` held-out documents of the training corpus, in corpus order; per evaluation
    set, how many of its texts are documents of the corpus). One pass in Ray: the driver holds the sets'
    hashes and the few held-out documents, never the corpus."""
    import functools

    import ray

    from gemini_ray.cluster.session import init_ray
    from gemini_ray.data.budgets import LIGHT_CPUS
    from gemini_ray.data.corpus_pass import read_documents, read_errors
    from gemini_ray.data.spans import text_hash

    init_ray(cfg)
    hashes = ray.put([np.array(sorted({text_hash(t) for t in texts}), dtype=np.int64) for texts in eval_sets.values()])
    with read_errors(cfg):  # a damaged corpus file: the user's error, not Ray's trace
        docs = read_documents(cfg).map_batches(
            functools.partial(_mark_documents, eval_hashes=hashes, val_fraction=cfg.data.val_fraction),
            batch_format="numpy", num_cpus=LIGHT_CPUS).materialize()  # read once; the two results below share it
    hits = dict.fromkeys(eval_sets, 0)
    for b in docs.select_columns(["in_eval"]).iter_batches(batch_format="numpy"):
        for name, n in zip(eval_sets, np.asarray(b["in_eval"]).reshape(len(b["in_eval"]), -1).sum(axis=0)):
            hits[name] += int(n)
    held = docs.filter(expr="held_out", num_cpus=LIGHT_CPUS).limit(max_held_out).select_columns(["text"])
    texts = list(dict.fromkeys(str(t) for b in held.iter_batches(batch_format="numpy") for t in b["text"]))
    return texts, hits


def _mark_documents(batch: dict[str, np.ndarray], eval_hashes, val_fraction: float) -> dict[str, np.ndarray]:
    """Per document: whether it is a text of each evaluation set (in_eval: (N, sets) bool), and whether it
    is held out."""
    import ray

    from gemini_ray.data.corpus_pass import is_val_doc
    from gemini_ray.data.spans import text_hash

    readable = ~(np.asarray(batch["bad_utf8"], dtype=bool) | np.asarray(batch["bad_record"], dtype=bool))
    hashes = np.array([text_hash(str(t)) for t in batch["text"]], dtype=np.int64)
    sets = ray.get(eval_hashes)
    in_eval = np.stack([readable & np.isin(hashes, h) for h in sets], axis=1) if sets else \
        np.zeros((len(hashes), 0), dtype=bool)
    return {"text": batch["text"], "in_eval": in_eval, "held_out": readable & is_val_doc(hashes, val_fraction)}


def corpus_against_sets(cfg: Config) -> tuple[list[str], dict[str, int]]:
    """One read of the training corpus for the protocol: (its held-out documents, per evaluation set how many
    of its texts are documents of the corpus). The same for every model evaluated on one config: compute it
    once and pass it to `evaluate` for each (as `evaluate_students` does)."""
    return _corpus_against(cfg, _load_sets(cfg.eval))


def _load_sets(e: EvalConfig) -> list[tuple[EvalTask, Any]]:
    """Each evaluation task with its loaded set, in report order."""
    return [(task, task.load(e)) for task in evaluation_tasks.TASKS]


def _corpus_against(cfg: Config, sets: list[tuple[EvalTask, Any]]) -> tuple[list[str], dict[str, int]]:
    texts = {task.name: task.texts(data) for task, data in sets}
    return _corpus(cfg, texts, max_held_out=max(64, cfg.eval.lm_max_tokens // 16))  # a document: 32+ tokens


def _refuse_overlap(cfg: Config, hits: dict[str, int]) -> None:
    for set_name, n in hits.items():
        if n:
            raise GeminiRayError(f"{n} texts of the {set_name} evaluation set are documents of the training corpus "
                                 f"'{cfg.data.path}': its scores would be measured on training data. Train on a corpus "
                                 "without them, or evaluate with data.path set to the corpus the model was trained on.")


def _model_sources(model_dir: str, cfg: Config, teacher_source: str | None, with_teacher: bool
                   ) -> tuple[Path, str, dict[str, Any]]:
    """(the checked model directory, the teacher's source, the model's recorded meta); refuses windows
    (eval.lm_window, eval.max_length, the student's training window) longer than either model reads before
    the corpus is read and any model loads."""
    from gemini_ray.models.build import resolve_teacher

    student_path = _check_model_dir(model_dir, "the model directory")
    meta = read_student_meta(str(student_path))
    if teacher_source is None:
        teacher_source = meta.get("teacher") or resolve_teacher(cfg.teacher)
    if Path(teacher_source).expanduser().exists():
        teacher_source = str(_check_model_dir(teacher_source, "the teacher directory"))
    window = training_window(meta)
    check_positions(student_path, cfg.eval, "the model", window)
    if with_teacher and Path(teacher_source).is_dir():
        check_positions(Path(teacher_source), cfg.eval, "the teacher", window)
    return student_path, teacher_source, meta


def _notes(cfg: Config, name: str, student: Model, teacher: Model | None, held_out: list[str]) -> list[str]:
    """What the report cannot measure for this pair of models and corpus, and why."""
    notes: list[str] = []
    if teacher is not None and teacher.kind != student.kind:
        notes.append(f"{name} is a {student.kind} LM, the teacher a {teacher.kind} one: KL to the teacher and top-1 "
                     "agreement are not measured (they compare predictions of the same task); the other metrics are.")
    elif teacher is not None and teacher.vocab != student.vocab:
        notes.append(f"{name}'s tokenizer differs from the teacher's: KL to the teacher and top-1 agreement are not "
                     "measured (they compare distributions over the same tokens); the other metrics are.")
    if not held_out:
        notes.append(f"the corpus '{cfg.data.path}' has no held-out documents (data.val_fraction="
                     f"{cfg.data.val_fraction}): language-modelling metrics are not measured.")
    return notes


def evaluate(model_dir: str, cfg: Config, teacher_source: str | None = None, with_teacher: bool = True,
             name: str = "student", corpus: tuple[list[str], dict[str, int]] | None = None) -> dict[str, Any]:
    """Run the protocol on the model (and the teacher); returns the report. corpus: `corpus_against_sets(cfg)`
    when already computed (it reads the whole training corpus). The driver reads the sets and the corpus; the
    models load and run in a Ray task that holds the teacher's resources (`on_teacher_resources`) whenever the
    teacher is loaded, as its row or as the reference for KL and agreement: never in the driver."""
    t_start = time.perf_counter()
    student_path, teacher_source, meta = _model_sources(model_dir, cfg, teacher_source, with_teacher)
    # evaluation sets first: an overlap with the training corpus refuses before any model loads
    sets = _load_sets(cfg.eval)
    held_out, hits = corpus or _corpus_against(cfg, sets)
    _refuse_overlap(cfg, hits)
    args = (cfg, str(student_path), meta.get("kind", "auto"), teacher_source, with_teacher, name, held_out, sets,
            training_window(meta))
    report = on_teacher_resources(cfg, score_models, *args) if teacher_source else score_models(*args)
    report["wall_time_s"] = time.perf_counter() - t_start
    report["driver_peak_memory_mib"] = round(peak_rss_mib(), 1)
    return report


def on_teacher_resources(cfg: Config, fn: Any, *args: Any) -> Any:
    """fn(*args) in a Ray task holding the teacher actors' resources: teacher.num_gpus GPUs (accelerate
    spreads the teacher over several), teacher.resources (a teacher node) and at least one CPU. Its errors
    for the user come back as they are."""
    import ray

    from gemini_ray.cluster.session import init_ray

    init_ray(cfg)
    t = cfg.teacher
    task = ray.remote(fn).options(num_cpus=max(1.0, t.num_cpus), num_gpus=t.num_gpus, resources=dict(t.resources),
                                  max_retries=0)
    try:
        return ray.get(task.remote(*args))
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, GeminiRayError):
            raise exc.cause from None
        raise


def score_models(cfg: Config, student_path: str, student_kind: str, teacher_source: str | None, with_teacher: bool,
                 name: str, held_out: list[str], sets: list[tuple[EvalTask, Any]],
                 train_window: int | None = None) -> dict[str, Any]:
    """Load the model (and the teacher) here and score them on the protocol: the report without its wall time.
    train_window: the student's training window (`training_window`); where it is not eval.lm_window, every
    row is scored at it as well (`lm_train_window`)."""
    e = cfg.eval
    student = load_model(name, student_path, student_kind)
    teacher = load_model("teacher", teacher_source) if teacher_source else None  # its own kind, from its config
    notes = _notes(cfg, name, student, teacher, held_out)
    same_vocab = teacher is not None and teacher.vocab == student.vocab and teacher.kind == student.kind
    models = [student] + ([teacher] if with_teacher and teacher is not None else [])
    batch = (8, e.lm_window)
    protocol = {"held_out_documents": len(held_out), "corpus": cfg.data.path, "val_fraction": cfg.data.val_fraction,
                **{k: v for task, data in sets for k, v in task.protocol(data).items()},
                "throughput_batch": list(batch), **protocol_settings(e),
                "train_window": train_window}  # in the teacher row's key: a kept row holds the windows it was scored at
    speed = throughput(models, batch)
    rows: dict[str, dict[str, Any]] = {}
    for m in models:
        t0 = time.perf_counter()
        ref = teacher if (m is teacher or same_vocab) else None  # the teacher's row checks itself: KL 0, agreement 1
        row = _kept_or_scored(cfg, m, m is teacher, ref, protocol, held_out, sets, train_window)
        row["tokens_per_s"] = speed[m.name]
        row["peak_memory_mib"] = peak_memory_mib(m, batch)
        row["eval_s"] = time.perf_counter() - t0
        rows[m.name] = row
        print(f"[gemini-ray] eval {m.name}: {_line(row)} ({row['eval_s']:.0f} s)")
    if name in rows and "teacher" in rows:
        rows[name]["vs_teacher"] = versus_teacher(rows[name], rows["teacher"])
    return {"protocol": protocol, "models": rows, "notes": notes}


def _kept_or_scored(cfg: Config, m: Model, is_teacher: bool, ref: Model | None, protocol: dict[str, Any],
                    held_out: list[str], sets: list[tuple[EvalTask, Any]], train_window: int | None = None
                    ) -> dict[str, Any]:
    """The model's quality row: the teacher's kept one when nothing it depends on changed (eval.reuse_teacher;
    the protocol includes the training window), else scored now (and, for the teacher, kept)."""
    kept_dir = teacher_row.cache_dir(cfg.run.storage_path) if cfg.eval.reuse_teacher else None
    key = teacher_row.row_key(m.source, m.kind, protocol, held_out) if is_teacher and kept_dir else None
    row = teacher_row.load_row(kept_dir, key)
    if row is not None:
        row["source"] = m.source  # the same files, perhaps at another path
        print(f"[gemini-ray] eval {m.name}: quality scores kept from an earlier evaluation (same files, protocol "
              f"and code: {kept_dir}/teacher-{key}.json; eval.reuse_teacher=false measures them again); "
              "speed and memory measured now")
        return row
    row = _quality_row(m, cfg.eval, held_out, ref, sets, train_window)
    teacher_row.save_row(kept_dir, key, row)
    return row


def protocol_settings(e: EvalConfig) -> dict[str, Any]:
    """The eval.* settings that define the protocol, as a report records them (eval.reuse_teacher, which
    changes only where the teacher's scores come from, is not one)."""
    return {f"eval.{k}": v for k, v in vars(e).items() if k != "reuse_teacher"}


def _quality_row(m: Model, e: EvalConfig, held_out: list[str], ref: Model | None,
                 sets: list[tuple[EvalTask, Any]], train_window: int | None = None) -> dict[str, Any]:
    """The model's parameters, held-out LM metrics (against `ref`) at eval.lm_window (`lm`, the comparable
    headline) and at the student's training window where that differs (`lm_train_window`), and its score on
    each evaluation task."""
    from gemini_ray.models.build import count_parameters

    row: dict[str, Any] = {"source": m.source, "kind": m.kind, "parameters": count_parameters(m.model)}
    scored = {"lm": e.lm_window}
    if train_window is not None and train_window != e.lm_window:
        scored["lm_train_window"] = train_window
    for key, window in scored.items() if held_out else ():
        row[key] = {"window": window, **lm_metrics(m, lm_windows(m, held_out, window, e.lm_max_tokens), e.batch_size,
                                                   ref, e.mlm_probability, e.seed)}

    def embed(texts: list[str]) -> np.ndarray:
        return embed_texts(m, texts, e.max_length, e.batch_size)

    values = {task.item_key: task.values(embed, data, e) for task, data in sets}
    row.update(embedding_scores(values, e.seed, [task for task, _ in sets]))
    return row


def evaluate_students(cfg: Config, students: dict[str, str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]],
                                                                      dict[str, Any]]:
    """Several students of one architecture (name -> directory) on the protocol, the teacher once beside
    the first: (the teacher's row, {name: row}, the protocol). Each row's `vs_teacher` carries the first
    student's speedup, timed side by side with the teacher in one process (the others are timed alone)."""
    rows: dict[str, dict[str, Any]] = {}
    teacher, protocol = None, {}
    corpus = corpus_against_sets(cfg)  # one read of the corpus for all of them
    for name, path in students.items():
        print(f"[gemini-ray] evaluating {name}")
        report = evaluate(path, cfg, with_teacher=teacher is None, name=name, corpus=corpus)
        teacher = teacher or report["models"]["teacher"]
        rows[name], protocol = report["models"][name], report["protocol"]
    speedup = rows[next(iter(students))]["tokens_per_s"] / teacher["tokens_per_s"]
    for row in rows.values():
        row["vs_teacher"] = {**versus_teacher(row, teacher), "speedup": speedup}
    return teacher, rows, protocol


def embedding_scores(values: dict[str, np.ndarray], seed: int, tasks: Sequence[EvalTask] | None = None
                     ) -> dict[str, Any]:
    """Each task's score (e.g. Lee Spearman, RT accuracy) from its per-item values (keyed by the task's
    item_key) with a 95 % bootstrap interval over the items, and the per-item values (`items`) that paired
    comparisons between models resample."""
    scores: dict[str, Any] = {}
    items: dict[str, list[float | int]] = {}
    for task in evaluation_tasks.TASKS if tasks is None else tasks:
        v = np.asarray(values[task.item_key])  # (n,) one value per item
        scores[task.metric] = task.statistic(v, np.arange(len(v)))
        scores[f"{task.metric}_ci"] = bootstrap_interval(lambda i: task.statistic(v, i), len(v), seed=seed)
        items[task.item_key] = _kept_values(v)
    return {**scores, "items": items}


def _kept_values(v: np.ndarray) -> list[float | int]:
    """Per-item values as a row keeps them: integers (right/wrong) as int, the rest rounded to 6 decimals."""
    if v.dtype.kind in "biu":
        return [int(x) for x in v]
    return [round(float(x), 6) for x in v]


def paired_differences(a: dict[str, Any], b: dict[str, Any], seed: int = 0) -> dict[str, dict[str, float]]:
    """Model a minus model b on each task's score (Lee Spearman, RT accuracy), each with a 95 % paired
    bootstrap interval (the same resampled items for both): a difference is beyond the evaluation sets' noise
    when its interval excludes 0. {} when either row lacks per-item values; a task either row lacks values
    of (a report saved before the task existed) is left out."""
    if "items" not in a or "items" not in b:
        return {}
    out = {}
    for task in evaluation_tasks.TASKS:
        if task.item_key not in a["items"] or task.item_key not in b["items"]:
            continue
        va, vb = (np.asarray(r["items"][task.item_key]) for r in (a, b))  # (n,) each, the same items

        def gap(i: np.ndarray) -> float:  # used within this iteration only
            return task.statistic(va, i) - task.statistic(vb, i)

        lo, hi = bootstrap_interval(gap, len(va), seed=seed)
        out[task.metric] = {"difference": gap(np.arange(len(va))), "low": lo, "high": hi,
                            "beyond_noise": bool(lo > 0 or hi < 0)}
    return out


def paired_perplexity(a: dict[str, Any], b: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Model a's held-out perplexity over model b's, with a 95 % paired bootstrap interval over the held-out
    windows (both models scored on the same windows): below 1 means a is the better language model, beyond
    noise when the whole interval is. {} when either row lacks per-window values or their windows differ
    (another tokenizer cuts other windows)."""
    wa, wb = (r.get("lm", {}).get("items") for r in (a, b))
    if not wa or not wb or wa["window_tokens"] != wb["window_tokens"] or not wa["window_tokens"]:
        return {}
    tokens = np.asarray(wa["window_tokens"], dtype=float)
    gap = np.asarray(wa["window_nll"]) - np.asarray(wb["window_nll"])  # per window, nats summed over its tokens

    def log_ratio(i: np.ndarray) -> float:
        return float(gap[i].sum() / tokens[i].sum())

    lo, hi = bootstrap_interval(log_ratio, len(tokens), seed=seed)
    n = np.arange(len(tokens))
    return {"ratio": float(np.exp(log_ratio(n))), "low": float(np.exp(lo)), "high": float(np.exp(hi)),
            "windows": len(tokens), "beyond_noise": bool(lo > 0 or hi < 0)}


def noise_verdict(difference: dict[str, Any]) -> str:
    """'beyond noise' or 'within noise' for a paired difference of `paired_differences`."""
    return "beyond noise" if difference["beyond_noise"] else "within noise"


def compare_pair(name: str, other: str, row: dict[str, Any], other_row: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Model `name` against model `other` on the same evaluation sets: its held-out perplexity over the other's
    (`paired_perplexity`) and its Lee and RT minus the other's (`paired_differences`), and one printable line
    for each, e.g. "kd+cl - untrained, lee_spearman: +0.134 [+0.093, +0.176] beyond noise"."""
    ppl = paired_perplexity(row, other_row)
    differences = paired_differences(row, other_row)
    lines = []
    if ppl:
        low, ratio, high = (f"{ppl[k]:.3f}" if ppl[k] >= 0.01 else f"{ppl[k]:.2e}" for k in ("low", "ratio", "high"))
        lines.append(f"{name} / {other}, held-out perplexity: {ratio} [{low}, {high}] {noise_verdict(ppl)}")
    for key, d in differences.items():
        lines.append(f"{name} - {other}, {key}: {d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] "
                     f"{noise_verdict(d)}")
    return {"perplexity_ratio": ppl, "differences": differences}, lines


def versus_teacher(s: dict[str, Any], t: dict[str, Any]) -> dict[str, Any]:
    """The student's share of the teacher's size, speed and scores (speed: same process, same batch), and its
    held-out perplexity over the teacher's per position range (`perplexity_ratio_by_position`: {'lm': {'1-31':
    ratio, ...}, 'lm_train_window': ...} where both were scored on the same windows)."""
    kept = {f"{task.metric}_kept": s[task.metric] / t[task.metric] if t[task.metric] else float("nan")
            for task in evaluation_tasks.TASKS}
    out = {"parameter_ratio": s["parameters"] / t["parameters"], "speedup": s["tokens_per_s"] / t["tokens_per_s"],
           **kept}
    by_position = {key: perplexity_ratios(s[key]["by_position"], t[key]["by_position"])
                   for key in ("lm", "lm_train_window") if _same_windows(s, t, key)}
    if by_position:
        out["perplexity_ratio_by_position"] = by_position
    return out


def _same_windows(a: dict[str, Any], b: dict[str, Any], key: str) -> bool:
    """Whether both rows hold per-range LM figures under `key` scored on the same windows: the same length
    and the same scored tokens per window (another tokenizer cuts other windows)."""
    la, lb = a.get(key) or {}, b.get(key) or {}
    return ("by_position" in la and "by_position" in lb and la.get("window") == lb.get("window")
            and la.get("items", {}).get("window_tokens") == lb.get("items", {}).get("window_tokens"))


def _line(row: dict[str, Any]) -> str:
    lm = row.get("lm", {})
    ppl = f"ppl {lm['perplexity']:.1f}, " if lm else ""
    scores = "".join(f"{task.title} {row[task.metric]:.3f}, " for task in evaluation_tasks.TASKS)
    return f"{ppl}{scores}{row['tokens_per_s']:.0f} tokens/s"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def rate_budget(train: TrainConfig) -> dict[str, Any]:
    """The learning-rate keys a report's budget records, for `rate_label`."""
    return {"lr": train.lr, "layer_lr_decay": train.layer_lr_decay,
            "layer_lr_decay_embeddings": train.layer_lr_decay_embeddings}


def rate_label(budget: dict[str, Any]) -> str:
    """The learning rate as a report states it: 'lr 0.0003', and the layer-wise decay where there is one
    (reports saved before the decay was recorded trained at one rate)."""
    decay = budget.get("layer_lr_decay", 1.0)
    if decay == 1.0:
        return f"lr {budget['lr']}"
    lowest = budget.get("layer_lr_decay_embeddings")
    where = "the embeddings at the lowest rate" if lowest else "embeddings and head at lr"
    return f"lr {budget['lr']} with a layer-wise decay of {decay} ({where})"


def markdown_table(rows: dict[str, dict[str, Any]]) -> str:
    """One row per model: parameters, held-out perplexity, KL, agreement, each task's score (Lee, RT, with
    their 95 % bootstrap intervals), tokens/s, memory."""
    tasks = evaluation_tasks.TASKS
    columns = ["model", "params (M)", "held-out ppl", "KL to teacher", "top-1 agreement",
               *(f"{task.title} [95 % CI]" for task in tasks), "tokens/s", "peak MiB"]
    head = "| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|\n"
    lines = []
    for name, r in rows.items():
        lm = r.get("lm", {})
        scores = "".join(f"| {_with_interval(r, task.metric)} " for task in tasks)
        lines.append(f"| {name} | {r['parameters'] / 1e6:.1f} | {_fmt(lm.get('perplexity'), 2)} "
                     f"| {_fmt(lm.get('kl_to_teacher'))} | {_fmt(lm.get('teacher_top1_agreement'))} "
                     f"{scores}| {r['tokens_per_s']:.0f} | {_fmt(r['peak_memory_mib'], 0)} |")
    return head + "\n".join(lines) + "\n"


def position_table(rows: dict[str, dict[str, Any]]) -> str:
    """Each student's held-out language modelling by position range of the predicted token in its window,
    beside the teacher's: teacher and student perplexity, their ratio, the student's KL and top-1 agreement,
    at eval.lm_window and at the student's training window where that was scored too. '' without per-range
    figures."""
    teacher = rows.get("teacher", {})
    columns = ["model", "window", "positions", "tokens", "teacher ppl", "ppl", "ppl / teacher", "KL", "top-1"]
    lines = []
    for name, r in rows.items():
        if name == "teacher":
            continue  # its perplexity is every student's reference column
        for key in ("lm", "lm_train_window"):
            if "by_position" not in r.get(key, {}):
                continue
            ref = teacher[key]["by_position"] if _same_windows(r, teacher, key) else {}
            for label, s in r[key]["by_position"].items():
                t = ref.get(label, {})
                ratio = s["perplexity"] / t["perplexity"] if t else None
                lines.append(f"| {name} | {r[key]['window']} | {label} | {s['tokens']} "
                             f"| {_fmt(t.get('perplexity'), 2)} | {_fmt(s['perplexity'], 2)} | {_fmt(ratio, 2)} "
                             f"| {_fmt(s.get('kl_to_teacher'))} | {_fmt(s.get('teacher_top1_agreement'))} |")
    if not lines:
        return ""
    head = "| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|\n"
    return ("Held-out perplexity by position of the predicted token in its window (at eval.lm_window, and at the "
            "student's training window where that differs):\n\n" + head + "\n".join(lines) + "\n")


def _with_interval(row: dict[str, Any], key: str) -> str:
    ci = row.get(f"{key}_ci")
    return _fmt(row.get(key)) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and all(np.isfinite(ci)) else "")


def recorded_settings(model_dir: str) -> dict[str, Any]:
    """The config sections a student recorded at export that its evaluation starts from: its corpus and
    held-out split (`data`), so that eval scores the documents its training never saw. {} for other models."""
    meta = read_student_meta(model_dir) if Path(model_dir).expanduser().is_dir() else {}
    if "data" not in meta:
        return {}
    data = dict(meta["data"])
    if training_window(meta) is not None:
        data.setdefault("seq_length", training_window(meta))  # exported before data.seq_length: its spans
    return {"data": data}


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """report.json and report.md, each written under a temporary name and renamed."""
    from gemini_ray.paths import atomic_write_json, atomic_write_text

    out = Path(out_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GeminiRayError(f"cannot write the report to '{out_dir}': {exc.strerror}. Choose another --out.") from None
    md = markdown_table(report["models"])
    positions = position_table(report["models"])
    md += "\n" + positions if positions else ""
    if report["notes"]:
        md += "\n" + "\n".join(f"* {n}" for n in report["notes"]) + "\n"
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", md)
    return out / "report.json", out / "report.md"

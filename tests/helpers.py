"""What the tests share, in one module (no test module imports another). pyproject.toml puts tests/ on the
import path (`pythonpath`); benchmarks/ scripts that reuse a helper put it there themselves.

* Tiny teachers: `word_tokenizer`, `tiny_llama`, `tiny_bert`, `save`: randomly initialised models with a
  word-level tokenizer trained on the given texts, built in a few hundred milliseconds, no downloads.
* Run settings: `tiny_overrides`, the command-line overrides of a distill run of a few steps on a tiny teacher.
* Fault injection: `wait_for`, `alive_pids`, `Killer` (SIGKILL live Ray actors by class), and `DAMAGE`, the
  three ways a checkpoint is damaged on disk.
* Output readers: `read_scalars` (TensorBoard event files).
* The DDP toy: `ToyStudent`, `toy_batch` (tests/ddp_toy.py runs them in gloo processes).
* Scripts and ports: `benchmark_module` (a script under benchmarks/ or experiments/ as a module), `free_port`.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import threading
import time
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- tiny teachers

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def word_tokenizer(texts: list[str], masked: bool, vocab_size: int = 400):
    """A PreTrainedTokenizerFast with a word-level vocabulary of `texts` ([CLS] ... [SEP] around a masked one's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=SPECIALS))
    if masked:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def tiny_llama(tokenizer, layers: int = 4, hidden: int = 32, seed: int = 0):
    """A LlamaForCausalLM of `layers` x `hidden`, random weights (seeded), in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                      tie_word_embeddings=True)
    cfg.architectures = ["LlamaForCausalLM"]
    return LlamaForCausalLM(cfg).eval()


def tiny_bert(tokenizer, layers: int = 4, hidden: int = 32, seed: int = 0):
    """A BertForMaskedLM of `layers` x `hidden`, random weights (seeded), in eval mode."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                     num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=128, pad_token_id=0)
    cfg.architectures = ["BertForMaskedLM"]
    return BertForMaskedLM(cfg).eval()


def save(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_overrides(teacher_dir, corpus, storage, name: str, steps: int) -> list[str]:
    """A distill run of `steps` steps on a tiny teacher and the corpus fixture (a JSONL file with `body`)."""
    return [f"teacher.model={teacher_dir}", "teacher.top_k=8", "teacher.batch_size=8",
            f"data.path={corpus}", "data.text_column=body", "data.span_length=16", "data.seq_length=32",
            "student.num_layers=2", "loss.num_negatives=3", "mining.window=16",
            f"train.max_steps={steps}", "train.batch_size=4", "train.log_every=2", "train.checkpoint_every=2",
            "train.warmup_steps=1", f"run.storage_path={storage}", f"run.name={name}"]


# --------------------------------------------------------------------------- faults


def wait_for(predicate, timeout: float, every: float = 0.005):
    """The first truthy value of `predicate()`, polled every `every` seconds; TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("the condition was not met in time")


def alive_pids(class_contains: str) -> list[int]:
    """PIDs of live actors whose class name holds `class_contains` (Ray Data names a pool's actor class
    'MapWorker(MapBatches(CountingTeacherLabeler))')."""
    import ray
    from ray.util.state import list_actors

    actors = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")])
    return [a.pid for a in actors if class_contains in a.class_name and a.pid]


class Killer(threading.Thread):
    """SIGKILLs one live actor of each target class, in order, each when `ready(kills so far)` says so."""

    def __init__(self, ready, targets: list[str]):
        super().__init__(daemon=True)
        self.ready, self.targets, self.killed, self.errors = ready, list(targets), [], []

    def run(self):
        try:
            for target in self.targets:
                wait_for(lambda: self.ready(len(self.killed)), timeout=240, every=0.01)
                # generous: a resumed distill's teacher pool comes up ~60-70 s after the command starts here
                # (Ray Train's start dominates); the run itself bounds the wait anyway
                pid = wait_for(lambda: alive_pids(target), timeout=180, every=0.05)[0]
                os.kill(pid, signal.SIGKILL)
                self.killed.append((target, pid, time.time()))
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(exc))


def truncate(path: Path) -> None:
    """Cut a file to half its size (a copy killed half-way)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def overwrite_in_place(path: Path) -> None:
    """1 KiB of the weights overwritten inside the file: its size and header stay as written."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size - 4096)
        f.write(os.urandom(1024))


DAMAGE = {"truncated": (lambda d: truncate(d / "model.safetensors"), "model.safetensors has"),
          "same-size": (lambda d: overwrite_in_place(d / "model.safetensors"), "SHA-256 differs"),
          "missing": (lambda d: (d / "optimizer.safetensors").unlink(), "optimizer.safetensors is missing")}
"""{name: (damage a checkpoint folder, what the refusal says)}."""


# --------------------------------------------------------------------------- output readers


def read_scalars(directory) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of every events file under `directory`, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


# --------------------------------------------------------------------------- the DDP toy

V, H, L, K = 50, 16, 6, 2  # vocabulary, width, span length, negatives


class ToyStudent(torch.nn.Module):
    """The DistillStudent interface (logits for the windows, pooled spans of windows and negatives) on one
    embedding table and one head, so the whole loss is cheap and deterministic."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(V, H)
        self.mix = torch.nn.Linear(H, H)
        self.head = torch.nn.Linear(H, V)

    def forward(self, ids: torch.Tensor, att: torch.Tensor, span_ids: torch.Tensor, span_att: torch.Tensor):
        from gemini_ray.models.build import mean_pool

        L = span_ids.shape[1]
        windows, spans = torch.tanh(self.mix(self.emb(ids))), torch.tanh(self.mix(self.emb(span_ids)))  # (n, W, H), (m, L, H)
        return self.head(windows), torch.cat([mean_pool(windows[:, :L], att[:, :L]), mean_pool(spans, span_att)])


def toy_batch(rows: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    doc = torch.arange(rows) // 2 * 7 + 1  # rows 2i and 2i+1 share a document: not each other's negatives
    ids = torch.randint(0, V, (rows, 2, L), generator=g)
    ids[3, 1] = ids[0, 1]  # the same positive text in two documents (and, split in halves, on two ranks)
    span_hash = (ids * torch.arange(1, L + 1)).sum(-1) * 1000 + ids[..., 0]  # (rows, 2): equal texts, equal hashes
    return {
        "input_ids": ids, "attention_mask": torch.ones(rows, 2, L, dtype=torch.long),
        "label_mask": torch.ones(rows, 2, L), "topk_ids": torch.randint(0, V, (rows, 2, L, 4), generator=g),
        "topk_logits": torch.randn(rows, 2, L, 4, generator=g), "neg_input_ids": torch.randint(0, V, (rows, K, L), generator=g),
        "neg_attention_mask": torch.ones(rows, K, L, dtype=torch.long), "neg_mask": torch.ones(rows, K, dtype=torch.bool),
        "doc_id": doc, "span_hash": span_hash, "teacher_embedding": torch.randn(rows, 2, H, generator=g),
    }


# --------------------------------------------------------------------------- scripts and ports


def benchmark_module(name: str, folder: str = "benchmarks") -> ModuleType:
    """A script under benchmarks/ (or experiments/) loaded as a module (neither is a package), to test its
    pure parts."""
    path = ROOT / folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A TCP port nothing listens on right now on the loopback interface (the OS picks it; it may be taken
    again before use, rarely), for the Ray heads that tests and benchmarks start themselves."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

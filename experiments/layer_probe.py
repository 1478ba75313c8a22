"""The evaluation protocol's embedding metrics on every layer of the teacher.

    python experiments/layer_probe.py

For each layer l = 0 (the embedding table) ... L of the embedded teacher: the masked mean of the hidden
states after layer l, passed through the final norm (as a student made of the bottom l layers would
produce them), scored like `gemini-ray eval` scores a model: Lee Spearman over 1,225 pairs and the Rotten
Tomatoes linear probe (2,000 / 1,000 snippets, split by film). Shows which teacher layers a student
should copy to keep useful embeddings (`student.layers`). About 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import os

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    from gemini_ray.config import Config
    from gemini_ray.evaluation.metrics import linear_probe_accuracy, spearman
    from gemini_ray.evaluation.tasks.lee import lee_similarity
    from gemini_ray.evaluation.tasks.rotten_tomatoes import rotten_tomatoes
    from gemini_ray.jobs.evaluate import _pad, load_model
    from gemini_ray.models.build import mean_pool, resolve_teacher

    cfg = Config()
    e = cfg.eval
    m = load_model("teacher", resolve_teacher(cfg.teacher))
    body = m.model.base_model
    norm = body.norm

    @torch.no_grad()
    def embed_all_layers(texts: list[str]) -> np.ndarray:  # (layers + 1, n, H)
        ids = m.tokenizer(list(texts), truncation=True, max_length=e.max_length)["input_ids"]
        order, out = np.argsort([len(x) for x in ids], kind="stable"), None
        for start in range(0, len(order), e.batch_size):
            idx = order[start : start + e.batch_size]
            batch, att = _pad([ids[i] for i in idx], m.tokenizer.pad_token_id)
            states = body(input_ids=batch, attention_mask=att, output_hidden_states=True).hidden_states
            last = len(states) - 1  # the last entry already has the final norm applied
            pooled = torch.stack([mean_pool(h if i == last else norm(h), att) for i, h in enumerate(states)])
            if out is None:
                out = np.zeros((pooled.shape[0], len(texts), pooled.shape[2]), np.float32)
            out[:, idx] = pooled.numpy()
        return out

    docs, pairs = lee_similarity()
    lee = embed_all_layers(docs)
    train, test = rotten_tomatoes(e.rt_train, e.rt_test, e.rt_test_fraction, e.seed)
    x_tr, x_te = embed_all_layers(train["text"].tolist()), embed_all_layers(test["text"].tolist())
    print("| after layer | Lee Spearman | RT accuracy |\n|---|---|---|")
    for layer in range(lee.shape[0]):
        emb = lee[layer] / np.linalg.norm(lee[layer], axis=1, keepdims=True).clip(min=1e-12)
        cos = (emb[pairs["i"].to_numpy()] * emb[pairs["j"].to_numpy()]).sum(1)
        acc = linear_probe_accuracy(x_tr[layer], train["label"].to_numpy(), x_te[layer], test["label"].to_numpy(),
                                    l2=e.probe_l2, seed=e.seed)
        print(f"| {layer} | {spearman(pairs['human'].to_numpy(), cos):.3f} | {acc:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Number formats: teacher.dtype, train.precision (bf16/fp16 mixed against fp32 on the tiny model), TF32."""

from __future__ import annotations

import pytest
import torch

from gemini_ray.config import ConfigError, LossConfig, TrainConfig, build_config
from gemini_ray.models.build import DistillStudent, load_teacher
from gemini_ray.models.numerics import Precision, teacher_dtype
from gemini_ray.training.train_step import compute_loss, make_optimizer


def _batch(rows: int = 8, hidden: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    from helpers import toy_batch

    batch = toy_batch(rows, seed)
    batch["teacher_embedding"] = torch.randn(rows, 2, hidden, generator=torch.Generator().manual_seed(seed))
    return batch


def _student(llama_dir) -> DistillStudent:
    model, _ = load_teacher(str(llama_dir))
    return DistillStudent(model.train())


@pytest.mark.parametrize("key,value,allowed", [("teacher.dtype", "int8", "auto, bf16, fp16, fp32"),
                                               ("train.precision", "fp8-mixed", "fp32, bf16-mixed, fp16-mixed")])
def test_the_dtype_and_precision_keys_refuse_other_values(key, value, allowed):
    with pytest.raises(ConfigError) as err:
        build_config(None, [f"{key}={value}"])
    message = str(err.value)
    assert key in message and all(a in message for a in allowed.split(", "))
    section, field = key.split(".")
    for good in allowed.split(", "):  # each allowed value loads, and is the value the config holds
        assert getattr(getattr(build_config(None, [f"{key}={good}"]), section), field) == good


def test_auto_is_fp32_on_cpu_and_explicit_names_are_taken_as_given():
    assert build_config(None, []).teacher.dtype == "auto" and build_config(None, []).train.precision == "fp32"
    assert teacher_dtype("auto", "cpu") == torch.float32
    assert teacher_dtype("bf16", "cpu") == torch.bfloat16 and teacher_dtype("fp16", "cpu") == torch.float16
    assert teacher_dtype("fp32", "cpu") == torch.float32


def test_the_teacher_loads_in_the_dtype_asked_with_sdpa_attention(llama_dir):
    model, kind = load_teacher(str(llama_dir), dtype=torch.bfloat16)
    assert kind == "causal" and {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config._attn_implementation == "sdpa"


def test_a_teacher_labeler_in_bf16_leaves_the_callers_fp32_model_alone(llama_dir):
    from gemini_ray.config import config_to_dict
    from gemini_ray.data.teacher_stage import TeacherLabeler

    model, _ = load_teacher(str(llama_dir))
    teacher_cfg = config_to_dict(build_config(None, [f"teacher.model={llama_dir}", "teacher.dtype=bf16",
                                                     "teacher.top_k=4"]))["teacher"]
    labeler = TeacherLabeler(teacher_cfg, model=model)
    assert next(labeler.model.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32
    batch = {k: v.numpy() for k, v in _batch(4).items() if k in ("input_ids", "attention_mask")}
    out = labeler(batch)
    assert out["topk_logits"].dtype.name == "float32" and out["embedding"].dtype.name == "float16"
    fp32 = TeacherLabeler({**teacher_cfg, "dtype": "fp32"}, model=model)(batch)
    assert (out["topk_ids"][..., 0] == fp32["topk_ids"][..., 0]).mean() > 0.9  # the top token mostly agrees


@pytest.mark.parametrize("name", ["bf16-mixed", "fp16-mixed"])
def test_mixed_precision_first_step_losses_are_within_2_percent_of_fp32_and_training_stays_finite(llama_dir, name):
    cfg = LossConfig(num_negatives=2)
    batch = _batch()
    student = _student(llama_dir)
    fp32 = compute_loss(student, batch, cfg, across_ranks=False)
    precision = Precision(name, torch.device("cpu"))
    mixed = compute_loss(student, batch, cfg, across_ranks=False, autocast=precision.autocast)
    for part, ref in fp32.as_floats().items():  # loss/total and every term
        assert mixed.as_floats()[part] == pytest.approx(ref, rel=0.02), part
    assert mixed.total.dtype == torch.float32  # the losses are computed outside autocast
    optimizer = make_optimizer(student, build_config(None, ["train.lr=1e-3"]).train)
    first = None
    for step in range(12):  # fp16: the scaler skips the first steps while it lowers the loss scale from 2^16
        parts = compute_loss(student, _batch(seed=step % 2), cfg, across_ranks=False, autocast=precision.autocast)
        assert all(torch.isfinite(torch.tensor(v)) for v in parts.as_floats().values())
        first = first if first is not None else float(parts.total)
        optimizer.zero_grad(set_to_none=True)
        precision.backward(parts.total)
        precision.step(student.parameters(), optimizer, grad_clip=1.0)
    assert {p.dtype for p in student.parameters()} == {torch.float32}  # fp32 master weights
    assert optimizer.state and {s["exp_avg"].dtype for s in optimizer.state.values()} == {torch.float32}
    assert float(compute_loss(student, _batch(), cfg, across_ranks=False, autocast=precision.autocast).total) < first


def test_the_fp16_loss_scale_survives_a_checkpoint_and_fp32_has_none():
    precision = Precision("fp16-mixed", torch.device("cpu"))
    w = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([w], lr=0.1)
    precision.backward((w * float("inf")).sum())
    precision.step([w], optimizer, grad_clip=0.0)  # an overflow: the step is skipped
    assert torch.equal(w.detach(), torch.ones(3))
    state = precision.state_dict()
    assert state["scale"] == 65536.0 * 0.5  # halved after the overflow
    again = Precision("fp16-mixed", torch.device("cpu"))
    again.load_state_dict(state)
    assert again.state_dict()["scale"] == state["scale"]
    assert Precision("fp32", torch.device("cpu")).state_dict() == {}


@pytest.mark.parametrize("dtype,form,copies", [(torch.float32, "paper", 0), (torch.bfloat16, "paper", 1),
                                               (torch.float32, "hinton", 1)])
def test_the_kd_loss_keeps_at_most_one_copy_of_the_student_logits_for_backward(dtype, form, copies):
    """At a long span (B, L, V) = (4, 512, 2048), the tensors autograd keeps for the KD loss's backward hold
    no (B, L, V) tensor besides the logits themselves, and one when the logits must be cast to fp32 (bf16)
    or divided by T (Hinton): the log-softmax is never materialised over the vocabulary."""
    from gemini_ray.losses import topk_kd_loss

    B, L, V, k = 4, 512, 2048, 16
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, L, V, generator=g).to(dtype).requires_grad_()
    t_val, t_ids = torch.randn(B, L, V, generator=g).topk(k, dim=-1)
    full = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.numel() >= B * L * V and t.untyped_storage().data_ptr() != logits.untyped_storage().data_ptr():
            full.append(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = topk_kd_loss(logits, t_ids, t_val, torch.ones(B, L), 2.0, form)
    assert len(set(full)) == copies
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad.float()).all()


def _spec(**train):
    from types import SimpleNamespace

    cfg = build_config(None, [f"train.{k}={v}" for k, v in train.items()] + ["loss.num_negatives=2",
                                                                              "loss.in_batch_negatives=false",
                                                                              "loss.rep_weight=0"])
    return SimpleNamespace(cfg=cfg)


def test_two_accumulated_micro_batches_give_the_gradient_of_one_batch_twice_as_large(llama_dir):
    """Without in-batch negatives and the similarity term (both compare the batch's spans with each other)
    every loss term is a mean over rows, so the mean of two micro-batches'
    gradients (train.grad_accum_steps=2, what the train loop's _accumulate adds up) is the gradient of the
    batch made of both."""
    from gemini_ray.training.train_worker import _Rank, _accumulate

    me, precision = _Rank(0, 1, torch.device("cpu")), Precision("fp32", torch.device("cpu"))
    whole = _batch(8)
    halves = [{k: v[:4] for k, v in whole.items()}, {k: v[4:] for k, v in whole.items()}]

    def grads(batches, accum):
        torch.manual_seed(0)
        student, state = _student(llama_dir), {}
        values = [_accumulate(student, b, _spec(grad_accum_steps=accum), state, precision, me, sync=True)
                  for b in batches]
        assert all(bad is None for _, bad in values)
        return [p.grad.clone() for p in student.parameters()]

    big, accumulated = grads([whole], 1), grads(halves, 2)
    for a, b in zip(big, accumulated):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert _spec(grad_accum_steps=2).cfg.train.examples_per_step == 2 * TrainConfig().batch_size
    with pytest.raises(ConfigError, match="train.grad_accum_steps"):
        build_config(None, ["train.grad_accum_steps=0"])


def test_activation_checkpointing_gives_the_same_loss_and_gradients(llama_dir):
    from gemini_ray.models.numerics import enable_activation_checkpointing

    batch, cfg = _batch(), LossConfig(num_negatives=2)

    def run(checkpointing):
        student = _student(llama_dir)
        if checkpointing:
            enable_activation_checkpointing(student.model)
            assert any(getattr(m, "gradient_checkpointing", False) for m in student.model.modules())
        parts = compute_loss(student, batch, cfg, across_ranks=False)
        parts.total.backward()
        return float(parts.total), [p.grad.clone() for p in student.parameters()]

    (plain, g_plain), (ckpt, g_ckpt) = run(False), run(True)
    assert ckpt == pytest.approx(plain, rel=1e-6)
    for a, b in zip(g_plain, g_ckpt):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

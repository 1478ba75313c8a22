"""Teacher resolution and loading, student derivation, layer-subset initialisation (tiny models only)."""

import pytest
import torch

from gemini_ray.config import StudentConfig, TeacherConfig
from gemini_ray.errors import GeminiRayError
from gemini_ray.models.build import (
    DistillStudent, build_student, count_parameters, layer_depths, load_student, load_teacher, load_tokenizer, mean_pool,
    resolve_teacher, student_layer_ids, teacher_meta,
)


def _meta(path):
    return teacher_meta(TeacherConfig(model=str(path)))


def test_layer_ids_first_or_evenly_spaced_with_first_and_last():
    assert student_layer_ids(30, 6, "spread") == [0, 6, 12, 17, 23, 29]
    assert student_layer_ids(4, 2, "spread") == [0, 3]
    assert student_layer_ids(4, 4, "spread") == [0, 1, 2, 3]
    assert student_layer_ids(30, 6, "first") == [0, 1, 2, 3, 4, 5]
    for layers in ("first", "spread"):
        with pytest.raises(GeminiRayError, match="exceeds"):
            student_layer_ids(4, 5, layers)


@pytest.mark.parametrize("fixture, kind", [("llama_dir", "causal"), ("bert_dir", "masked")])
def test_teacher_kind_is_detected(request, fixture, kind):
    path = str(request.getfixturevalue(fixture))
    assert resolve_teacher(TeacherConfig(model=path)) == str(path)
    model, got = load_teacher(path)
    assert got == kind and not model.training


@pytest.mark.parametrize("layers", ["first", "spread"])
@pytest.mark.parametrize("fixture", ["llama_dir", "bert_dir"])
def test_layer_subset_init_copies_teacher_weights(request, fixture, layers):
    path = request.getfixturevalue(fixture)
    teacher, kind = load_teacher(str(path))
    student = build_student(_meta(path), StudentConfig(num_layers=2, layers=layers))
    assert student.config.num_hidden_layers == 2
    assert count_parameters(student) < count_parameters(teacher)
    t_state, s_state = teacher.state_dict(), student.state_dict()
    prefix = "model.layers" if kind == "causal" else "bert.encoder.layer"
    for s_idx, t_idx in enumerate(student_layer_ids(4, 2, layers)):
        for name, value in s_state.items():
            if name.startswith(f"{prefix}.{s_idx}."):
                rest = name[len(f"{prefix}.{s_idx}."):]
                assert torch.equal(value, t_state[f"{prefix}.{t_idx}.{rest}"]), name
    emb = "model.embed_tokens.weight" if kind == "causal" else "bert.embeddings.word_embeddings.weight"
    assert torch.equal(s_state[emb], t_state[emb])


def test_first_layers_student_is_a_prefix_of_the_teacher(llama_dir):
    """layers='first': the student's last hidden states are the teacher's after as many layers (final norm applied)."""
    teacher, kind = load_teacher(str(llama_dir))
    student = build_student(_meta(llama_dir), StudentConfig(num_layers=2, layers="first")).eval()
    ids = torch.randint(0, teacher.config.vocab_size, (2, 7))
    with torch.no_grad():
        hidden = teacher.model(input_ids=ids, output_hidden_states=True).hidden_states[2]
        assert torch.allclose(student.model(input_ids=ids).last_hidden_state, teacher.model.norm(hidden), atol=1e-5)


def test_random_init_and_narrower_student(llama_dir):
    teacher = _meta(llama_dir)
    student = build_student(teacher, StudentConfig(num_layers=2, hidden_size=16, init="random"))
    assert student.config.hidden_size == 16 and student.config.vocab_size == teacher.config.vocab_size
    with pytest.raises(GeminiRayError, match="student.init=random"):
        build_student(teacher, StudentConfig(num_layers=2, hidden_size=16))
    with pytest.raises(GeminiRayError, match="multiple"):
        build_student(teacher, StudentConfig(num_layers=2, hidden_size=18, init="random"))


def test_student_with_another_vocabulary_is_refused(tmp_path, llama_dir, lee_texts):
    from helpers import save, tiny_llama, word_tokenizer

    other_tok = word_tokenizer(lee_texts[:5], masked=False, vocab_size=120)
    other = save(tiny_llama(other_tok), other_tok, tmp_path / "other")
    with pytest.raises(GeminiRayError, match="different vocabulary"):
        load_student(str(other), _meta(llama_dir), load_tokenizer(str(llama_dir)))


def test_bad_teacher_paths(tmp_path):
    with pytest.raises(GeminiRayError, match="does not exist"):
        resolve_teacher(TeacherConfig(model=str(tmp_path / "missing")))
    (tmp_path / "notamodel").mkdir()
    with pytest.raises(GeminiRayError, match="not a Hugging Face model directory"):
        resolve_teacher(TeacherConfig(model=str(tmp_path / "notamodel")))
    with pytest.raises(GeminiRayError, match="does not exist"):
        resolve_teacher(TeacherConfig(model=str(tmp_path / "x.gguf")))
    with pytest.raises(GeminiRayError, match="unknown embedded teacher"):
        resolve_teacher(TeacherConfig(model="embedded:gpt5"))


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert torch.allclose(mean_pool(hidden, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))
    assert torch.isfinite(mean_pool(hidden, torch.zeros(1, 3))).all()


@pytest.mark.parametrize("fixture", ["llama_dir", "bert_dir"])
def test_distill_student_logits_match_the_plain_model(request, fixture):
    model, _ = load_teacher(str(request.getfixturevalue(fixture)))
    ids = torch.randint(5, model.config.vocab_size, (3, 7))
    att = torch.ones(3, 7, dtype=torch.long)
    logits, pooled = DistillStudent(model)(ids[:2], att[:2], ids[2:], att[2:])
    assert logits.shape == (2, 7, model.config.vocab_size) and pooled.shape == (3, model.config.hidden_size)
    with torch.no_grad():
        ref = model(input_ids=ids[:2], attention_mask=att[:2]).logits
    assert torch.allclose(logits, ref, atol=1e-5)


@pytest.mark.parametrize("fixture, layers, embeddings, top", [
    ("llama_dir", "model.layers", ["model.embed_tokens.weight"], ["model.norm.weight"]),  # head tied: one tensor
    ("bert_dir", "bert.encoder.layer", ["bert.embeddings.word_embeddings.weight",
                                        "bert.embeddings.LayerNorm.weight"], ["cls.predictions.bias"]),
])
def test_layer_depths_count_down_from_the_output(request, fixture, layers, embeddings, top):
    """The top of N layers is 1, the bottom N, the embeddings N + 1, the final norm / head 0."""
    student = build_student(_meta(request.getfixturevalue(fixture)), StudentConfig(num_layers=3))
    depths = layer_depths(student, embeddings_at_bottom=True)
    assert set(depths) == {name for name, _ in student.named_parameters()}
    for name, depth in depths.items():
        if name.startswith(layers + "."):
            assert depth == 3 - int(name.split(".")[len(layers.split("."))]), name
    assert {depths[name] for name in embeddings} == {4}
    assert {depths[name] for name in top} == {0}
    at_top = layer_depths(student, embeddings_at_bottom=False)
    assert at_top == {name: 0 if depth == 4 else depth for name, depth in depths.items()}

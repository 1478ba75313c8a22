"""Losses against dense references and hand computations; properties of the temperatures."""

import math

import pytest
import torch
import torch.nn.functional as F

from gemini_ray.losses import (Term, combine, cosine_embedding_loss, dense_kd_loss, info_nce_loss, register,
                               similarity_loss, topk_kd_loss)
from gemini_ray.losses.terms import TERMS

B, L, V = 3, 5, 11


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, L, V, generator=g) * 3, torch.randn(B, L, V, generator=g) * 3


@pytest.mark.parametrize("form", ["paper", "hinton"])
@pytest.mark.parametrize("T", [0.5, 1.0, 2.0, 4.0])
def test_topk_with_k_equal_vocab_equals_dense(logits, form, T):
    s, t = logits
    mask = torch.ones(B, L)
    vals, ids = torch.topk(t, V, dim=-1)
    sparse = topk_kd_loss(s, ids, vals, mask, T, form)
    assert torch.allclose(sparse, dense_kd_loss(s, t, mask, T, form), atol=1e-5)


def test_paper_form_matches_formula_by_hand(logits):
    s, t = logits
    T = 2.0
    expected = 0.0
    for b in range(B):
        for i in range(L):
            y_t = F.softmax(t[b, i] / T, -1)
            expected += -(y_t * F.log_softmax(s[b, i], -1)).sum()
    vals, ids = torch.topk(t, V, dim=-1)
    got = topk_kd_loss(s, ids, vals, torch.ones(B, L), T, "paper")
    assert torch.allclose(got, expected / (B * L), atol=1e-5)


def test_hinton_form_scales_by_t_squared(logits):
    s, t = logits
    vals, ids = torch.topk(t, V, dim=-1)
    T = 3.0
    got = topk_kd_loss(s, ids, vals, torch.ones(B, L), T, "hinton")
    ref = -(F.softmax(t / T, -1) * F.log_softmax(s / T, -1)).sum(-1).mean() * T**2
    assert torch.allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("form", ["paper", "hinton"])
def test_identical_teacher_and_student_is_the_minimum(logits, form):
    """At T = 1 (paper) or any T (hinton), the student equal to the teacher minimises the cross-entropy."""
    _, t = logits
    T = 1.0 if form == "paper" else 2.0
    vals, ids = torch.topk(t, V, dim=-1)
    mask = torch.ones(B, L)
    at_teacher = topk_kd_loss(t, ids, vals, mask, T, form)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        perturbed = t + 0.3 * torch.randn(t.shape, generator=g)
        assert topk_kd_loss(perturbed, ids, vals, mask, T, form) > at_teacher
    # and the gradient vanishes there
    s = t.clone().requires_grad_(True)
    topk_kd_loss(s, ids, vals, mask, T, form).backward()
    assert s.grad.abs().max() < 1e-6


def test_gradients_reach_only_the_student(logits):
    s, t = logits
    s = s.clone().requires_grad_(True)
    vals, ids = torch.topk(t, 4, dim=-1)
    vals = vals.clone().requires_grad_(True)  # even if a caller forgot to detach, only s is optimised
    loss = topk_kd_loss(s, ids, vals, torch.ones(B, L), 2.0)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert vals.grad is None  # fails if the loss lets a gradient into the teacher's logits
    dense_t = t.clone().requires_grad_(True)  # the dense reference too
    dense_kd_loss(s, dense_t, torch.ones(B, L), 2.0).backward()
    assert dense_t.grad is None


def test_masked_positions_contribute_nothing(logits):
    s, t = logits
    vals, ids = torch.topk(t, 4, dim=-1)
    mask = torch.zeros(B, L)
    mask[:, :2] = 1
    base = topk_kd_loss(s, ids, vals, mask, 1.0)
    s2 = s.clone()
    s2[:, 2:] = torch.randn(B, L - 2, V) * 10  # change only masked positions
    assert torch.allclose(base, topk_kd_loss(s2, ids, vals, mask, 1.0))


def test_all_masked_gives_zero_not_nan(logits):
    s, t = logits
    s = s.clone().requires_grad_(True)
    vals, ids = torch.topk(t, 4, dim=-1)
    loss = topk_kd_loss(s, ids, vals, torch.zeros(B, L), 1.0)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(s.grad).all()


def test_kd_temperature_flattens_the_teacher(logits):
    """Higher T spreads the teacher's mass: the target's entropy grows with T."""
    _, t = logits
    ent = [-(F.softmax(t / T, -1) * F.log_softmax(t / T, -1)).sum(-1).mean() for T in (0.5, 1, 2, 4)]
    assert all(a < b for a, b in zip(ent, ent[1:]))
    # in the paper form, a uniform student's loss is log V whatever T is
    vals, ids = torch.topk(t, V, dim=-1)
    for T in (0.5, 2.0):
        assert math.isclose(topk_kd_loss(torch.zeros(B, L, V), ids, vals, torch.ones(B, L), T).item(), math.log(V),
                            rel_tol=1e-5)


def test_info_nce_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    a, p, n = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g), torch.randn(4, 3, 8, generator=g)
    tau = 0.1
    expected = 0.0
    for b in range(4):
        sp = F.cosine_similarity(a[b], p[b], dim=0) / tau
        sn = torch.stack([F.cosine_similarity(a[b], n[b, k], dim=0) for k in range(3)]) / tau
        expected += -(sp - torch.logsumexp(torch.cat([sp[None], sn]), 0))
    assert torch.allclose(info_nce_loss(a, p, n, tau), expected / 4, atol=1e-5)


def test_info_nce_temperature():
    """Positive more similar than every negative: a smaller τ gives a smaller loss, and the loss tends to 0."""
    a = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[0.9, 0.1]])
    n = torch.tensor([[[0.0, 1.0], [-1.0, 0.2]]])
    losses = [info_nce_loss(a, p, n, tau).item() for tau in (1.0, 0.5, 0.1, 0.01)]
    assert all(x > y for x, y in zip(losses, losses[1:])) and losses[-1] < 1e-6
    with pytest.raises(ValueError):
        info_nce_loss(a, p, n, 0.0)


def test_info_nce_negative_mask_drops_slots():
    g = torch.Generator().manual_seed(0)
    a, p, n = torch.randn(2, 8, generator=g), torch.randn(2, 8, generator=g), torch.randn(2, 3, 8, generator=g)
    mask = torch.tensor([[True, True, False], [True, True, False]])
    assert torch.allclose(info_nce_loss(a, p, n, 0.1, mask), info_nce_loss(a, p, n[:, :2], 0.1))
    # every negative masked: only the positive is left, loss 0 and finite gradients
    a = a.clone().requires_grad_(True)
    loss = info_nce_loss(a, p, n, 0.1, torch.zeros(2, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(a.grad).all()


def _mix(kd, cl, lambda_kd, rep=None, rep_weight=None):
    """The terms as compute_loss weighs them: kd λ, cl 1 − λ, rep μ (None: logged, not in the loss)."""
    return {"kd": (lambda_kd, kd), "cl": (1.0 - lambda_kd, cl), **({"rep": (rep_weight, rep)} if rep is not None else {})}


def test_combine_weights_the_parts():
    kd, cl = torch.tensor(2.0), torch.tensor(4.0)
    parts = combine(_mix(kd, cl, 0.25))
    assert parts.total.item() == pytest.approx(0.25 * 2 + 0.75 * 4)
    assert parts.as_floats() == {"loss/total": pytest.approx(3.5), "loss/kd": 2.0, "loss/cl": 4.0}
    assert combine(_mix(kd, cl, 1.0)).total.item() == 2.0 and combine(_mix(kd, cl, 0.0)).total.item() == 4.0
    # a term without a weight is logged under its name, detached, and left out of the total
    x = torch.tensor(3.0, requires_grad=True)
    logged = combine(_mix(kd, cl, 0.25, rep=x * 2))
    assert logged.total.item() == pytest.approx(3.5) and logged["rep"].item() == 6.0 and not logged["rep"].requires_grad
    assert list(logged.as_floats()) == ["loss/total", "loss/kd", "loss/cl", "loss/rep"]


def test_compute_loss_logs_every_registered_term_under_its_stable_name():
    """summary.json, results.csv, TensorBoard and tune.metric read these names: they must not move."""
    from helpers import ToyStudent, toy_batch
    from gemini_ray.config import LossConfig
    from gemini_ray.training.train_step import compute_loss

    parts = compute_loss(ToyStudent(), toy_batch(8), LossConfig(num_negatives=2), across_ranks=False)
    assert list(parts.as_floats()) == ["loss/total", "loss/kd", "loss/cl", "loss/rep"]
    assert [w for w, _ in parts.terms.values()] == [0.5, 0.5, 10.0]  # λ, 1 − λ, μ: the config's defaults


@pytest.fixture
def toy_term():
    """A term registered for one test only, as a loss module would register it: the mean squared norm of the
    anchors' pooled embeddings, weight 0.25 (a constant here; a real term reads its config key)."""
    term = register(Term("toy", "toy loss", weight=lambda cfg: 0.25,
                         compute=lambda out, cfg: out.spans()[0].pow(2).sum(-1).mean()))
    yield term
    del TERMS["toy"]


def test_a_registered_term_flows_through_the_combined_loss_under_its_own_name(toy_term):
    """The seam: registering a term is the whole change. compute_loss computes it, the total weighs it in (its
    gradient reaches the student), and every consumer names it from its entry: loss/toy in the parts,
    val/loss_toy on the held-out rows, 'toy' in the step line, the non-finite check and its error message."""
    from helpers import ToyStudent, toy_batch
    from gemini_ray.config import LossConfig
    from gemini_ray.losses import describe
    from gemini_ray.training.train_step import compute_loss
    from gemini_ray.training.train_worker import _step_line, held_out_metrics, nonfinite_part, note_loss_reference

    batch, cfg = toy_batch(8), LossConfig(lambda_kd=0.3, num_negatives=2, rep_weight=0.0)
    model = ToyStudent()
    parts = compute_loss(model, batch, cfg, across_ranks=False)
    assert list(parts.terms) == ["kd", "cl", "rep", "toy"]
    weight, value = parts.terms["toy"]
    assert weight == 0.25 and value.item() > 0
    assert parts.total.item() == pytest.approx(0.3 * parts["kd"].item() + 0.7 * parts["cl"].item() + 0.25 * value.item(),
                                               rel=1e-6)
    grads = torch.autograd.grad(parts.total - parts.total.detach() - 0.25 * value, list(model.parameters()),
                                allow_unused=True, retain_graph=True)
    without = torch.autograd.grad(0.3 * parts["kd"] + 0.7 * parts["cl"], list(model.parameters()), allow_unused=True,
                                  retain_graph=True)
    for got, want in zip(grads, without):  # the total's gradient is the two seed terms' plus the toy term's
        assert (got is None and want is None) or torch.allclose(got, want, atol=1e-6)

    values = parts.as_floats()
    assert values["loss/toy"] == pytest.approx(value.item())
    assert nonfinite_part({**values, "loss/toy": float("nan")}, world=1) == "loss/toy"
    assert describe("loss/toy") == "toy loss (loss/toy)"
    state: dict = {}
    note_loss_reference(state, values, world=1)
    assert set(state["loss_reference"]) == {"loss/kd", "loss/cl", "loss/rep", "loss/toy"}
    rows = {k: v.numpy() for k, v in batch.items()}
    held = held_out_metrics(model, rows, cfg, batch_size=4, device=torch.device("cpu"), step=0)
    assert held["val/loss_toy"] > 0 and {"val/loss_total", "val/loss_kd", "val/loss_cl", "val/loss_rep"} <= set(held)
    line = _step_line(10, 20, {**values, "examples_per_s": 1.0, "train_tokens_per_s": 1.0, "data_wait_fraction": 0.0})
    assert f"| rep {values['loss/rep']:.4f} | toy {values['loss/toy']:.4f} |" in line


def test_info_nce_shared_candidates_match_hand_computation():
    """In-batch candidates join the denominator; masked ones (own document, duplicates) do not."""
    g = torch.Generator().manual_seed(1)
    a, p, n = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g), torch.randn(3, 2, 8, generator=g)
    mask = torch.tensor([[False, True, True], [True, False, False], [True, True, False]])
    tau, expected = 0.2, 0.0
    for b in range(3):
        sp = F.cosine_similarity(a[b], p[b], dim=0) / tau
        others = [n[b, k] for k in range(2)] + [p[j] for j in range(3) if mask[b, j]]
        sn = torch.stack([F.cosine_similarity(a[b], o, dim=0) for o in others]) / tau
        expected += -(sp - torch.logsumexp(torch.cat([sp[None], sn]), 0))
    assert torch.allclose(info_nce_loss(a, p, n, tau, shared=p, shared_mask=mask), expected / 3, atol=1e-5)
    with pytest.raises(ValueError, match="shared_mask"):
        info_nce_loss(a, p, n, tau, shared=p)


def test_in_batch_mask_leaves_out_own_document_and_duplicate_texts():
    from gemini_ray.losses.contrastive import in_batch_mask

    doc = torch.tensor([1, 1, 2, 3])
    hashes = torch.tensor([[10, 11], [12, 13], [20, 21], [30, 11]])  # row 3's positive repeats row 0's
    mask = in_batch_mask(doc, hashes, doc, hashes[:, 1])
    assert mask.tolist() == [[False, False, True, False],   # own doc (0, 1) and the duplicate text (3)
                             [False, False, True, True],
                             [True, True, False, True],
                             [False, True, True, False]]


@pytest.mark.parametrize("extra", [{}, {"rep_form": "similarity", "rep_weight": 5.0}], ids=["seed-loss", "similarity"])
def test_negatives_gathered_across_two_ranks_equal_one_process_on_the_whole_batch(tmp_path, extra):
    """Two gloo ranks with half the batch each: the mean of their losses and the DDP-averaged gradients
    equal the single-process loss and gradients on the concatenated batch (gradients reach every slice).
    The similarity term compares every span with every other, so it is gathered too."""
    import torch.multiprocessing as mp

    from ddp_toy import loss_and_grads, worker
    from helpers import toy_batch
    from gemini_ray.config import LossConfig

    rows, out = 8, str(tmp_path / "ranks.pt")
    mp.spawn(worker, args=(2, str(tmp_path / "init"), rows, out, extra), nprocs=2, join=True)
    ranks = torch.load(out)
    total, cl, grads = loss_and_grads(toy_batch(rows), LossConfig(lambda_kd=0.3, num_negatives=2, **extra))
    assert ranks["loss"] == pytest.approx([total, cl], rel=1e-5)
    for got, want in zip(ranks["grads"], grads):
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-4)
    # and the in-batch negatives matter: without them the single-process loss differs
    assert loss_and_grads(toy_batch(rows), LossConfig(lambda_kd=0.3, num_negatives=2, in_batch_negatives=False))[1] != pytest.approx(cl)


def test_cosine_embedding_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(6, 9, generator=g), torch.randn(6, 9, generator=g)
    by_hand = sum(1 - float(a @ b) / (float(a.norm()) * float(b.norm())) for a, b in zip(s, t)) / 6
    assert cosine_embedding_loss(s, t).item() == pytest.approx(by_hand, rel=1e-5)
    assert cosine_embedding_loss(s, 3 * s).item() == pytest.approx(0.0, abs=1e-6)  # direction, not length
    assert cosine_embedding_loss(s, -s).item() == pytest.approx(2.0, abs=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        cosine_embedding_loss(s, t[:, :4])


def test_similarity_loss_matches_a_pairwise_reference_at_any_width():
    """Centre each set, compare every pair's cosine (i ≠ j) by hand; the student's width may differ from the
    teacher's, and moving, rotating or scaling the student's embeddings does not change the loss."""
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(6, 4, generator=g), torch.randn(6, 9, generator=g)

    def cos(a, b):
        return float(a @ b) / (float(a.norm()) * float(b.norm()))

    sc, tc = s - s.mean(0), t - t.mean(0)
    pairs = [(i, j) for i in range(6) for j in range(6) if i != j]
    by_hand = sum((cos(sc[i], sc[j]) - cos(tc[i], tc[j])) ** 2 for i, j in pairs) / len(pairs)
    assert similarity_loss(s, t).item() == pytest.approx(by_hand, rel=1e-5)
    rotation = torch.linalg.qr(torch.randn(4, 4, generator=g))[0]
    assert similarity_loss(3 * s @ rotation + 7, t).item() == pytest.approx(by_hand, rel=1e-4)
    assert similarity_loss(t @ torch.linalg.qr(torch.randn(9, 9, generator=g))[0], t).item() == pytest.approx(0, abs=1e-6)
    assert similarity_loss(s, -t).item() == pytest.approx(similarity_loss(-s, t).item(), rel=1e-6)
    two = s[:2].clone().requires_grad_(True)  # centring two rows leaves x and −x: nothing to compare
    loss = similarity_loss(two, t[:2])
    loss.backward()
    assert loss.item() == 0 and torch.equal(two.grad, torch.zeros_like(two))
    with pytest.raises(ValueError, match="same N"):
        similarity_loss(s, t[:5])


@pytest.mark.parametrize("form", ["cosine", "similarity"])
def test_representation_term_with_zero_weight_is_the_seeds_loss_and_reaches_only_the_student(form):
    """rep_weight 0: total and gradients are λ·L_KD + (1 − λ)·L_CL's, whatever the teacher embeddings say;
    rep_weight μ: total = that + μ·L_rep, and the gradient reaches the student but not the teacher's targets."""
    from helpers import ToyStudent, toy_batch
    from gemini_ray.config import LossConfig
    from gemini_ray.training.train_step import compute_loss

    def run(batch, **loss):
        model = ToyStudent()
        cfg = LossConfig(lambda_kd=0.3, num_negatives=2, rep_form=form, **{"rep_weight": 0.0, **loss})
        parts = compute_loss(model, batch, cfg, across_ranks=False)
        parts.total.backward()
        return parts, [p.grad.clone() for p in model.parameters()]

    batch = toy_batch(8)
    seed, seed_grads = run(batch)
    assert seed.total.item() == pytest.approx(0.3 * seed["kd"].item() + 0.7 * seed["cl"].item(), rel=1e-6)
    assert 0 < seed["rep"].item() < 2 and not seed["rep"].requires_grad  # logged, not trained on
    flipped = batch["teacher_embedding"].clone()
    flipped[:, 0] = -flipped[:, 0]  # (negating all would leave the similarity form's cosines as they are)
    other = {**batch, "teacher_embedding": flipped}
    moved, moved_grads = run(other)
    assert moved.total.item() == seed.total.item() and moved["rep"].item() != pytest.approx(seed["rep"].item())
    assert all(torch.equal(a, b) for a, b in zip(seed_grads, moved_grads))

    target = batch["teacher_embedding"].clone().requires_grad_(True)
    with_rep, rep_grads = run({**batch, "teacher_embedding": target}, rep_weight=2.0)
    assert with_rep.total.item() == pytest.approx(seed.total.item() + 2.0 * with_rep["rep"].item(), rel=1e-6)
    assert with_rep["rep"].item() == pytest.approx(seed["rep"].item(), rel=1e-6)
    assert target.grad is None  # the teacher's embeddings are targets
    assert any(not torch.allclose(a, b) for a, b in zip(seed_grads, rep_grads))


@pytest.mark.parametrize("form", ["cosine", "similarity"])
def test_the_representation_term_pulls_the_student_toward_the_teacher(form):
    """A few SGD steps on L_rep alone bring the student's pooled spans (or their similarities) closer to
    the teacher's."""
    from helpers import ToyStudent, toy_batch
    from gemini_ray.config import LossConfig
    from gemini_ray.training.train_step import compute_loss

    model, batch = ToyStudent(), toy_batch(8)
    cfg = LossConfig(num_negatives=2, rep_weight=1.0, rep_form=form)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    first = compute_loss(model, batch, cfg, across_ranks=False)["rep"].item()
    for _ in range(30):
        opt.zero_grad()
        parts = compute_loss(model, batch, cfg, across_ranks=False)
        parts["rep"].backward()
        opt.step()
    assert compute_loss(model, batch, cfg, across_ranks=False)["rep"].item() < 0.8 * first


def test_magnitude_balance_keeps_the_total_and_divides_each_terms_gradient_by_its_value():
    """balance='magnitude': the logged total is the plain weighted sum, the gradient is
    λ·∇L_KD / L_KD + (1 − λ)·∇L_CL / L_CL (+ μ·∇L_rep / L_rep); 'none' is the seed's loss."""
    x = torch.tensor([1.5, -0.5], requires_grad=True)
    kd, cl, rep = (x**2).sum() * 4, (x[0] - 2) ** 2, 1 - torch.tanh(x[1])

    def grad(parts):
        (g,) = torch.autograd.grad(parts.total, x, retain_graph=True)
        return g

    plain = combine(_mix(kd, cl, 0.3, rep, 0.5))
    balanced = combine(_mix(kd, cl, 0.3, rep, 0.5), balance="magnitude")
    assert balanced.total.item() == pytest.approx(plain.total.item())
    assert plain.total.item() == pytest.approx(0.3 * kd.item() + 0.7 * cl.item() + 0.5 * rep.item())
    parts = [torch.autograd.grad(t, x, retain_graph=True)[0] / t.item() for t in (kd, cl, rep)]
    assert torch.allclose(grad(balanced), 0.3 * parts[0] + 0.7 * parts[1] + 0.5 * parts[2])
    assert torch.allclose(grad(plain), 0.3 * parts[0] * kd.item() + 0.7 * parts[1] * cl.item()
                          + 0.5 * parts[2] * rep.item())
    # scaling a term (its units) does not change the balanced gradient
    assert torch.allclose(grad(combine(_mix(kd * 100, cl, 0.3, rep, 0.5), balance="magnitude")), grad(balanced))


def test_start_balance_divides_each_terms_gradient_by_its_starting_value_and_keeps_the_split_fixed():
    """balance='start': the gradient is λ·∇L_KD / L_KD(0) + (1 − λ)·∇L_CL / L_CL(0) (+ μ·∇L_rep / L_rep(0)),
    the logged total the plain weighted sum; without a reference (the first step) it is 'magnitude'. As a
    term nears 0 its share stays what λ set; under 'magnitude' it grows without bound."""
    x = torch.tensor([1.5, -0.5], requires_grad=True)
    kd, cl, rep = (x**2).sum() * 4, (x[0] - 2) ** 2, 1 - torch.tanh(x[1])
    reference = {"loss/kd": 20.0, "loss/cl": 2.5, "loss/rep": 0.9}

    def grad(parts):
        (g,) = torch.autograd.grad(parts.total, x, retain_graph=True)
        return g

    started = combine(_mix(kd, cl, 0.3, rep, 0.5), balance="start", reference=reference)
    assert started.total.item() == pytest.approx(combine(_mix(kd, cl, 0.3, rep, 0.5)).total.item())
    parts = [torch.autograd.grad(t, x, retain_graph=True)[0] for t in (kd, cl, rep)]
    assert torch.allclose(grad(started), 0.3 * parts[0] / 20.0 + 0.7 * parts[1] / 2.5 + 0.5 * parts[2] / 0.9)
    assert torch.allclose(grad(combine(_mix(kd, cl, 0.3, rep, 0.5), balance="start")),
                          grad(combine(_mix(kd, cl, 0.3, rep, 0.5), balance="magnitude")))
    # μ = 0: the reference's rep entry is unused, as the term is
    assert torch.allclose(grad(combine(_mix(kd, cl, 0.3, rep, None), balance="start", reference=reference)),
                          0.3 * parts[0] / 20.0 + 0.7 * parts[1] / 2.5)
    # the contrastive term 100x smaller (its pairs separated): its pull shrinks with it under 'start',
    # while 'magnitude' keeps its pull as large as when it started
    small = cl / 100
    g_cl = parts[1] / 100
    assert torch.allclose(grad(combine(_mix(kd, small, 0.3), balance="start", reference=reference)),
                          0.3 * parts[0] / 20.0 + 0.7 * g_cl / 2.5)
    assert torch.allclose(grad(combine(_mix(kd, small, 0.3), balance="magnitude")),
                          0.3 * parts[0] / kd.item() + 0.7 * g_cl / small.item())


def test_a_student_narrower_than_its_teacher_logs_the_similarity_form():
    """The cosine form cannot compare widths that differ; with μ = 0 training still runs and loss/rep is the
    similarity form's value (the width check of distill refuses μ > 0 with the cosine form)."""
    from helpers import ToyStudent, toy_batch
    from gemini_ray.config import LossConfig
    from gemini_ray.training.train_step import compute_loss

    batch = toy_batch(8)
    wide = torch.cat([batch["teacher_embedding"], batch["teacher_embedding"][..., :3]], dim=-1)
    parts = compute_loss(ToyStudent(), {**batch, "teacher_embedding": wide}, LossConfig(num_negatives=2),
                         across_ranks=False)
    similar = compute_loss(ToyStudent(), {**batch, "teacher_embedding": wide},
                           LossConfig(num_negatives=2, rep_form="similarity"), across_ranks=False)
    assert parts["rep"].item() == pytest.approx(similar["rep"].item()) and parts.total.item() == pytest.approx(similar.total.item())

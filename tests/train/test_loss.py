"""The PTR loss against hand-computed values, the thought mask's zero gradient, λ=(1,0,0)=CE."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ptr_ray.records import read_records
from ptr_ray.train.encode import IGNORE, Encoder, collate
from ptr_ray.train.loss import lambdas_at, ptr_loss

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ptr_small"


def _toy():
    """One episode of 5 tokens: turn 1 = tokens [1, 3), turn 2 (answer) = tokens [3, 5)."""
    V = 4
    ids = torch.tensor([[0, 1, 1, 0, 1]])
    labels = torch.tensor([[IGNORE, IGNORE, IGNORE, 0, 1]])
    logits = torch.zeros(1, 5, V)
    logits[0, 2, 0] = 2.0  # position 2 predicts token 3 (= 0) with p = e^2 / (e^2 + 3)
    hidden = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 2.0]]])
    turns = torch.tensor([[0, 1, 3, 0, 1, 2], [0, 3, 5, 0, 2, 2]])
    return logits, hidden, ids, labels, turns


def test_each_term_matches_hand_computation():
    logits, hidden, ids, labels, turns = _toy()
    out = ptr_loss(logits, hidden, ids, labels, turns, (0.5, 0.3, 0.2))
    lp_tok3 = 2.0 - math.log(math.e**2 + 3)  # log p(token 3 | ...) at the boosted position
    lp_uniform = -math.log(4)
    # CE over the answer tokens 3 and 4
    ce = -(lp_tok3 + lp_uniform) / 2
    assert out.ce.item() == pytest.approx(ce, rel=1e-6)
    # h̄_1 = (1, 0), h̄_2 = (0, 1.5): orthogonal, F = 1 - 0 = 1 (token 0's (9, 9) is outside turns)
    assert out.consistency.item() == pytest.approx(1.0, abs=1e-6)
    # p̄_1 = exp(mean(lp_uniform, lp_uniform)) = 1/4; p̄_2 = exp(mean(lp_tok3, lp_uniform))
    p1 = 0.25
    p2 = math.exp((lp_tok3 + lp_uniform) / 2)
    conf = (1 / 3) * (1 - p1) + (2 / 3) * (1 - p2)  # β = (1/3, 2/3)
    assert out.confidence.item() == pytest.approx(conf, rel=1e-6)
    assert out.total.item() == pytest.approx(0.5 * ce + 0.3 * 1.0 + 0.2 * conf, rel=1e-6)
    assert out.answer_tokens == 2


def test_consistency_of_parallel_means_is_zero_and_single_turn_episodes_are_excluded():
    logits, hidden, ids, labels, turns = _toy()
    hidden = hidden.clone()
    hidden[0, 3:] = torch.tensor([[2.0, 0.0], [4.0, 0.0]])  # same direction as turn 1
    assert ptr_loss(logits, hidden, ids, labels, turns, (0, 1, 0)).total.item() == pytest.approx(
        0, abs=1e-6
    )
    # a second, single-turn episode in another row does not dilute the consistency mean
    logits2 = torch.zeros(2, 5, 4)
    logits2[0] = logits[0]
    ids2 = torch.cat([ids, ids])
    labels2 = torch.cat([labels, labels])
    hidden2 = torch.cat([_toy()[1], _toy()[1]])
    turns2 = torch.tensor([[0, 1, 3, 0, 1, 2], [0, 3, 5, 0, 2, 2], [1, 3, 5, 1, 1, 1]])
    out = ptr_loss(logits2, hidden2, ids2, labels2, turns2, (0, 1, 0))
    assert out.consistency.item() == pytest.approx(1.0, abs=1e-6)
    # the single-turn episode's confidence: β_1 = 1, 1 - p̄ with p̄ = 1/4; averaged over episodes
    lp_tok3 = 2.0 - math.log(math.e**2 + 3)
    conf0 = (1 / 3) * 0.75 + (2 / 3) * (1 - math.exp((lp_tok3 - math.log(4)) / 2))
    assert out.confidence.item() == pytest.approx((conf0 + 0.75) / 2, rel=1e-6)


def test_confidence_over_the_final_answer_only():
    """confidence="final": 1 − p̄_n alone; CE and consistency are the same as all_turns."""
    logits, hidden, ids, labels, turns = _toy()
    out = ptr_loss(logits, hidden, ids, labels, turns, (0.5, 0.3, 0.2), confidence="final")
    every = ptr_loss(logits, hidden, ids, labels, turns, (0.5, 0.3, 0.2))
    lp_tok3 = 2.0 - math.log(math.e**2 + 3)
    p2 = math.exp((lp_tok3 - math.log(4)) / 2)  # p̄_2 of the answer turn; p̄_1 = 1/4 is left out
    assert out.confidence.item() == pytest.approx(1 - p2, rel=1e-6)
    assert out.ce.item() == pytest.approx(every.ce.item(), rel=1e-7)
    assert out.consistency.item() == pytest.approx(every.consistency.item(), abs=1e-7)
    assert out.total.item() == pytest.approx(
        0.5 * out.ce.item() + 0.3 * 1.0 + 0.2 * (1 - p2), rel=1e-6
    )
    # two episodes (2 turns and 1 turn): each contributes its last turn's 1 − p̄, averaged
    logits2 = torch.zeros(2, 5, 4)
    logits2[0] = logits[0]
    turns2 = torch.tensor([[0, 1, 3, 0, 1, 2], [0, 3, 5, 0, 2, 2], [1, 3, 5, 1, 1, 1]])
    out2 = ptr_loss(
        logits2,
        torch.cat([hidden, hidden]),
        torch.cat([ids, ids]),
        torch.cat([labels, labels]),
        turns2,
        (0, 0, 1),
        confidence="final",
    )
    assert out2.confidence.item() == pytest.approx(((1 - p2) + 0.75) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="confidence must be"):
        ptr_loss(logits, hidden, ids, labels, turns, (0.5, 0.3, 0.2), confidence="last")


def test_confidence_final_gives_thought_tokens_no_gradient():
    """With the final answer's confidence only, thought tokens get no gradient from λ3's term."""
    logits, hidden, ids, labels, turns = _toy()
    logits = logits.clone().requires_grad_(True)
    ptr_loss(
        logits, hidden, ids, labels, turns, (0, 0, 1), confidence="final"
    ).confidence.backward()
    assert (logits.grad[0, :2] == 0).all()  # positions 0-1 predict turn 1's tokens 1-2
    assert (logits.grad[0, 2:4].abs().sum(-1) > 0).all()  # positions 2-3 predict the answer


def test_lambda_schedule():
    assert lambdas_at((0.8, 0.1, 0.1), "constant", 0, 5) == (0.8, 0.1, 0.1)
    l1, l2, l3 = lambdas_at((0.6, 0.2, 0.2), "warmup", 10, 5)
    assert (l1, l2, l3) == pytest.approx((0.8, 0.1, 0.1))
    assert lambdas_at((0.6, 0.2, 0.2), "warmup", 10, 0) == pytest.approx((1.0, 0.0, 0.0))
    assert lambdas_at((0.6, 0.2, 0.2), "warmup", 10, 50) == pytest.approx((0.6, 0.2, 0.2))


@pytest.fixture(scope="module")
def model_and_batch(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    records = read_records(FIXTURE)
    eps, _ = Encoder(tiny_tokenizer, 4096).encode_many(records, [0, 3, 21])  # 3, 3 and 1 turns
    batch = collate(eps, [[0, 1], [2]], tiny_tokenizer.pad_token_id)
    return model, eps, batch


def _forward(model, batch):
    out = model(
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        output_hidden_states=True,
        use_cache=False,
    )
    return out.logits, out.hidden_states[-1]


@pytest.mark.parametrize("confidence", ["all_turns", "final"])
def test_tiny_model_terms_match_a_naive_per_episode_computation(model_and_batch, confidence):
    model, eps, batch = model_and_batch
    with torch.no_grad():
        logits, hidden = _forward(model, batch)
        out = ptr_loss(
            logits,
            hidden,
            batch["input_ids"],
            batch["labels"],
            batch["turns"],
            (0.6, 0.2, 0.2),
            confidence=confidence,
        )
    # naive: loop over episodes and turns, each from its own unpacked forward pass
    ce_sum, ce_n, cons, conf = 0.0, 0, [], []
    for ep in eps:
        with torch.no_grad():
            o = model(
                input_ids=torch.tensor([ep.input_ids]), output_hidden_states=True, use_cache=False
            )
        lp = torch.log_softmax(o.logits[0].double(), -1)
        h = o.hidden_states[-1][0].double()
        turn_lp, turn_h = [], []
        for a, b in ep.spans:
            lps = [lp[j - 1, ep.input_ids[j]].item() for j in range(a, b)]
            turn_lp.append(sum(lps) / len(lps))
            turn_h.append(h[a:b].mean(0))
        a, b = ep.answer_span
        ce_sum += -sum(lp[j - 1, ep.input_ids[j]].item() for j in range(a, b))
        ce_n += b - a
        n = len(ep.spans)
        if confidence == "final":
            conf.append(1 - math.exp(turn_lp[-1]))
        else:
            conf.append(
                sum(
                    (t / (n * (n + 1) / 2)) * (1 - math.exp(turn_lp[t - 1]))
                    for t in range(1, n + 1)
                )
            )
        if n > 1:
            cons.append(
                sum(
                    1 - F.cosine_similarity(turn_h[t], turn_h[t - 1], dim=0).item()
                    for t in range(1, n)
                )
                / (n - 1)
            )
    assert out.ce.item() == pytest.approx(ce_sum / ce_n, rel=1e-4)
    assert out.consistency.item() == pytest.approx(sum(cons) / len(cons), rel=1e-4, abs=1e-6)
    assert out.confidence.item() == pytest.approx(sum(conf) / len(conf), rel=1e-4)
    assert out.total.item() == pytest.approx(
        0.6 * out.ce.item() + 0.2 * out.consistency.item() + 0.2 * out.confidence.item(), rel=1e-6
    )


def test_masked_tokens_get_exactly_zero_ce_gradient(model_and_batch):
    model, _, batch = model_and_batch
    with torch.no_grad():
        logits, hidden = _forward(model, batch)
    logits = logits.clone().requires_grad_(True)
    out = ptr_loss(
        logits, hidden, batch["input_ids"], batch["labels"], batch["turns"], (0.6, 0.2, 0.2)
    )
    out.ce.backward()
    predicts_answer = torch.zeros_like(batch["labels"], dtype=torch.bool)
    predicts_answer[:, :-1] = batch["labels"][:, 1:] != IGNORE
    g = logits.grad
    assert (g[~predicts_answer] == 0).all()  # exactly zero, not just small
    assert (g[predicts_answer].abs().sum(-1) > 0).all()
    # the confidence term, by contrast, does reach thought tokens
    logits.grad = None
    ptr_loss(
        logits, hidden, batch["input_ids"], batch["labels"], batch["turns"], (0.6, 0.2, 0.2)
    ).confidence.backward()
    assert logits.grad[~predicts_answer].abs().sum() > 0


@pytest.mark.parametrize("ce_only", [False, True])
def test_lambda_100_equals_plain_answer_only_cross_entropy(model_and_batch, ce_only):
    model, _, batch = model_and_batch
    model.zero_grad()
    logits, hidden = _forward(model, batch)
    ours = ptr_loss(
        logits,
        hidden,
        batch["input_ids"],
        batch["labels"],
        batch["turns"],
        (1.0, 0.0, 0.0),
        ce_only=ce_only,
    ).total
    ours.backward()
    g_ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logits, _ = _forward(model, batch)
    V = logits.shape[-1]
    plain = F.cross_entropy(
        logits[:, :-1].reshape(-1, V), batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE
    )
    plain.backward()
    assert ours.item() == pytest.approx(plain.item(), rel=1e-6)
    for a, p in zip(g_ours, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, atol=1e-6, rtol=1e-5)

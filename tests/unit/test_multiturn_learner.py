"""The learner trains only the policy's tokens of a multi-turn sample (DESIGN §11).

Float64 reference: for every policy token t of every response, the model is run on exactly the tokens before t
(prompt, earlier turns and the environment's observations as plain context, no packing, no masks) and the
REINFORCE gradient -Σ_t w_t · A · ∇ log π(y_t | y_<t) is summed. The learner's step (train_step, packed and cut
into micro-batches every way the learner can) at ratio 1 takes exactly that gradient; training the environment
tokens too would not.
"""

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from asyncor.configs.schema import AlgoConfig
from asyncor.learner.advantage import step_advantages
from asyncor.learner.batch import minibatch
from asyncor.learner.entropy_control import make_entropy_control
from asyncor.learner.model import Policy
from asyncor.learner.parallel import Ranks
from asyncor.learner.update import UpdateSettings, train_step
from asyncor.learner.variants import algorithm
from asyncor.wire.trajectory import Response, TrajectoryGroup, parse_group

VOCAB = 29
ONE_RANK = Ranks(rank=0, world=1, device=torch.device("cpu"), sharded=False)
ALGO = AlgoConfig(entropy={"mode": "off"})


def lm(seed=0):
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)
    return Qwen2ForCausalLM(cfg).double()


def episode(rng, turns):
    """(tokens, loss mask) of an episode: policy turns of 1-5 tokens, observations of 1-4 tokens between them."""
    tokens, mask = [], []
    for k in range(turns):
        n = int(rng.integers(1, 6))
        tokens += rng.integers(1, VOCAB, n).tolist()
        mask += [1] * n
        if k < turns - 1:
            m = int(rng.integers(1, 5))
            tokens += rng.integers(1, VOCAB, m).tolist()
            mask += [0] * m
    return np.asarray(tokens, np.int32), np.asarray(mask, np.uint8)


def reference_logprobs(model, prompt, tokens):
    """log π(tokens[i] | prompt, tokens[:i]) for every i, each from its own unpacked forward, float64."""
    out = []
    for i in range(len(tokens)):
        ids = torch.as_tensor(np.concatenate([prompt, tokens[:i]]).astype(np.int64))[None]
        logits = model(input_ids=ids).logits[0, -1]
        out.append(torch.log_softmax(logits, -1)[int(tokens[i])])
    return torch.stack(out)


def make_groups(model, seed=0):
    """Two groups of four: multi-turn episodes (3-4 turns) beside single-turn responses, behaviour log-probs
    equal to the model's own (ratio 1: nothing clipped, the gradient is REINFORCE's)."""
    rng = np.random.default_rng(seed)
    groups = []
    for g in range(2):
        prompt = rng.integers(1, VOCAB, 3 + g).astype(np.int32)
        responses = []
        for j in range(4):
            if j % 2 == 0:
                tokens, mask = episode(rng, 3 + (j // 2))
            else:
                tokens, mask = rng.integers(1, VOCAB, int(rng.integers(2, 7))).astype(np.int32), None
            with torch.no_grad():
                lp = reference_logprobs(model, prompt, tokens).numpy().astype(np.float32)
            if mask is not None:
                lp[mask == 0] = 0.0
            responses.append(Response(tokens, lp, 0, "stop", float((j + g) % 2), None, mask))
        groups.append(TrajectoryGroup(g, prompt, responses, 0, g, 0.0))
    return groups


def reference_grad(model, groups, trained="policy"):
    """The gradient of -Σ_t w_t A log π over the trained tokens (token_mean weights: 1 / their count)."""
    advantages = step_advantages([g.rewards for g in groups], [[False] * 4 for _ in groups],
                                 algorithm(ALGO).advantage, ALGO.truncation_mask)
    model.zero_grad()
    terms, count = [], 0
    for g, advs in zip(groups, advantages):
        for r, a in zip(g.responses, advs):
            lp = reference_logprobs(model, g.prompt_ids, r.token_ids)
            keep = np.ones(len(r.token_ids), bool) if trained == "all" or r.loss_mask is None else r.loss_mask == 1
            terms.append(-float(a) * lp[torch.as_tensor(keep)].sum())
            count += int(keep.sum())
    (torch.stack(terms).sum() / count).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()]).clone()


def learner_grad(model, groups, layout, micro_batch_tokens):
    """The parameter change of one train_step under SGD at lr 1 (no clipping): minus the step's gradient."""
    before = [p.detach().clone() for p in model.parameters()]
    policy = Policy(model, temperature=1.0, impl="torch", chunk=7)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    settings = UpdateSettings(algo=ALGO, eps_low=0.2, eps_high=0.2, grad_clip=1e9, pad_id=0,
                              micro_batch_tokens=micro_batch_tokens, layout=layout)
    train_step(policy, opt, groups, settings, make_entropy_control(ALGO.entropy), ONE_RANK)
    delta = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])
    with torch.no_grad():
        for b, p in zip(before, model.parameters()):
            p.copy_(b)
    return delta


@pytest.fixture(scope="module")
def reference():
    """(model, groups, the float64 reference gradient, the gradient that also trains the environment's tokens):
    computed once for every layout (learner_grad puts the weights back after its step)."""
    model = lm()
    groups = make_groups(model)
    return model, groups, reference_grad(model, groups), reference_grad(model, groups, trained="all")


@pytest.mark.parametrize("layout,budget", [("varlen", 1 << 30), ("varlen", 24), ("rows", 30), ("padded", 40)])
def test_multi_turn_gradient_is_that_of_the_policy_tokens_with_observations_as_context(reference, layout, budget):
    model, groups, ref, wrong = reference
    assert sum(r.loss_mask is not None and (r.loss_mask == 0).any() for g in groups for r in g.responses) == 4
    got = learner_grad(model, groups, layout, budget)
    scale = ref.abs().max().item()
    assert scale > 1e-3
    assert (got - ref).abs().max().item() <= 1e-5 * scale  # float32 behaviour log-probs and weights
    # Training the environment's tokens too is a different gradient, far outside that tolerance.
    assert (wrong - ref).abs().max().item() > 1e-2 * scale


def test_the_minibatch_holds_policy_tokens_only():
    rng = np.random.default_rng(3)
    tokens, mask = episode(rng, 3)
    lp = np.where(mask == 1, -0.5, 0.0).astype(np.float32)
    response = Response(tokens, lp, 0, "stop", 1.0, None, mask)
    group = TrajectoryGroup(0, np.array([1, 2], np.int32), [response], 0, 0, 0.0)
    mb = minibatch([group], [np.array([1.0])], algorithm(ALGO).loss_agg)
    seq = mb.sequences[0]
    assert mb.lengths.tolist() == [int(mask.sum())]
    assert (seq.behaviour == -0.5).all() and len(seq.behaviour) == mask.sum()
    assert np.array_equal(seq.ids[seq.positions], tokens[mask == 1])  # exactly the policy's tokens, in order
    assert np.isclose(seq.weight.sum(), 1.0)


def test_a_loss_mask_survives_the_wire_and_bad_ones_are_refused():
    from asyncor.wire.envelope import ProtocolError

    rng = np.random.default_rng(4)
    tokens, mask = episode(rng, 3)
    lp = np.where(mask == 1, -0.5, 0.0).astype(np.float32)
    versions = np.where(mask == 1, 3, -1).astype(np.int32)
    versions[np.flatnonzero(mask)[-1]] = 4  # an in-flight update in the last turn
    good = TrajectoryGroup(5, np.array([1, 2], np.int32), [Response(tokens, lp, 3, "stop", 1.0, versions, mask)],
                           0, 0, 0.0)
    back = parse_group(good.to_wire())
    assert np.array_equal(back.responses[0].loss_mask, mask) and back.responses[0].min_version == 3
    for field, value in [("loss_mask", (mask * 2).astype(np.uint8)),  # not 0/1
                         ("loss_mask", mask[:-1]),  # wrong length
                         ("logprobs", np.where(mask == 1, -0.5, -0.1).astype(np.float32)),  # env token log-prob
                         ("versions", np.where(mask == 1, 3, 0).astype(np.int32))]:  # env token version
        body = good.to_wire()
        from asyncor.wire.arrays import pack_array

        body["responses"][0][field] = pack_array(value)
        with pytest.raises(ProtocolError):
            parse_group(body)
    body = good.to_wire()
    body["responses"][0]["min_version"] = 0  # policy tokens are 3 and 4: the mask's -1 does not count
    with pytest.raises(ProtocolError):
        parse_group(body)

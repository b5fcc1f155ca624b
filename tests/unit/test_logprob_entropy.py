"""The chunked torch log-prob + entropy against a float64 reference on odd shapes."""

import pytest
import torch

from kernels.logprob_entropy import logprob_entropy


def reference(hidden, weight, target, temperature):
    logits = (hidden.double() @ weight.double().T) / temperature
    logp = torch.log_softmax(logits, -1)
    return logp.gather(1, target[:, None]).squeeze(1), -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("N,H,V,chunk,temperature", [(37, 48, 1000, 8, 1.0), (37, 48, 257, 100, 0.7), (5, 16, 17, 2, 1.3)])
def test_matches_float64_reference_values_and_gradients(N, H, V, chunk, temperature):
    g = torch.Generator().manual_seed(N * V)
    hidden = torch.randn(N, H, generator=g, requires_grad=True)
    weight = (torch.randn(V, H, generator=g) * 0.3).requires_grad_()
    target = torch.randint(0, V, (N,), generator=g)
    lp, ent = logprob_entropy(hidden, weight, target, temperature, chunk)
    lp_ref, ent_ref = reference(hidden, weight, target, temperature)
    torch.testing.assert_close(lp.double(), lp_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ent.double(), ent_ref, rtol=1e-4, atol=1e-5)
    # Mixed upstream gradients through both outputs.
    up_lp, up_ent = torch.randn(N, generator=g), torch.randn(N, generator=g)
    grads = torch.autograd.grad((lp * up_lp).sum() + (ent * up_ent).sum(), (hidden, weight))
    hidden64, weight64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    lp_ref, ent_ref = reference(hidden64, weight64, target, temperature)
    grads_ref = torch.autograd.grad((lp_ref * up_lp.double()).sum() + (ent_ref * up_ent.double()).sum(), (hidden64, weight64))
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


def test_large_negative_logits_and_near_zero_entropy_are_finite():
    hidden = torch.full((3, 4), 50.0)
    weight = torch.zeros(7, 4)
    weight[2] = 10.0  # one logit towers over the rest: entropy ~ 0
    weight[3:] = -30.0
    lp, ent = logprob_entropy(hidden, weight, torch.tensor([2, 0, 5]))
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all()
    assert lp[0].item() == pytest.approx(0.0, abs=1e-6) and ent[0].item() == pytest.approx(0.0, abs=1e-6)


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        logprob_entropy(torch.zeros(3, 4), torch.zeros(5, 6), torch.zeros(3, dtype=torch.long))

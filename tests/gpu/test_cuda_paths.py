"""CUDA paths of the learner (skipped without CUDA)."""

import pytest
import torch

from kernels.logprob_entropy import logprob_entropy
from learner.model import attention_implementation

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_logprob_entropy_on_cuda_matches_cpu_float64():
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(333, 64, generator=g), torch.randn(1001, 64, generator=g) * 0.2
    target = torch.randint(0, 1001, (333,), generator=g)
    lp, ent = logprob_entropy(hidden.cuda(), weight.cuda(), target.cuda(), 0.8, chunk=100)
    logp = torch.log_softmax(hidden.double() @ weight.double().T / 0.8, -1)
    torch.testing.assert_close(lp.cpu().double(), logp.gather(1, target[:, None]).squeeze(1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ent.cpu().double(), -(logp.exp() * logp).sum(-1), rtol=1e-4, atol=1e-4)


def test_attention_choice_on_cuda():
    impl = attention_implementation("auto", torch.device("cuda"))
    assert impl in ("flash_attention_2", "sdpa")

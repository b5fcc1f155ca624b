"""CUDA paths of the learner (skipped without CUDA)."""

import pytest
import torch

from asyncor.learner.model import attention_implementation

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_attention_choice_on_cuda():
    impl = attention_implementation("auto", torch.device("cuda"))
    assert impl in ("flash_attention_2", "sdpa")

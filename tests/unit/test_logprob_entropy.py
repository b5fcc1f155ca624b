"""Both log-prob + entropy implementations against a float64 reference on odd shapes.

The Triton kernels run under TRITON_INTERPRET=1 on CPU (on CUDA when present).
Shapes are chosen so that no dimension is a multiple of any tile: padding
columns, padding rows and a ragged H are all exercised.
"""

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")

# The interpreter is chosen when the kernels are decorated, i.e. at import.
_saved_env = os.environ.get("TRITON_INTERPRET")
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
import asyncor.kernels.logprob_entropy_triton  # noqa: E402,F401  (decorates the kernels now)

if _saved_env is None:
    os.environ.pop("TRITON_INTERPRET", None)
else:
    os.environ["TRITON_INTERPRET"] = _saved_env

from asyncor.kernels.logprob_entropy import logprob_entropy, resolve_impl  # noqa: E402
from asyncor.kernels.logprob_entropy_naive import logprob_entropy_naive  # noqa: E402

IMPLS = ["triton", "torch"]


@pytest.fixture(autouse=True, scope="module")
def _interpreter_env():
    if CUDA:
        yield
        return
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    yield
    if saved is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = saved


def make_inputs(N, H, V, dtype=torch.float32, seed=0, scale=0.3, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g).to(DEVICE, dtype)
    weight = (torch.randn(V, H, generator=g) * scale).to(DEVICE, dtype)
    target = torch.randint(0, V, (N,), generator=g).to(DEVICE)
    return hidden.requires_grad_(requires_grad), weight.requires_grad_(requires_grad), target


def reference(hidden, weight, target, temperature, up_lp=None, up_ent=None):
    """float64 outputs and, when upstream gradients are given, float64 gradients."""
    h64 = hidden.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    lp, ent = logprob_entropy_naive(h64, w64, target, temperature)
    if up_lp is None and up_ent is None:
        return lp.detach(), ent.detach(), None
    loss = sum((out * up.double()).sum() for out, up in ((lp, up_lp), (ent, up_ent)) if up is not None)
    return lp.detach(), ent.detach(), torch.autograd.grad(loss, (h64, w64))


def assert_close(actual, expected, rtol, atol=1e-6):
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol)


def assert_grad_close(actual, expected, rtol):
    """Relative error measured against the gradient's scale (entries near zero have no own scale)."""
    err = (actual.double() - expected).abs().max().item()
    assert err <= rtol * expected.abs().max().item() + 1e-12, f"max abs error {err:.3g} vs scale {expected.abs().max():.3g}"


SHAPES = [(37, 48, 1000, 1.0), (37, 48, 257, 0.7), (37, 50, 257, 1.3), (5, 16, 17, 1.0)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("N,H,V,temperature", SHAPES)
def test_fp32_outputs_and_both_gradients_match_float64(impl, N, H, V, temperature):
    hidden, weight, target = make_inputs(N, H, V, seed=N * V + H)
    lp, ent = logprob_entropy(hidden, weight, target, temperature, impl=impl, chunk=8)
    assert lp.dtype == ent.dtype == torch.float32
    g = torch.Generator().manual_seed(1)
    up_lp, up_ent = torch.randn(N, generator=g).to(DEVICE), torch.randn(N, generator=g).to(DEVICE)
    lp_ref, ent_ref, grads_ref = reference(hidden, weight, target, temperature, up_lp, up_ent)
    assert_close(lp, lp_ref, rtol=1e-4)
    assert_close(ent, ent_ref, rtol=1e-4)
    grads = torch.autograd.grad((lp * up_lp).sum() + (ent * up_ent).sum(), (hidden, weight))
    for got, want in zip(grads, grads_ref):
        assert got.dtype == torch.float32
        assert_grad_close(got, want, rtol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("which", ["logprob", "entropy", "entropy_zero_logprob"])
def test_gradient_through_one_output_only(impl, which):
    N, H, V, T = 37, 48, 257, 0.9
    hidden, weight, target = make_inputs(N, H, V, seed=3)
    lp, ent = logprob_entropy(hidden, weight, target, T, impl=impl, chunk=16)
    g = torch.Generator().manual_seed(2)
    up = torch.randn(N, generator=g).to(DEVICE)
    if which == "logprob":
        loss, refs = (lp * up).sum(), (up, None)
    elif which == "entropy":
        loss, refs = (ent * up).sum(), (None, up)
    else:
        loss, refs = (ent * up).sum() + (lp * 0.0).sum(), (None, up)
    grads = torch.autograd.grad(loss, (hidden, weight))
    _, _, grads_ref = reference(hidden, weight, target, T, *refs)
    for got, want in zip(grads, grads_ref):
        assert_grad_close(got, want, rtol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradient_to_hidden_only_and_weight_only(impl):
    N, H, V = 21, 32, 300
    for grad_hidden in (True, False):
        hidden, weight, target = make_inputs(N, H, V, seed=4, requires_grad=False)
        (hidden if grad_hidden else weight).requires_grad_()
        lp, ent = logprob_entropy(hidden, weight, target, impl=impl)
        (got,) = torch.autograd.grad((lp + 0.5 * ent).sum(), hidden if grad_hidden else weight)
        up = torch.ones(N, device=DEVICE)
        _, _, grads_ref = reference(hidden, weight, target, 1.0, up, 0.5 * up)
        assert_grad_close(got, grads_ref[0 if grad_hidden else 1], rtol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_fp16_inputs_accumulate_in_fp32(impl):
    N, H, V = 37, 48, 1000
    hidden, weight, target = make_inputs(N, H, V, dtype=torch.float16, seed=5)
    lp, ent = logprob_entropy(hidden, weight, target, 0.8, impl=impl, chunk=16)
    assert lp.dtype == ent.dtype == torch.float32
    # Per-token weights as small as a token-mean loss uses; fp16 must not underflow them.
    up_lp = torch.full((N,), 1.0 / 16384, device=DEVICE)
    up_ent = torch.full((N,), -3.0 / 16384, device=DEVICE)
    lp_ref, ent_ref, grads_ref = reference(hidden, weight, target, 0.8, up_lp, up_ent)
    # fp16 inputs are exact in float64, so only accumulation and the fp16 dZ/gradient rounding
    # differ (the torch path on CUDA also rounds its logits to fp16).
    tol = 5e-3 if impl == "torch" and CUDA else 1e-4
    assert_close(lp, lp_ref, rtol=tol, atol=tol)
    assert_close(ent, ent_ref, rtol=tol, atol=tol)
    grads = torch.autograd.grad((lp * up_lp).sum() + (ent * up_ent).sum(), (hidden, weight))
    for got, want in zip(grads, grads_ref):
        assert got.dtype == torch.float16
        assert_grad_close(got, want, rtol=1e-2)


def test_bf16_torch_path_matches_float64():
    # bf16 tl.dot is not trustworthy in the interpreter; the bf16 kernels are checked in tests/gpu.
    hidden, weight, target = make_inputs(37, 64, 1000, dtype=torch.bfloat16, seed=6)
    lp, ent = logprob_entropy(hidden, weight, target, 1.0, impl="torch")
    lp_ref, ent_ref, _ = reference(hidden, weight, target, 1.0)
    assert_close(lp, lp_ref, rtol=2e-2, atol=2e-2)
    assert_close(ent, ent_ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("impl", IMPLS)
def test_masked_tokens_give_zero_and_get_no_gradient(impl):
    N, H, V = 37, 48, 257
    hidden, weight, target = make_inputs(N, H, V, seed=7)
    masked = torch.zeros(N, dtype=torch.bool, device=DEVICE)
    masked[::3] = True
    target = torch.where(masked, -100, target)
    lp, ent = logprob_entropy(hidden, weight, target, impl=impl)
    assert (lp[masked] == 0).all() and (ent[masked] == 0).all()
    g = torch.Generator().manual_seed(8)
    up_lp, up_ent = torch.randn(N, generator=g).to(DEVICE), torch.randn(N, generator=g).to(DEVICE)
    d_hidden, d_weight = torch.autograd.grad((lp * up_lp).sum() + (ent * up_ent).sum(), (hidden, weight))
    assert (d_hidden[masked] == 0).all()
    keep = ~masked
    h_keep = hidden.detach()[keep].requires_grad_()
    lp_ref, ent_ref, (dh_ref, dw_ref) = reference(h_keep, weight, target[keep], 1.0, up_lp[keep], up_ent[keep])
    assert_close(lp[keep], lp_ref, rtol=1e-4)
    assert_close(ent[keep], ent_ref, rtol=1e-4)
    assert_grad_close(d_hidden[keep], dh_ref, rtol=1e-4)
    assert_grad_close(d_weight, dw_ref, rtol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_all_negative_large_magnitude_logits(impl):
    """Logits around -3e3 with spread ~30: every logit negative, a shifted max is required."""
    N, H, V = 37, 48, 257
    hidden, weight, target = make_inputs(N, H, V, seed=9, requires_grad=False)
    hidden = hidden.detach().clone()
    hidden[:, 0] = 100.0
    weight = weight.detach().clone()
    weight[:, 0] = -30.0
    hidden.requires_grad_()
    weight.requires_grad_()
    lp, ent = logprob_entropy(hidden, weight, target, impl=impl)
    up = torch.ones(N, device=DEVICE)
    lp_ref, ent_ref, grads_ref = reference(hidden, weight, target, 1.0, up, up)
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all()
    assert (lp <= 0).all()
    # At |z| ~ 3e3 an fp32 logit carries ~2e-4 of rounding; compare at that scale.
    assert_close(lp, lp_ref, rtol=1e-4, atol=2e-3)
    assert_close(ent, ent_ref, rtol=1e-4, atol=2e-3)
    grads = torch.autograd.grad((lp + ent).sum(), (hidden, weight))
    for got, want in zip(grads, grads_ref):
        assert torch.isfinite(got).all()
        assert_grad_close(got, want, rtol=1e-3)


@pytest.mark.parametrize("impl", IMPLS)
def test_near_zero_entropy_has_no_cancellation(impl):
    """One logit towers 30-40 nats over the rest: entropy ~1e-12..1e-9, must not round to noise."""
    N, H, V = 19, 16, 300
    hidden, weight, target = make_inputs(N, H, V, seed=10, scale=0.05, requires_grad=False)
    hidden = hidden.detach().clone()
    hidden[:, 0] = 40.0
    weight = weight.detach().clone()
    weight[:, 0] = 0.0
    weight[5, 0] = 1.0  # token 5 leads by ~40 nats (on top of a large common offset below)
    weight[:, 1] = 25.0
    hidden[:, 1] = 40.0  # every logit shifted by +1000: unshifted sums would cancel
    lp, ent = logprob_entropy(hidden, weight, target, impl=impl)
    lp_ref, ent_ref, _ = reference(hidden, weight, target, 1.0)
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all() and (ent >= 0).all()
    assert ent_ref.max() < 1e-8
    assert (ent.double() - ent_ref).abs().max() < 1e-9 + 0.05 * ent_ref.abs().max()


@pytest.mark.parametrize("impl", IMPLS)
def test_no_gradient_path_and_empty_input(impl):
    hidden, weight, target = make_inputs(37, 48, 257, seed=11, requires_grad=False)
    with torch.no_grad():
        lp, ent = logprob_entropy(hidden, weight, target, 1.1, impl=impl)
    lp_ref, ent_ref, _ = reference(hidden, weight, target, 1.1)
    assert_close(lp, lp_ref, rtol=1e-4)
    assert_close(ent, ent_ref, rtol=1e-4)
    lp, ent = logprob_entropy(hidden[:0], weight, target[:0], impl=impl)
    assert lp.shape == ent.shape == (0,)


def test_auto_picks_torch_on_cpu_and_triton_on_cuda(monkeypatch):
    assert resolve_impl("auto", torch.device("cpu")) == "torch"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="needs CUDA"):
        resolve_impl("triton", torch.device("cpu"))
    with pytest.raises(ValueError, match="one of"):
        resolve_impl("cuda", torch.device("cpu"))
    if CUDA:
        assert resolve_impl("auto", torch.device("cuda")) == "triton"


def test_rejects_bad_inputs():
    hidden, weight, target = make_inputs(3, 4, 5, requires_grad=False)
    with pytest.raises(ValueError, match="do not match"):
        logprob_entropy(hidden, torch.zeros(5, 6, device=DEVICE), target)
    with pytest.raises(ValueError, match="targets must lie"):
        logprob_entropy(hidden, weight, torch.tensor([0, 5, 1], device=DEVICE))
    with pytest.raises(ValueError, match="share a dtype"):
        logprob_entropy(hidden, weight.half(), target)
    with pytest.raises(ValueError, match="temperature"):
        logprob_entropy(hidden, weight, target, 0.0)

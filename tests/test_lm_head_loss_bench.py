"""make bench-loss: its three ways of computing the LM head's loss agree in value and in gradients."""

from __future__ import annotations

import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import lm_head_loss as bench  # noqa: E402


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16 autocast"])
def test_chunked_losses_match_the_full_loss_and_its_gradients(bf16):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(96, 16, generator=g).to(torch.bfloat16 if bf16 else torch.float32)
    weight = 0.3 * torch.randn(128, 16, generator=g)
    targets = torch.randint(0, 128, (96,), generator=g)
    ways = {"full": bench.full_loss,
            "recomputed": lambda h, w, t: bench.chunked_loss(h, w, t, 32),
            "gradient in forward": lambda h, w, t: bench.GradientInForward.apply(h, w, t, 40)}  # a short last chunk
    results = {}
    for name, loss_fn in ways.items():
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        loss = loss_fn(h, w, targets)
        (3 * loss).backward()  # an upstream gradient other than 1 must scale both
        results[name] = (loss.detach().float(), h.grad.float(), w.grad)
    tolerance = 2e-2 if bf16 else 1e-5
    for name in ("recomputed", "gradient in forward"):
        torch.testing.assert_close(results[name], results["full"], rtol=tolerance, atol=tolerance)
    assert results["full"][2].abs().sum() > 0  # the gradients compared are not all zero

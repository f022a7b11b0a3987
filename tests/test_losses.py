import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import fedrsclip.losses as losses
from fedrsclip.losses import dpac_loss, dpac_loss_classes, peer_negatives, proximal_term


def eq9(private, shared, negatives, s):
    """Eq. 9 written out term by term, phi = psi = L2 normalisation."""

    def n(x):
        return x / x.norm()

    total = 0.0
    for k in range(private.shape[0]):
        pos = float(n(private[k]) @ n(shared[k]))
        acc = sum(math.exp(s * float(n(private[k]) @ n(negatives[k, j])) - s * pos) for j in range(negatives.shape[1]))
        total += math.log(1 + acc)
    return total / private.shape[0]


def test_dpac_matches_eq9():
    gen = torch.Generator().manual_seed(0)
    private, shared = torch.randn(5, 16, generator=gen), torch.randn(5, 16, generator=gen)
    negatives = torch.randn(5, 3, 16, generator=gen)
    assert math.isclose(
        float(dpac_loss(private, shared, negatives, 10.0)), eq9(private, shared, negatives, 10.0), rel_tol=1e-5
    )


def other_classes(shared):
    """The K x (K-1) x E negatives written out (what the trainer built before): for class k, every other class."""
    return torch.stack([torch.cat([shared[:k], shared[k + 1 :]]) for k in range(shared.shape[0])])


def test_dpac_pulls_private_towards_shared():
    shared = torch.eye(4)
    aligned = dpac_loss_classes(shared.clone(), shared, 10.0)
    misaligned = dpac_loss_classes(shared.roll(1, 0), shared, 10.0)
    assert aligned < 0.01 < misaligned


@pytest.mark.parametrize("num_classes", [1, 2, 5, 45])
@pytest.mark.parametrize("block", [1 << 22, 7])  # one block, and blocks of a few rows (the many-class path)
def test_class_dpac_equals_eq9_with_explicit_negatives(num_classes, block, monkeypatch):
    monkeypatch.setattr(losses, "_BLOCK_LOGITS", block)
    gen = torch.Generator().manual_seed(num_classes)
    private = torch.randn(num_classes, 16, generator=gen, requires_grad=True)
    shared = torch.randn(num_classes, 16, generator=gen, requires_grad=True)
    value = dpac_loss_classes(private, shared, 10.0)
    grads = torch.autograd.grad(value, (private, shared))
    negatives = other_classes(shared).reshape(num_classes, num_classes - 1, 16)
    reference = dpac_loss(private, shared, negatives, 10.0)
    ref_grads = torch.autograd.grad(reference, (private, shared), allow_unused=True)  # K = 1: 0, no graph to shared
    ref_grads = [torch.zeros_like(x) if g is None else g for g, x in zip(ref_grads, (private, shared))]
    value, reference = float(value.detach()), float(reference.detach())
    assert abs(value - reference) < 1e-6
    if num_classes > 1:
        assert math.isclose(value, eq9(private.detach(), shared.detach(), negatives.detach(), 10.0), rel_tol=1e-5)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_class_dpac_with_10000_classes_in_modest_memory():
    """K = 10,000, E = 64: the K x (K-1) x E negatives would take 25.6 GB; forward and backward must fit in a few
    hundred MB. Peak memory is a child process's maximum resident set, measured after its inputs and a warm-up."""
    code = textwrap.dedent("""
        import resource, torch
        from fedrsclip.losses import dpac_loss_classes
        torch.set_num_threads(1)
        gen = torch.Generator().manual_seed(0)
        private = torch.randn(10_000, 64, generator=gen, requires_grad=True)
        shared = torch.randn(10_000, 64, generator=gen, requires_grad=True)
        # warm-up with several blocks (lazy imports, thread pools); its peak is what a block costs
        dpac_loss_classes(private[:3000], shared[:3000], 10.0).backward()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        loss = dpac_loss_classes(private, shared, 10.0)
        loss.backward()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert torch.isfinite(loss) and torch.isfinite(private.grad).all() and shared.grad.abs().sum() > 0
        print((after - before) / 1024)  # ru_maxrss is in KiB on Linux
    """)
    # glibc: every allocation over 64 KB gets its own mapping, returned when freed, so the resident set follows
    # the live tensors instead of the heap's high-water mark
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(losses.__file__).resolve().parents[1]),
        "MALLOC_MMAP_THRESHOLD_": "65536",
    }
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    grown_mb = float(done.stdout.strip().splitlines()[-1])
    # one K x K fp32 matrix alone is 400 MB; the blocks need ~16 MB each
    assert grown_mb < 200, f"peak memory grew by {grown_mb:.0f} MB"


def test_negative_sets():
    shared = torch.arange(12.0).view(3, 4)
    peers = torch.randn(5, 3, 4)  # 5 sites, 3 classes
    assert torch.equal(peer_negatives(peers)[2, 4], peers[4, 2])
    assert float(dpac_loss(shared, shared, torch.empty(3, 0, 4), 10.0)) == 0.0


def test_proximal_term_has_gradient_on_live_parameter():
    w = torch.nn.Parameter(torch.ones(3))
    anchor = torch.zeros(3)
    proximal_term([w], [anchor], mu=0.5).backward()
    torch.testing.assert_close(w.grad, 0.5 * torch.ones(3))

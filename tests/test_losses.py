import math

import torch

from fedrsclip.losses import class_negatives, dpac_loss, peer_negatives, proximal_term


def eq9(private, shared, negatives, s):
    """Eq. 9 written out term by term, phi = psi = L2 normalisation."""
    n = lambda x: x / x.norm()
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
    assert math.isclose(float(dpac_loss(private, shared, negatives, 10.0)), eq9(private, shared, negatives, 10.0),
                        rel_tol=1e-5)


def test_dpac_pulls_private_towards_shared():
    shared = torch.eye(4)
    negs = class_negatives(shared)
    aligned = dpac_loss(shared.clone(), shared, negs, 10.0)
    misaligned = dpac_loss(shared.roll(1, 0), shared, negs, 10.0)
    assert aligned < 0.01 < misaligned


def test_negative_sets():
    shared = torch.arange(12.0).view(3, 4)
    negs = class_negatives(shared)
    assert negs.shape == (3, 2, 4) and torch.equal(negs[0], shared[1:])
    peers = torch.randn(5, 3, 4)  # 5 sites, 3 classes
    assert torch.equal(peer_negatives(peers)[2, 4], peers[4, 2])
    assert float(dpac_loss(shared, shared, torch.empty(3, 0, 4), 10.0)) == 0.0


def test_proximal_term_has_gradient_on_live_parameter():
    w = torch.nn.Parameter(torch.ones(3))
    anchor = torch.zeros(3)
    proximal_term([w], [anchor], mu=0.5).backward()
    torch.testing.assert_close(w.grad, 0.5 * torch.ones(3))

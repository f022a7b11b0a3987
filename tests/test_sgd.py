import pytest
import torch

from fedrsclip.sgd import SGD


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.9, 5e-4)])
def test_same_steps_as_torch_optim_sgd(momentum, weight_decay):
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen)]
    target = torch.randn(4, 8, generator=gen)
    ours = [p.clone().requires_grad_(True) for p in start]
    theirs = [p.clone().requires_grad_(True) for p in start]
    opt_ours = SGD(ours, lr=0.01, momentum=momentum, weight_decay=weight_decay)
    opt_theirs = torch.optim.SGD(theirs, lr=0.01, momentum=momentum, weight_decay=weight_decay)
    for _ in range(5):
        for params, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad(set_to_none=True)
            ((params[0] * params[1] - target) ** 2).sum().backward()
            opt.step()
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="lr > 0"):
        SGD([torch.zeros(1, requires_grad=True)], lr=0.0)

import math

import pytest
import torch
import torch.nn as nn

from mombs import feature_noise_uncertainty, prediction_entropy


class Net(nn.Module):
    """x -> feat (Linear) -> bn -> out (Linear): small, with BatchNorm and dropout."""

    def __init__(self, d=6, classes=4):
        super().__init__()
        self.feat = nn.Linear(d, 8)
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(8, classes)

    def forward(self, x):
        return self.out(self.drop(self.bn(self.feat(x))))


class Skip(nn.Module):
    """Reuses its input after the disturbed module, like a U-Net skip."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(4, 4)
        self.dec = nn.Linear(4, 3)

    def forward(self, x):
        return self.dec(self.enc(x) + x)


def test_plain_entropy_matches_a_hand_computation():
    probs = torch.tensor([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    expected = torch.tensor([1.5 * math.log(2), 0.0, math.log(3)])
    assert torch.allclose(prediction_entropy(probs), expected, atol=1e-6)
    # Binary: p = 0.5 gives log 2, p = 0.9 gives -(0.9 ln 0.9 + 0.1 ln 0.1).
    binary = prediction_entropy(torch.tensor([0.5, 0.9]), activation="sigmoid")
    assert torch.allclose(binary, torch.tensor([math.log(2), -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))]))


def test_k1_alpha0_is_the_plain_softmax_entropy():
    model = nn.Sequential(nn.Identity(), nn.Linear(3, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(3))
        model[1].bias.zero_()
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.8, 0.1, 0.1]]))
    u = feature_noise_uncertainty(model, logits, at="0", k=1, alpha=0.0)
    assert torch.allclose(u, torch.tensor([1.5 * math.log(2), -(0.8 * math.log(0.8) + 0.2 * math.log(0.1))]),
                          atol=1e-6)


def test_k_pass_value_matches_the_formula():
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(5, 6)
    k, alpha = 8, 0.3
    u = feature_noise_uncertainty(model, x, at="feat", k=k, alpha=alpha, seed=7)
    # By hand: the same private generator, the same draws.
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        f = model.feat(x).repeat(k, 1)
        xi = torch.rand(f.shape, generator=gen) * 2 * alpha - alpha
        probs = torch.softmax(model.out(model.bn(f + f * xi)), dim=1).reshape(k, 5, -1).mean(0)
    expected = -(probs * probs.log()).sum(1)
    assert torch.allclose(u, expected, atol=1e-5)


def test_noise_raises_uncertainty_on_average():
    torch.manual_seed(1)
    model = Net().eval()
    with torch.no_grad():
        model.out.weight.mul_(20)  # confident predictions, which disturbance makes less so
    x = torch.randn(64, 6)
    plain = feature_noise_uncertainty(model, x, at="feat", k=1, alpha=0.0)
    noisy = feature_noise_uncertainty(model, x, at="feat", k=8, alpha=0.9)
    assert noisy.mean() > plain.mean()


def test_binary_and_dense_outputs():
    x = torch.randn(3, 2, 5, 5)
    seg = nn.Sequential(nn.Conv2d(2, 4, 1), nn.Conv2d(4, 3, 1))
    u = feature_noise_uncertainty(seg, x, at="0", k=4)
    assert u.shape == (3,)
    with torch.no_grad():
        p = torch.softmax(seg(x), 1)
    per_pixel = -(p * p.log()).sum(1).mean((1, 2))
    assert torch.allclose(feature_noise_uncertainty(seg, x, at="0", k=1, alpha=0.0), per_pixel, atol=1e-6)
    binary = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    ub = feature_noise_uncertainty(binary, torch.randn(6, 3), at="0", k=3)
    assert ub.shape == (6,) and (ub >= 0).all() and (ub <= math.log(2) + 1e-6).all()


def test_mode_restored_no_grad_and_batchnorm_untouched():
    model = Net()
    model.train()
    model.out.eval()  # a mixed state must come back as it was
    stats = (model.bn.running_mean.clone(), model.bn.running_var.clone(), model.bn.num_batches_tracked.clone())
    x = torch.randn(16, 6, requires_grad=True)
    u = feature_noise_uncertainty(model, x, at="feat")
    assert not u.requires_grad
    assert model.training and model.feat.training and not model.out.training
    assert torch.equal(model.bn.running_mean, stats[0]) and torch.equal(model.bn.running_var, stats[1])
    assert torch.equal(model.bn.num_batches_tracked, stats[2])
    assert all(not m._forward_hooks for m in model.modules())


def test_prefix_runs_once_and_the_rest_on_k_copies():
    model = Net().eval()
    calls = {}
    model.feat.register_forward_pre_hook(lambda m, i: calls.setdefault("feat", []).append(i[0].shape[0]))
    model.out.register_forward_pre_hook(lambda m, i: calls.setdefault("out", []).append(i[0].shape[0]))
    feature_noise_uncertainty(model, torch.randn(5, 6), at="feat", k=8)
    assert calls == {"feat": [5], "out": [40]}


def test_no_hook_leaks_when_the_forward_raises():
    model = Net()
    with pytest.raises(RuntimeError):
        feature_noise_uncertainty(model, torch.randn(4, 99), at="bn")
    assert all(not m._forward_hooks for m in model.modules())
    assert model.training


def test_networks_with_skips_fall_back_to_k_full_passes():
    model = Skip()
    x = torch.randn(5, 4)
    u = feature_noise_uncertainty(model, x, at="enc", k=4)
    assert u.shape == (5,) and torch.isfinite(u).all()
    plain = feature_noise_uncertainty(model, x, at="enc", k=2, alpha=0.0)
    with torch.no_grad():
        p = torch.softmax(model(x), 1)
    assert torch.allclose(plain, -(p * p.log()).sum(1), atol=1e-6)
    with pytest.raises(RuntimeError):
        feature_noise_uncertainty(model, x, at="enc", k=4, tiled=True)


def test_global_random_state_is_untouched():
    model, x = Net(), torch.randn(4, 6)
    state = torch.get_rng_state()
    feature_noise_uncertainty(model, x, at="feat")
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("kwargs, match", [
    (dict(at="nope"), "at='nope' is not a submodule of Net; available: feat, bn, drop, out"),
    (dict(at="feat", k=0), "k=0"),
    (dict(at="feat", alpha=1.5), "alpha=1.5"),
    (dict(at="feat", activation="tanh"), "activation='tanh'"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        feature_noise_uncertainty(Net(), torch.randn(2, 6), **kwargs)

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
    assert torch.allclose(u, torch.tensor([1.5 * math.log(2), -(0.8 * math.log(0.8) + 0.2 * math.log(0.1))]), atol=1e-6)


def test_k_pass_value_matches_the_formula():
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(5, 6)
    k, alpha = 8, 0.3
    # chunk_rows=k*5: all copies in one forward, the simplest layout to write by hand.
    u = feature_noise_uncertainty(model, x, at="feat", k=k, alpha=alpha, seed=7, chunk_rows=k * 5)
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


def test_default_chunks_by_hand():
    """Default chunk_rows = B: sub-batches of B // k samples, each with its k copies."""
    torch.manual_seed(0)
    model = Net().eval()
    x, k, alpha = torch.randn(4, 6), 2, 0.3
    u = feature_noise_uncertainty(model, x, at="feat", k=k, alpha=alpha, seed=3)
    gen = torch.Generator().manual_seed(3)
    parts = []
    with torch.no_grad():
        for s in (0, 2):  # two sub-batches of 2 samples x 2 copies = 4 rows each
            f = model.feat(x[s : s + 2]).repeat(k, 1)
            xi = torch.rand(f.shape, generator=gen) * 2 * alpha - alpha
            parts.append(torch.softmax(model.out(model.bn(f + f * xi)), 1).reshape(k, 2, -1).mean(0))
    probs = torch.cat(parts)
    assert torch.allclose(u, -(probs * probs.log()).sum(1), atol=1e-5)


def test_prefix_runs_once_per_sample_and_no_forward_exceeds_the_batch():
    model = Net().eval()
    calls = {}
    model.feat.register_forward_pre_hook(lambda m, i: calls.setdefault("feat", []).append(i[0].shape[0]))
    model.out.register_forward_pre_hook(lambda m, i: calls.setdefault("out", []).append(i[0].shape[0]))
    feature_noise_uncertainty(model, torch.randn(5, 6), at="feat", k=8, chunk_rows=40)
    assert calls == {"feat": [5], "out": [40]}  # one tiled forward when the rows allow it
    calls.clear()
    feature_noise_uncertainty(model, torch.randn(16, 6), at="feat", k=8, chunk_rows=16)
    assert calls == {"feat": [2] * 8, "out": [16] * 8}  # chunk_rows: at most that many rows a forward
    calls.clear()
    feature_noise_uncertainty(model, torch.randn(16, 6), at="feat", k=8)
    # Default, pooled features: the first sub-batch within B rows, then the rest in one forward
    # with all its copies (only a small head follows), so the prefix does not run k times.
    assert calls == {"feat": [2, 14], "out": [16, 112]}
    calls.clear()
    feature_noise_uncertainty(model, torch.randn(3, 6), at="feat", k=8, chunk_rows=3)
    assert max(calls["out"]) <= 3 and sum(calls["out"]) == 24  # k > B: the copies are split too


def test_a_spatial_feature_map_keeps_every_default_forward_within_the_batch():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1)).eval()
    rows = []
    net[2].register_forward_pre_hook(lambda m, i: rows.append(i[0].shape[0]))
    u = feature_noise_uncertainty(net, torch.randn(16, 1, 8, 8), at="1", k=8)
    assert rows == [16] * 8 and u.shape == (16,)


def test_chunking_changes_only_the_draws():
    torch.manual_seed(2)
    model = Net().eval()
    x = torch.randn(12, 6)
    plain = [feature_noise_uncertainty(model, x, at="feat", k=4, alpha=0.0, chunk_rows=c) for c in (1, 5, 12, 48)]
    assert all(torch.allclose(p, plain[0], atol=1e-6) for p in plain)


def _live_tensor_bytes() -> int:
    """Bytes of every distinct tensor storage alive now (CPU), found through the garbage collector."""
    import gc

    seen, total = set(), 0
    for obj in gc.get_objects():
        try:
            if type(obj) in (torch.Tensor, nn.Parameter) and obj.device.type == "cpu":
                ptr = obj.untyped_storage().data_ptr()
                if ptr not in seen:
                    seen.add(ptr)
                    total += obj.untyped_storage().nbytes()
        except Exception:  # objects that fail is_tensor checks or have no storage
            continue
    return total


class DenseHead(nn.Module):
    """A dense (segmentation-like) network: conv features -> per-pixel logits."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(1, 8, 3, padding=1)
        self.dec = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.dec(torch.relu(self.enc(x)))


@pytest.mark.parametrize("counter", ["live tensors"])
def test_k_pass_peak_memory_does_not_grow_with_k(counter):
    """K = 2 and K = 12 on a dense output: the largest set of live tensors seen
    inside any forward stays the same (the K predictions are a running mean)."""
    torch.manual_seed(0)
    model = DenseHead().eval()
    x = torch.randn(8, 1, 32, 32)
    peaks = {}
    for k in (2, 12):
        peak = [0]
        handle = model.dec.register_forward_hook(
            lambda m, i, o, peak=peak: peak.__setitem__(0, max(peak[0], _live_tensor_bytes()))
        )
        baseline = _live_tensor_bytes()
        feature_noise_uncertainty(model, x, at="enc", k=k)
        handle.remove()
        peaks[k] = peak[0] - baseline
    one_output = 8 * 4 * 32 * 32 * 4  # bytes of one forward's (B, C, H, W) float32 output
    assert peaks[12] <= peaks[2] + one_output, peaks
    assert peaks[12] < 4 * one_output * 2, peaks  # nowhere near 12 outputs held at once


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
    # Five samples x 4 copies in one forward meet the 5-row skip: the fallback
    # runs the whole network k times, and tiled=True raises instead.
    wide = feature_noise_uncertainty(model, x, at="enc", k=4, chunk_rows=64)
    assert wide.shape == (5,) and torch.isfinite(wide).all()
    with pytest.raises(RuntimeError):
        feature_noise_uncertainty(Skip(), x, at="enc", k=4, tiled=True, chunk_rows=64)


class OutOfMemoryAfter(nn.Module):
    """Raises CUDA's out-of-memory error after the disturbed module, as a full GPU would."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(4, 4)

    def forward(self, x):
        self.enc(x)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_is_never_swallowed():
    with pytest.raises(torch.cuda.OutOfMemoryError):
        feature_noise_uncertainty(OutOfMemoryAfter(), torch.randn(6, 4), at="enc", k=4, chunk_rows=64)


class DictNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.cls = nn.Linear(8, 3)

    def forward(self, x):
        return {"logits": self.cls(torch.relu(self.body(x))), "aux": torch.zeros(1)}


def test_dict_outputs_output_fn_and_uncertainty_fn():
    torch.manual_seed(0)
    model, x = DictNet(), torch.randn(4, 6)
    auto = feature_noise_uncertainty(model, x, at="body", k=1, alpha=0.0)  # reads "logits"
    with torch.no_grad():
        p = torch.softmax(model(x)["logits"], 1)
    assert torch.allclose(auto, -(p * p.log()).sum(1), atol=1e-6)
    same = feature_noise_uncertainty(model, x, at="body", k=1, alpha=0.0, output_fn=lambda o: o["logits"])
    assert torch.allclose(auto, same)
    top = feature_noise_uncertainty(model, x, at="body", k=1, alpha=0.0, uncertainty_fn=lambda m: 1 - m.max(1).values)
    assert torch.allclose(top, 1 - p.max(1).values, atol=1e-6)
    with pytest.raises(ValueError, match="uncertainty_fn must return a \\(4,\\) tensor"):
        feature_noise_uncertainty(model, x, at="body", k=1, uncertainty_fn=lambda m: m)


def test_global_random_state_is_untouched():
    model, x = Net(), torch.randn(4, 6)
    state = torch.get_rng_state()
    feature_noise_uncertainty(model, x, at="feat")
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(at="nope"), "at='nope' is not a submodule of Net; available: feat, bn, drop, out"),
        (dict(at="feat", k=0), "k=0"),
        (dict(at="feat", alpha=1.5), "alpha=1.5"),
        (dict(at="feat", activation="tanh"), "activation='tanh'"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        feature_noise_uncertainty(Net(), torch.randn(2, 6), **kwargs)


class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(4, 3)
        self.spare = nn.Linear(4, 4)  # never called by forward

    def forward(self, x):
        return self.used(x)


def test_an_at_the_forward_never_runs_is_an_error_not_silence():
    with pytest.raises(ValueError, match="at='spare' was not called during the model's forward"):
        feature_noise_uncertainty(Unused(), torch.randn(6, 4), at="spare", k=8, alpha=0.9)


def test_fallback_draws_do_not_depend_on_what_an_earlier_call_learnt():
    # A resumed process starts without the "cannot tile" memo: its first call
    # must draw the same noise as the uninterrupted process's later call.
    x = torch.randn(6, 4)
    first, second = Skip(), Skip()
    second.load_state_dict(first.state_dict())
    cold = feature_noise_uncertainty(first, x, at="enc", k=4, chunk_rows=64, generator=torch.Generator().manual_seed(1))
    warm = feature_noise_uncertainty(first, x, at="enc", k=4, chunk_rows=64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(cold, warm)
    default_cold = feature_noise_uncertainty(second, x, at="enc", k=4, chunk_rows=64, seed=5)
    default_warm = feature_noise_uncertainty(second, x, at="enc", k=4, chunk_rows=64, seed=5)
    assert torch.equal(default_cold, default_warm)

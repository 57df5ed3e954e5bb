"""The network matches the paper's architecture (Dabral et al. 2018, as the original code builds it)."""

import pytest
import torch
from torch import nn

from mstagger.model import MaxPoolReLU, MultiScaleCNN, count_parameters


def test_parameter_count_matches_the_paper():
    model = MultiScaleCNN(n_tags=50, n_mels=128, n_frames=628)
    assert count_parameters(model) == 2_936_810


def test_branch_shapes_and_flattened_size():
    model = MultiScaleCNN(n_tags=50, n_mels=128, n_frames=628).eval()
    x = torch.zeros(2, 1, 128, 628)
    with torch.no_grad():
        branches = model.branches(x)
        assert [tuple(b.shape) for b in branches] == [(2, 70, 16, 19)] * 3
        merged = model.merge(torch.cat(branches, dim=1))
        assert tuple(merged.shape) == (2, 5040)
        assert tuple(model(x).shape) == (2, 50)
    assert model.n_features == 5040


def test_batchnorm_dropout_and_init_follow_the_original():
    model = MultiScaleCNN(n_tags=50)
    bn, dropout = model.head[0], model.head[1]
    assert isinstance(bn, torch.nn.BatchNorm1d) and bn.momentum == 0.01 and bn.eps == 1e-3
    assert isinstance(dropout, torch.nn.Dropout) and dropout.p == 0.4
    # Glorot-normal: std = sqrt(2 / (fan_in + fan_out)); zero biases.
    dense = model.head[2]
    expected = (2 / (5040 + 500)) ** 0.5
    assert dense.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert torch.count_nonzero(dense.bias) == 0


def test_other_geometry_and_three_dim_input():
    model = MultiScaleCNN(n_tags=7, n_mels=32, n_frames=128).eval()
    with torch.no_grad():
        assert tuple(model(torch.zeros(3, 32, 128)).shape) == (3, 7)


def test_too_small_input_is_refused():
    with pytest.raises(ValueError, match="too small"):
        MultiScaleCNN(n_tags=5, n_mels=8, n_frames=20)


def _in_the_originals_order(model, x):
    """The network as the original orders its layers: each convolution's ReLU before its max-pool."""

    def run(layers, x):
        for layer in layers:
            if isinstance(layer, nn.Sequential) and isinstance(layer[0], nn.Conv2d):
                x = torch.relu(layer[0](x))  # convolution, ReLU
            elif isinstance(layer, MaxPoolReLU):
                x = nn.functional.max_pool2d(x, layer.kernel_size)  # the ReLU came before
            else:
                x = layer(x)
        return x

    s1 = nn.functional.avg_pool2d(x, (2, 4))
    s2 = nn.functional.avg_pool2d(s1, (2, 4))
    branches = [run(model.branch1, x), run(model.branch2, s1), run(model.branch3, s2)]
    return model.head(run(model.merge, torch.cat(branches, dim=1)))


@pytest.mark.parametrize("bf16", [False, True])
def test_relu_after_max_pool_changes_no_bit_of_outputs_or_gradients(bf16):
    """Pooling before the ReLU is only cheaper: outputs and gradients equal the original order's."""
    torch.manual_seed(0)
    model = MultiScaleCNN(n_tags=5, n_mels=32, n_frames=128).to(memory_format=torch.channels_last)
    x = torch.randn(3, 1, 32, 128).contiguous(memory_format=torch.channels_last)
    results = []
    for forward in (model, lambda x: _in_the_originals_order(model, x)):
        torch.manual_seed(1)  # the same dropout mask
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = forward(x).float()
        results.append((out, torch.autograd.grad(out.square().sum(), list(model.parameters()))))
    (out, grads), (ref_out, ref_grads) = results
    assert torch.equal(out, ref_out) and out.abs().sum() > 0
    assert all(torch.equal(g, r) for g, r in zip(grads, ref_grads, strict=True))
    assert any(isinstance(m, nn.ReLU) for m in model.merge[0])  # unpooled: its ReLU stays in place

"""Infinite-width kernel K0 (docs/gonly.md#k0): exact solutions, arc-cosine recursion, every activation and P."""
import numpy as np
import pytest

from kerneleft import network_from_dict
from kerneleft.activations import ACTIVATION_NAMES
from kerneleft.kernel import K0_continuous, K0_discrete, S_bar, kernel

K2 = [[1.0, 0.6], [0.6, 1.5]]


def _net(act="tanh", K=K2, **kw):
    d = {"activation": act, "C_W": 2.0, "C_b": 0.3, "T": 2.0, "depth": 40, "K_in": K} | kw
    return network_from_dict(d)


def test_linear_exact_discrete_and_continuous():
    net = _net("linear")
    K_in, C_W, C_b, eps = net.K_in, net.C_W, net.C_b, net.eps
    l = np.arange(net.depth + 1)[:, None, None]
    g = (1 + eps * C_W) ** l
    exact_discrete = g * K_in + C_b * (g - 1) / C_W
    np.testing.assert_allclose(K0_discrete(net), exact_discrete, rtol=1e-13)
    e = np.exp(C_W * net.t)[:, None, None]
    np.testing.assert_allclose(K0_continuous(net), e * K_in + C_b * (e - 1) / C_W, rtol=1e-9)


def _arccos_F(K):
    d = np.sqrt(np.diag(K))
    rho = np.clip(K / np.outer(d, d), -1.0, 1.0)
    th = np.arccos(rho)
    return np.outer(d, d) / (2 * np.pi) * (np.sin(th) + (np.pi - th) * np.cos(th))


def test_relu_matches_arccosine_recursion():
    net = _net("relu", K=[[1.0, 0.2, -0.3], [0.2, 2.0, 0.5], [-0.3, 0.5, 0.7]])
    K = net.K_in.copy()
    for l in range(net.depth):
        K = K + net.eps * (net.C_W * _arccos_F(K) + net.C_b)
    np.testing.assert_allclose(K0_discrete(net)[-1], K, rtol=1e-12)


def test_continuous_vs_discrete_is_order_one_over_L():
    errs = []
    for L in (20, 40, 80):
        net = _net("tanh", depth=L)
        errs.append(np.max(np.abs(K0_discrete(net)[-1] - K0_continuous(net)[-1])))
    assert errs[0] / errs[1] == pytest.approx(2.0, rel=0.1)
    assert errs[1] / errs[2] == pytest.approx(2.0, rel=0.1)


@pytest.mark.parametrize("act", ACTIVATION_NAMES)
@pytest.mark.parametrize("P", [1, 2, 3, 16])
def test_every_activation_every_P_finite(act, P):
    rng = np.random.default_rng(P)
    X = rng.standard_normal((P, 5))
    K = X @ X.T / 5 + 0.05
    if P > 1:
        K[1, :] = K[0, :]
        K[:, 1] = K[:, 0]          # two identical inputs: exactly degenerate kernel
    net = _net(act, K=K.tolist(), depth=8)
    for model in ("discrete", "continuous") if P <= 3 else ("discrete",):
        K0 = kernel(net, model).K0
        assert K0.shape == (9, P, P) and np.all(np.isfinite(K0))
        np.testing.assert_allclose(K0, K0.transpose(0, 2, 1), atol=1e-12)
        if P > 1:
            np.testing.assert_allclose(K0[:, 0, 0], K0[:, 1, 1], rtol=1e-9)
            np.testing.assert_allclose(K0[:, 0, 1], K0[:, 0, 0], rtol=1e-9)


def test_S_bar_batched():
    net = _net("erf")
    Ks = np.stack([net.K_in, 2 * net.K_in])
    S = S_bar(net, Ks)
    np.testing.assert_allclose(S[1], S_bar(net, 2 * net.K_in))
    with pytest.raises(ValueError, match="^depth_model:"):
        kernel(net, "sideways")

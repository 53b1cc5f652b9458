"""Exact samplers (docs/exact.md): conditional vs explicit weights, the block law, (I1) per layer.

Every statistical comparison is a z-test with standard errors, paired with a deliberately wrong variant that
the same test must reject.
"""
import numpy as np
import pytest

from conftest import max_z
from kerneleft import Network
from kerneleft import ensemble, samplers
from kerneleft.estimators import Moments
from kerneleft.samplers import block_law_step, conditional_paths, psd_factor, weights_paths
from kerneleft.tensors import box, circ

K_IN = [[1.0, 0.6], [0.6, 1.5]]
Z_OK, Z_BAD = 4.5, 8.0


def _net(act, **kw):
    return Network(**{"activation": act, "C_W": 2.0, "C_b": 0.1, "T": 1.5, "depth": 3, "K_in": K_IN, **kw})


def _dropped_sqrt_eps(net, width, size, rng):
    """Wrong sampler: h + Z Aᵀ with AAᵀ = S (no √ε), i.e. the conditional sampler at ε = 1."""
    return conditional_paths(net.replace(T=float(net.depth)), width, size, rng)


def test_psd_factor_regular_and_singular():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((5, 3, 3))
    S = X @ X.transpose(0, 2, 1)
    S[2] = np.outer([1.0, 2.0, -1.0], [1.0, 2.0, -1.0])           # rank 1: Cholesky fails, eigh fallback
    A = psd_factor(S)
    assert np.allclose(A @ A.transpose(0, 2, 1), S, atol=1e-12)
    assert np.all(np.isfinite(A))


@pytest.mark.parametrize("act", ["tanh", "relu"])
@pytest.mark.parametrize("width", [3, 24])
def test_conditional_matches_weights(act, width, monkeypatch):
    net = _net(act)
    kw = dict(samples=12000, progress=False)
    ref = ensemble.simulate(net, width, seed=1, method="weights", **kw)
    cond = ensemble.simulate(net, width, seed=2, method="conditional", **kw)
    keys = ("G_mean", "V4", "Sigma_mean")
    assert max_z(cond, ref, keys) < Z_OK
    monkeypatch.setitem(ensemble.METHODS, "dropped-sqrt-eps", _dropped_sqrt_eps)
    wrong = ensemble.simulate(net, width, seed=2, method="dropped-sqrt-eps", **kw)
    assert max_z(wrong, ref, keys) > Z_BAD


def _I1_z(sampler, net, width, size=4000, seed=3):
    """z-scores of the per-layer (I1) residual  G^{l+1} − G^l − ε S^l  (mean zero exactly), (L, P, P)."""
    G, Sigma = sampler(net, width, size, np.random.default_rng(seed))
    r = G[:, 1:] - G[:, :-1] - net.eps * (net.C_W * Sigma[:, :-1] + net.C_b)
    return r.mean(0) / (r.std(0, ddof=1) / np.sqrt(size))


@pytest.mark.parametrize("sampler", [conditional_paths, weights_paths])
def test_I1_per_layer(sampler):
    net = _net("tanh")
    assert np.max(np.abs(_I1_z(sampler, net, 6))) < Z_OK
    assert np.max(np.abs(_I1_z(_dropped_sqrt_eps, net, 6))) > Z_BAD


# --- block law (docs/exact.md#block-law) --------------------------------------------------------------------------------------------
def _pairs(G):
    a, b = np.triu_indices(G.shape[-1])
    return G[..., a, b]


def _explicit_step(rng, h, S, eps, size):
    """G^{l+1} from explicit increments h + √ε Z Aᵀ, Z (size, n, P); h (n, P) fixed."""
    n, P = h.shape
    Z = rng.standard_normal((size, n, P))
    h1 = h + np.sqrt(eps) * Z @ psd_factor(S).T
    return h1.transpose(0, 2, 1) @ h1 / n


def _exact_moments(G, S, eps, n):
    """E[G^{l+1} | h] = G + εS;  n Cov[G^{l+1} | h] = ε G⊠S + ε² S∘S  (I1–I2 given h, docs/exact.md#identities)."""
    return G + eps * S, eps * box(G, S) + eps ** 2 * circ(S)


def _block_law_z(width, P, step=block_law_step, size=20000):
    """Max z of block-law vs explicit increments (mean, n·cov) and vs the exact conditional moments."""
    rng = np.random.default_rng(10 + width)
    h = rng.standard_normal((width, P)) @ psd_factor(np.eye(P) + 0.5).T
    X = rng.standard_normal((P, P))
    S, G, eps = X @ X.T / P + 0.2, h.T @ h / width, 0.3
    explicit = Moments.from_samples(_pairs(_explicit_step(rng, h, S, eps, size)))
    blocks = Moments.from_samples(_pairs(step(rng, np.broadcast_to(G, (size, P, P)), np.broadcast_to(S, (size, P, P)),
                                              width, eps)))
    m_exact, V_exact = _exact_moments(G, S, eps, width)
    a, b = np.triu_indices(P)
    z_mean = (blocks.mean - explicit.mean) / np.hypot(blocks.mean_se(), explicit.mean_se())
    z_cov = (blocks.cov() - explicit.cov()) / np.hypot(blocks.cov_se(), explicit.cov_se())
    z_mean_exact = (blocks.mean - m_exact[a, b]) / blocks.mean_se()
    z_cov_exact = (width * blocks.cov() - V_exact[a, b][:, a, b]) / (width * blocks.cov_se())
    return max(np.max(np.abs(z)) for z in (z_mean, z_cov, z_mean_exact, z_cov_exact))


@pytest.mark.parametrize("width,P", [(1, 2), (2, 3), (4, 3), (40, 2), (40, 3)])
def test_block_law_matches_explicit_increments(width, P):
    """width < P (direct draw), P <= width < 2P (singular Wishart), width >= 2P (Bartlett)."""
    assert _block_law_z(width, P) < Z_OK


def test_block_law_wrong_wishart_dof_rejected(monkeypatch):
    """Wishart_P(n) instead of Wishart_P(n − P) (E1's P degrees of freedom counted twice) is rejected."""
    orig = samplers.wishart_identity
    monkeypatch.setattr(samplers, "wishart_identity", lambda rng, dof, shape, P: orig(rng, dof + P, shape, P))
    assert _block_law_z(40, 3) > Z_BAD


def test_block_law_batched_shapes_and_errors():
    rng = np.random.default_rng(0)
    G = np.broadcast_to(np.array(K_IN), (4, 5, 2, 2))
    assert block_law_step(rng, G, G, 10 ** 6, 0.1).shape == (4, 5, 2, 2)
    with pytest.raises(ValueError, match="^width:"):
        block_law_step(rng, G, G, 0, 0.1)
    with pytest.raises(ValueError, match="^eps:"):
        block_law_step(rng, G, G, 3, -1.0)
    with pytest.raises(ValueError, match="^G:"):
        block_law_step(rng, np.array(K_IN), np.array(K_IN), 1, 0.1)   # rank 2 > width 1

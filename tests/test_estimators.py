"""Moment accumulators and their standard errors (docs/estimators.md#standard-errors) against numpy on fixed data,
exact expectations over every sample of a small discrete law, and the pairwise merge against pooled samples."""
import itertools

import numpy as np
import pytest

from kerneleft import Network
from kerneleft.ensemble import simulate
from kerneleft.estimators import MIN_COV_SAMPLES, Moments, merge


def _data(N, seed=0):
    """Fixed correlated samples (N, 2, 3): two leading 'layers', d = 3, offset means and scales."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, 2, 3)) @ np.array([[1.0, 0.4, 0.0], [0.0, 2.0, -0.3], [0.0, 0.0, 0.5]])
    return x + np.array([7.0, -3.0, 0.5]) + rng.exponential(1.0, (N, 2, 3)) ** 2      # skewed, heavy-tailed


@pytest.mark.parametrize("N", [3, 4, 17])
def test_mean_cov_and_their_se_equal_numpy(N):
    x = _data(N)
    m = Moments.from_samples(x)
    for l in range(2):
        np.testing.assert_allclose(m.mean[l], x[:, l].mean(0), rtol=1e-13)
        np.testing.assert_allclose(m.cov()[l], np.cov(x[:, l].T), rtol=1e-12)
        np.testing.assert_allclose(m.mean_se()[l], x[:, l].std(0, ddof=1) / np.sqrt(N), rtol=1e-12)
        # jackknife: leave each sample out, recompute np.cov, spread (N−1)/N Σ (c_(k) − c_(·))²
        loo = np.array([np.cov(np.delete(x[:, l], k, axis=0).T) for k in range(N)])
        jack = (N - 1) / N * np.sum((loo - loo.mean(0)) ** 2, axis=0)
        np.testing.assert_allclose(m.cov_se()[l] ** 2, jack, rtol=1e-10)


def _law():
    """A bivariate law on 4 atoms with unequal weights (skewed, correlated)."""
    return np.array([[0.0, 0.0], [1.0, 2.0], [3.0, -1.0], [-2.0, 0.5]]), np.array([0.4, 0.3, 0.2, 0.1])


def _exact(N, stat):
    """E[stat(x)] over all 4^N samples x (N, 2) of the law, and the exact moments of cov() under it."""
    atoms, p = _law()
    out = []
    for idx in itertools.product(range(len(p)), repeat=N):
        out.append((np.prod(p[list(idx)]), stat(Moments.from_samples(atoms[list(idx)]))))
    w = np.array([a for a, _ in out])
    vals = np.array([b for _, b in out])
    return np.tensordot(w, vals, axes=1)


@pytest.mark.parametrize("N", [3, 4, 5])
def test_exact_expectations_over_a_discrete_law(N):
    """cov() and mean_se()² are exactly unbiased; E[cov_se()²] covers Var[cov()] (here by 1.4–2.7 at N = 5..3),
    while the plug-in delta method (Σu²/N − (Σu/N)²)/N, the former cov_se, misses it by a factor > 2."""
    atoms, p = _law()
    mu = p @ atoms
    C = (atoms - mu).T @ ((atoms - mu) * p[:, None])
    np.testing.assert_allclose(_exact(N, lambda m: m.cov()), C, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(_exact(N, lambda m: m.mean_se() ** 2), np.diag(C) / N, rtol=1e-12)
    var_cov = _exact(N, lambda m: m.cov() ** 2) - C ** 2
    ratio = _exact(N, lambda m: m.cov_se() ** 2) / var_cov
    assert np.all(ratio >= 1.0) and np.all(ratio <= 1 + 3 / (N - 2)), ratio
    delta = _exact(N, lambda m: (m.M22 / N - (m.M11 / N) ** 2) / N) / var_cov
    assert np.all(delta < 0.5), delta


def test_gaussian_cov_se_is_unbiased_up_to_n_minus_2():
    """For Gaussian samples E[cov_se²] = 2σ⁴/(N−2) (closed form of the jackknife); 40000 replicates of N = 5."""
    N, reps, sigma2 = 5, 40_000, 1.7
    x = np.sqrt(sigma2) * np.random.default_rng(1).standard_normal((N, reps, 1))
    se2 = Moments.from_samples(x).cov_se()[:, 0, 0] ** 2
    z = lambda ref: (se2.mean() - ref) / (se2.std(ddof=1) / np.sqrt(reps))   # noqa: E731
    assert abs(z(2 * sigma2 ** 2 / (N - 2))) < 4.5
    assert abs(z(2 * sigma2 ** 2 / (N - 1))) > 8                   # the true variance of cov(): conservative


@pytest.mark.parametrize("cuts", [(1, 2, 50, 51, 200), (150,), (3, 4, 5, 299)])
def test_merge_of_chunks_equals_pooled_samples(cuts):
    """Folding chunks (sizes 1..n, uneven, any order of association) equals from_samples of the union."""
    x = _data(301, seed=2)
    parts = [Moments.from_samples(c) for c in np.split(x, cuts)]
    left = parts[0]
    for p in parts[1:]:
        left = merge(left, p)
    right = parts[-1]
    for p in parts[-2::-1]:
        right = merge(p, right)
    pooled = Moments.from_samples(x)
    for total in (left, right):
        assert total.count == 301
        for k in ("mean", "M11", "M21", "M22"):
            np.testing.assert_allclose(getattr(total, k), getattr(pooled, k), rtol=1e-11,
                                       atol=1e-11 * np.max(np.abs(getattr(pooled, k))))
        for f in ("cov", "mean_se", "cov_se"):
            np.testing.assert_allclose(getattr(total, f)(), getattr(pooled, f)(), rtol=1e-10)


def test_too_few_samples_name_samples():
    x = _data(MIN_COV_SAMPLES - 1)
    with pytest.raises(ValueError, match=r"^samples: the standard error of a covariance needs >= 3 samples, got 2$"):
        Moments.from_samples(x).cov_se()
    with pytest.raises(ValueError, match=r"^samples: a covariance needs >= 2 samples, got 1$"):
        Moments.from_samples(x[:1]).mean_se()
    net = Network(activation="tanh", C_W=2.0, T=1.0, depth=2, K_in=[[1.0]])
    with pytest.raises(ValueError, match=r"^samples: must be an integer >= 3"):
        simulate(net, 4, 2, seed=0, progress=False)
    r = simulate(net, 4, 3, seed=0, progress=False)
    assert np.all(r.se["V4"][0] > 0)

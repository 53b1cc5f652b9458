"""Width fits with their coefficient covariance and the next-order fits (docs/estimators.md#width-extrapolation,
docs/estimators.md#next-order-fits): statistical tests on synthetic data from a known A + B/n + C/n² with known SEs
(fixed seeds; each can fail: a wrong covariance, bias or χ² would show)."""
import numpy as np
import pytest
from scipy import stats

from kerneleft.estimators import NEXT_ORDER_WIDTHS, extrapolate_width, fit_next_order
from kerneleft.result import KernelResult

WIDTHS = (16, 32, 64, 128)
TRUTH = np.array([2.0, -3.0, 5.0])                       # A, B, C of y_n = A + B/n + C/n²
SE = {n: 0.002 * np.sqrt(n) for n in WIDTHS}             # grows ∝ √n like the SE of n(E[G] − K0)
R = 4000                                                 # independent draws, fitted at once as entries (R,)


def _model(coef, n):
    return sum(c / n ** k for k, c in enumerate(coef))


def _draws(coef, seed):
    """R noisy copies of the model at every width: values and SEs, one (R,) array per width."""
    rng = np.random.default_rng(seed)
    values = [_model(coef, n) + SE[n] * rng.standard_normal(R) for n in WIDTHS]
    return values, [np.full(R, SE[n]) for n in WIDTHS]


def test_covariance_is_the_scatter_of_the_coefficients():
    fit = extrapolate_width(WIDTHS, *_draws(TRUTH, seed=11), degree=2)
    assert fit.coef.shape == (3, R) and fit.cov.shape == (R, 3, 3) and fit.dof.shape == (R,)
    np.testing.assert_allclose(fit.se, np.sqrt(np.diagonal(fit.cov, axis1=-2, axis2=-1)).T, rtol=1e-12)
    cov = fit.cov[0]
    np.testing.assert_allclose(fit.cov, np.broadcast_to(cov, fit.cov.shape), rtol=1e-12)   # same SEs: same cov
    # one draw recovers the truth within 3 SE
    assert np.all(np.abs(fit.coef[:, 0] - TRUTH) < 3 * fit.se[:, 0])
    # the scatter over draws: unbiased, variances and correlations as the fit says
    z = (fit.coef - TRUTH[:, None]) / fit.se
    assert np.all(np.abs(z.mean(axis=1)) < 4 / np.sqrt(R))
    emp = np.cov(fit.coef)
    scale = np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    assert np.max(np.abs(emp - cov) / scale) < 0.1, (emp / scale, cov / scale)     # SE of a correlation: 0.016
    assert np.corrcoef(fit.coef)[1, 2] < -0.9                                      # B and C strongly correlated
    # χ² of a right model: χ²(dof = 1)
    assert np.all(fit.dof == len(WIDTHS) - 3)
    assert abs(fit.chi2.mean() - 1.0) < 0.1 and abs(np.mean(fit.chi2 > stats.chi2.ppf(0.95, 1)) - 0.05) < 0.015


def test_chi2_rejects_a_wrong_model():
    """A 1/n² term of 120 SE at n = 16 fitted without it (χ² noncentrality 114): χ² rejects the fit; with the term
    the fit is accepted at its nominal rate and B is unbiased."""
    coef = np.array([2.0, -3.0, 120 * SE[16] * 16 ** 2])
    values, ses = _draws(coef, seed=12)
    lin, quad = (extrapolate_width(WIDTHS, values, ses, degree=d) for d in (1, 2))
    p_lin = stats.chi2.sf(lin.chi2, lin.dof)
    assert np.median(p_lin) < 1e-10 and np.mean(p_lin < 1e-3) > 0.99
    assert abs(np.mean(stats.chi2.sf(quad.chi2, quad.dof) < 0.05) - 0.05) < 0.015
    assert np.mean(np.abs(quad.coef[1] - coef[1]) / quad.se[1] < 3) > 0.99


def test_chi2_misses_a_small_higher_term_that_biases_the_slope():
    """docs/estimators.md#next-order-fits: a 1/n² term of 10 SE at n = 16 shifts the fitted 1/n coefficient by
    5.7 of its SEs, while χ² (noncentrality 0.79) rejects only ~10 % of the fits; the higher-term fit stays
    unbiased."""
    coef = np.array([2.0, -3.0, 10 * SE[16] * 16 ** 2])
    values, ses = _draws(coef, seed=13)
    lin, quad = (extrapolate_width(WIDTHS, values, ses, degree=d) for d in (1, 2))
    assert abs(np.median((lin.coef[1] - coef[1]) / lin.se[1]) - 5.73) < 0.1
    assert np.mean(stats.chi2.sf(lin.chi2, lin.dof) < 0.05) < 0.2
    assert abs(np.mean((quad.coef[1] - coef[1]) / quad.se[1])) < 4 / np.sqrt(R)


def test_exact_entries_have_zero_covariance():
    values = [np.array([1.0 + 2.0 / n, 0.5 + 0.1 * i]) for i, n in enumerate(WIDTHS)]
    ses = [np.array([0.0, 0.01]) for _ in WIDTHS]
    fit = extrapolate_width(WIDTHS, values, ses)
    assert np.all(fit.cov[0] == 0) and np.all(fit.se[:, 0] == 0) and fit.dof[0] == 0
    np.testing.assert_allclose(fit.coef[:, 0], [1.0, 2.0], atol=1e-12)
    assert np.all(np.linalg.eigvalsh(fit.cov[1]) > 0)


def _results(seed, L=3, V=(30.0, 10.0, -40.0), K=(-0.5, -0.3, 2.0), widths=WIDTHS):
    """Synthetic simulate() results of a one-input network: n Var[G] = V0 + V1/n + V2/n², n(E G − K0) = K0' + ...,
    with SEs like the samplers' (K1_cv exact at l = 0), noise drawn with those SEs."""
    rng = np.random.default_rng(seed)
    out = []
    for n in widths:
        v, vse = np.full((L + 1, 1, 1, 1, 1), _model(V, n)), np.full((L + 1, 1, 1, 1, 1), 0.02 * _model(V, n))
        k, kse = np.full((L + 1, 1, 1), _model(K, n)), np.full((L + 1, 1, 1), 0.003 * np.sqrt(n))
        k[0], kse[0] = 0.0, 0.0
        v, k = v + vse * rng.standard_normal(v.shape), k + kse * rng.standard_normal(k.shape)
        out.append(KernelResult(np.arange(L + 1.0), {"V4": v, "K1_cv": k}, {"V4": vse, "K1_cv": kse}, {"width": n}))
    return out


def test_fit_next_order_recovers_V4_1_and_K2():
    V, K = (30.0, 10.0, -40.0), (-0.5, -0.3, 2.0)
    fit = fit_next_order(_results(3, V=V, K=K))
    assert fit.widths == WIDTHS
    assert fit.V4.coef.shape == (2, 4, 1, 1, 1, 1) and fit.V4.cov.shape == (4, 1, 1, 1, 1, 2, 2)
    assert fit.K.coef.shape == (2, 4, 1, 1) and fit.K_higher.coef.shape == (3, 4, 1, 1)
    assert np.all(fit.K.se[:, 0] == 0) and np.all(fit.K.coef[:, 0] == 0)                # l = 0 exact (K1_cv = 0)
    for w, truth in ((fit.V4_higher, V), (fit.K_higher, K)):                            # the right model
        z = (w.coef[:, 1:] - np.reshape(truth, (3,) + (1,) * (w.coef.ndim - 1))) / w.se[:, 1:]
        assert np.max(np.abs(z)) < 4, z
    # the truncated (next-order) model: its bias from C/n² is below its SE here, and its χ² is not alarming
    for w, truth in ((fit.V4, V), (fit.K, K)):
        z = (w.coef[:, 1:] - np.reshape(truth[:2], (2,) + (1,) * (w.coef.ndim - 1))) / w.se[:, 1:]
        assert np.max(np.abs(z)) < 4, z
        assert np.all(w.dof[1:] == 2)
    # the higher-term fits SEs are larger (the price of testing the truncation)
    assert np.all(fit.K_higher.se[1, 1:] > fit.K.se[1, 1:]) and np.all(fit.V4_higher.se[1, 1:] > fit.V4.se[1, 1:])


def test_fit_next_order_refuses_too_few_widths_and_wrong_results():
    res = _results(4)
    with pytest.raises(ValueError, match=rf"^results: need >= {NEXT_ORDER_WIDTHS} distinct widths"):
        fit_next_order(res[:3])
    with pytest.raises(ValueError, match="^results: need >= 4 distinct widths"):
        fit_next_order(res[:3] + res[:1])
    bare = [KernelResult(r.t, {"V4": r["V4"]}, {"V4": r.se["V4"]}, r.meta) for r in res]
    with pytest.raises(ValueError, match="^results: need K1_cv and its standard error"):
        fit_next_order(bare)

"""Every registered activation record has everything the Gaussian engine needs, and an incomplete one is refused.

Checked per record (so a newly registered activation is checked without editing this file): φ agrees with its
exact derivatives (order 0 exactly, orders 1–2 by finite differences of φ, every row up to ``MAX_ORDER`` by finite
differences of the row below); closed forms or a quadrature profile; F at a test kernel finite and equal to an
independent value (2-D Gauss–Hermite for smooth φ, Monte Carlo for φ with kinks); closed forms equal to the
quadrature to 1e-10 (smooth φ, orders <= 4); pickling by name. Plus the Taylor-mode series arithmetic that lets a
new smooth φ be declared without writing a recurrence.
"""
from __future__ import annotations

import math
import pickle
import re

import numpy as np
import pytest
from numpy.polynomial.hermite_e import hermegauss

from kerneleft import gaussian as g
from kerneleft.activations import (REGISTRY, Activation, Profile, compose_exp, compose_sigmoid, compose_softplus,
                                   compose_tanh, get_activation, product, register, taylor_derivs)
from kerneleft.errors import InputError

#: highest derivative order the engine's accuracy is documented for (kerneleft/gaussian.py: order 20–24)
MAX_ORDER = 24
#: a non-degenerate test kernel with correlations of both signs
K_TEST = np.array([[1.0, 0.6, -0.2], [0.6, 1.5, 0.3], [-0.2, 0.3, 0.7]])
NAMES = tuple(REGISTRY)
WITH_DERIVS = tuple(n for n, a in REGISTRY.items() if a.derivs is not None)
SMOOTH = tuple(n for n, a in REGISTRY.items() if a.smooth)
CLOSED = tuple(n for n, a in REGISTRY.items() if a.pair_closed is not None)


def _gauss_hermite_F(phi, K, n=200):
    """F_ab = E[φ(z_a) φ(z_b)] by an n x n Gauss–Hermite product rule per 2x2 block: u = √k_aa x, v = βx + cy."""
    x, w = hermegauss(n)
    w = w / math.sqrt(2.0 * math.pi)
    W = w[:, None] * w[None, :]
    out = np.empty(K.shape)
    for a, b in np.ndindex(K.shape):
        s = math.sqrt(K[a, a])
        beta = K[a, b] / s
        c = math.sqrt(max(K[b, b] - beta * beta, 0.0))
        out[a, b] = np.sum(W * phi(s * x[:, None] + 0.0 * x[None, :]) * phi(beta * x[:, None] + c * x[None, :]))
    return out


def _mc_zscores(phi, K, F_theory, n=200_000, seed=3):
    """(mean of φ(z_a)φ(z_b) − F_ab) / standard error, z ~ N(0, K), fixed seed; (P, P)."""
    z = np.random.default_rng(seed).standard_normal((n, K.shape[0])) @ np.linalg.cholesky(K).T
    p = phi(z)
    prod = p[:, :, None] * p[:, None, :]
    return (prod.mean(0) - F_theory) / (prod.std(0, ddof=1) / math.sqrt(n))


def _five_point(f, x, h):
    """(f'(x), f''(x)) by five-point central differences, for f mapping x (n,) -> (..., n)."""
    fm2, fm1, f0, fp1, fp2 = (f(x + k * h) for k in (-2, -1, 0, 1, 2))
    return (fm2 - 8 * fm1 + 8 * fp1 - fp2) / (12 * h), (-fm2 + 16 * fm1 - 30 * f0 + 16 * fp1 - fp2) / (12 * h * h)


# ----------------------------------------------------------------------------------------- completeness of records
@pytest.mark.parametrize("name", NAMES)
def test_record_is_complete(name):
    """Smooth: exact derivs and (closed forms or a profile); kinked: both closed forms. Registered under its name."""
    act = get_activation(name)
    assert act is REGISTRY[name] and act.name == name and callable(act.phi)
    assert (act.pair_closed is None) == (act.diag_closed is None)
    if act.smooth:
        assert callable(act.derivs) and (act.pair_closed is not None or isinstance(act.profile, Profile))
    else:
        assert act.pair_closed is not None
    assert pickle.loads(pickle.dumps(act)) is act


@pytest.mark.parametrize("name", WITH_DERIVS)
def test_derivs_agree_with_phi_and_finite_differences(name):
    """Row 0 = φ (to rounding); rows 1, 2 = five-point differences of φ; rows up to MAX_ORDER finite, independent of
    the requested order, and each the five-point difference of the row below (relative to the row's scale).
    Tolerances are ~50x the largest error of the registered activations (rounding / h^4 truncation, h = 1e-3)."""
    act = get_activation(name)
    x = np.linspace(-6.0, 6.0, 97)
    D = act.derivs(x, MAX_ORDER)
    assert D.shape == (MAX_ORDER + 1, x.size) and np.all(np.isfinite(D))
    assert np.array_equal(act.derivs(x, 2), D[:3])
    assert np.allclose(D[0], act.phi(x), rtol=1e-13, atol=1e-15)
    d1, d2 = _five_point(act.phi, x, 1e-3)
    assert np.max(np.abs(d1 - D[1])) < 1e-10 * (1 + np.max(np.abs(D[1])))
    assert np.max(np.abs(d2 - D[2])) < 1e-7 * (1 + np.max(np.abs(D[2])))
    rows, _ = _five_point(lambda y: act.derivs(y, MAX_ORDER - 1), x, 1e-3)
    scale = np.max(np.abs(D[1:]), axis=1, keepdims=True) + 1e-300
    assert np.max(np.abs(rows - D[1:]) / scale) < 1e-7


@pytest.mark.parametrize("name", NAMES)
def test_F_at_test_kernel_is_finite_and_matches_an_independent_value(name):
    """Smooth φ: 200 x 200 Gauss–Hermite per block to 1e-10. Kinked φ (slow Gauss–Hermite): Monte Carlo |z| < 4.5,
    and F of the kernel scaled by 1.05 is rejected (|z| > 4.5). J and H are finite too."""
    act = get_activation(name)
    Fv = g.F(name, K_TEST)
    assert np.all(np.isfinite(Fv)) and np.array_equal(Fv, Fv.T)
    assert np.all(np.isfinite(g.jacobian(name, K_TEST))) and np.all(np.isfinite(g.hessian(name, K_TEST)))
    if act.smooth:
        assert np.max(np.abs(Fv - _gauss_hermite_F(act.phi, K_TEST))) < 1e-10 * np.max(np.abs(Fv))
    else:
        assert np.max(np.abs(_mc_zscores(act.phi, K_TEST, Fv))) < 4.5
        assert np.max(np.abs(_mc_zscores(act.phi, K_TEST, g.F(name, 1.05 * K_TEST)))) > 4.5


@pytest.mark.parametrize("name", [n for n in CLOSED if n in SMOOTH])
def test_closed_forms_match_quadrature(name):
    """Pair and diagonal moments of orders <= 4 (all that F, J, H use) on the test kernel's blocks: closed forms vs
    the engine's quadrature with the record's profile, to 1e-10 of the largest moment."""
    a, b = np.triu_indices(3, 1)
    kd = np.diag(K_TEST)
    for fn, args in ((g.pair_moments, (kd[a], kd[b], K_TEST[a, b])), (g.diag_moments, (kd,))):
        closed, quad = fn(name, *args, 4, method="closed"), fn(name, *args, 4, method="quadrature")
        assert np.max(np.abs(closed - quad)) < 1e-10 * np.max(np.abs(closed))


# ----------------------------------------------------------------------------------------- registration
def _derivs_of_tanh(x, order):
    return get_activation("tanh").derivs(x, order)


@pytest.mark.parametrize("record,message", [
    (Activation("halfbaked", np.tanh, profile=Profile()), "a smooth activation needs exact derivs"),
    (Activation("noquad", np.tanh, derivs=_derivs_of_tanh), "closed forms (pair_closed and diag_closed) or a "
                                                            "quadrature profile"),
    (Activation("onesided", np.tanh, derivs=_derivs_of_tanh, pair_closed=lambda *a: None),
     "pair_closed and diag_closed must be given together"),
    (Activation("kinked", np.abs, smooth=False, profile=Profile()), "an activation with kinks needs closed forms"),
    (Activation("mismatch", np.sin, derivs=_derivs_of_tanh, profile=Profile()), "derivs(x, order)[0] differs"),
    (Activation("badshape", np.tanh, derivs=lambda x, order: _derivs_of_tanh(x, order)[:1], profile=Profile()),
     "derivs(x, 2) must have shape (3, *x.shape)"),
    (Activation("tanh", np.tanh, derivs=_derivs_of_tanh, profile=Profile()), "the name is already registered"),
])
def test_incomplete_record_is_refused_at_registration(record, message):
    before = dict(REGISTRY)
    with pytest.raises(InputError, match=f"^activation '{record.name}': cannot register: .*" + re.escape(message)):
        register(record)
    assert REGISTRY == before


def test_user_record_pickles_by_value():
    """An unregistered record (module-level callables) round-trips with every field."""
    act = Activation("mytanh", np.tanh, derivs=_derivs_of_tanh, profile=Profile(1.2))
    back = pickle.loads(pickle.dumps(act))
    assert back == act and back.derivs is _derivs_of_tanh and back.profile == Profile(1.2) and back is not act


# ----------------------------------------------------------------------------------------- series arithmetic
@pytest.mark.parametrize("name,expression", [
    ("tanh", compose_tanh),
    ("silu", lambda t: product(t, compose_sigmoid(t))),
    ("softplus", compose_softplus),
    ("linear", lambda t: t),
])
def test_series_arithmetic_reproduces_the_hand_written_recurrences(name, expression):
    """Orders 0..MAX_ORDER on |x| <= 30: composed series = the registered recurrences to 1e-14 of each row's scale."""
    x = np.linspace(-30.0, 30.0, 121)
    ref, got = get_activation(name).derivs(x, MAX_ORDER), taylor_derivs(expression)(x, MAX_ORDER)
    scale = np.max(np.abs(ref), axis=1, keepdims=True)
    assert np.max(np.abs(got - ref) / np.where(scale > 0, scale, 1.0)) < 1e-14


def _cauchy_coefficients(f, x, order, n=128, r=0.8):
    """Normalised Taylor coefficients f^(k)(x)/k!, k = 0..order, by the trapezoidal Cauchy integral on |s| = r
    (r well inside the singularities at distance >= π/2, so aliasing is ~(r/(π/2))^n)."""
    theta = 2 * np.pi * np.arange(n) / n
    vals = f(x[None, :] + r * np.exp(1j * theta)[:, None])
    c = np.fft.fft(vals, axis=0) / n
    return (c[: order + 1].real / r ** np.arange(order + 1)[:, None])


def _linear_part(a):
    """A series with its coefficients of order >= 2 dropped."""
    out = a.copy()
    out[2:] = 0.0
    return out


def test_nested_composition_matches_cauchy_integral():
    """x·tanh(softplus(x)) and exp(tanh(x)): composed series vs an independent complex contour integral (order 12);
    a wrong chain rule (composing with the inner series' linear part only) is rejected."""
    x = np.linspace(-3.0, 3.0, 13)
    fact = np.array([math.factorial(k) for k in range(13)])[:, None]
    cases = [(lambda t: product(t, compose_tanh(compose_softplus(t))), lambda z: z * np.tanh(np.log1p(np.exp(z)))),
             (lambda t: compose_exp(compose_tanh(t)), lambda z: np.exp(np.tanh(z)))]
    for expression, f in cases:
        assert np.max(np.abs(taylor_derivs(expression)(x, 12) / fact - _cauchy_coefficients(f, x, 12))) < 1e-13
    wrong = taylor_derivs(lambda t: compose_exp(_linear_part(compose_tanh(t))))(x, 12) / fact
    assert np.max(np.abs(wrong - _cauchy_coefficients(lambda z: np.exp(np.tanh(z)), x, 12))) > 1e-3

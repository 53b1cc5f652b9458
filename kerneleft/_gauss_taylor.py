"""Exact derivatives φ^(m)(x), m = 0..order, of the smooth registered activations (THEORY §4, §6).

Each function maps x (any shape) to D[m, ...] = φ^(m)(x), shape (order+1, *x.shape). They use stable
Taylor-mode recurrences for the normalised Taylor coefficients y_k = φ^(k)(x)/k! (never finite differences):
tanh' = 1 − tanh², σ' = σ(1 − σ), Φ^(k) = (−1)^(k−1) He_(k−1) φ, gelu = xΦ, silu = xσ, softplus' = σ,
erf(x) = 2Φ(√2 x) − 1, sin^(k)(x) = sin(x + kπ/2).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import special

__all__ = ["DERIVATIVES"]

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _to_derivatives(y: list[np.ndarray]) -> np.ndarray:
    """Normalised Taylor coefficients y_k -> derivatives k! y_k, stacked on axis 0."""
    return np.stack([float(math.factorial(k)) * yk for k, yk in enumerate(y)])


def _riccati(y0: np.ndarray, y1: np.ndarray, order: int, linear: float) -> list[np.ndarray]:
    """Taylor coefficients of y' = linear·y − y² (+ const), given y0 and y1 = y'(x) computed stably."""
    y = [y0, y1][: order + 1]
    for k in range(1, order):
        conv = sum(y[j] * y[k - j] for j in range(k + 1))
        y.append((linear * y[k] - conv) / (k + 1))
    return y


def _tanh_taylor(x: np.ndarray, order: int) -> list[np.ndarray]:
    e = np.exp(-2.0 * np.abs(x))
    return _riccati(np.tanh(x), 4.0 * e / (1.0 + e) ** 2, order, 0.0)          # tanh' = 1 − tanh²


def _sigmoid_taylor(x: np.ndarray, order: int) -> list[np.ndarray]:
    return _riccati(special.expit(x), special.expit(x) * special.expit(-x), order, 1.0)  # σ' = σ − σ²


def _ndtr_taylor(x: np.ndarray, order: int) -> list[np.ndarray]:
    """Taylor coefficients of Φ: c_0 = Φ(x), c_k = (−1)^(k−1) He_(k−1)(x) φ(x) / k! (k >= 1)."""
    pdf = np.exp(-0.5 * x * x) * _INV_SQRT_2PI
    c = [special.ndtr(x)]
    h_prev, h = np.zeros_like(x), np.ones_like(x)                  # h_n = He_n(x) / n!
    for k in range(1, order + 1):
        c.append((-1) ** (k - 1) * h * pdf / k)
        h_prev, h = h, (x * h - h_prev) / k
    return c


def _times_x(c: list[np.ndarray], x: np.ndarray) -> list[np.ndarray]:
    """Taylor coefficients of (x + s)·g(x + s) from those of g."""
    return [x * c[0]] + [x * c[k] + c[k - 1] for k in range(1, len(c))]


def d_linear(x, order):
    x = np.asarray(x, dtype=float)
    return np.stack([x, np.ones_like(x)] + [np.zeros_like(x)] * (order - 1))[: order + 1]


def d_tanh(x, order):
    return _to_derivatives(_tanh_taylor(np.asarray(x, dtype=float), order))


def d_erf(x, order):
    x = np.asarray(x, dtype=float)
    c = _ndtr_taylor(math.sqrt(2.0) * x, order)
    y = [special.erf(x)] + [2.0 * 2.0 ** (k / 2) * c[k] for k in range(1, order + 1)]
    return _to_derivatives(y)


def d_gelu(x, order):
    x = np.asarray(x, dtype=float)
    return _to_derivatives(_times_x(_ndtr_taylor(x, order), x))


def d_silu(x, order):
    x = np.asarray(x, dtype=float)
    return _to_derivatives(_times_x(_sigmoid_taylor(x, order), x))


def d_softplus(x, order):
    x = np.asarray(x, dtype=float)
    s = _sigmoid_taylor(x, max(order - 1, 0))
    return _to_derivatives([np.logaddexp(0.0, x)] + [s[k - 1] / k for k in range(1, order + 1)])


def d_sin(x, order):
    x = np.asarray(x, dtype=float)
    s, c = np.sin(x), np.cos(x)
    return np.stack([(s, c, -s, -c)[m % 4] for m in range(order + 1)])


DERIVATIVES = {"linear": d_linear, "tanh": d_tanh, "erf": d_erf, "gelu": d_gelu, "silu": d_silu,
               "softplus": d_softplus, "sin": d_sin}

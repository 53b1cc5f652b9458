"""Diagnostics of the G-only closure (docs/failure.md#validity-window), measured on the exact ensemble.

Each closed term of the G-only closure (docs/gonly.md#coefficients) is evaluated on simulated statistics and set
against its exact counterpart from the identities I1–I2 (docs/exact.md#identities), layer by layer
(S = C_W Σ + C_b with Σ the Gram of the last dense layer's input, 𝒯, ℋ at the discrete K0^l, n = width):

- transport:  n Cov[G_ab, S_cd] = C_W covGSigma   vs   Σ_ef V4[a,b,e,f] 𝒯[c,d,e,f]  (V4 simulated);
- source:     E[G⊠S] = E[G]⊠E[S] + (1/n) R(n Cov[G,S])   vs   K0⊠S̄(K0);
- K1 source:  n(E[S] − S̄(K0))   vs   𝒯K1 + ½ℋ:V4 + b  (K1, V4 simulated; by I1 the left side drives K1 exactly);
- V4 residual: with d^l = (exact − closed) increment of I2 at layer l, split into the terms
  transport ε(nCov[G,S] + transpose − 𝒯V4 − V4𝒯ᵀ), source ε(E[G⊠S] − K0⊠S̄) and
  eps2 ε²(n Cov[S] + E[S∘S] − 𝒯V4𝒯ᵀ − S̄∘S̄ − N) (docs/failure.md#eps2), the residual is transported like V4:
  r^{l+1} = (1+ε𝒯) r^l (1+ε𝒯)ᵀ + d^l, r^0 = 0. By I2, E[r^l] = E[V4_sim^l] − V4_gonly^l exactly (discrete
  G-only theory at the same L), so the terms split the whole V4 error; ``v4_unexplained`` = V4_sim − V4_gonly − r
  has mean zero (a bookkeeping check). At finite width every term also carries O(1/n) effects (the source term
  is nothing else: E[G⊠S] − K0⊠S̄ = O(1/n)); the closure error proper is what persists as n grows.

A branch with inner dense layers (docs/architectures.md#gonly-branches): the closure is S ≈ S̄(G) plus the inner
layers' own finite-width noise, whose n-scaled mean b = n(E[S|G] − S̄(G)) and covariance N = n Cov[S|G] the
coefficients carry (``bias``, ``noise``; zero for the default branch): b enters the K1 source, N the eps2 term.

An MLP (``net.residual`` False, docs/architectures.md#mlp) has G^{l+1} | S^l ~ Wishart_P(n, S^l)/n, so exactly
E[G^{l+1}] = E[S^l] and n Cov[G^{l+1}] = E[S^l]∘E[S^l] + (1/n) R∘(n Cov[S^l]) + n Cov[S^l] (R∘: the circ
rearrangement), while the closure steps V4^{l+1} = S̄(K0^l)∘S̄(K0^l) + 𝒯V4^l𝒯ᵀ + N and
K1^{l+1} = 𝒯K1^l + ½ℋ:V4^l + b. Its terms (:data:`MLP_TERMS`, no eps2):

- transport:  transport_exact = n Cov[S^l]   vs   transport_closure = 𝒯V4^l𝒯ᵀ + N  (V4 simulated);
- source:     source_exact = E[S∘S] = E[S]∘E[S] + (1/n) R∘(n Cov[S])   vs   source_closure = S̄(K0)∘S̄(K0);
- K1 source:  n(E[S^l] − S̄(K0^l)) (= K1^{l+1} exactly)   vs   𝒯K1^l + ½ℋ:V4^l + b;
- V4 residual: d^l = (transport_exact − transport_closure) + (source_exact − source_closure), propagated as
  r^{l+1} = 𝒯 r^l 𝒯ᵀ + d^l, r^0 = 0; again E[r^l] = E[V4_sim^l] − V4_gonly^l exactly.

Standard errors: the samples are split into independent batches (separate seeds); every diagnostic is computed
per batch and the batch spread gives its SE (batch means), so nonlinear and accumulated quantities get honest
errors. Validity window of V4 and K1: the first t_l at which some entry satisfies
|theory − sim| > threshold · max|sim^l| + 2 SE (relative error measured against the largest entry of the
simulated quantity at that layer, and required to exceed the threshold by two standard errors); None if never.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from .coefficients import Coefficients, coefficients, tadpole
from .config import Network
from .kernel import S_bar
from .pairs import pair_basis
from .result import KernelResult
from .tensors import box, circ
from .validate import check_int, check_positive
from .errors import InputError, Interrupted
from .ensemble import batch_seeds
from .estimators import MIN_COV_SAMPLES
from .theory import expand, representatives, solve

__all__ = ["diagnose", "closure_terms", "closure_coefficients", "ClosureCoefficients", "validity_window",
           "relative_error", "terms", "source_closure", "TERMS", "MLP_TERMS"]

TERMS = ("transport", "source", "eps2")
"""Terms of the V4 residual of a resnet."""
MLP_TERMS = ("transport", "source")
"""Terms of the V4 residual of an MLP (no ε², docs/architectures.md#mlp)."""


def terms(net: Network) -> tuple[str, ...]:
    """The V4 residual's terms for ``net``: :data:`TERMS` (resnet) or :data:`MLP_TERMS` (MLP)."""
    return TERMS if net.residual else MLP_TERMS


def source_closure(net: Network, K0: np.ndarray) -> np.ndarray:
    """The closed source at K0 (L+1, P, P): K0⊠S̄(K0) (resnet) or S̄(K0)∘S̄(K0) (MLP); (L+1, P, P, P, P)."""
    Sbar = S_bar(net, K0)
    return box(K0, Sbar) if net.residual else circ(Sbar)


def _pair_rearrange(C: np.ndarray) -> np.ndarray:
    """R(C)[a,b,c,d] = C[a,c,b,d] + C[a,d,b,c] + C[b,c,a,d] + C[b,d,a,c]: (1/n) R(nCov[G,S]) = E[G⊠S] − E[G]⊠E[S]."""
    return (np.einsum("...acbd->...abcd", C) + np.einsum("...adbc->...abcd", C)
            + np.einsum("...bcad->...abcd", C) + np.einsum("...bdac->...abcd", C))


def _circ_rearrange(C: np.ndarray) -> np.ndarray:
    """C[a,c,b,d] + C[a,d,b,c]: (1/n) of it, with C = n Cov[S], is E[S∘S] − E[S]∘E[S]."""
    return np.einsum("...acbd->...abcd", C) + np.einsum("...adbc->...abcd", C)


def _propagate(A: np.ndarray, d: np.ndarray) -> np.ndarray:
    """r^{l+1} = A_l r^l A_lᵀ + d^l, r^0 = 0; A (L,N,N), d (..., L, N, N) -> (..., L+1, N, N)."""
    r = np.zeros(d.shape[:-3] + (d.shape[-3] + 1,) + d.shape[-2:])
    for l in range(A.shape[0]):
        r[..., l + 1, :, :] = A[l] @ r[..., l, :, :] @ A[l].T + d[..., l, :, :]
    return r


class ClosureCoefficients(NamedTuple):
    """What :func:`closure_terms` needs of K0 alone (the same for every batch of one net): ``c`` the coefficients
    at K0 (L+1 layers), ``S_bar`` S̄(K0) (L+1, P, P), and for the K1 closure the distinct inputs (``rep``,
    ``first``, :func:`kerneleft.theory.representatives`) with the coefficients ``c_distinct`` on them."""

    c: Coefficients
    S_bar: np.ndarray
    rep: np.ndarray
    first: np.ndarray
    c_distinct: Coefficients


def closure_coefficients(net: Network, K0: np.ndarray) -> ClosureCoefficients:
    """The K0-only part of :func:`closure_terms`; K0 (L+1, P, P). ℋ is ±inf between identical inputs, so the K1
    closure uses the distinct inputs (merged as in the theory)."""
    rep, first = representatives(net.K_in)
    c = coefficients(net, K0)
    cd = c if first.size == net.P else coefficients(net, K0[:, first][:, :, first])
    return ClosureCoefficients(c, S_bar(net, K0), rep, first, cd)


def closure_terms(net: Network, width: int, stats: KernelResult,
                  coeffs: ClosureCoefficients | None = None) -> dict[str, np.ndarray]:
    """All closure diagnostics (docs/failure.md#validity-window) from one ensemble's statistics (a result of
    :func:`kerneleft.ensemble.simulate`); for an MLP the terms of the module docstring (docs/architectures.md#mlp).

    Returns full tensors on l = 0..L: transport_exact/closure (L+1,P,P,P,P), source_exact (L+1,P,P,P,P),
    k1_source_exact/closure/mismatch (L+1,P,P), v4_residual and v4_residual_<term> (L+1,P,P,P,P) for each of
    :func:`terms`, and the simulated G_mean, V4, K1 (copied). ``coeffs``: :func:`closure_coefficients` of
    ``stats["K0"]`` (computed here if not given; pass it to reuse it over batches).
    """
    p, eps, n = pair_basis(net.P), net.eps, width
    K0 = stats["K0"]
    c, S_bar_K0, rep, first, cd = closure_coefficients(net, K0) if coeffs is None else coeffs
    V = p.vec4(stats["V4"])
    ES = net.C_W * stats["Sigma_mean"] + net.C_b
    C = net.C_W * stats["covGSigma"]                                    # n Cov[G_ab, S_cd]
    CS = net.C_W ** 2 * stats["covSigma"]                               # n Cov[S]
    VT = V @ np.swapaxes(c.T, -1, -2)                                   # V4 𝒯ᵀ, (L+1, N, N)
    TVT = c.T @ VT
    noise = 0.0 if c.noise is None else c.noise                         # N = n Cov[S|G] of the inner layers
    k1_exact = n * (ES - S_bar_K0)
    pd = pair_basis(first.size)
    sub = (slice(None),) + np.ix_(*[first] * 4)
    k1_closure = expand(pd.mat(np.einsum("lpq,lq->lp", cd.T, pd.vec(stats["K1"][:, first][:, :, first]))
                               + tadpole(cd, pd.vec4(stats["V4"][sub])) + (0.0 if cd.bias is None else cd.bias)),
                        rep)
    Sbar = p.mat(c.S_bar)
    if net.residual:
        Cp = p.vec4(C)
        transport = (C, p.mat4(VT))
        source_exact = box(stats["G_mean"], ES) + _pair_rearrange(C) / n
        d = {"transport": eps * (Cp + np.swapaxes(Cp, -1, -2) - VT - np.swapaxes(VT, -1, -2)),
             "source": eps * p.vec4(source_exact - box(K0, Sbar)),
             "eps2": eps ** 2 * (p.vec4(CS + circ(ES) + _circ_rearrange(CS) / n - circ(Sbar)) - TVT - noise)}
        A = np.eye(V.shape[-1]) + eps * c.T[:-1]
    else:
        transport = (CS, p.mat4(TVT + noise))
        source_exact = circ(ES) + _circ_rearrange(CS) / n                    # E[S∘S]
        d = {"transport": p.vec4(CS) - TVT - noise, "source": p.vec4(source_exact - circ(Sbar))}
        A = c.T[:-1]
    r = {k: p.mat4(_propagate(A, v[:-1])) for k, v in d.items()}
    out = {"transport_exact": transport[0], "transport_closure": transport[1],
           "source_exact": source_exact, "k1_source_exact": k1_exact, "k1_source_closure": k1_closure,
           "k1_source_mismatch": k1_closure - k1_exact, "v4_residual": sum(r.values()),
           "G_mean": stats["G_mean"], "V4": stats["V4"], "K1": stats["K1"]}
    out.update({f"v4_residual_{k}": v for k, v in r.items()})
    return out


def relative_error(theory: np.ndarray, sim: np.ndarray) -> np.ndarray:
    """Per layer ``max|theory − sim| / max|sim|`` (max over the entries at that layer); (L+1, ...) -> (L+1,)."""
    axes = tuple(range(1, sim.ndim))
    scale = np.max(np.abs(sim), axis=axes)
    return np.max(np.abs(theory - sim), axis=axes) / np.where(scale > 0, scale, np.inf)


def validity_window(t: np.ndarray, theory: np.ndarray, sim: np.ndarray, se: np.ndarray,
                    threshold: float) -> float | None:
    """The first t at which some entry has ``|theory − sim| > threshold·max|sim^l| + 2 SE``, None if never
    (docs/failure.md#validity-window). ``theory``, ``sim``, ``se``: (L+1, ...) on the depth grid ``t`` (L+1,)."""
    axes = tuple(range(1, sim.ndim))
    scale = np.max(np.abs(sim), axis=axes).reshape((-1,) + (1,) * len(axes))
    bad = np.any(np.abs(theory - sim) > threshold * scale + 2 * se, axis=axes)
    return float(t[np.argmax(bad)]) if bad.any() else None


def _simulate_batches(net: Network, width: int, method: str, pool, sizes: Sequence[int],
                      seeds: Sequence[int]) -> tuple[list[KernelResult], bool]:
    """Simulate the batches in order; Ctrl-C stops at once, keeping the finished batches and the finished chunks
    of the batch cut short (docs/numerics.md#interrupts). Returns (batches, interrupted)."""
    from .ensemble import simulate

    out = []
    try:
        for m, s in zip(sizes, seeds):
            out.append(simulate(net, width=width, samples=int(m), seed=s, method=method, pool=pool,
                                progress=False))
            if out[-1].meta["interrupted"]:
                return out, True
    except KeyboardInterrupt:
        return out, True
    return out, False


def diagnose(net: Network, width: int, samples: int, seed: int, threshold: float = 0.05, pool=None,
             ensemble: Sequence[KernelResult] | None = None, *, batches: int = 16,
             method: str = "conditional") -> KernelResult:
    """Diagnostics of the G-only closure against the exact ensemble (module docstring; docs/failure.md#validity-window).

    Simulates ``samples`` networks of width ``width`` with ``method`` in min(``batches``, samples // 3) independent
    batches (seeds derived from ``seed``; each run on ``pool`` as in :func:`kerneleft.ensemble.simulate`), or uses
    ``ensemble``: a sequence (>= 2) of independent results of
    :func:`kerneleft.ensemble.simulate` for this ``net`` and ``width``. Arrays (docs/reference.md#cli ``diagnose`` keys,
    each with ``se`` where simulated): transport_exact, transport_closure, source_exact, source_closure,
    k1_source_exact, k1_source_closure, k1_source_mismatch (closure − exact), v4_residual, v4_unexplained,
    G_mean, V4, K1 (simulated), K0, V4_gonly, K1_gonly (discrete G-only theory); for an MLP the transport and
    source pairs of the module docstring. meta: v4_residual_by_term (:func:`terms` -> array, and its ``_se``),
    validity_window (quantity -> t or None), relative_error (per layer), samples (networks used),
    samples_requested, interrupted.

    Ctrl-C/SIGTERM while simulating (docs/numerics.md#interrupts) stops the simulation and raises
    :class:`~kerneleft.errors.Interrupted`; once two batches hold networks its ``result`` is the diagnostics of
    every finished chunk, marked ``interrupted`` with the achieved ``samples``.
    """
    check_positive("threshold", threshold)
    seed = check_int("seed", seed, 0)
    interrupted = False
    if ensemble is None:
        batches = check_int("batches", batches, 2)
        samples = check_int("samples", samples, 2 * MIN_COV_SAMPLES, " (two batches of three)")
        B = min(batches, samples // MIN_COV_SAMPLES)
        sizes = np.full(B, samples // B) + (np.arange(B) < samples % B)
        ensemble, interrupted = _simulate_batches(net, width, method, pool, sizes, batch_seeds(seed, B))
        done = sum(b.meta["samples"] for b in ensemble)
        if interrupted and len(ensemble) < 2:
            raise Interrupted(f"diagnose: interrupted after {done} of {samples} networks, before two batches held "
                              f"networks; nothing to report")
    elif len(ensemble) < 2:
        raise InputError(f"ensemble: must hold >= 2 independent batches, got {len(ensemble)}")
    elif any(b.meta.get("width") != width for b in ensemble):
        raise InputError(f"ensemble: every batch must be simulated at width {width}")
    coeffs = closure_coefficients(net, ensemble[0]["K0"])      # K0 is the discrete K0 of net in every batch
    per = [closure_terms(net, width, b, coeffs) for b in ensemble]
    B = len(per)
    mean = {k: np.mean([p[k] for p in per], axis=0) for k in per[0]}
    se = {k: np.std([p[k] for p in per], axis=0, ddof=1) / np.sqrt(B) for k in per[0]}

    th = solve(net, "g-only", depth_model="discrete")          # merges identical inputs, like `theory`
    mean["v4_unexplained"] = mean["V4"] - th.V4 - mean["v4_residual"]
    se["v4_unexplained"] = np.std([p["V4"] - p["v4_residual"] for p in per], axis=0, ddof=1) / np.sqrt(B)
    window, rel = {}, {}
    for q in ("V4", "K1"):
        window[q] = validity_window(net.t, th[q], mean[q], se[q], threshold)
        rel[q] = relative_error(th[q], mean[q])
    by_term = {k: mean.pop(f"v4_residual_{k}") for k in terms(net)}
    by_term_se = {k: se.pop(f"v4_residual_{k}") for k in terms(net)}
    arrays = dict(mean, source_closure=source_closure(net, th.K0), K0=th.K0, V4_gonly=th.V4, K1_gonly=th.K1)
    meta = {"kind": "diagnostics", "closure": "g-only", "width": width,
            "samples": int(sum(b.meta["samples"] for b in ensemble)), "seed": seed,
            "method": ensemble[0].meta["method"], "pool": ensemble[0].meta.get("pool"), "batches": B,
            "threshold": threshold, "config": net.to_dict(),
            "v4_residual_by_term": by_term, "v4_residual_by_term_se": by_term_se,
            "validity_window": window, "relative_error": rel, "samples_requested": samples,
            "interrupted": interrupted}
    res = KernelResult(net.t, arrays, se, meta)
    if interrupted:
        raise Interrupted(f"diagnose: interrupted after {meta['samples']} of {samples} networks "
                          f"(whole chunks of {B} batches)", result=res)
    return res

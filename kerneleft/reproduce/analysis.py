"""What ``reproduce`` concludes: pure functions from theories and ensembles to typed, frozen results.

Nothing here runs a solver or an ensemble (that is :mod:`kerneleft.reproduce.pipeline`), writes a file or formats
text (:mod:`kerneleft.reproduce.rendering`). Two simulated estimates of V4 at n → ∞ are compared with the theories:
``V4`` (the ensembles' n Cov[G], extrapolated) and ``V4_cv`` = V4_G-only + the accumulated residual of the
diagnostics, extrapolated. The residual's mean is exactly V4_sim − V4_G-only (depth-L recursion,
docs/failure.md#validity-window), so V4_cv estimates the same quantity with the G-only theory as a control variate.

Array shapes: t (L+1,); kernels (L+1, P, P); four-point tensors (L+1, P, P, P, P). Entry labels are 0-based here
(1-based only in the rendered text). :meth:`Results.to_dict` is the one serialiser behind ``results.json``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Mapping, Sequence

import numpy as np

from ..config import Network
from ..diagnostics import TERMS, relative_error, validity_window
from ..estimators import NextOrderFit, WidthFit, extrapolate_width, fit_next_order
from ..result import KernelResult
from ..tensors import circ
from ..coefficients import branch_stages, coefficients, first_segment, gaussian_input_noise, tadpole
from ..pairs import pair_basis

__all__ = ["Z_CRIT", "WINDOW_THRESHOLDS", "THEORY_NAMES", "Plan", "Theories", "Extrapolated", "Comparison",
           "Estimate", "K1Source", "ResidualSplit", "WidthError", "Validity", "K0Finding", "V4Finding",
           "K1SourceFinding", "K1Finding", "SigmaFinding", "Findings", "CoefficientFit", "NextOrderCheck",
           "NEXT_ORDER_PREDICTIONS", "NEXT_ORDER_TERMS", "Analysis", "Run", "Results", "combine_batches", "extrapolate", "zscore",
           "compare", "k1_source_t0", "residual_split", "validity", "next_order_check", "analyse", "pairs",
           "v4_entries", "depth_indices", "exact_source_t0", "residual_terms"]

#: |z| above which a theory is called rejected (and at or below which consistent), for every comparison.
Z_CRIT = 4.0
#: relative-error thresholds of the validity-window table (plus the run's ``threshold``)
WINDOW_THRESHOLDS = (0.01, 0.02, 0.05)
#: comparison name -> field of :class:`Theories` (depth-L recursions are the default names)
THEORY_NAMES = {"gonly": "gonly_discrete", "gonly_continuous": "gonly_continuous", "sigma": "sigma_discrete",
                "sigma_continuous": "sigma_continuous"}


def _plain(obj: Any) -> Any:
    """A frozen result as nested dicts (field name -> value), KernelResults as {**arrays, **{"<name>_se": SE},
    "meta": meta}."""
    if isinstance(obj, KernelResult):
        return {**obj.arrays, **{f"{k}_se": v for k, v in obj.se.items()}, "meta": obj.meta}
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Plan:
    """Run sizes: ``samples[i]`` networks at ``widths[i]`` in ``batches`` seeded batches; diagnostics shown at
    ``diag_width``. The next-order check (one input): ``next_samples[i]`` networks at ``next_widths[i]`` (empty: the
    check is skipped), the sigma next order refined to ``next_tol2``."""
    widths: tuple[int, ...]
    samples: tuple[int, ...]
    batches: int
    diag_width: int
    next_widths: tuple[int, ...]
    next_samples: tuple[int, ...]
    next_tol2: float


@dataclass(frozen=True)
class Theories:
    """K0 (L+1, P, P) in both depth models; the G-only and sigma theories as KernelResults. The continuous ones
    are None for an MLP (only the discrete depth model exists, docs/architectures.md#mlp)."""
    K0_discrete: np.ndarray
    K0_continuous: np.ndarray | None
    gonly_continuous: KernelResult | None
    gonly_discrete: KernelResult
    sigma_discrete: KernelResult
    sigma_continuous: KernelResult | None

    def of(self, name: str) -> KernelResult:
        """The theory of a comparison name (:data:`THEORY_NAMES`)."""
        return getattr(self, THEORY_NAMES[name])

    def names(self) -> tuple[str, ...]:
        """The comparison names (:data:`THEORY_NAMES`) whose theory exists."""
        return tuple(name for name, f in THEORY_NAMES.items() if getattr(self, f) is not None)


@dataclass(frozen=True)
class Extrapolated:
    """The simulation at n → ∞ (docs/estimators.md#width-extrapolation): K1 (and its 1/n slope), V4 = n Cov[G]
    and E[G] = K0 + K1_n/n fitted linearly in 1/n; V4_cv = V4_G-only + extrapolated residual."""
    K1: np.ndarray
    K1_se: np.ndarray
    K1_slope: np.ndarray
    K1_slope_se: np.ndarray
    K1_chi2: float
    K1_dof: int
    K1_chi2_T: float
    K1_dof_T: int
    V4: np.ndarray
    V4_se: np.ndarray
    V4_chi2: float
    V4_dof: int
    V4_cv: np.ndarray
    V4_cv_se: np.ndarray
    G_mean: np.ndarray
    G_mean_se: np.ndarray
    G_mean_chi2: float
    G_mean_dof: int


@dataclass(frozen=True)
class Comparison:
    """One theory against one simulated array: z = (sim − theory)/SE and (theory − sim)/max|sim^l|, same shape."""
    z: np.ndarray
    relative_error: np.ndarray
    max_abs_z: float
    max_abs_z_final: float


@dataclass(frozen=True)
class Estimate:
    value: np.ndarray
    se: np.ndarray


@dataclass(frozen=True)
class K1Source:
    """The K1 source at t = 0 (docs/failure.md#source), (P, P) each: the closure ½ℋ:(K_in∘K_in) + b, the exact
    value (:func:`exact_source_t0`: 0 for the default branch) and n(E[S⁰] − S̄(K_in)) simulated per width and pooled
    over widths, with z against closure and exact."""
    closure: np.ndarray
    exact: np.ndarray
    simulated: np.ndarray
    simulated_se: np.ndarray
    z_closure: np.ndarray
    z_exact: np.ndarray
    per_width: Mapping[int, Estimate]


@dataclass(frozen=True)
class ResidualSplit:
    """The accumulated V4 residual of the G-only closure by term (:data:`kerneleft.diagnostics.TERMS` and
    ``sum``): ``by_width[n][k]``, ``[k_se]``; ``extrapolated[k]``, ``[k_se]``, ``[k_chi2]``, ``[k_dof]`` at n → ∞;
    and V4_sim − V4_G-only at n → ∞ (which the extrapolated sum estimates)."""
    widths: tuple[int, ...]
    by_width: Mapping[int, Mapping[str, np.ndarray]]
    extrapolated: Mapping[str, Any]
    sim_minus_gonly: np.ndarray
    sim_minus_gonly_se: np.ndarray


@dataclass(frozen=True)
class WidthError:
    """G-only V4 against one finite width at t = T, (P, P, P, P) each."""
    relative_error_T: np.ndarray
    z_T: np.ndarray


@dataclass(frozen=True)
class Validity:
    """Validity windows (docs/failure.md#validity-window) of every theory against the n → ∞ references
    (V4_cv, extrapolated K1): ``windows[threshold][theory][quantity]`` (t or None) for each of ``thresholds``;
    ``relative_error[theory][quantity]`` (L+1,); ``noise_floor[quantity]`` = 2 max SE / max|sim| (L+1,); and the
    diagnostics' own windows at finite width ``diag_width``."""
    threshold: float
    thresholds: tuple[float, ...]
    windows: Mapping[float, Mapping[str, Mapping[str, float | None]]]
    relative_error: Mapping[str, Mapping[str, np.ndarray]]
    noise_floor: Mapping[str, np.ndarray]
    diag_width: int
    diag_windows: Mapping[str, float | None]
    diag_relative_error: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class K0Finding:
    max_abs_z: float
    n_compared: int
    shift_by_width: Mapping[int, float]
    shift_times_n: Mapping[int, float]
    continuous_vs_discrete: float | None          # None for an MLP (no continuous depth model)
    max_G_se_largest_width: float
    consistent: bool


@dataclass(frozen=True)
class V4Finding:
    entry: tuple[int, int, int, int]
    t: float
    gonly: float
    sim: float
    sim_se: float
    z: float
    sim_direct: float
    sim_direct_se: float
    z_direct: float
    relative_error: float
    relative_error_over_t: Mapping[float, float]
    max_abs_z: float
    max_abs_z_direct: float
    by_width_relative_error: Mapping[int, float]
    by_width_z: Mapping[int, float]
    residual_total: float
    residual_total_se: float
    residual_by_term: Mapping[str, float]
    residual_by_term_se: Mapping[str, float]
    dominant_term: str
    dominant_share: float
    residual_by_width: Mapping[int, Mapping[str, float]]
    residual_by_width_se: Mapping[int, Mapping[str, float]]
    sim_minus_gonly: float
    sim_minus_gonly_se: float
    window: float | None
    rejected: bool


@dataclass(frozen=True)
class K1SourceFinding:
    entry: tuple[int, int]
    closure: float
    simulated: float
    simulated_se: float
    z_closure: float
    max_abs_z_exact: float
    rejected: bool


@dataclass(frozen=True)
class K1Finding:
    entry: tuple[int, int]
    gonly: float
    sim: float
    sim_se: float
    ratio: float | None
    z: float
    max_abs_z: float
    extrapolation_chi2: float
    extrapolation_dof: int
    chi2_T: float
    dof_T: int
    window: float | None
    rejected: bool


@dataclass(frozen=True)
class SigmaFinding:
    V4: float
    V4_z: float
    V4_relative_error: float
    V4_max_abs_z: float
    V4_max_abs_z_direct: float
    K1: float
    K1_z: float
    K1_ratio: float | None
    K1_max_abs_z: float
    repairs_V4: bool
    repairs_K1: bool
    windows: Mapping[str, float | None]
    ode_V4_max_abs_z: float | None                # None for an MLP (no continuous depth model)
    ode_K1_max_abs_z: float | None
    meta: Mapping[str, Any]


#: the predictions of the next-order check, per width n (docs/nextorder.md#predictions): name -> (theory, order)
NEXT_ORDER_PREDICTIONS = {"leading": ("sigma", 1), "next": ("sigma", 2), "gonly_next": ("gonly", 2)}
#: the quantities of the next-order check and their (leading, next-order) coefficients: n Var[G] = V4 + V4_1/n,
#: n(E[G] − K0) = K1 + K2/n
NEXT_ORDER_TERMS = {"var": ("V4", "V4_1"), "mean": ("K1", "K2")}


@dataclass(frozen=True)
class CoefficientFit:
    """One entry at t = T of a width fit y_n = a + b/n (:attr:`kerneleft.estimators.NextOrderFit.V4` or ``.K``):
    ``a``, ``b`` with SEs, their correlation ``corr``, ``chi2`` for ``dof``; and of the fit with one more term,
    y_n = a + b/n + c/n²: ``b_higher``, ``c`` with SEs and ``chi2_higher`` (docs/estimators.md#next-order-fits)."""
    a: float
    a_se: float
    b: float
    b_se: float
    corr: float
    chi2: float
    dof: int
    b_higher: float
    b_higher_se: float
    c: float
    c_se: float
    chi2_higher: float

    @classmethod
    def at(cls, fit: WidthFit, higher: WidthFit, idx: tuple) -> "CoefficientFit":
        cov = fit.cov[idx]
        return cls(float(fit.coef[(0, *idx)]), float(fit.se[(0, *idx)]), float(fit.coef[(1, *idx)]),
                   float(fit.se[(1, *idx)]), float(cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])),
                   float(fit.chi2[idx]), int(fit.dof[idx]), float(higher.coef[(1, *idx)]),
                   float(higher.se[(1, *idx)]), float(higher.coef[(2, *idx)]), float(higher.se[(2, *idx)]),
                   float(higher.chi2[idx]))

    def against(self, a: float, b: float) -> dict[str, float]:
        """A theory's (a, b) against the fit: ``z_b`` = (b_fit − b)/SE and ``chi2_joint``, the χ² (2 dof) of
        (a, b) jointly with the fit's covariance."""
        d = np.array([self.a - a, self.b - b])
        s = np.array([self.a_se, self.b_se])
        cov = np.outer(s, s) * np.array([[1.0, self.corr], [self.corr, 1.0]])
        return {"z_b": float(d[1] / self.b_se), "chi2_joint": float(d @ np.linalg.solve(cov, d))}


@dataclass(frozen=True)
class NextOrderCheck:
    """The next order in 1/n against exact ensembles of one input (docs/nextorder.md#validation,
    docs/estimators.md#next-order-fits). ``config``: the one-input network (K_in = [[K_in[0, 0]]] of the run's
    config, whose number of inputs is ``config_P``); ``sigma``, ``gonly``: its depth-L theories at order 2;
    ``ensembles[n]``: pooled ensembles per width; ``fit``: :func:`kerneleft.estimators.fit_next_order` over them.
    At t = T, per width (arrays (m,) over ``widths``): ``sim`` ``var`` = n Var[G], ``mean`` = n(E[G] − K0) (control
    variate), each with ``*_se``; ``predictions[q][p]`` and ``z[q][p]`` = (sim − prediction)/SE for q in (var, mean)
    and p in :data:`NEXT_ORDER_PREDICTIONS` (leading: V4, K1; next: V4 + V4_1/n, K1 + K2/n; G-only next order);
    ``fitted[q]`` the fits at t = T and ``vs_theory[theory][q]`` their comparison with each theory's coefficients."""
    widths: tuple[int, ...]
    config: Mapping[str, Any]
    config_P: int
    sigma: KernelResult
    gonly: KernelResult
    ensembles: Mapping[int, KernelResult]
    fit: NextOrderFit
    sim: Mapping[str, np.ndarray]
    predictions: Mapping[str, Mapping[str, np.ndarray]]
    z: Mapping[str, Mapping[str, np.ndarray]]
    fitted: Mapping[str, CoefficientFit]
    vs_theory: Mapping[str, Mapping[str, Mapping[str, float]]]

    def coefficients(self, theory: str) -> dict[str, float]:
        """V4, V4_1, K1, K2 of ``theory`` (sigma or gonly) at t = T."""
        return _final(getattr(self, theory))


def _final(res: KernelResult) -> dict[str, float]:
    """V4, V4_1, K1, K2 of a one-input order-2 theory at t = T."""
    return {k: float(res[k][-1].ravel()[0]) for k in ("V4", "V4_1", "K1", "K2")}


@dataclass(frozen=True)
class Findings:
    """The numbers behind each statement of the report, with the verdicts derived from them (criterion
    :data:`Z_CRIT`)."""
    k0: K0Finding
    v4: V4Finding
    k1_source: K1SourceFinding
    k1: K1Finding
    sigma: SigmaFinding


@dataclass(frozen=True)
class Analysis:
    """Everything :func:`analyse` derives. ``comparisons[quantity][theory]`` for quantity K0 (theories
    discrete/continuous), V4, V4_cv, K1 (theories of :data:`THEORY_NAMES` that exist, :meth:`Theories.names`).
    ``residual``: False for an MLP (its K1 source at layer l is K1^{l+1}, not a slope in t). ``next_order``: the
    one-input next-order check, or None with the reason in ``next_order_skipped``."""
    t: np.ndarray
    eps: float
    P: int
    plan: Plan
    theory: Theories
    ensembles: Mapping[int, KernelResult]
    extrapolated: Extrapolated
    diagnostics: KernelResult
    comparisons: Mapping[str, Mapping[str, Comparison]]
    validity: Validity
    v4_gonly_by_width: Mapping[int, WidthError]
    v4_residual: ResidualSplit
    k1_source_t0: K1Source
    findings: Findings
    residual: bool = True
    next_order: NextOrderCheck | None = None
    next_order_skipped: str | None = None

    @property
    def widths(self) -> tuple[int, ...]:
        return self.plan.widths


@dataclass(frozen=True)
class Run:
    """How the run was made (everything of results.json that is not analysis)."""
    mode: str
    sizes_override: Mapping[str, Any]
    config: Mapping[str, Any]
    config_source: str
    seed: int
    pool: str
    threshold: float
    method: str
    theory_opts: Mapping[str, Mapping[str, Any]]
    versions: Mapping[str, str]
    seeds: Mapping[int, list[int]]
    cache: Mapping[str, Any]
    figures: tuple[str, ...]
    timings: Mapping[str, Any]


@dataclass(frozen=True)
class Results:
    """The outcome of :func:`kerneleft.reproduce.reproduce`."""
    analysis: Analysis
    run: Run

    FORMAT = "kerneleft-reproduce/1"

    def to_dict(self) -> dict[str, Any]:
        """results.json as a dict of numpy arrays (docs/reference.md#cli shapes; 0-based entries): the one serialiser."""
        a, run = self.analysis, self.run
        ext, v = _plain(a.extrapolated), a.validity
        ens = {n: {"t": a.t, **e.arrays, **{f"{k}_se": s for k, s in e.se.items()}, **e.meta}
               for n, e in a.ensembles.items()}
        d = a.diagnostics
        validity = {"threshold": v.threshold, "nsigma": 2.0, "reference": {"V4": "V4_cv", "K1": "K1 extrapolated"},
                    "windows": v.windows[v.threshold], "relative_error": v.relative_error,
                    "noise_floor": v.noise_floor, "thresholds": list(v.thresholds), "windows_by_threshold": v.windows,
                    "diagnostics": {"width": v.diag_width, "windows": v.diag_windows,
                                    "relative_error": v.diag_relative_error}}
        out = {"format": self.FORMAT, "t": a.t, "eps": a.eps, "plan": _plain(a.plan), "theory": _plain(a.theory),
               "simulation": {"method": run.method, "widths": list(a.widths), "ensembles": ens, "extrapolated": ext},
               "diagnostics": {"t": a.t, **d.arrays, **{f"{k}_se": s for k, s in d.se.items()},
                               **{k: m for k, m in d.meta.items() if k != "config"}},
               "comparisons": _plain(a.comparisons), "validity": _plain(validity),
               "v4_gonly_by_width": _plain(a.v4_gonly_by_width), "v4_residual": _plain(a.v4_residual),
               "k1_source_t0": _plain(a.k1_source_t0), "findings": _plain(a.findings), "z_crit": Z_CRIT,
               "next_order": _plain(a.next_order), "next_order_skipped": a.next_order_skipped, "failed": None}
        out.update(_plain(run))
        return out


# ----------------------------------------------------------------------------------------------- statistics
def combine_batches(batches: Sequence[KernelResult]) -> KernelResult:
    """Pool independent ensembles of one width: sample-weighted means, ``se = sqrt(Σ w_b² se_b²)``.

    Exact for means (E[G], E[Σ], K1); for the covariances (V4, ...) it is the weighted mean of the batches' unbiased
    estimates (differs from the pooled covariance by O(1/samples)).
    """
    counts = np.array([b.meta["samples"] for b in batches], dtype=float)
    w = counts / counts.sum()
    arrays = {k: np.tensordot(w, np.stack([b[k] for b in batches]), axes=1) for k in batches[0].arrays}
    se = {k: np.sqrt(np.tensordot(w ** 2, np.stack([b.se[k] for b in batches]) ** 2, axes=1))
          for k in batches[0].se}
    meta = {key: batches[0].meta[key] for key in ("kind", "method", "width", "config")}
    meta.update(samples=int(counts.sum()), batches=len(batches), seeds=[b.meta["seed"] for b in batches],
                wall_s=float(sum(b.meta["timings"]["wall_s"] for b in batches)))
    return KernelResult(batches[0].t, arrays, se, meta)


def zscore(sim: np.ndarray, se: np.ndarray, theory: np.ndarray) -> np.ndarray:
    """(sim − theory)/SE; where SE = 0 (exactly known entries) 0 if they agree to 1e-12, else ±inf."""
    diff = np.asarray(sim) - np.asarray(theory)
    scale = 1e-12 * np.maximum(np.abs(theory), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = diff / se
        return np.where(se > 0, z, np.where(np.abs(diff) <= scale, 0.0, np.sign(diff) * np.inf))


def compare(sim: np.ndarray, se: np.ndarray, theory: np.ndarray) -> Comparison:
    """z-scores and signed relative errors of a theory against a simulated array (L+1, ...)."""
    axes = tuple(range(1, sim.ndim))
    scale = np.max(np.abs(sim), axis=axes, keepdims=True)
    z = zscore(sim, se, theory)
    fin = np.where(np.isfinite(z), np.abs(z), np.nan)
    return Comparison(z, (theory - sim) / np.where(scale > 0, scale, np.inf),
                      float(np.nanmax(fin)) if np.isfinite(fin).any() else 0.0,
                      float(np.nanmax(fin[-1])) if np.isfinite(fin[-1]).any() else 0.0)


def extrapolate(K0: np.ndarray, ensembles: Mapping[int, KernelResult], k1x: KernelResult, v4: WidthFit,
                V4_cv: Estimate) -> Extrapolated:
    """The n → ∞ simulation: K1 from ``k1x`` (:func:`kerneleft.estimators.extrapolate_K1`), V4 fitted in 1/n
    (``v4``), E[G] by the drift estimator K0 + K1_n/n fitted in 1/n, and the control-variate ``V4_cv``."""
    widths = list(ensembles)
    g = extrapolate_width(widths, [K0 + ensembles[n]["K1"] / n for n in widths],
                          [ensembles[n].se["K1"] / n for n in widths])
    return Extrapolated(k1x["K1"], k1x.se["K1"], k1x["K1_slope"], k1x.se["K1_slope"], k1x.meta["chi2"],
                        k1x.meta["dof"], k1x.meta["chi2_T"], k1x.meta["dof_T"], v4.value, v4.value_se, float(v4.chi2.sum()), int(v4.dof.sum()),
                        V4_cv.value, V4_cv.se, g.value, g.value_se, float(g.chi2.sum()),
                        int(g.dof.sum()))


def exact_source_t0(net: Network) -> np.ndarray:
    """The exact K1 source at t = 0, lim n(E[S⁰] − S̄(K_in)) (P, P), for distinct inputs: h⁰ has iid N(0, K_in)
    neurons (:func:`kerneleft.coefficients.gaussian_input_noise`; docs/architectures.md#sigma-branches). 0 for the
    default branch (E[Σ⁰] = F(K_in), I3) and for any branch whose first segment is phi alone and has no later
    segment."""
    p = pair_basis(net.P)
    x = p.vec(net.K_in)
    first = first_segment(net, x)
    b, _ = gaussian_input_noise(net, first, branch_stages(net, first.jet.y), x)
    return p.mat(net.C_W * b)


def k1_source_t0(net: Network, ensembles: Mapping[int, KernelResult]) -> K1Source:
    """The K1 source at t = 0 (docs/failure.md#source): closure ½ℋ:(K_in∘K_in) + b vs exact
    (:func:`exact_source_t0`) vs simulated n(E[S⁰] − S̄(K_in)) per width and pooled (inverse-variance) over
    widths."""
    p, c = pair_basis(net.P), coefficients(net, net.K_in)
    closure = p.mat(tadpole(c, p.vec4(circ(net.K_in))) + (0.0 if c.bias is None else c.bias))
    exact = exact_source_t0(net)
    per_width = {n: Estimate(n * (net.C_W * r["Sigma_mean"][0] + net.C_b - p.mat(c.S_bar)),
                             n * net.C_W * r.se["Sigma_mean"][0]) for n, r in ensembles.items()}
    w = 1.0 / np.stack([e.se for e in per_width.values()]) ** 2
    pooled = (w * np.stack([e.value for e in per_width.values()])).sum(0) / w.sum(0)
    pooled_se = 1.0 / np.sqrt(w.sum(0))
    return K1Source(closure, exact, pooled, pooled_se, zscore(pooled, pooled_se, closure),
                    zscore(pooled, pooled_se, exact), per_width)


def residual_split(diags: Mapping[int, KernelResult], V4_error: Estimate) -> ResidualSplit:
    """The accumulated V4 residual by term (:func:`kerneleft.diagnostics.terms`; and its sum) at every width and
    extrapolated to n → ∞ (linear in 1/n, batch-means SEs); ``V4_error`` = V4_sim − V4_G-only at n → ∞, which the
    extrapolated sum must match."""
    widths = tuple(diags)
    terms = residual_terms(next(iter(diags.values())))
    by_width = {n: {**{k: np.asarray(d.meta["v4_residual_by_term"][k]) for k in terms}, "sum": d["v4_residual"],
                    **{f"{k}_se": np.asarray(d.meta["v4_residual_by_term_se"][k]) for k in terms},
                    "sum_se": d.se["v4_residual"]} for n, d in diags.items()}
    ext = {}
    for k in (*terms, "sum"):
        fit = extrapolate_width(widths, [by_width[n][k] for n in widths], [by_width[n][f"{k}_se"] for n in widths])
        ext[k], ext[f"{k}_se"] = fit.value, fit.value_se
        ext[f"{k}_chi2"], ext[f"{k}_dof"] = float(fit.chi2.sum()), int(fit.dof.sum())
    return ResidualSplit(widths, by_width, ext, V4_error.value, V4_error.se)


def residual_terms(diag: KernelResult) -> tuple[str, ...]:
    """The residual's terms in a diagnostics result, in :data:`kerneleft.diagnostics.TERMS` order (an MLP has no
    eps2)."""
    return tuple(k for k in TERMS if k in diag.meta["v4_residual_by_term"])


def validity(t: np.ndarray, theories: Mapping[str, Mapping[str, np.ndarray]],
             refs: Mapping[str, Estimate], threshold: float, diag: KernelResult) -> Validity:
    """Validity windows (:func:`kerneleft.diagnostics.validity_window`) of ``theories[name][quantity]`` against
    ``refs[quantity]`` at the run's ``threshold`` and at :data:`WINDOW_THRESHOLDS`."""
    thresholds = tuple(sorted({*WINDOW_THRESHOLDS, threshold}))
    windows = {thr: {name: {q: validity_window(t, th[q], refs[q].value, refs[q].se, thr) for q in refs}
                     for name, th in theories.items()} for thr in thresholds}
    rel = {name: {q: relative_error(th[q], refs[q].value) for q in refs} for name, th in theories.items()}
    floor = {}
    for q, ref in refs.items():
        axes = tuple(range(1, ref.value.ndim))
        scale = np.max(np.abs(ref.value), axis=axes)
        floor[q] = 2 * np.max(ref.se, axis=axes) / np.where(scale > 0, scale, np.inf)
    return Validity(threshold, thresholds, windows, rel, floor, diag.meta["width"], diag.meta["validity_window"],
                    {q: np.asarray(r) for q, r in diag.meta["relative_error"].items()})


def next_order_check(config: Mapping[str, Any], config_P: int, sigma: KernelResult, gonly: KernelResult,
                     ensembles: Mapping[int, KernelResult]) -> NextOrderCheck:
    """The next-order check of a one-input network (``config``; the run's config has ``config_P`` inputs) from its
    order-2 theories (depth L) and its pooled ensembles at >= 4 widths; see :class:`NextOrderCheck`."""
    widths = tuple(sorted(ensembles))
    n = np.array(widths, dtype=float)
    last4, last2 = (-1, 0, 0, 0, 0), (-1, 0, 0)
    sim = {"var": np.array([ensembles[w]["V4"][last4] for w in widths]),
           "var_se": np.array([ensembles[w].se["V4"][last4] for w in widths]),
           "mean": np.array([ensembles[w]["K1_cv"][last2] for w in widths]),
           "mean_se": np.array([ensembles[w].se["K1_cv"][last2] for w in widths])}
    th = {"sigma": _final(sigma), "gonly": _final(gonly)}

    def predict(q: str, theory: str, order: int) -> np.ndarray:
        lead, nxt = (th[theory][k] for k in NEXT_ORDER_TERMS[q])
        return lead + nxt / n if order == 2 else np.full(n.shape, lead)

    predictions = {q: {p: predict(q, *spec) for p, spec in NEXT_ORDER_PREDICTIONS.items()} for q in NEXT_ORDER_TERMS}
    z = {q: {p: (sim[q] - v) / sim[f"{q}_se"] for p, v in predictions[q].items()} for q in predictions}
    fit = fit_next_order(ensembles[w] for w in widths)
    fitted = {"var": CoefficientFit.at(fit.V4, fit.V4_higher, last4),
              "mean": CoefficientFit.at(fit.K, fit.K_higher, last2)}
    vs = {name: {q: fitted[q].against(*(c[k] for k in ks)) for q, ks in NEXT_ORDER_TERMS.items()}
          for name, c in th.items()}
    return NextOrderCheck(widths, dict(config), int(config_P), sigma, gonly, dict(ensembles), fit, sim, predictions,
                          z, fitted, vs)


# ------------------------------------------------------------------------------------------------ labels
def pairs(P: int) -> list[tuple[int, int]]:
    """The P(P+1)/2 index pairs (a, b), a <= b (0-based)."""
    p = pair_basis(P)
    return list(zip(p.a.tolist(), p.b.tolist()))


def v4_entries(P: int, limit: int = 6) -> list[tuple[int, int, int, int]]:
    """Distinct V4 entries (pair p <= pair q), diagonal ones (p = q) first, at most ``limit``."""
    ps = pairs(P)
    diag = [(*p, *p) for p in ps]
    off = [(*ps[i], *ps[j]) for i in range(len(ps)) for j in range(i + 1, len(ps))]
    return (diag + off)[:limit]


def depth_indices(L: int, fractions: Sequence[float]) -> list[int]:
    """The layers nearest to the given fractions of the depth, sorted and distinct."""
    return sorted({int(round(f * L)) for f in fractions})


def _argmax_abs(a: np.ndarray) -> tuple:
    return tuple(int(i) for i in np.unravel_index(int(np.nanargmax(np.abs(a))), a.shape))


def _worst_final(theory: np.ndarray, sim: np.ndarray, se: np.ndarray) -> tuple:
    """The entry with the largest |theory − sim|/SE at t = T (entries with SE 0 excluded)."""
    ok = se[-1] > 0
    return _argmax_abs(np.where(ok, (theory[-1] - sim[-1]) / np.where(ok, se[-1], 1), 0))


# ------------------------------------------------------------------------------------------------ findings
def _k0_finding(a: Analysis) -> K0Finding:
    K0d, K0c, widths = a.theory.K0_discrete, a.theory.K0_continuous, a.widths
    shift = {n: float(np.max(np.abs(a.ensembles[n]["K1"] / n)) / np.max(np.abs(K0d))) for n in widths}
    z = a.comparisons["K0"]["discrete"].max_abs_z
    return K0Finding(z, int((len(a.t) - 1) * a.P * (a.P + 1) // 2), shift, {n: shift[n] * n for n in widths},
                     None if K0c is None else float(np.max(np.abs(K0c - K0d)) / np.max(np.abs(K0d))),
                     float(np.max(a.ensembles[widths[-1]].se["G_mean"])), z <= Z_CRIT)


def _v4_finding(a: Analysis) -> V4Finding:
    ext, res, widths = a.extrapolated, a.v4_residual, a.widths
    gv, sv, sse = a.theory.gonly_discrete["V4"], ext.V4_cv, ext.V4_cv_se
    e = _worst_final(gv, sv, sse)
    idx = (len(a.t) - 1, *e)
    rx = res.extrapolated
    terms = residual_terms(a.diagnostics)
    by_term = {k: float(rx[k][idx]) for k in terms}
    dominant = max(by_term, key=lambda k: abs(by_term[k]))
    cv, direct = a.comparisons["V4_cv"]["gonly"], a.comparisons["V4"]["gonly"]
    rel_t = {float(a.t[l]): float((gv[(l, *e)] - sv[(l, *e)]) / abs(sv[(l, *e)]))
             for l in depth_indices(len(a.t) - 1, (0.25, 0.5, 0.75, 1.0))}
    return V4Finding(
        e, float(a.t[-1]), float(gv[idx]), float(sv[idx]), float(sse[idx]), float(cv.z[idx]), float(ext.V4[idx]),
        float(ext.V4_se[idx]), float(direct.z[idx]), float((gv[idx] - sv[idx]) / abs(sv[idx])), rel_t,
        cv.max_abs_z, direct.max_abs_z,
        {n: float(a.v4_gonly_by_width[n].relative_error_T[e]) for n in widths},
        {n: float(a.v4_gonly_by_width[n].z_T[e]) for n in widths},
        float(rx["sum"][idx]), float(rx["sum_se"][idx]), by_term, {k: float(rx[f"{k}_se"][idx]) for k in terms},
        dominant, abs(by_term[dominant]) / max(sum(abs(x) for x in by_term.values()), 1e-300),
        {n: {k: float(res.by_width[n][k][idx]) for k in terms} for n in widths},
        {n: {k: float(res.by_width[n][f"{k}_se"][idx]) for k in terms} for n in widths},
        float(res.sim_minus_gonly[idx]), float(res.sim_minus_gonly_se[idx]),
        a.validity.windows[a.validity.threshold]["gonly"]["V4"], cv.max_abs_z > Z_CRIT)


def _k1_source_finding(src: K1Source) -> K1SourceFinding:
    zc = src.z_closure
    j = _argmax_abs(np.where(np.isfinite(zc), zc, 0))
    return K1SourceFinding(j, float(src.closure[j]), float(src.simulated[j]), float(src.simulated_se[j]),
                           float(zc[j]), float(np.max(np.abs(src.z_exact))), abs(float(zc[j])) > Z_CRIT)


def _k1_finding(a: Analysis) -> K1Finding:
    ext, cmp_ = a.extrapolated, a.comparisons["K1"]["gonly"]
    gk = a.theory.gonly_discrete["K1"]
    k = _worst_final(gk, ext.K1, ext.K1_se)
    kidx = (len(a.t) - 1, *k)
    sim = ext.K1[kidx]
    return K1Finding(k, float(gk[kidx]), float(sim), float(ext.K1_se[kidx]),
                     float(gk[kidx] / sim) if sim != 0 else None, float(cmp_.z[kidx]), cmp_.max_abs_z,
                     ext.K1_chi2, ext.K1_dof, ext.K1_chi2_T, ext.K1_dof_T,
                     a.validity.windows[a.validity.threshold]["gonly"]["K1"], cmp_.max_abs_z > Z_CRIT)


def _sigma_finding(a: Analysis, v4: V4Finding, k1: K1Finding) -> SigmaFinding:
    s, ext, cmp_ = a.theory.sigma_discrete, a.extrapolated, a.comparisons
    idx, kidx = (len(a.t) - 1, *v4.entry), (len(a.t) - 1, *k1.entry)
    c4, d4, c1 = cmp_["V4_cv"]["sigma"], cmp_["V4"]["sigma"], cmp_["K1"]["sigma"]
    sk = ext.K1[kidx]
    ode = {q: cmp_[q]["sigma_continuous"].max_abs_z if "sigma_continuous" in cmp_[q] else None for q in ("V4_cv", "K1")}
    return SigmaFinding(
        float(s["V4"][idx]), float(c4.z[idx]), float((s["V4"][idx] - ext.V4_cv[idx]) / abs(ext.V4_cv[idx])),
        c4.max_abs_z, d4.max_abs_z, float(s["K1"][kidx]), float(c1.z[kidx]),
        float(s["K1"][kidx] / sk) if sk != 0 else None, c1.max_abs_z, c4.max_abs_z <= Z_CRIT, c1.max_abs_z <= Z_CRIT,
        a.validity.windows[a.validity.threshold]["sigma"], ode["V4_cv"], ode["K1"],
        {key: s.meta.get(key) for key in ("representation", "truncation", "error_estimate")})


def _findings(a: Analysis) -> Findings:
    v4, k1 = _v4_finding(a), _k1_finding(a)
    return Findings(_k0_finding(a), v4, _k1_source_finding(a.k1_source_t0), k1, _sigma_finding(a, v4, k1))


# ------------------------------------------------------------------------------------------------ analyse
def analyse(net: Network, plan: Plan, theory: Theories, ensembles: Mapping[int, KernelResult],
            k1x: KernelResult, diags: Mapping[int, KernelResult], threshold: float,
            next_order: NextOrderCheck | None = None, next_order_skipped: str | None = None) -> Analysis:
    """All comparisons and the findings' numbers from the theories, the pooled ensembles of each width, their K1
    extrapolation ``k1x`` and the diagnostics of each width (see :mod:`kerneleft.reproduce.rendering`); the
    next-order check (:func:`next_order_check`) is carried as given, or None with the reason it was skipped."""
    t, widths = net.t, plan.widths
    g = theory.gonly_discrete
    v4_direct = extrapolate_width(widths, [ensembles[n]["V4"] for n in widths],
                                  [ensembles[n].se["V4"] for n in widths])
    residual = residual_split(diags, Estimate(v4_direct.value - g.V4, v4_direct.value_se))
    ext = extrapolate(theory.K0_discrete, ensembles, k1x, v4_direct,
                      Estimate(g.V4 + residual.extrapolated["sum"], residual.extrapolated["sum_se"]))
    sim = {"V4": (ext.V4, ext.V4_se), "V4_cv": (ext.V4_cv, ext.V4_cv_se), "K1": (ext.K1, ext.K1_se)}
    K0s = {"discrete": theory.K0_discrete, "continuous": theory.K0_continuous}
    comparisons = {"K0": {m: compare(ext.G_mean, ext.G_mean_se, K0) for m, K0 in K0s.items() if K0 is not None}}
    comparisons.update({q: {name: compare(*sim[q], theory.of(name)["K1" if q == "K1" else "V4"])
                            for name in theory.names()} for q in sim})
    refs = {"V4": Estimate(ext.V4_cv, ext.V4_cv_se), "K1": Estimate(ext.K1, ext.K1_se)}
    theories = {name: {q: theory.of(name)[q] for q in refs} for name in theory.names()}
    by_width = {n: WidthError((g.V4[-1] - e["V4"][-1]) / np.abs(e["V4"][-1]), zscore(e["V4"][-1], e.se["V4"][-1],
                                                                                    g.V4[-1]))
                for n, e in ensembles.items()}
    a = Analysis(t, net.eps, net.P, plan, theory, dict(ensembles), ext, diags[plan.diag_width], comparisons,
                 validity(t, theories, refs, threshold, diags[plan.diag_width]), by_width, residual,
                 k1_source_t0(net, ensembles), None, net.residual, next_order, next_order_skipped)
    return replace(a, findings=_findings(a))

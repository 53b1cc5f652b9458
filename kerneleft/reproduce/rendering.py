"""The text of ``reproduce``: report.md and the findings the CLI prints, from typed results (no computation).

Numbers use significant digits and a typographic minus; z-scores never round onto the criterion
(:func:`format_z`). Entry labels are 1-based (``K1[12]`` is K1 between inputs 1 and 2).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..branch import parse_branch
from .analysis import (NEXT_ORDER_PREDICTIONS, NEXT_ORDER_TERMS, Z_CRIT, Analysis, NextOrderCheck, Results, depth_indices, pairs,
                       residual_terms, v4_entries)

__all__ = ["FIGURES", "findings_text", "render_report", "render_stopped", "format_number", "format_z",
           "pair_label", "v4_label", "describe_network"]

#: figure file names (in OUT/figures) and what they show
FIGURES = {
    "k0.png": "K0 over t: theory (discrete, continuous) vs width-extrapolated simulated E[G]",
    "v4.png": "V4 = n Cov[G] entries over t: G-only, sigma, simulation",
    "v4_relative_error.png": "relative error of the V4 theories against the extrapolated simulation",
    "v4_residual.png": "accumulated V4 residual of the G-only closure, split by term",
    "k1.png": "K1 over t: G-only, sigma, width-extrapolated simulation",
    "k1_source.png": "K1 source: closure vs exact at t = 0 and over t",
    "validity.png": "validity windows: relative error of each theory over t",
    "next_order.png": "Var[G] and E[G] − K0 against n at t = T for one input: simulation, leading and next order",
}
_NAMES = {"gonly": "G-only", "gonly_continuous": "G-only ODE", "sigma": "sigma", "sigma_continuous": "sigma ODE"}


def pair_label(p: tuple[int, int]) -> str:
    return f"{p[0] + 1}{p[1] + 1}"


def v4_label(e: tuple[int, int, int, int]) -> str:
    return f"{e[0] + 1}{e[1] + 1},{e[2] + 1}{e[3] + 1}"


def format_number(x: float, digits: int = 4) -> str:
    """A number with ``digits`` significant digits (plain notation where sensible)."""
    if x is None:
        return "—"
    if not np.isfinite(x):
        return "∞" if x > 0 else "−∞"
    return f"{x:.{digits}g}".replace("-", "−")


def format_z(z: float) -> str:
    """A z-score: two decimals below 10, one below 100, none above (never rounded onto a criterion like 4)."""
    if z is None or not np.isfinite(z):
        return format_number(z)
    return f"{z:.{2 if abs(z) < 10 else 1 if abs(z) < 100 else 0}f}".replace("-", "−")


def _pm(x: float, se: float, digits: int = 4) -> str:
    return f"{_f(x, digits)} ± {_f(se, 2)}"


def _pct(x: float) -> str:
    return f"{x * 100:+.2f} %".replace("-", "−")


def _verdict(rejected: bool) -> str:
    return "rejected" if rejected else "consistent"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out + [""]


def _window(w) -> str:
    return "beyond T (never exceeded)" if w is None else f"t = {_f(w, 3)}"



_f, _z = format_number, format_z


def findings_text(a: Analysis) -> list[str]:
    """The paper's three findings and the sigma theory's verdict, one paragraph each, from this run's numbers."""
    f, t, widths, zc = a.findings, a.t, list(a.widths), Z_CRIT
    T = float(t[-1])
    k0 = f.k0
    shifts = ", ".join(f"{_f(100 * k0.shift_by_width[n], 3)} % (n = {n})" for n in widths)
    ns = ", ".join(f"{_f(100 * k0.shift_times_n[n], 3)}" for n in widths)
    if k0.consistent:
        head = "**1. K0 is accurate at all depths.**"
        verdict = f"agrees with K0 at every one of the {k0.n_compared} (depth, entry) points: max |z| = " \
                  f"{_z(k0.max_abs_z)} (criterion |z| ≤ {zc:g})"
    else:
        head = "**1. K0 is NOT confirmed at all depths.**"
        verdict = f"deviates from K0: max |z| = {_z(k0.max_abs_z)} over {k0.n_compared} (depth, entry) " \
                  f"points (criterion |z| ≤ {zc:g})"
    shift = [k0.shift_by_width[n] for n in widths]
    trend = "shrinking with n" if all(a > b for a, b in zip(shift, shift[1:])) else "not shrinking monotonically"
    ode = (f"The continuous ODE differs from the depth-L recursion by {_pct(k0.continuous_vs_discrete)} of max|K0| "
           f"(an O(ε) effect, ε = {_f(a.eps, 3)})." if k0.continuous_vs_discrete is not None else
           "An MLP has only the discrete depth model: there is no continuous ODE to compare.")
    out = [f"{head} The width-extrapolated simulated E[G] (widths {widths}, {a.plan.samples[0]} networks per "
           f"width) {verdict}. At finite width E[G] − K0 is at most {shifts} of max|K0|, {trend} (n × shift = {ns} %: "
           f"the 1/n correction K1/n, compared with theory under finding 3). {ode}"]

    v = f.v4
    e = v4_label(v.entry)
    over_t = ", ".join(f"{_pct(x)} (t = {_f(tt, 3)})" for tt, x in v.relative_error_over_t.items())
    by_w = ", ".join(f"{_pct(x)} (n = {n}, z = {_z(v.by_width_z[n])})"
                     for n, x in v.by_width_relative_error.items())
    terms = ", ".join(f"{k} {_pm(v.residual_by_term[k], v.residual_by_term_se[k])}" for k in v.residual_by_term)
    source = "E[G⊠S] − K0⊠S̄(K0)" if a.residual else "E[S∘S] − S̄(K0)∘S̄(K0)"
    per_w = "; ".join(f"n = {n}: " + ", ".join(
        f"{k} {_pm(v.residual_by_width[n][k], v.residual_by_width_se[n][k])}" for k in ("transport", "source"))
        for n in widths)
    rels = list(v.relative_error_over_t.values())
    grows = abs(rels[-1]) >= max(abs(x) for x in rels)
    head = (f"the G-only residual accumulates with depth (to {_pct(v.relative_error)} at t = T)" if grows else
            f"the G-only error at t = T is {_pct(v.relative_error)}")
    out.append(
        f"**2. V4: {head}, driven by the {v.dominant_term} term; G-only V4 {_verdict(v.rejected)} at "
        f"max |z| = {_z(v.max_abs_z)}.** Reference: V4 at n → ∞ estimated as the G-only theory plus the "
        f"accumulated residual of its equation (diagnostics; by I2 the residual's mean is exactly V4_sim − V4_G-only, "
        f"so the theory acts as a control variate), cross-checked by the directly extrapolated n Cov[G]. For the entry "
        f"with the largest |z| at t = T = {_f(T, 3)}, V4[{e}], the G-only theory gives {_f(v.gonly)} against "
        f"{_pm(v.sim, v.sim_se)}: relative error {_pct(v.relative_error)}, z = {_z(v.z)} "
        f"(direct n Cov[G] extrapolation {_pm(v.sim_direct, v.sim_direct_se)}, z = {_z(v.z_direct)}). The error over depth: "
        f"{over_t}; against each finite width at t = T: {by_w}. Over all depths and entries max |z| = "
        f"{_z(v.max_abs_z)} (direct: {_z(v.max_abs_z_direct)}); validity window "
        f"({_f(100 * a.validity.threshold, 3)} % rule, table below): "
        f"{_window(v.window)}. The accumulated residual at t = T, extrapolated to n → ∞, splits into {terms} (sum "
        f"{_pm(v.residual_total, v.residual_total_se)}); the {v.dominant_term} term carries "
        f"{_f(100 * v.dominant_share, 3)} % of Σ|terms|. The source term {source} is O(1/n) by I1–I2; "
        f"at finite width: {per_w}.")

    s, k = f.k1_source, f.k1
    src, P = a.k1_source_t0, a.P
    clos = ", ".join(f"{pair_label(p)}: {_f(src.closure[p])}" for p in pairs(P))
    sims = ", ".join(f"{pair_label(p)}: {_pm(src.simulated[p], src.simulated_se[p])}" for p in pairs(P))
    ratio = "" if k.ratio is None else f" (ratio {_f(k.ratio, 3)})"
    chi2 = (f"extrapolation χ² at t = T: {_f(k.chi2_T, 3)} for {k.dof_T} dof" if k.dof_T else
            f"{len(widths)} widths: the 1/n fit is exact, no χ² test")
    src_head = (f"the G-only closure's source is wrong already at t = 0 (|z| = {_z(abs(s.z_closure))})"
                if s.rejected else f"the G-only closure's source at t = 0 is not rejected "
                                      f"(|z| = {_z(abs(s.z_closure))})")
    exact0 = "is consistent with" if s.max_abs_z_exact <= zc else "deviates from"
    rejects = "rejects" if s.rejected else "does not reject"
    rate = "dK1/dt" if a.residual else "K1 at layer 1"
    if np.all(src.exact == 0):
        closed = f"{rate} = ½ℋ:(K_in∘K_in)"
        exact, value = "exactly E[Σ⁰] = F(K_in) (I3) so the true source is 0", "0"
    else:
        closed = f"{rate} = ½ℋ:(K_in∘K_in) + b (b: the inner layers' finite-width bias)"
        value = "the exact value"
        exact = ("the exact source is {" + ", ".join(f"{pair_label(p)}: {_f(src.exact[p])}" for p in pairs(P))
                 + "} (h⁰ has iid Gaussian neurons, so only the branch's own finite-width pieces act; "
                 "docs/architectures.md#gonly-branches)")
    out.append(
        f"**3. K1: {src_head}, and the G-only K1 is {_verdict(k.rejected)} (max |z| = {_z(k.max_abs_z)}).** "
        f"At t = 0 the closure gives {closed} = {{{clos}}}, while {exact}. The simulated "
        f"n(E[S⁰] − S̄(K_in)) = {{{sims}}} {exact0} {value} (max |z| = "
        f"{_z(s.max_abs_z_exact)}) and {rejects} the closure at |z| = "
        f"{_z(abs(s.z_closure))} (entry {pair_label(s.entry)}). At t = T the G-only "
        f"K1[{pair_label(k.entry)}] = {_f(k.gonly)} against "
        f"the width-extrapolated simulation {_pm(k.sim, k.sim_se)}{ratio}: z = {_z(k.z)}; max |z| over all "
        f"depths and entries = {_z(k.max_abs_z)} ({chi2}); validity window {_window(k.window)}.")

    g = f.sigma
    kr = "" if g.K1_ratio is None else f", ratio to simulation {_f(g.K1_ratio, 3)}"
    out.append(
        f"**4. The sigma theory {'repairs' if g.repairs_V4 else 'does not fully repair'} V4 (max |z| = "
        f"{_z(g.V4_max_abs_z)}) and {'repairs' if g.repairs_K1 else 'does not fully repair'} K1 "
        f"(max |z| = {_z(g.K1_max_abs_z)}).** Sigma theory in its depth-L recursion (same L as the network; "
        f"representation {g.meta['representation']}, self-reported relative error "
        f"{_f(g.meta['error_estimate'], 2)}). V4[{e}] at t = T: {_f(g.V4)} (relative error "
        f"{_pct(g.V4_relative_error)}, z = {_z(g.V4_z)}); over all depths and entries max |z| = "
        f"{_z(g.V4_max_abs_z)} (direct n Cov[G]: {_z(g.V4_max_abs_z_direct)}; G-only: {_z(v.max_abs_z)}). "
        f"K1[{pair_label(k.entry)}] at t = T: {_f(g.K1)} (z = {_z(g.K1_z)}{kr}); max |z| = "
        f"{_z(g.K1_max_abs_z)} (G-only: {_z(k.max_abs_z)}). Validity windows: V4 {_window(g.windows['V4'])}, "
        f"K1 {_window(g.windows['K1'])}. Criterion |z| ≤ {zc:g}. " + (
            f"The continuous-depth (ODE) sigma theory differs from the depth-L network by O(ε): max |z| = "
            f"{_z(g.ode_V4_max_abs_z)} (V4), {_z(g.ode_K1_max_abs_z)} (K1)." if g.ode_V4_max_abs_z is not None else
            "An MLP has no continuous-depth (ODE) theory."))
    if a.next_order is not None:
        out.append(_next_order_finding(a.next_order))
    return out


#: the quantities of the next-order check (:data:`NEXT_ORDER_TERMS`) and labels of their predictions
#: (:data:`NEXT_ORDER_PREDICTIONS`)
_QUANTITY = {"var": "n Var[G]", "mean": "n(E[G] − K0)"}
_PRED = {q: {"leading": lead, "next": f"{lead} + {nxt}/n", "gonly_next": f"G-only {lead} + {nxt}/n"}
         for q, (lead, nxt) in NEXT_ORDER_TERMS.items()}
assert set(_QUANTITY) == set(NEXT_ORDER_TERMS) and all(set(v) == set(NEXT_ORDER_PREDICTIONS) for v in _PRED.values())


def _max_z(x: NextOrderCheck, q: str, p: str) -> float:
    return float(np.max(np.abs(x.z[q][p])))


def _next_order_finding(x: NextOrderCheck) -> str:
    """Finding 5: the next order in 1/n of one input against the ensembles (docs/nextorder.md#validation)."""
    zc = Z_CRIT
    verdict = {p: _verdict(_max_z(x, "var", p) > zc) for p in NEXT_ORDER_PREDICTIONS}
    who = "the network's one input" if x.config_P == 1 else "its first input alone"
    n0 = x.widths[0]
    sim, se = x.sim["var"][0], x.sim["var_se"][0]
    at_n0 = ", ".join(f"{_PRED['var'][p]} {_f(v[0])} ({_pct((v[0] - sim) / sim)})"
                      for p, v in x.predictions["var"].items())
    mean = ", ".join(f"{_PRED['mean'][p]} {_z(_max_z(x, 'mean', p))}" for p in NEXT_ORDER_PREDICTIONS)
    fv, fm = x.fitted["var"], x.fitted["mean"]
    s, g = x.coefficients("sigma"), x.coefficients("gonly")
    return (f"**5. Next order in 1/n ({who}, t = T): n Var[G] is {verdict['next']} with the sigma next order "
            f"V4 + V4_1/n at every width (max |z| = {_z(_max_z(x, 'var', 'next'))}); the leading order V4 is "
            f"{verdict['leading']} (max |z| = {_z(_max_z(x, 'var', 'leading'))}), the G-only next order "
            f"{verdict['gonly_next']} (max |z| = {_z(_max_z(x, 'var', 'gonly_next'))}).** At n = {n0}: simulated "
            f"{_pm(sim, se)}; {at_n0}. For n(E[G] − K0) (control-variate estimator) max |z| over the widths "
            f"{list(x.widths)}: {mean}. Width fits (docs/estimators.md#next-order-fits): V4_1 = {_pm(fv.b, fv.b_se)} "
            f"(sigma {_f(s['V4_1'])}, G-only {_f(g['V4_1'])}), K2 = {_pm(fm.b, fm.b_se)} (sigma {_f(s['K2'])}, "
            f"G-only {_f(g['K2'])}).")


def render_report(results: Results) -> str:
    """report.md: the run, the findings with numbers, tables of theory vs simulation with z-scores, the figures."""
    a, run = results.analysis, results.run
    P = a.P
    cfg, plan, widths = run.config, a.plan, list(a.widths)
    lines = [f"# kerneleft reproduce — {describe_network(cfg)}, {P} inputs", "",
             f"Mode **{run.mode}**; config {run.config_source}: {_config_text(cfg)}. Exact ensembles "
             f"({run.method} sampler, docs/exact.md#conditional-gaussianity) "
             f"at widths {widths} with {list(plan.samples)} networks ({plan.batches} seeded batches each, root seed "
             f"{run.seed}); diagnostics at n = {plan.diag_width}. Comparisons are z = (simulation − theory)/SE; a "
             f"theory is called rejected when |z| > {Z_CRIT:g}. Simulated V4 and K1 are extrapolated to n → ∞ "
             f"linearly in 1/n (weighted least squares). G-only theory: the depth-L recursions unless marked ODE. "
             f"Entries use 1-based input indices."
             + ("" if a.residual else " An MLP has only the discrete depth model (t = l, docs/architectures.md#mlp): "
                "the continuous (ODE) kernel and theories are skipped, and its K1 source at layer l is K1 at l + 1.")
             , "", "## Findings of this run", ""]
    for para in findings_text(a):
        lines += [para, ""]
    lines += _k0_table(a) + _v4_table(a) + _k1_table(a) + _width_table(a) + _source_table(a)
    lines += _residual_table(a) + _validity_table(a) + _next_order_section(a)
    lines += ["## Figures", ""]
    for name in run.figures:
        lines += [f"![{FIGURES[name]}](figures/{name})", "", f"*{name}: {FIGURES[name]}.*", ""]
    vers = ", ".join(f"{k} {v}" for k, v in run.versions.items())
    lines += ["## Run", "",
              "Timings (s): " + ", ".join(f"{k} {_f(v, 3)}" for k, v in run.timings.items()
                                          if not isinstance(v, dict)) + ".",
              f"Cache: {run.cache['hits']} hits, {run.cache['misses']} misses; {run.cache['simulations_run']} "
              f"ensemble batches simulated in this run. Versions: {vers}.",
              f"Reproduce: `kerneleft reproduce{' --quick' if run.mode == 'quick' else ''} --out DIR` "
              f"(same config and seed {run.seed}); every array is in results.json.", ""]
    return "\n".join(lines)


def _k0_table(a: Analysis) -> list[str]:
    t, th, ext, z = a.t, a.theory, a.extrapolated, a.comparisons["K0"]["discrete"].z
    K0s = [K for K in (th.K0_discrete, th.K0_continuous) if K is not None]
    rows = [[_f(t[l], 3), pair_label(p), *[_f(K[(l, *p)], 6) for K in K0s],
             _pm(ext.G_mean[(l, *p)], ext.G_mean_se[(l, *p)], 6), _z(z[(l, *p)])]
            for l in depth_indices(len(t) - 1, (0.25, 0.5, 0.75, 1.0)) for p in pairs(a.P)]
    return (["## Theory vs simulation", "", "### K0 (simulation: width-extrapolated E[G], drift estimator)", ""]
            + _table(["t", "entry", "K0 (depth L)", "K0 (ODE)"][:2 + len(K0s)] + ["E[G] sim n→∞", "z"], rows))


def _v4_table(a: Analysis) -> list[str]:
    ext, cmp_ = a.extrapolated, a.comparisons
    rows = []
    for l in depth_indices(len(a.t) - 1, (0.5, 1.0)):
        for e in v4_entries(a.P):
            i = (l, *e)
            row = [_f(a.t[l], 3), v4_label(e), _pm(ext.V4_cv[i], ext.V4_cv_se[i]), _pm(ext.V4[i], ext.V4_se[i])]
            for name in a.theory.names():
                row += [_f(a.theory.of(name)["V4"][i]), f"{_z(cmp_['V4_cv'][name].z[i])} / {_z(cmp_['V4'][name].z[i])}"]
            rows.append(row)
    header = ["t", "entry", "V4_cv", "V4 direct"]
    header += [x for name in a.theory.names() for x in (_NAMES[name], "z (cv / direct)")]
    return (["### V4 (simulation at n → ∞: control-variate estimate V4_cv and direct extrapolation; z vs each)", ""]
            + _table(header, rows))


def _k1_table(a: Analysis) -> list[str]:
    ext = a.extrapolated
    rows = []
    for l in depth_indices(len(a.t) - 1, (0.25, 0.5, 0.75, 1.0)):
        for p in pairs(a.P):
            i = (l, *p)
            row = [_f(a.t[l], 3), pair_label(p), _pm(ext.K1[i], ext.K1_se[i])]
            for name in a.theory.names():
                row += [_f(a.theory.of(name)["K1"][i]), _z(a.comparisons["K1"][name].z[i])]
            rows.append(row)
    header = ["t", "entry", "sim n→∞"] + [x for name in a.theory.names() for x in (_NAMES[name], "z")]
    return ["### K1 (simulation: extrapolated to n → ∞)", ""] + _table(header, rows)


def _width_table(a: Analysis) -> list[str]:
    L, d0, e0 = len(a.t) - 1, pairs(a.P)[0], v4_entries(a.P)[0]
    rows = [[str(n), str(e.meta["samples"]), _pm(e["K1"][(L, *d0)], e.se["K1"][(L, *d0)]),
             _pm(e["V4"][(L, *e0)], e.se["V4"][(L, *e0)]), _f(a.theory.gonly_discrete["V4"][(L, *e0)]),
             _z(a.v4_gonly_by_width[n].z_T[e0]), _f(e.meta["wall_s"], 3)] for n, e in a.ensembles.items()]
    return ["### Per width (t = T)", ""] + _table(
        ["n", "networks", f"K1_n[{pair_label(d0)}]", f"V4[{v4_label(e0)}]", "G-only V4", "z", "sampling wall s"], rows)


def _source_table(a: Analysis) -> list[str]:
    src = a.k1_source_t0
    zero = bool(np.all(src.exact == 0))
    rows = [[pair_label(p), _f(src.closure[p]), "0" if zero else _f(src.exact[p]),
             _pm(src.simulated[p], src.simulated_se[p]), _z(src.z_closure[p]), _z(src.z_exact[p])] for p in pairs(a.P)]
    header = ["entry", "closure ½ℋ:(K_in∘K_in)" + ("" if zero else " + b"), "exact (I3)" if zero else "exact",
              "simulated n(E[S⁰] − S̄)", "z vs closure", "z vs 0" if zero else "z vs exact"]
    return ["### K1 source at t = 0", ""] + _table(header, rows)


def _residual_table(a: Analysis) -> list[str]:
    res = a.v4_residual
    rx, terms = res.extrapolated, residual_terms(a.diagnostics)
    rows = [[_f(a.t[l], 3), v4_label(e)] + [_pm(rx[k][(l, *e)], rx[f"{k}_se"][(l, *e)]) for k in (*terms, "sum")]
            + [_pm(res.sim_minus_gonly[(l, *e)], res.sim_minus_gonly_se[(l, *e)])]
            for l in depth_indices(len(a.t) - 1, (0.5, 1.0)) for e in v4_entries(a.P, limit=a.P * (a.P + 1) // 2)]
    title = "### Accumulated V4 residual of the G-only closure by term (extrapolated to n → ∞; batch-means SE)"
    return ([title, ""] + _table(["t", "entry", *terms, "sum", "V4_sim − V4_G-only"], rows))


def _validity_table(a: Analysis) -> list[str]:
    v = a.validity
    rows = [[_NAMES[name], q] + [_window(v.windows[thr][name][q]) for thr in v.thresholds]
            for name in a.theory.names() for q in ("V4", "K1")]
    rows.append([f"G-only at finite width n = {v.diag_width} (diagnose)", "V4 / K1", *["" for _ in v.thresholds[:-1]],
                 f"{_window(v.diag_windows['V4'])} / {_window(v.diag_windows['K1'])} (threshold {v.threshold:g})"])
    return (["### Validity windows (docs/failure.md#validity-window: first t where some entry errs by more than "
             "the threshold × max|sim(t)| + 2 SE; references at n → ∞: V4_cv and extrapolated K1)", ""]
            + _table(["theory", "quantity"] + [f"{100 * thr:g} %" for thr in v.thresholds], rows))


def _next_order_section(a: Analysis) -> list[str]:
    """The next-order check (docs/nextorder.md#validation): per width at t = T, and the width fits."""
    title = "### Next order in 1/n: Var[G] and E[G] − K0 against n (one input, t = T)"
    x = a.next_order
    if x is None:
        return [title, "", f"Skipped: {a.next_order_skipped}.", ""]
    if x.config_P == 1:
        who = "The network has one input."
    else:
        who = (f"The config has {x.config_P} inputs; this check uses the first input alone, the one-input network "
               f"with K_in = [[{_f(x.config['K_in'][0][0], 6)}]] (G_11 of the {x.config_P}-input network has its law).")
    info = x.sigma.meta["next_order"]
    plan = a.plan
    intro = (f"{who} Exact ensembles ({plan.batches} seeded batches per width, independent of those above) at widths "
             f"{list(x.widths)} with {list(plan.next_samples)} networks: n Var[G] = n Cov[G_11, G_11] and "
             f"n(E[G] − K0) by the control-variate drift estimator (docs/estimators.md#control-variate), each ± SE. "
             f"Predictions (depth L): the leading order V4, K1 and the next order V4 + V4_1/n, K1 + K2/n of the sigma "
             f"theory (order 2, next-order error estimate {_f(info['error_estimate'], 2)}, tol2 "
             f"{_f(info['tol2'], 2)}), and the G-only next order for contrast; cells give the prediction and "
             f"z = (simulation − prediction)/SE.")
    rows = []
    for i, n in enumerate(x.widths):
        row = [str(n), str(x.ensembles[n].meta["samples"])]
        for q in NEXT_ORDER_TERMS:
            row.append(_pm(x.sim[q][i], x.sim[f"{q}_se"][i]))
            row += [f"{_f(x.predictions[q][p][i])} ({_z(x.z[q][p][i])})" for p in NEXT_ORDER_PREDICTIONS]
        rows.append(row)
    header = ["n", "networks"] + [h for q in NEXT_ORDER_TERMS for h in (f"{_QUANTITY[q]} sim", *_PRED[q].values())]
    fits = []
    for q, (lead, nxt) in NEXT_ORDER_TERMS.items():
        what = f"{_QUANTITY[q]} = {lead} + {nxt}/n"
        f = x.fitted[q]
        vs = "; ".join(f"{_NAMES[name]} {nxt} = {_f(x.coefficients(name)[nxt])} (z = {_z(c[q]['z_b'])}, joint χ² of "
                       f"({lead}, {nxt}) = {_f(c[q]['chi2_joint'], 3)} for 2 dof)" for name, c in x.vs_theory.items())
        fits.append(f"{what}: {lead} = {_pm(f.a, f.a_se)}, {nxt} = {_pm(f.b, f.b_se)} (correlation {_f(f.corr, 2)}, "
                    f"χ² = {_f(f.chi2, 3)} for {f.dof} dof); {vs}. With a 1/n² term c/n²: {nxt} = "
                    f"{_pm(f.b_higher, f.b_higher_se)}, c = {_pm(f.c, f.c_se)} (χ² = {_f(f.chi2_higher, 3)} for "
                    f"{f.dof - 1} dof).")
    return ([title, "", intro, ""] + _table(header, rows)
            + ["Width fits at t = T (docs/estimators.md#next-order-fits): " + " ".join(fits), ""])


def describe_network(cfg: dict) -> str:
    """A title for a config (``Network.to_dict()``): ``tanh pre-activation ResNet`` (the default branch),
    ``gelu residual network with branch [layernorm, dense(4n), phi, dense]`` or ``tanh MLP``
    (docs/architectures.md#branches)."""
    act = cfg["activation"]
    if "branch" not in cfg:
        return f"{act} MLP" if cfg.get("architecture") == "mlp" else f"{act} pre-activation ResNet"
    layers = []
    for layer in parse_branch(cfg["branch"])[:-1]:
        ratio = getattr(layer, "width_ratio", None)
        layers.append(layer.kind if ratio in (None, 1.0) else f"dense({ratio:g}n)")
    kind = "MLP" if cfg.get("architecture") == "mlp" else "residual network"
    return f"{act} {kind} with branch [{', '.join(layers + ['dense'])}]"


def _config_text(cfg: dict) -> str:
    """The config's fields as ``name = value`` text for the report header."""
    parts = [f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in cfg.items()
             if k not in ("depth", "K_in", "branch")]
    if "branch" in cfg:
        parts.append("branch = [" + ", ".join(
            "{" + ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in layer.items()) + "}"
            for layer in cfg["branch"]) + "]")
    return ", ".join(parts + [f"depth L = {cfg['depth']}", f"K_in = {cfg['K_in']}"])


def render_stopped(title: str, message: str) -> str:
    """The report.md of a run that did not finish (interrupted, or a stage failed): its title and what happened."""
    return f"# kerneleft reproduce — {title}\n\n{message}\n"

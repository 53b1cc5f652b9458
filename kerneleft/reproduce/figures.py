"""Figures of ``kerneleft reproduce`` (matplotlib, Agg canvas; no pyplot state is touched).

Every function takes the :class:`~kerneleft.reproduce.analysis.Analysis` of a run and a file path.
Conventions: x axis "depth-time t" (t = l·T/L); simulation in black with ±2 SE bands or bars; G-only theory blue
(solid: depth-L recursion, dotted: continuous ODE); sigma theory red (dashed: depth L, dotted: ODE); finite
widths in viridis shades.
Entries are labelled with 1-based input indices.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import cm
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..diagnostics import TERMS
from .analysis import NEXT_ORDER_TERMS, Z_CRIT, Analysis, pairs, residual_terms, v4_entries
from .rendering import FIGURES, format_number, format_z, pair_label, v4_label

__all__ = ["make_figures"]

C_SIM, C_GONLY, C_SIGMA = "k", "C0", "C3"
TERM_COLORS = dict(zip(TERMS, ("C1", "C2", "C4")))
TERM_LABELS = {"transport": r"transport  ε(n Cov[G,S] − V4$\mathcal{T}^\top$ + transpose)",
               "source": "source  ε(E[G⊠S] − K0⊠S̄)", "eps2": "O(ε²) terms"}
MLP_TERM_LABELS = {"transport": r"transport  n Cov[S] − $\mathcal{T}$V4$\mathcal{T}^\top$ − N",
                   "source": "source  E[S∘S] − S̄∘S̄"}
#: theory arrays of the V4/K1 figures: (Theories field, colour, line style, width, label); None fields are skipped
THEORY_LINES = (("gonly_discrete", C_GONLY, "-", 1.5, "G-only (depth L)"),
                ("gonly_continuous", C_GONLY, ":", 1.2, "G-only (ODE)"),
                ("sigma_discrete", C_SIGMA, "--", 1.5, "sigma (depth L)"),
                ("sigma_continuous", C_SIGMA, ":", 1.2, "sigma (ODE)"))
XLABEL = "depth-time t"


def _figure(nrows: int, ncols: int, w: float = 4.6, h: float = 3.5) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(w * ncols, h * nrows), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    return fig, axes


def _grid(k: int, ncols: int = 3) -> tuple[int, int]:
    ncols = min(k, ncols)
    return math.ceil(k / ncols), ncols


def _band(ax, t, y, se, color, label=None, lw=1.6, ls="-", alpha=0.22):
    ax.plot(t, y, color=color, lw=lw, ls=ls, label=label)
    ax.fill_between(t, y - 2 * se, y + 2 * se, color=color, alpha=alpha, lw=0)


def _width_colors(widths):
    return {n: cm.viridis(0.15 + 0.65 * i / max(len(widths) - 1, 1)) for i, n in enumerate(widths)}


def _hide_unused(axes, used):
    for ax in axes[used:]:
        ax.set_visible(False)


def _save(fig: Figure, path: Path) -> str:
    fig.savefig(path)
    return path.name


def fig_k0(r: Analysis, path: Path) -> str:
    t, P, th, ext, widths, ens = r.t, r.P, r.theory, r.extrapolated, r.widths, r.ensembles
    fig, ax = _figure(1, 3)
    step = max(1, (len(t) - 1) // 10)
    for i, p in enumerate(pairs(P)):
        c = f"C{i}"
        ax[0].plot(t, th.K0_discrete[:, p[0], p[1]], color=c, lw=1.6, label=f"entry {pair_label(p)}")
        if th.K0_continuous is not None:
            ax[0].plot(t, th.K0_continuous[:, p[0], p[1]], color=c, lw=1.0, ls=":")
        ax[0].errorbar(t[::step], ext.G_mean[::step, p[0], p[1]], 2 * ext.G_mean_se[::step, p[0], p[1]],
                       fmt="o", ms=4, mfc="none", mec=C_SIM, ecolor=C_SIM, capsize=2)
        z = r.comparisons["K0"]["discrete"].z[:, p[0], p[1]]
        ax[1].plot(t, z, color=c, lw=1.2, marker=".", ms=3, label=f"entry {pair_label(p)}")
    ax[0].set(xlabel=XLABEL, ylabel="kernel", title="(a) K0: theory vs simulation (±2 SE bars)")
    ax[0].plot([], [], color="0.3", lw=1.6, label="K0, depth-L recursion")
    if th.K0_continuous is not None:
        ax[0].plot([], [], color="0.3", lw=1.0, ls=":", label="K0, ODE")
    ax[0].errorbar([], [], [], fmt="o", ms=4, mfc="none", mec=C_SIM, ecolor=C_SIM, label="E[G] simulated, n→∞")
    ax[0].legend(fontsize=7)
    ax[1].axhspan(-2, 2, color="0.85", label="|z| < 2")
    ax[1].axhline(Z_CRIT, color="0.4", ls="--", lw=0.8, label=f"|z| = {Z_CRIT:g}")
    ax[1].axhline(-Z_CRIT, color="0.4", ls="--", lw=0.8)
    ax[1].set(xlabel=XLABEL, ylabel="z = (E[G]$_{n→∞}$ − K0) / SE",
              title="(b) extrapolated simulation vs discrete K0")
    ax[1].legend(fontsize=7)
    cols = _width_colors(widths)
    for n in widths:
        shift = np.max(np.abs(ens[n]["K1"] / n), axis=(1, 2)) / np.max(np.abs(th.K0_discrete), axis=(1, 2))
        ax[2].semilogy(t[1:], 100 * shift[1:], color=cols[n], lw=1.5, label=f"n = {n}")
    ax[2].set(xlabel=XLABEL, ylabel="max|E[G] − K0| / max|K0|  [%]",
              title="(c) finite-width shift of E[G] (shrinks ∝ 1/n)")
    ax[2].legend(fontsize=8)
    return _save(fig, path)


def _v4_panels(r: Analysis, title: str):
    entries = v4_entries(r.P)
    fig, ax = _figure(*_grid(len(entries)))
    _hide_unused(ax, len(entries))
    fig.suptitle(title)
    return fig, ax, entries


def _theory_lines(ax, t: np.ndarray, th, q: str, sl: tuple) -> None:
    """The theories' curves of quantity ``q`` at index ``sl`` over ``t`` (:data:`THEORY_LINES`; absent ones
    skipped)."""
    for key, c, ls, lw, label in THEORY_LINES:
        if getattr(th, key) is not None:
            ax.plot(t, getattr(th, key)[q][sl], color=c, ls=ls, lw=lw, label=label)


def fig_v4(r: Analysis, path: Path) -> str:
    t, th, ext, widths, ens = r.t, r.theory, r.extrapolated, r.widths, r.ensembles
    cols = _width_colors(widths)
    fig, ax, entries = _v4_panels(r, "V4 = n Cov[G]: theories vs exact simulation (bands ±2 SE)")
    for a, e in zip(ax, entries):
        for n in widths:
            a.plot(t, ens[n]["V4"][(slice(None), *e)], color=cols[n], lw=0.8, alpha=0.8, label=f"simulation n = {n}")
        _band(a, t, ext.V4[(slice(None), *e)], ext.V4_se[(slice(None), *e)], C_SIM,
              label="simulation n→∞", lw=1.4)
        _theory_lines(a, t, th, "V4", (slice(None), *e))
        a.set(xlabel=XLABEL, ylabel=f"V4[{v4_label(e)}]", title=f"n Cov[G{v4_label(e)[:2]}, G{v4_label(e)[3:]}]")
    ax[0].legend(fontsize=7)
    return _save(fig, path)


def fig_v4_relative(r: Analysis, path: Path) -> str:
    t, th, ext = r.t, r.theory, r.extrapolated
    scale = np.max(np.abs(ext.V4_cv), axis=(1, 2, 3, 4))
    fig, ax, entries = _v4_panels(r, "V4 error of each theory at n→∞, in % of max|V4(t)|; reference V4_cv = G-only "
                                     "+ accumulated residual (dark band ±2 SE); light: direct n Cov[G] extrapolation")
    for a, e in zip(ax, entries):
        sl = (slice(None), *e)
        ref, se = ext.V4_cv[sl], ext.V4_cv_se[sl]
        d, dse = 100 * (ext.V4[sl] - ref) / scale, 200 * ext.V4_se[sl] / scale
        a.fill_between(t, d - dse, d + dse, color="0.9", lw=0, label="direct n Cov[G] n→∞ (±2 SE)")
        a.fill_between(t, -200 * se / scale, 200 * se / scale, color="0.55", lw=0, label="V4_cv (±2 SE)")
        a.axhline(0, color=C_SIM, lw=0.6)
        for key, c, ls, lw, label in THEORY_LINES:
            if getattr(th, key) is not None:
                a.plot(t, 100 * (getattr(th, key)["V4"][sl] - ref) / scale, color=c, ls=ls, lw=lw, label=label)
        a.set(xlabel=XLABEL, ylabel="(theory − sim) / max|V4|  [%]", title=f"V4[{v4_label(e)}]")
    ax[0].legend(fontsize=7)
    return _save(fig, path)


def fig_v4_residual(r: Analysis, path: Path) -> str:
    t, res = r.t, r.v4_residual
    rx, widths = res.extrapolated, res.widths
    entries = v4_entries(r.P, limit=3)
    fig, ax = _figure(2, len(entries), h=3.7)
    ax = ax.reshape(2, len(entries))
    fig.suptitle("Accumulated residual of the G-only V4 equation, split by term (bands and bars ±2 SE). "
                 "Top: extrapolated to n→∞ over t; bottom: at t = T against 1/n")
    x = 1.0 / np.array(widths, dtype=float)
    colors = {k: TERM_COLORS[k] for k in residual_terms(r.diagnostics)}
    labels = TERM_LABELS if r.residual else MLP_TERM_LABELS
    for j, e in enumerate(entries):
        a, b = ax[0, j], ax[1, j]
        sl = (slice(None), *e)
        a.axhline(0, color="0.6", lw=0.6)
        for k, c in colors.items():
            _band(a, t, rx[k][sl], rx[f"{k}_se"][sl], c, label=labels[k])
        _band(a, t, rx["sum"][sl], rx["sum_se"][sl], C_SIM, label="sum of terms", ls="--", alpha=0.12)
        a.plot(t, res.sim_minus_gonly[sl], color="0.45", lw=2.5, alpha=0.55,
               label="V4$_{sim}$ − V4$_{G-only}$ (n→∞)")
        a.set(xlabel=XLABEL, ylabel="accumulated residual", title=f"V4[{v4_label(e)}], n → ∞")
        b.axhline(0, color="0.6", lw=0.6)
        dodge = 0.012 * x.max()
        for i, (k, c) in enumerate((*colors.items(), ("sum", C_SIM))):
            y = np.array([res.by_width[n][k][(-1, *e)] for n in widths])
            s = np.array([res.by_width[n][f"{k}_se"][(-1, *e)] for n in widths])
            off = (i - 1.5) * dodge
            b.errorbar(x + off, y, 2 * s, fmt="o", color=c, capsize=3, ms=4, label=k)
            b.errorbar([off], [rx[k][(-1, *e)]], [2 * rx[f"{k}_se"][(-1, *e)]], fmt="*", color=c, ms=9, capsize=3)
        b.set_xticks([0.0, *x], ["∞", *[f"1/{n}" for n in widths]])
        b.set(xlabel="1/n  (★: n → ∞ extrapolation)", ylabel="residual at t = T", title=f"V4[{v4_label(e)}] at t = T")
    ax[0, 0].legend(fontsize=7)
    ax[1, 0].legend(fontsize=7, ncol=2)
    return _save(fig, path)


def fig_k1(r: Analysis, path: Path) -> str:
    t, th, ext, widths, ens = r.t, r.theory, r.extrapolated, r.widths, r.ensembles
    cols = _width_colors(widths)
    ps = pairs(r.P)
    fig, ax = _figure(*_grid(len(ps)))
    _hide_unused(ax, len(ps))
    fig.suptitle("K1 = lim n(E[G] − K0): theories vs width-extrapolated exact simulation (bands ±2 SE)")
    for a, p in zip(ax, ps):
        sl = (slice(None), *p)
        for n in widths:
            a.plot(t, ens[n]["K1"][sl], color=cols[n], lw=0.8, label=f"n(E[G] − K0), n = {n}")
        _band(a, t, ext.K1[sl], ext.K1_se[sl], C_SIM, label="simulation n→∞", lw=1.4)
        _theory_lines(a, t, th, "K1", sl)
        a.axhline(0, color="0.6", lw=0.6)
        a.set(xlabel=XLABEL, ylabel=f"K1[{pair_label(p)}]", title=f"K1[{pair_label(p)}]")
    ax[0].legend(fontsize=7)
    return _save(fig, path)


def fig_k1_source(r: Analysis, path: Path) -> str:
    t, th, d, src = r.t, r.theory, r.diagnostics, r.k1_source_t0
    ps = pairs(r.P)
    rows, cols = _grid(len(ps))
    fig = Figure(figsize=(4.6 * max(cols, 2), 3.6 * (rows + 1)), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(rows + 1, cols)
    top = fig.add_subplot(gs[0, :])
    x = np.arange(len(ps))
    zero = bool(np.all(src.exact == 0))
    top.bar(x - 0.2, [src.closure[p] for p in ps], 0.38, color=C_GONLY,
            label=r"G-only closure ½$\mathcal{H}$:(K$_{in}$∘K$_{in}$)" + ("" if zero else " + b"))
    top.errorbar(x + 0.2, [src.simulated[p] for p in ps], [2 * src.simulated_se[p] for p in ps],
                 fmt="s", color=C_SIM, capsize=4,
                 label=f"exact: n(E[S⁰] − S̄(K$_{{in}}$)) simulated, pooled over n = {list(r.widths)} (±2 SE)")
    if zero:
        top.axhline(0, color=C_SIGMA, lw=1.5, ls="--", label="exact value 0 (I3) = sigma theory (m = 0 at t = 0)")
    else:
        top.plot(x + 0.2, [src.exact[p] for p in ps], "_", color=C_SIGMA, ms=30, mew=2,
                 label="exact value (iid Gaussian neurons at t = 0; the branch's own finite-width pieces)")
    for i, p in enumerate(ps):
        top.annotate(f"z = {format_z(src.z_closure[p])}", (x[i], max(src.closure[p], 0)), ha="center",
                     va="bottom", fontsize=8, xytext=(0, 3), textcoords="offset points")
    top.set_xticks(x, [f"entry {pair_label(p)}" for p in ps])
    rate = "dK1/dt" if r.residual else "K1 at the next layer"
    top.set(ylabel=f"{rate} at t = 0", title="(a) source of K1 at t = 0: closure vs exact "
                                            "(z = (simulated − closure)/SE)")
    top.legend(fontsize=8, loc="best")

    def source(K1):                      # the theory's K1 source at layers 0..L-1
        return np.diff(K1) / r.eps if r.residual else K1[1:]
    for i, p in enumerate(ps):
        a = fig.add_subplot(gs[1 + i // cols, i % cols])
        sl = (slice(None), *p)
        _band(a, t, d["k1_source_exact"][sl], d.se["k1_source_exact"][sl], C_SIM, label="exact n(E[S] − S̄(K0))")
        _band(a, t, d["k1_source_closure"][sl], d.se["k1_source_closure"][sl], C_GONLY,
              label=r"closure $\mathcal{T}$K1 + ½$\mathcal{H}$:V4" + ("" if zero else " + b")
                    + " on simulated K1, V4")
        a.plot(t[:-1], source(th.gonly_discrete["K1"][sl]), color=C_GONLY, ls=":", lw=1.2,
               label=f"G-only theory {rate}")
        a.plot(t[:-1], source(th.sigma_discrete["K1"][sl]), color=C_SIGMA, ls="--", lw=1.4,
               label=f"sigma theory {rate} (depth L)")
        a.axhline(0, color="0.6", lw=0.6)
        ylabel = f"dK1[{pair_label(p)}]/dt" if r.residual else f"K1[{pair_label(p)}] at l + 1"
        a.set(xlabel=XLABEL, ylabel=ylabel, title=f"(b) K1 source over t, entry {pair_label(p)}, "
                                                  f"n = {d.meta['width']}")
        if i == 0:
            a.legend(fontsize=7)
    return _save(fig, path)


def fig_validity(r: Analysis, path: Path) -> str:
    t, v = r.t, r.validity
    styles = {"gonly": (C_GONLY, "-", "G-only (depth L)"), "gonly_continuous": (C_GONLY, ":", "G-only (ODE)"),
              "sigma": (C_SIGMA, "--", "sigma (depth L)"), "sigma_continuous": (C_SIGMA, ":", "sigma (ODE)")}
    fig, ax = _figure(1, 2, w=5.8, h=3.9)
    for a, q in zip(ax, ("V4", "K1")):
        a.fill_between(t[1:], 1e-300, v.noise_floor[q][1:], color="0.85", lw=0,
                       label="2 SE / max|sim| (noise)")
        for name, rel in v.relative_error.items():
            c, ls, label = styles[name]
            a.semilogy(t[1:], rel[q][1:], color=c, ls=ls, lw=1.6, label=label)
            win = v.windows[v.threshold][name][q]
            if win is not None and name in ("gonly", "sigma"):
                a.axvline(win, color=c, ls=ls, lw=0.9, alpha=0.8)
                a.annotate(f"{label.split(' (')[0]}: t = {win:.3g}", (win, 1), xycoords=("data", "axes fraction"),
                           rotation=90, va="top", ha="right", fontsize=7, color=c)
        for thr in v.thresholds:
            main = thr == v.threshold
            a.axhline(thr, color=C_SIM if main else "0.5", ls="-.", lw=1 if main else 0.6,
                      label=f"threshold {100 * thr:g} %" if main else None)
            a.annotate(f"{100 * thr:g} %", (1.0, thr), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                       fontsize=7, color="0.3")
        top = max(np.nanmax(rel[q][1:]) for rel in v.relative_error.values())
        floor = min(np.nanmin(np.where(rel[q][1:] > 0, rel[q][1:], np.nan)) for rel in v.relative_error.values())
        a.set_ylim(max(min(floor, min(v.thresholds)) / 2, 1e-5), max(top, max(v.thresholds)) * 2)
        a.set(xlabel=XLABEL, ylabel=f"max|{q}$_{{theory}}$ − {q}$_{{sim}}$| / max|{q}$_{{sim}}$|",
              title=f"({'ab'[q == 'K1']}) {q}: relative error; vertical lines: end of validity window "
                    f"({100 * v.threshold:g} %)")
        a.legend(fontsize=7, loc="best")
    return _save(fig, path)


def fig_next_order(r: Analysis, path: Path) -> str:
    """Var[G] and E[G] − K0 of one input at t = T against n (docs/nextorder.md#validation): the simulation (±2 SE
    bars), the sigma leading order (V4/n, K1/n) and next order (V4/n + V4_1/n², K1/n + K2/n²), the G-only next order;
    below, n Var[G] and n(E[G] − K0) against 1/n, where the next order is a straight line, with the width fit."""
    x = r.next_order
    s, g = x.coefficients("sigma"), x.coefficients("gonly")
    n = np.array(x.widths, dtype=float)
    grid = np.geomspace(n[0] / 1.3, n[-1] * 1.3, 200)
    fig, ax = _figure(2, 2, w=5.4, h=3.8)
    who = "one input" if x.config_P == 1 else "first input alone"
    fig.suptitle(f"Next order in 1/n ({who}, K_in = {format_number(x.config['K_in'][0][0])}, t = T): "
                 f"simulation (bars ±2 SE) vs theory (depth L)")
    labels = {"var": ("Var[G]", "n Var[G]"), "mean": ("E[G] − K0", "n(E[G] − K0)")}
    for j, (q, (lead, nxt)) in enumerate(NEXT_ORDER_TERMS.items()):
        label, scaled = labels[q]
        top, bottom = ax[j], ax[2 + j]
        y, se = x.sim[q], x.sim[f"{q}_se"]
        top.errorbar(n, y / n, 2 * se / n, fmt="o", color=C_SIM, capsize=3, ms=4, label="simulation")
        top.plot(grid, s[lead] / grid, color=C_SIGMA, ls=":", lw=1.2, label=f"leading order {lead}/n")
        top.plot(grid, s[lead] / grid + s[nxt] / grid ** 2, color=C_SIGMA, ls="--", lw=1.5,
                 label=f"sigma next order {lead}/n + {nxt}/n²")
        top.plot(grid, g[lead] / grid + g[nxt] / grid ** 2, color=C_GONLY, ls="-", lw=1.2,
                 label="G-only next order")
        top.set_xscale("log", base=2)
        if q == "var":
            top.set_yscale("log")
        top.set(xlabel="width n", ylabel=f"{label} at t = T", title=f"({'ab'[j]}) {label} against n")
        xs = np.linspace(0.0, 1.1 / n[0], 100)
        f = x.fitted[q]
        fit = f.a + f.b * xs
        band = 2 * np.sqrt(f.a_se ** 2 + 2 * f.corr * f.a_se * f.b_se * xs + (f.b_se * xs) ** 2)
        bottom.fill_between(xs, fit - band, fit + band, color="0.85", lw=0, label="fit a + b/n (±2 SE)")
        bottom.errorbar(1.0 / n, y, 2 * se, fmt="o", color=C_SIM, capsize=3, ms=4, label="simulation")
        bottom.axhline(s[lead], color=C_SIGMA, ls=":", lw=1.2, label=f"leading order {lead}")
        bottom.plot(xs, s[lead] + s[nxt] * xs, color=C_SIGMA, ls="--", lw=1.5, label=f"sigma {lead} + {nxt}/n")
        bottom.plot(xs, g[lead] + g[nxt] * xs, color=C_GONLY, ls="-", lw=1.2, label=f"G-only {lead} + {nxt}/n")
        bottom.set_xticks([0.0, *(1.0 / n)], ["∞", *[f"1/{w}" for w in x.widths]])
        bottom.set(xlabel="1/n", ylabel=f"{scaled} at t = T", title=f"({'cd'[j]}) {scaled}: slope = {nxt}")
        for a in (top, bottom):
            a.legend(fontsize=7)
    return _save(fig, path)


_MAKERS = {"k0.png": fig_k0, "v4.png": fig_v4, "v4_relative_error.png": fig_v4_relative,
           "v4_residual.png": fig_v4_residual, "k1.png": fig_k1, "k1_source.png": fig_k1_source,
           "validity.png": fig_validity, "next_order.png": fig_next_order}
assert set(_MAKERS) == set(FIGURES)
#: figures drawn only when the run has their part (the next-order check can be skipped)
_OPTIONAL = {"next_order.png": lambda a: a.next_order is not None}


def make_figures(analysis: Analysis, outdir: str | Path) -> list[str]:
    """Write the figures of :data:`kerneleft.reproduce.rendering.FIGURES` into ``outdir`` (next_order.png only
    when the next-order check ran); returns their names."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    return [maker(analysis, outdir / name) for name, maker in _MAKERS.items()
            if _OPTIONAL.get(name, lambda a: True)(analysis)]

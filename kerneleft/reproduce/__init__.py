"""``kerneleft reproduce``: the G-only and sigma theories against exact finite-width ensembles, as a report.

- :mod:`.pipeline`: the stages (theories, ensembles, diagnostics), caching, interrupts and failures;
- :mod:`.analysis`: pure functions to typed, frozen results (:class:`Results`, whose ``to_dict`` is results.json);
- :mod:`.rendering`: report.md and the findings text;
- :mod:`.figures`: the figures (matplotlib, Agg);
- :mod:`.cache`: the verified result cache (docs/numerics.md#caches).
"""
from .analysis import Analysis, Results, Run, Z_CRIT, combine_batches, zscore
from .cache import ResultCache
from .pipeline import DEFAULT_SEED, PLANS, default_network, reproduce, resolve_network
from .rendering import FIGURES, findings_text, format_number, format_z, render_report

__all__ = ["reproduce", "default_network", "resolve_network", "PLANS", "DEFAULT_SEED", "Z_CRIT", "FIGURES",
           "Analysis", "Results", "Run", "ResultCache", "combine_batches", "zscore", "findings_text",
           "render_report", "format_number", "format_z"]

"""Paired statistics over seeds, with a verdict that can say "we don't know".

For a claim "arm A beats arm B" on a metric, every seed s that both arms ran gives a paired difference
``d_s = m_B(s) - m_A(s)`` for a lower-is-better metric (``m_A(s) - m_B(s)`` for a higher-is-better one), so a
positive ``d`` always means the claim holds on that seed. Over the n seeds: mean, sample standard deviation,
the two-sided 95% t-interval ``mean ± t(0.975, n-1) · sd / √n``, and two one-sided t-tests against a minimum
effect δ declared in advance:

- ``p_sup``: H0 "mean d ≤ δ" (rejecting it is evidence that A beats B by more than δ);
- ``p_con``: H0 "mean d ≥ 0" (rejecting it is evidence that B beats A).

Each family of p-values (all ``p_sup`` of a run's claims, all ``p_con``) is Holm-adjusted over the claims
that could be tested. Verdict: **SUPPORTED** when the adjusted ``p_sup`` < α, **CONTRADICTED** when the
adjusted ``p_con`` < α, else **INCONCLUSIVE** (also with fewer than 2 paired seeds, with the reason). For a
single claim SUPPORTED means the one-sided 95% lower confidence bound of the mean difference lies above δ, and
CONTRADICTED that the one-sided upper bound lies below 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

ALPHA = 0.05
SUPPORTED, CONTRADICTED, INCONCLUSIVE = "SUPPORTED", "CONTRADICTED", "INCONCLUSIVE"


@dataclass
class Paired:
    """Paired differences of one claim and everything computed from them (NaN where undefined)."""

    differences: list[float]
    seeds: list[int]
    delta: float
    n: int = 0
    mean: float = math.nan
    sd: float = math.nan
    low: float = math.nan  # two-sided 95% t-interval
    high: float = math.nan
    p_sup: float = math.nan  # one-sided, H0: mean <= delta
    p_con: float = math.nan  # one-sided, H0: mean >= 0
    p_sup_adj: float = math.nan  # Holm-adjusted over the run's claims
    p_con_adj: float = math.nan
    verdict: str = INCONCLUSIVE
    reason: str = ""
    extra: dict = field(default_factory=dict)


def paired_differences(a: dict[int, float], b: dict[int, float], higher_is_better: bool) -> tuple[list[int],
                                                                                                 list[float]]:
    """Seeds present in both ``a`` and ``b`` ({seed: metric}), and d_s oriented so that > 0 means A beats B."""
    seeds = sorted(set(a) & set(b))
    if higher_is_better:
        return seeds, [a[s] - b[s] for s in seeds]
    return seeds, [b[s] - a[s] for s in seeds]


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sample sd, low, high) of the two-sided t-interval; sd, low, high are NaN with fewer than 2
    values."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    from scipy import stats as _st  # imported here: worker processes never need it

    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(_st.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def one_sided_p(mean: float, sd: float, n: int, null: float, greater: bool) -> float:
    """p-value of the one-sided t-test of H0 "true mean ≤ null" (``greater``: the alternative is mean > null)
    or H0 "true mean ≥ null" (not ``greater``). With sd = 0 the data decide exactly: 0 when every value lies
    strictly on the alternative's side, else 1."""
    if n < 2:
        return math.nan
    if sd == 0:
        if greater:
            return 0.0 if mean > null else 1.0
        return 0.0 if mean < null else 1.0
    from scipy import stats as _st

    t = (mean - null) / (sd / math.sqrt(n))
    return float(_st.t.sf(t, n - 1)) if greater else float(_st.t.cdf(t, n - 1))


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment: sort ascending, p'_(i) = max_{j≤i} min(1, (m - j + 1) p_(j)) (1-based);
    NaN entries are left out of the family and stay NaN."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    m = len(idx)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def analyse(a: dict[int, float], b: dict[int, float], higher_is_better: bool, delta: float) -> Paired:
    """Paired differences, interval and raw one-sided p-values of one claim (verdict set by :func:`decide`)."""
    if not (isinstance(delta, (int, float)) and math.isfinite(delta) and delta >= 0):
        raise ValueError(f"--min-effect: expected a number >= 0, got {delta!r}")
    seeds, d = paired_differences(a, b, higher_is_better)
    p = Paired(differences=d, seeds=seeds, delta=float(delta), n=len(d))
    p.mean, p.sd, p.low, p.high = t_interval(d)
    if p.n < 2:
        p.reason = (f"{p.n} paired seed{'s' if p.n != 1 else ''}: a confidence interval needs at least 2")
        return p
    p.p_sup = one_sided_p(p.mean, p.sd, p.n, delta, greater=True)
    p.p_con = one_sided_p(p.mean, p.sd, p.n, 0.0, greater=False)
    return p


def decide(claims: list[Paired], alpha: float = ALPHA) -> list[Paired]:
    """Holm-adjust both families over ``claims`` (in place) and set each verdict; returns ``claims``."""
    for p, adj in zip(claims, holm([c.p_sup for c in claims])):
        p.p_sup_adj = adj
    for p, adj in zip(claims, holm([c.p_con for c in claims])):
        p.p_con_adj = adj
    for p in claims:
        if p.n < 2:
            p.verdict = INCONCLUSIVE
        elif p.p_sup_adj < alpha:
            p.verdict, p.reason = SUPPORTED, (f"Holm-adjusted p = {p.p_sup_adj:.3g} < {alpha} for a mean "
                                              f"difference above δ = {p.delta:g}")
        elif p.p_con_adj < alpha:
            p.verdict, p.reason = CONTRADICTED, (f"Holm-adjusted p = {p.p_con_adj:.3g} < {alpha} for a "
                                                 f"difference on the other side")
        else:
            p.verdict = INCONCLUSIVE
            p.reason = (f"neither Holm-adjusted p is below {alpha} (beyond δ: {p.p_sup_adj:.3g}; other side: "
                        f"{p.p_con_adj:.3g})")
    return claims

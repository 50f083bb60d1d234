"""Paired statistics over seeds: four-way verdicts at a minimum effect δ, one family-wise correction, power.

For a claim "arm A beats arm B" on a metric, every seed s that both arms ran gives a paired difference
``d_s = m_B(s) - m_A(s)`` for a lower-is-better metric (``m_A(s) - m_B(s)`` for a higher-is-better one), so a
positive ``d`` always means A did better on that seed. With m claims tested in one summary, each claim is
decided by its **deciding interval**: the two-sided ``1 - α/m`` t-interval of the mean difference (Bonferroni
over the m claims; scipy's ``ttest_1samp(...).confidence_interval``):

- **SUPPORTED**: the interval lies above +δ (A better by more than δ);
- **CONTRADICTED**: the interval lies below −δ (B better by more than δ);
- **EQUIVALENT**: the interval lies inside (−δ, +δ) (no difference larger than δ either way: two one-sided
  tests, statsmodels' ``ttost_mean``);
- **INCONCLUSIVE**: none of these (also with fewer than 2 paired seeds, which still count in m).

Each verdict is the same as a one-sided test at level ``α/(2m)``: ``p_sup`` (H0 "mean ≤ δ"), ``p_con`` (H0
"mean ≥ −δ"), ``p_eq`` (TOST, H0 "|mean| ≥ δ"); their Bonferroni-adjusted values ``min(1, 2m·p)`` are below α
exactly when the verdict is reached. A wrong verdict needs the deciding interval to miss the true mean; all m
intervals cover their means at once with probability at least 1 − α, so the family-wise error of the whole
summary (every verdict of every claim) is at most α.

**Power** (statsmodels' ``TTestPower``, one-sided at ``α/(2m)``, 80% power): ``mde`` is the smallest true
``|mean d|`` that this run (its n and the observed sd) would call SUPPORTED or CONTRADICTED four times in five;
``eq_bound`` is the largest ``|mean d|`` for which it would reach EQUIVALENT four times in five (None: it could
not, at this n); ``seeds_needed`` is the number of paired seeds at which the observed mean and sd would give a
decision with 80% power (for EQUIVALENT, the binding one of the two one-sided tests, which slightly
underestimates); None when the observed mean lies exactly on ±δ or the sd is 0.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

ALPHA = 0.05
POWER = 0.8
SEEDS_CAP = 100_000  # seeds_needed beyond this reads "more than"
SUPPORTED, CONTRADICTED, EQUIVALENT, INCONCLUSIVE = "SUPPORTED", "CONTRADICTED", "EQUIVALENT", "INCONCLUSIVE"
VERDICTS = (SUPPORTED, CONTRADICTED, EQUIVALENT, INCONCLUSIVE)


@dataclass
class Paired:
    """Paired differences of one claim and everything computed from them (NaN / None where undefined)."""

    differences: list[float]
    seeds: list[int]
    delta: float
    n: int = 0
    mean: float = math.nan
    sd: float = math.nan
    m: int = 1  # claims in the family
    confidence: float = math.nan  # of the deciding interval: 1 - alpha / m
    low: float = math.nan  # the deciding interval
    high: float = math.nan
    p_sup: float = math.nan  # one-sided, H0: mean <= delta
    p_con: float = math.nan  # one-sided, H0: mean >= -delta
    p_eq: float = math.nan  # TOST, H0: |mean| >= delta
    p_sup_adj: float = math.nan  # Bonferroni: min(1, 2 m p)
    p_con_adj: float = math.nan
    p_eq_adj: float = math.nan
    mde: float | None = None
    eq_bound: float | None = None
    seeds_needed: int | None = None
    verdict: str = INCONCLUSIVE
    reason: str = ""
    extra: dict = field(default_factory=dict)


def paired_differences(a: dict[int, float], b: dict[int, float], higher_is_better: bool) -> tuple[list[int],
                                                                                                 list[float]]:
    """Seeds present in both ``a`` and ``b`` ({seed: metric}) with finite values in both, and d_s oriented so
    that > 0 means A beats B."""
    seeds = sorted(s for s in set(a) & set(b) if math.isfinite(a[s]) and math.isfinite(b[s]))
    if higher_is_better:
        return seeds, [a[s] - b[s] for s in seeds]
    return seeds, [b[s] - a[s] for s in seeds]


def _mean_sd(values: list[float]) -> tuple[float, float]:
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    return float(x.mean()), (float(x.std(ddof=1)) if x.size > 1 else math.nan)


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sample sd, low, high) of the two-sided t-interval at ``confidence`` (scipy); sd, low, high are
    NaN with fewer than 2 values; with sd = 0 the interval is the point itself."""
    mean, sd = _mean_sd(values)
    if len(values) < 2:
        return mean, sd, math.nan, math.nan
    if sd == 0:
        return mean, sd, mean, mean
    from scipy import stats as st

    ci = st.ttest_1samp(values, 0.0).confidence_interval(confidence_level=confidence)
    return mean, sd, float(ci.low), float(ci.high)


def one_sided_p(values: list[float], null: float, greater: bool) -> float:
    """p-value of the one-sided t-test (scipy) of H0 "mean ≤ null" (``greater``) or H0 "mean ≥ null". With
    sd = 0 the data decide exactly: 0 when every value lies strictly on the alternative's side, else 1."""
    if len(values) < 2:
        return math.nan
    mean, sd = _mean_sd(values)
    if sd == 0:
        return float(not (mean > null)) if greater else float(not (mean < null))
    from scipy import stats as st

    return float(st.ttest_1samp(values, null, alternative="greater" if greater else "less").pvalue)


def tost_p(values: list[float], delta: float) -> float:
    """p-value of the two one-sided tests (statsmodels' ``ttost_mean``) of H0 "|mean| ≥ δ"."""
    if len(values) < 2:
        return math.nan
    mean, sd = _mean_sd(values)
    if sd == 0:
        return float(not (-delta < mean < delta))
    from statsmodels.stats.weightstats import DescrStatsW

    return float(DescrStatsW(values).ttost_mean(-delta, delta)[0])


def _solve_power(**unknown_and_given) -> float:
    """statsmodels' ``TTestPower().solve_power`` for a one-sided ("larger") test; NaN where its root finder
    gives up."""
    from statsmodels.stats.power import TTestPower

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = TTestPower().solve_power(alternative="larger", **unknown_and_given)
        except Exception:  # noqa: BLE001 - statsmodels' root finder gives up: no answer
            return math.nan
    return float(value if not hasattr(value, "__len__") else value[0])


def _standardised_effect(n: int, alpha_one_sided: float, power: float) -> float | None:
    """The effect (in sd units) a one-sided t-test at ``alpha_one_sided`` detects with ``power`` at n."""
    if n < 2:
        return None
    es = _solve_power(effect_size=None, nobs=n, alpha=alpha_one_sided, power=power)
    return es if math.isfinite(es) and es > 0 else None


def _nobs(effect: float, alpha_one_sided: float, power: float) -> int | None:
    """Paired seeds for a one-sided t-test at ``alpha_one_sided`` to detect ``effect`` (sd units)."""
    if not (effect > 0 and math.isfinite(effect)):
        return None
    n = _solve_power(effect_size=effect, nobs=None, alpha=alpha_one_sided, power=power)
    if not math.isfinite(n) or n > SEEDS_CAP:
        return SEEDS_CAP + 1
    return max(2, math.ceil(n))


def analyse(a: dict[int, float], b: dict[int, float], higher_is_better: bool, delta: float) -> Paired:
    """Paired differences, mean and sd of one claim (the interval, tests and verdict are set by
    :func:`decide`, which knows how many claims share the family)."""
    if isinstance(delta, bool) or not (isinstance(delta, (int, float)) and math.isfinite(delta) and delta >= 0):
        raise ValueError(f"--min-effect: expected a number >= 0, got {delta!r}")
    seeds, d = paired_differences(a, b, higher_is_better)
    p = Paired(differences=d, seeds=seeds, delta=float(delta), n=len(d))
    p.mean, p.sd = _mean_sd(d)
    return p


def decide(claims: list[Paired], alpha: float = ALPHA, power: float = POWER) -> list[Paired]:
    """Set every claim's deciding interval, tests, power and verdict, with one Bonferroni correction over all
    of ``claims`` (m = len(claims), claims with fewer than 2 seeds included); in place, returns ``claims``."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected a level in (0, 1), got {alpha!r}")
    m = max(1, len(claims))
    level = alpha / (2 * m)  # each one-sided test; the deciding interval is two-sided at 1 - alpha / m
    for p in claims:
        p.m, p.confidence = m, 1 - alpha / m
        if p.n < 2:
            p.verdict = INCONCLUSIVE
            p.reason = f"{p.n} paired seed{'s' if p.n != 1 else ''}: an interval needs at least 2"
            continue
        d, delta = p.differences, p.delta
        _, _, p.low, p.high = t_interval(d, p.confidence)
        p.p_sup = one_sided_p(d, delta, greater=True)
        p.p_con = one_sided_p(d, -delta, greater=False)
        p.p_eq = tost_p(d, delta)
        p.p_sup_adj, p.p_con_adj, p.p_eq_adj = (min(1.0, 2 * m * x) for x in (p.p_sup, p.p_con, p.p_eq))
        ci = f"[{p.low:+.4g}, {p.high:+.4g}]"
        if p.low > delta:
            p.verdict, p.reason = SUPPORTED, f"the {p.confidence:.4g} interval {ci} lies above +δ = {delta:g}"
        elif p.high < -delta:
            p.verdict, p.reason = CONTRADICTED, f"the {p.confidence:.4g} interval {ci} lies below −δ"
        elif -delta < p.low and p.high < delta:
            p.verdict, p.reason = EQUIVALENT, f"the {p.confidence:.4g} interval {ci} lies inside ±δ"
        else:
            p.verdict, p.reason = INCONCLUSIVE, f"the {p.confidence:.4g} interval {ci} crosses ±δ = ±{delta:g}"
        es = _standardised_effect(p.n, level, power)
        if es is not None and p.sd > 0:
            p.mde = delta + es * p.sd
            p.eq_bound = delta - es * p.sd if delta - es * p.sd > 0 else None
        elif p.sd == 0:
            p.mde, p.eq_bound = delta, (delta if delta > 0 else None)
        if p.sd > 0:
            gap = abs(p.mean) - delta
            p.seeds_needed = _nobs(abs(gap) / p.sd, level, power) if gap != 0 else None
    return claims


def seeds_text(n: int | None) -> str:
    if n is None:
        return "—"
    return f"> {SEEDS_CAP:,}" if n > SEEDS_CAP else f"{n:,}"

"""The study's statistics: deciding intervals, one-sided and equivalence tests against a minimum effect, one
Bonferroni correction, the four verdicts and the power lines, checked against values solved by hand (Student's
t with 2 degrees of freedom has a closed-form CDF), printed tables, a textbook sample size and a simulation."""

from __future__ import annotations

import math

import pytest

from cerebral_rnn.study import report as R
from cerebral_rnn.study import stats as S
from cerebral_rnn.study.tasks.charlm import TASK as CHARLM
from cerebral_rnn.study.tasks.classify import TASK as CLASSIFY


def test_t_interval_against_a_hand_computed_value():
    # d = 1..5: mean 3, sd = sqrt(10/4), se = sd/sqrt(5) = sqrt(1/2); t(0.975, 4) = 2.7764 (printed tables)
    mean, sd, low, high = S.t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0 and sd == pytest.approx(math.sqrt(2.5), rel=1e-12)
    half = 2.7764 * math.sqrt(0.5)
    assert low == pytest.approx(3 - half, abs=1e-4) and high == pytest.approx(3 + half, abs=1e-4)
    # two values: t(0.975, 1) = 12.7062
    mean, sd, low, high = S.t_interval([0.0, 1.0])
    assert (mean, sd) == (0.5, pytest.approx(math.sqrt(0.5)))
    assert high - mean == pytest.approx(12.7062 * math.sqrt(0.5) / math.sqrt(2), abs=1e-3)
    assert all(math.isnan(v) for v in S.t_interval([1.0])[1:])


def _t2(q: float) -> float:
    """The q-quantile of Student's t with 2 degrees of freedom, solved by hand from its CDF
    F(t) = 1/2 + t / (2 sqrt(t^2 + 2)): with u = 2q - 1, t = u sqrt(2 / (1 - u^2))."""
    u = 2 * q - 1
    return u * math.sqrt(2 / (1 - u * u))


def _sf2(t: float) -> float:
    return 0.5 - t / (2 * math.sqrt(t * t + 2))


D3 = [0.1, 0.2, 0.3]  # mean 0.2, sd 0.1, se 0.1 / sqrt(3), 2 degrees of freedom
SE3 = 0.1 / math.sqrt(3)


def test_the_hand_solved_t_quantiles_match_printed_tables():
    assert _t2(0.975) == pytest.approx(4.3027, abs=1e-4) and _t2(0.995) == pytest.approx(9.9248, abs=1e-4)


def test_t_interval_at_any_confidence_against_the_closed_form_for_two_degrees_of_freedom():
    for conf in (0.95, 0.975, 1 - 0.05 / 6):
        mean, sd, low, high = S.t_interval(D3, conf)
        half = _t2(0.5 + conf / 2) * SE3
        assert (mean, sd) == (pytest.approx(0.2), pytest.approx(0.1))
        assert low == pytest.approx(0.2 - half, rel=1e-9) and high == pytest.approx(0.2 + half, rel=1e-9)


def test_one_sided_p_against_the_closed_form_for_two_degrees_of_freedom():
    assert S.one_sided_p(D3, 0.0, greater=True) == pytest.approx(_sf2(0.2 / SE3), rel=1e-9)
    assert S.one_sided_p(D3, 0.05, greater=True) == pytest.approx(_sf2(0.15 / SE3), rel=1e-9)
    assert S.one_sided_p(D3, 0.0, greater=False) == pytest.approx(1 - _sf2(0.2 / SE3), rel=1e-9)
    assert S.one_sided_p(D3, -0.05, greater=False) == pytest.approx(1 - _sf2(0.25 / SE3), rel=1e-9)
    # no spread: the data decide exactly
    assert S.one_sided_p([0.3] * 4, 0.01, greater=True) == 0.0
    assert S.one_sided_p([0.005] * 4, 0.01, greater=True) == 1.0
    assert math.isnan(S.one_sided_p([0.3], 0.0, greater=True))


def test_tost_p_is_the_larger_of_the_two_one_sided_p_values():
    # H0 mean <= -0.5: t = 0.7/se; H0 mean >= 0.5: t = -0.3/se; the binding one is the second
    assert S.tost_p(D3, 0.5) == pytest.approx(max(_sf2(0.7 / SE3), _sf2(0.3 / SE3)), rel=1e-9)
    assert S.tost_p([0.0] * 3, 0.1) == 0.0 and S.tost_p([0.2] * 3, 0.1) == 1.0


def _claim(d, delta, m=1, alpha=0.05):
    """One claim with paired differences d, in a family of m claims (the others have no seeds)."""
    a = {s: 0.0 for s in range(len(d))}
    b = {s: v for s, v in enumerate(d)}  # lower is better: d_s = b - a
    claims = [S.analyse(a, b, False, delta)] + [S.analyse({}, {}, False, delta) for _ in range(m - 1)]
    return S.decide(claims, alpha=alpha)[0]


def test_the_four_verdicts_from_the_deciding_interval():
    half = _t2(0.975) * SE3  # m = 1: the 95% interval of D3 is 0.2 +- 0.2484
    assert half == pytest.approx(0.24841, abs=1e-5)
    eq = _claim(D3, 0.5)
    assert eq.verdict == S.EQUIVALENT and (eq.low, eq.high) == (pytest.approx(0.2 - half), pytest.approx(0.2 + half))
    assert _claim(D3, 0.01).verdict == S.INCONCLUSIVE
    sup = _claim([x + 1 for x in D3], 0.5)  # [0.952, 1.448] lies above 0.5
    assert sup.verdict == S.SUPPORTED and sup.p_sup_adj < 0.05 and sup.p_con_adj >= 0.05
    con = _claim([-x - 1 for x in D3], 0.5)
    assert con.verdict == S.CONTRADICTED and con.p_con_adj < 0.05 and con.p_sup_adj >= 0.05
    # the interval's edge: delta just below / above its lower bound 1.2 - half
    assert _claim([x + 1 for x in D3], 1.2 - half - 1e-6).verdict == S.SUPPORTED
    assert _claim([x + 1 for x in D3], 1.2 - half + 1e-6).verdict == S.INCONCLUSIVE


def test_each_verdict_agrees_with_its_adjusted_p_value():
    for d in (D3, [x + 1 for x in D3], [-x - 1 for x in D3], [0.01, -0.02, 0.03, 0.0]):
        for delta in (0.01, 0.3, 0.5, 1.0):
            for m in (1, 3, 6):
                c = _claim(d, delta, m)
                assert (c.verdict == S.SUPPORTED) == (c.p_sup_adj < 0.05)
                assert (c.verdict == S.CONTRADICTED) == (c.p_con_adj < 0.05)
                assert (c.verdict == S.EQUIVALENT) == (c.p_eq_adj < 0.05)
                assert c.p_sup_adj == pytest.approx(min(1.0, 2 * m * c.p_sup))


def test_bonferroni_over_the_family_widens_the_interval_and_can_undecide_a_claim():
    alone = _claim([x + 1 for x in D3], 0.6)  # 95%: [0.952, 1.448] above 0.6
    six = _claim([x + 1 for x in D3], 0.6, m=6)  # 1 - 0.05/6: t(0.99583, 2) = 10.93
    assert alone.verdict == S.SUPPORTED and six.verdict == S.INCONCLUSIVE
    assert six.confidence == pytest.approx(1 - 0.05 / 6) and six.m == 6
    assert six.low == pytest.approx(1.2 - _t2(1 - 0.05 / 12) * SE3, rel=1e-9)


def test_claims_without_two_seeds_still_count_in_the_family():
    c = _claim(D3, 0.5, m=2)  # the other claim has no seeds: m stays 2 (it does not relax the correction)
    assert c.m == 2 and c.low == pytest.approx(0.2 - _t2(1 - 0.05 / 4) * SE3, rel=1e-9)
    p = S.decide([S.analyse({0: 1.0}, {0: 2.0}, False, 0.01)])[0]
    assert p.verdict == S.INCONCLUSIVE and p.n == 1 and "at least 2" in p.reason


def test_family_wise_error_is_at_most_alpha_by_simulation():
    # 6 claims whose true mean sits exactly on +delta (the worst case for a wrong SUPPORTED or EQUIVALENT),
    # normal noise, n = 5: the fraction of families with any wrong verdict stays below alpha.
    import numpy as np

    rng = np.random.default_rng(0)
    delta, wrong, reps = 0.1, 0, 500
    for _ in range(reps):
        d = delta + rng.normal(0, 0.05, size=(6, 5))
        claims = S.decide([S.analyse(dict(enumerate([0.0] * 5)), dict(enumerate(row)), False, delta) for row in d])
        wrong += any(c.verdict in (S.SUPPORTED, S.EQUIVALENT, S.CONTRADICTED) for c in claims)
    assert wrong / reps < 0.05
    # and it is not vacuous: at a true mean well above delta every claim is SUPPORTED most of the time
    d = 0.5 + rng.normal(0, 0.05, size=(6, 5))
    claims = S.decide([S.analyse(dict(enumerate([0.0] * 5)), dict(enumerate(row)), False, delta) for row in d])
    assert all(c.verdict == S.SUPPORTED for c in claims)


def test_seeds_needed_matches_the_textbook_sample_size():
    # one-sample t-test, one-sided alpha 0.05, power 0.8, effect 0.5 sd: n = 27 (G*Power; Cohen 1988). With
    # alpha = 0.1 and m = 1 each one-sided test is at 0.05.
    d = [2.6 + x for x in (-1.0, 1.0)]  # mean 2.6, sd sqrt(2): mean - delta = 0.5 sd with delta = 2.6 - 0.5 sqrt(2)
    c = _claim(d, 2.6 - 0.5 * math.sqrt(2), alpha=0.1)
    assert c.sd == pytest.approx(math.sqrt(2)) and c.seeds_needed == 27


def test_detectable_effect_against_the_normal_approximation_at_large_n():
    from scipy.stats import norm

    n, m = 2000, 6
    rng_d = [0.01 * math.sin(i) for i in range(n)]  # any spread; the formula scales with its sd
    c = _claim(rng_d, 0.02, m=m)
    z = norm.ppf(1 - 0.05 / (2 * m)) + norm.ppf(0.8)
    assert c.mde == pytest.approx(0.02 + z * c.sd / math.sqrt(n), rel=2e-3)
    assert c.eq_bound == pytest.approx(0.02 - z * c.sd / math.sqrt(n), rel=2e-3)


def test_min_effect_must_be_a_number_at_least_zero():
    with pytest.raises(ValueError, match="--min-effect: expected a number >= 0, got -1"):
        S.analyse({0: 1.0}, {0: 1.0}, False, -1)
    with pytest.raises(ValueError, match="alpha"):
        S.decide([], alpha=1.5)


A = [1.50, 1.51, 1.49, 1.50, 1.52]


def _seeds(values):
    return dict(enumerate(values))


def verdict(a, b, higher=False, delta=0.01):
    (p,) = S.decide([S.analyse(_seeds(a), _seeds(b), higher, delta)])
    return p


def test_higher_is_better_metrics_are_oriented():
    acc_b = [80.0, 81.0, 79.5, 80.5, 80.0]
    assert verdict([b + 3 for b in acc_b], acc_b, higher=True, delta=0.5).verdict == S.SUPPORTED
    assert verdict([b - 3 for b in acc_b], acc_b, higher=True, delta=0.5).verdict == S.CONTRADICTED


def test_pairs_only_where_both_arms_have_a_finite_value():
    p = verdict([1.0, 1.1, float("nan")], [2.0, 2.1, 2.2, 2.3])
    assert p.n == 2 and p.seeds == [0, 1]


# -- the claims as the report computes them -------------------------------------------------------------------


def fake_results(test: dict[str, list[float]], key: str, train: dict[str, list[float]] | None = None) -> list[dict]:
    out = []
    for arm, values in test.items():
        for seed, v in enumerate(values):
            tl = (train or {}).get(arm, [2.0] * len(values))[seed]
            out.append({"spec": {"phase": "final", "arm": arm, "seed": seed, "trial": None, "lr": 0.003,
                                 "forget_bias": None},
                        "result": {"stopped": "early", "epochs": 5, "best_epoch": 3, "final_train_loss": tl,
                                   "best_val": {"loss": v, key: v}, "test": {"loss": v, key: v},
                                   "success": None}})
    return out


def test_claims_of_a_run_with_known_answers():
    results = fake_results({"cerebral": A, "lstm": [x + 0.2 for x in A],
                            "lstm2": [x - 0.2 + 0.001 * i for i, x in enumerate(A)],
                            "cerebral-identical": [x + 0.001 * (-1) ** i for i, x in enumerate(A)]}, "bpc",
                           train={"cerebral": [1.0] * 5, "lstm": [1.5] * 5})
    claims = {c["loser"]: c for c in R.evaluate_claims(results, CHARLM, 0.01, ["cerebral", "lstm", "lstm2",
                                                                                  "cerebral-identical"])}
    assert claims["lstm"]["verdict"] == "SUPPORTED" and claims["lstm"]["mean"] == pytest.approx(0.2)
    assert claims["lstm"]["train_loss"]["mean"] == pytest.approx(0.5)  # the paper's metric, beside it
    assert claims["lstm2"]["verdict"] == "CONTRADICTED"
    # d = +-0.001: its 1 - 0.05/3 interval lies inside +-0.01
    assert claims["cerebral-identical"]["verdict"] == "EQUIVALENT"
    for arm in ("lstm-matched", "lstm-x2", "lstmp"):
        assert claims[arm]["verdict"] == "NOT EVALUATED" and arm in claims[arm]["reason"]
    # Bonferroni over the 3 claims that could be tested: the 1 - 0.05/3 interval
    assert {claims[a]["m"] for a in ("lstm", "lstm2", "cerebral-identical")} == {3}
    assert claims["lstm"]["confidence"] == pytest.approx(1 - 0.05 / 3)
    assert len(R.CLAIMS) == 6 and sum(c[3] for c in R.CLAIMS) == 3
    assert not any(c in claims for c in ("gru", "cerebral"))  # family claims: only when both arms ran


def test_family_claims_join_the_family_when_their_arms_ran():
    base = {"cerebral": A, "lstm": [x + 0.2 for x in A]}
    family = {"gru": [x + 0.3 for x in A], "cerebral-gru": A, "cerebral-k3": [x + 0.001 * i for i, x in enumerate(A)]}
    arms = list(base) + list(family)
    rows = R.evaluate_claims(fake_results({**base, **family}, "bpc"), CHARLM, 0.01, arms)
    by_pair = {(c["winner"], c["loser"]): c for c in rows}
    assert by_pair[("cerebral-gru", "gru")]["verdict"] == "SUPPORTED"
    assert by_pair[("cerebral-k3", "cerebral")]["verdict"] == "EQUIVALENT"  # d = -0.001 i, well inside +-0.01
    assert ("cerebral-peephole", "cerebral") not in by_pair  # its arm did not run: not listed at all
    tested = [c for c in rows if c["verdict"] != "NOT EVALUATED"]
    assert len(tested) == 3  # cerebral vs lstm, and the two family claims: one correction over all three
    assert {c["m"] for c in tested} == {3}


def test_accuracy_claims_use_the_higher_is_better_orientation():
    results = fake_results({"cerebral": [91.0, 92.0, 90.5], "lstm": [88.0, 88.5, 87.0]}, "accuracy")
    (c,) = [c for c in R.evaluate_claims(results, CLASSIFY, 0.5, ["cerebral", "lstm"]) if c["loser"] == "lstm"]
    assert c["mean"] == pytest.approx(3.333333333) and c["verdict"] == "SUPPORTED"
    assert c["metric"] == "test accuracy"

"""The study's statistics: paired t-intervals, one-sided tests against a minimum effect, Holm's correction and
the three verdicts, checked against hand-computed values and synthetic metrics with known answers."""

from __future__ import annotations

import math

import pytest

from cerebral_rnn.study import report as R
from cerebral_rnn.study import stats as S
from cerebral_rnn.study.charlm import TASK as CHARLM
from cerebral_rnn.study.classify import TASK as CLASSIFY


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


def test_one_sided_p_against_the_closed_form_for_two_degrees_of_freedom():
    # With 2 degrees of freedom the t distribution has CDF 1/2 + t / (2 sqrt(t^2 + 2)).
    def sf2(t):
        return 0.5 - t / (2 * math.sqrt(t * t + 2))

    d = [0.1, 0.2, 0.3]  # mean 0.2, sd 0.1, se 0.1/sqrt(3)
    se = 0.1 / math.sqrt(3)
    assert S.one_sided_p(0.2, 0.1, 3, 0.0, greater=True) == pytest.approx(sf2(0.2 / se), rel=1e-9)
    assert S.one_sided_p(0.2, 0.1, 3, 0.05, greater=True) == pytest.approx(sf2(0.15 / se), rel=1e-9)
    assert S.one_sided_p(0.2, 0.1, 3, 0.0, greater=False) == pytest.approx(1 - sf2(0.2 / se), rel=1e-9)
    p = S.analyse({0: 1.0, 1: 1.0, 2: 1.0}, {0: 1.1, 1: 1.2, 2: 1.3}, higher_is_better=False, delta=0.05)
    assert p.differences == pytest.approx(d) and p.p_sup == pytest.approx(sf2(0.15 / se), rel=1e-9)
    # no spread: the data decide exactly
    assert S.one_sided_p(0.3, 0.0, 4, 0.01, greater=True) == 0.0
    assert S.one_sided_p(0.005, 0.0, 4, 0.01, greater=True) == 1.0


def test_holm_on_a_hand_computed_example():
    # sorted: 0.005 x4 = 0.02; 0.01 x3 = 0.03; 0.03 x2 = 0.06; 0.04 x1 = 0.04 -> raised to 0.06 (monotone)
    assert S.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert S.holm([0.5, 0.9]) == [1.0, 1.0]  # 0.5 x2 capped at 1; 0.9 x1 raised to 1 (monotone)
    out = S.holm([0.02, math.nan, 0.01])  # NaN: not in the family (m = 2)
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)


A = [1.50, 1.51, 1.49, 1.50, 1.52]


def _seeds(values):
    return dict(enumerate(values))


def verdict(a, b, higher=False, delta=0.01):
    (p,) = S.decide([S.analyse(_seeds(a), _seeds(b), higher, delta)])
    return p


def test_clear_difference_is_supported():
    p = verdict(A, [x + d for x, d in zip(A, [0.20, 0.21, 0.19, 0.20, 0.22])])
    assert p.verdict == S.SUPPORTED and p.mean == pytest.approx(0.204) and p.low > 0.01


def test_no_difference_is_inconclusive():
    p = verdict(A, [x + d for x, d in zip(A, [0.01, -0.02, 0.015, -0.005, 0.0])])
    assert p.verdict == S.INCONCLUSIVE and p.low < 0 < p.high


def test_reversed_difference_is_contradicted():
    p = verdict(A, [x - d for x, d in zip(A, [0.20, 0.21, 0.19, 0.20, 0.22])])
    assert p.verdict == S.CONTRADICTED and p.high < 0


def test_a_real_difference_smaller_than_the_minimum_effect_is_not_supported():
    p = verdict(A, [x + d for x, d in zip(A, [0.004, 0.005, 0.006, 0.005, 0.005])], delta=0.01)
    assert p.low > 0 and p.verdict == S.INCONCLUSIVE
    assert verdict(A, [x + d for x, d in zip(A, [0.004, 0.005, 0.006, 0.005, 0.005])], delta=0.0).verdict \
        == S.SUPPORTED


def test_higher_is_better_metrics_are_oriented():
    acc_b = [80.0, 81.0, 79.5, 80.5, 80.0]
    assert verdict([b + 3 for b in acc_b], acc_b, higher=True, delta=0.5).verdict == S.SUPPORTED
    assert verdict([b - 3 for b in acc_b], acc_b, higher=True, delta=0.5).verdict == S.CONTRADICTED


def test_fewer_than_two_seeds_is_inconclusive_with_the_reason():
    p = verdict([1.0], [2.0])
    assert p.verdict == S.INCONCLUSIVE and p.n == 1 and "at least 2" in p.reason
    p = verdict([1.0, 1.1], [2.0])  # pairs only where both arms have the seed
    assert p.n == 1 and p.seeds == [0]


def test_holm_can_turn_a_lone_significant_claim_inconclusive():
    a = _seeds([1.0, 1.0, 1.0, 1.0])
    b = _seeds([1.03, 1.06, 1.02, 1.05])  # d: mean 0.04, sd 0.0183 -> p beyond delta = 0.01 is about 0.02
    alone = S.decide([S.analyse(a, b, False, 0.01)])[0]
    assert alone.p_sup < 0.05 and alone.verdict == S.SUPPORTED
    nulls = [S.analyse(a, _seeds([1.01, 0.99, 1.0, 1.0]), False, 0.01) for _ in range(5)]
    family = S.decide([S.analyse(a, b, False, 0.01), *nulls])
    assert family[0].p_sup == pytest.approx(alone.p_sup) and family[0].p_sup_adj >= 0.05
    assert family[0].verdict == S.INCONCLUSIVE


def test_min_effect_must_be_a_number_at_least_zero():
    with pytest.raises(ValueError, match="--min-effect: expected a number >= 0, got -1"):
        S.analyse({0: 1.0}, {0: 1.0}, False, -1)


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
    assert claims["cerebral-identical"]["verdict"] == "INCONCLUSIVE"
    for arm in ("lstm-matched", "lstm-x2", "lstmp"):
        assert claims[arm]["verdict"] == "NOT EVALUATED" and arm in claims[arm]["reason"]
    # Holm over the 3 claims that could be tested
    raw = [claims[a]["p_sup"] for a in ("lstm", "lstm2", "cerebral-identical")]
    assert [claims[a]["p_sup_holm"] for a in ("lstm", "lstm2", "cerebral-identical")] == pytest.approx(S.holm(raw))
    assert len(R.CLAIMS) == 6 and sum(c[3] for c in R.CLAIMS) == 3
    assert not any(c in claims for c in ("gru", "cerebral"))  # family claims: only when both arms ran


def test_family_claims_join_the_holm_family_when_their_arms_ran():
    base = {"cerebral": A, "lstm": [x + 0.2 for x in A]}
    family = {"gru": [x + 0.3 for x in A], "cerebral-gru": A, "cerebral-k3": [x + 0.001 * i for i, x in enumerate(A)]}
    arms = list(base) + list(family)
    rows = R.evaluate_claims(fake_results({**base, **family}, "bpc"), CHARLM, 0.01, arms)
    by_pair = {(c["winner"], c["loser"]): c for c in rows}
    assert by_pair[("cerebral-gru", "gru")]["verdict"] == "SUPPORTED"
    assert by_pair[("cerebral-k3", "cerebral")]["verdict"] in ("INCONCLUSIVE", "CONTRADICTED")
    assert ("cerebral-peephole", "cerebral") not in by_pair  # its arm did not run: not listed at all
    tested = [c for c in rows if c["verdict"] != "NOT EVALUATED"]
    assert len(tested) == 3  # cerebral vs lstm, and the two family claims: Holm over all three
    raw = [c["p_sup"] for c in tested]
    assert [c["p_sup_holm"] for c in tested] == pytest.approx(S.holm(raw))


def test_accuracy_claims_use_the_higher_is_better_orientation():
    results = fake_results({"cerebral": [91.0, 92.0, 90.5], "lstm": [88.0, 88.5, 87.0]}, "accuracy")
    (c,) = [c for c in R.evaluate_claims(results, CLASSIFY, 0.5, ["cerebral", "lstm"]) if c["loser"] == "lstm"]
    assert c["mean"] == pytest.approx(3.333333333) and c["verdict"] == "SUPPORTED"
    assert c["metric"] == "test accuracy"

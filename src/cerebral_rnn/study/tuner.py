"""Tuning with Optuna: one study per arm, the same search space, sampler and number of trials for every arm.

The search space (:func:`search_space`) is the learning rate (log-uniform over ``lr_range``), the model's
input and output dropout (uniform over [0, ``dropout_max``]), AdamW's weight decay (log-uniform over
``weight_decay_range``), with ``tune_forget_bias`` the forget-gate bias (0 or 1), and with ``tune_recurrent``
the recurrent layer's weight dropout and recurrent dropout (uniform over [0, ``dropout_max``]). Every arm's study uses
``optuna.samplers.QMCSampler`` (scrambled Sobol points, seeded with ``SAMPLER_SEED``): its points do not depend
on the trials' results, so every arm is tuned over exactly the same N settings, the trials are independent and
can train in any order or on any machine, and a rerun draws the same settings. Trial t trains with seed
``TUNE_SEED0 + t`` (never a final seed) under the same epoch cap and early stopping as the final runs, and is
scored by its best validation loss; the test split is never used. The arm's chosen setting is its trial with
the lowest score (ties: the earlier trial); a trial whose validation loss was never finite counts as failed.

The studies live in an RDB storage: by default the SQLite file ``tuning.db`` in ``--out``; ``--storage URL``
takes any URL SQLAlchemy knows (e.g. ``postgresql://host/db``) so that the studies can be read and shared by
several machines. Study names carry a fingerprint of the training config and the data, so one storage can hold
many studies. Resuming reuses a study's existing trials (their settings), so an interrupted tuning phase
continues with the same settings.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings

TUNE_SEED0 = 10_000  # tuning trial t trains with seed TUNE_SEED0 + t; final seeds must stay below it
SAMPLER_SEED = 2020  # the QMC sampler's seed, the same for every arm
DEFAULT_STORAGE_FILE = "tuning.db"

SETTING_KEYS = ("lr", "input_dropout", "output_dropout", "weight_decay", "forget_bias", "rnn_weight_dropout",
                "recurrent_dropout", "zoneout", "layer_norm")


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ValueError("--tune: Optuna is missing; install the study extra: pip install 'cerebral-rnn[study]'") \
            from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def search_space(cfg: dict) -> dict:
    """{name: optuna distribution} of the tuned settings, from cfg's lr_range, dropout_max, weight_decay_range
    and tune_forget_bias."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    lo, hi = cfg["lr_range"]
    space = {"lr": FloatDistribution(lo, hi, log=True)}
    if cfg.get("dropout_max", 0) > 0:
        space["input_dropout"] = FloatDistribution(0.0, cfg["dropout_max"])
        space["output_dropout"] = FloatDistribution(0.0, cfg["dropout_max"])
    if cfg.get("weight_decay_range"):
        wlo, whi = cfg["weight_decay_range"]
        space["weight_decay"] = FloatDistribution(wlo, whi, log=True)
    if cfg.get("tune_forget_bias"):
        space["forget_bias"] = CategoricalDistribution([0.0, 1.0])
    if cfg.get("tune_recurrent") and cfg.get("dropout_max", 0) > 0:  # the recurrent layer's own regularisers
        space["rnn_weight_dropout"] = FloatDistribution(0.0, cfg["dropout_max"])
        space["recurrent_dropout"] = FloatDistribution(0.0, cfg["dropout_max"])
        space["zoneout"] = FloatDistribution(0.0, cfg["dropout_max"])
    return space


def describe_space(cfg: dict) -> str:
    """The search space in words, for the summary and --dry-run."""
    lo, hi = cfg["lr_range"]
    parts = [f"learning rate log-uniform over [{lo:g}, {hi:g}]"]
    if cfg.get("dropout_max", 0) > 0:
        parts.append(f"input and output dropout each uniform over [0, {cfg['dropout_max']:g}]")
    if cfg.get("weight_decay_range"):
        wlo, whi = cfg["weight_decay_range"]
        parts.append(f"AdamW weight decay log-uniform over [{wlo:g}, {whi:g}]")
    if cfg.get("tune_forget_bias"):
        parts.append("forget-gate bias from {0, 1}")
    if cfg.get("tune_recurrent") and cfg.get("dropout_max", 0) > 0:
        parts.append(f"the RNN's weight dropout (DropConnect on W_hh), recurrent dropout and zoneout each uniform "
                     f"over [0, {cfg['dropout_max']:g}]")
    return "; ".join(parts)


def storage_url(cfg: dict, out: str) -> str:
    url = cfg.get("storage")
    if url:
        return url
    return "sqlite:///" + os.path.abspath(os.path.join(out, DEFAULT_STORAGE_FILE))


def study_name(arm: str, fingerprint: str) -> str:
    return f"cerebral-rnn:{arm}:{fingerprint[:16]}"


def fingerprint(training_config: dict, data_id: str) -> str:
    """A digest of what the trials compute (the training config and the data)."""
    blob = json.dumps({"config": training_config, "data": data_id}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _open(optuna, arm: str, cfg: dict, out: str, fp: str):
    sampler = optuna.samplers.QMCSampler(scramble=True, seed=SAMPLER_SEED, warn_independent_sampling=False,
                                         warn_asynchronous_seeding=False)
    return optuna.create_study(study_name=study_name(arm, fp), storage=storage_url(cfg, out), sampler=sampler,
                               direction="minimize", load_if_exists=True)


def check_installed() -> None:
    """ValueError with the install command when Optuna is missing."""
    _optuna()


def check_storage(url: str | None) -> None:
    """``--storage``: ValueError naming it when the database cannot be opened (checked before any training)."""
    if not url:
        return
    optuna = _optuna()
    try:
        optuna.storages.RDBStorage(url)
    except Exception as e:  # noqa: BLE001 - SQLAlchemy and drivers raise many kinds: all mean "cannot open"
        raise ValueError(f"--storage: cannot open {url!r} ({type(e).__name__}: {e})") from None


def trial_settings(arms: list[str], cfg: dict, out: str, fp: str, ask: bool = True) -> dict[str, list[dict]]:
    """For every arm, its ``cfg["tune"]`` trials: {"trial", "seed", "lr", "input_dropout", "output_dropout",
    "weight_decay", "forget_bias"} (settings not in the search space take cfg's fixed values). Trials already
    in the arm's study are reused (resume); the others are asked from its sampler (with ``ask`` False: left
    out)."""
    optuna = _optuna()
    space = search_space(cfg)
    out_settings = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental-feature warnings
        for arm in arms:
            study = _open(optuna, arm, cfg, out, fp)
            have = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
            params = [t.params for t in have[:cfg["tune"]]]
            while ask and len(params) < cfg["tune"]:
                params.append(study.ask(space).params)
            out_settings[arm] = [setting_of(cfg, t, p) for t, p in enumerate(params)]
    return out_settings


def setting_of(cfg: dict, trial: int, params: dict) -> dict:
    """A trial's full setting: the tuned values, and cfg's fixed values for the rest."""
    s = {"trial": trial, "seed": TUNE_SEED0 + trial, "lr": float(params.get("lr", cfg["lr"])),
         "input_dropout": float(params.get("input_dropout", cfg.get("input_dropout", 0.0))),
         "output_dropout": float(params.get("output_dropout", cfg.get("output_dropout", 0.0))),
         "weight_decay": float(params.get("weight_decay", cfg.get("weight_decay", 0.0))),
         "forget_bias": params.get("forget_bias"),
         "rnn_weight_dropout": float(params.get("rnn_weight_dropout", cfg.get("rnn_weight_dropout") or 0.0)),
         "recurrent_dropout": float(params.get("recurrent_dropout", cfg.get("recurrent_dropout") or 0.0)),
         "zoneout": float(params.get("zoneout", cfg.get("zoneout") or 0.0)),
         "layer_norm": bool(cfg.get("layer_norm") or False)}  # a fixed choice, never tuned
    if s["forget_bias"] is not None:
        s["forget_bias"] = float(s["forget_bias"])
    return s


def record(arms_trials: dict[str, list[dict]], cfg: dict, out: str, fp: str) -> None:
    """Tell every arm's study the score of each of its trials (best validation loss; NaN: failed)."""
    optuna = _optuna()
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for arm, trials in arms_trials.items():
            study = _open(optuna, arm, cfg, out, fp)
            by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
            for t in trials:
                old = by_number.get(t["trial"])
                if old is None or old.state.is_finished():
                    continue
                score = t["best_val"]["loss"]
                if score is None or not math.isfinite(score):
                    study.tell(t["trial"], state=TrialState.FAIL)
                else:
                    study.tell(t["trial"], float(score))


def choose(trials: list[dict]) -> dict:
    """The trial with the lowest best validation loss (ties: the earlier trial; non-finite scores last)."""
    if not trials:
        raise ValueError("tuning: no trial of this arm finished; nothing to choose from")

    def score(t):
        v = t["best_val"]["loss"]
        return (math.inf if v is None or not math.isfinite(v) else v, t["trial"])

    return min(trials, key=score)

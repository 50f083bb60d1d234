"""What a study run leaves behind: metrics.csv (per epoch), runs.csv (per run), summary.md with the claims
checked by paired statistics (:mod:`.stats`), PNG loss curves and, for charlm, text samples. Everything here is
computed from the runs' recorded metrics and results."""

from __future__ import annotations

import csv
import io
import math
import statistics

import torch

from . import arms as _arms
from . import corpus as _corpus
from . import model as _model
from . import stats as _stats
from .tasks import Task

# Train loss (nats/char) at epoch 500 in the paper (Kumar 2020), for reference only.
PAPER_EPOCH500 = {"cerebral": 0.398, "lstm": 0.911, "lstm2": 0.568}

# The claims: (text, arm that should win, arm it should beat, from the paper?).
CLAIMS = (
    ("Cerebral LSTM beats a single LSTM", "cerebral", "lstm", True),
    ("Cerebral LSTM beats a two-stacked LSTM", "cerebral", "lstm2", True),
    ("distinct initialisation beats identical initialisation", "cerebral", "cerebral-identical", True),
    ("Cerebral LSTM beats a single LSTM with as many parameters", "cerebral", "lstm-matched", False),
    ("Cerebral LSTM beats an LSTM with h = 2·o·tanh(c) (more than the output scale?)", "cerebral", "lstm-x2", False),
    ("Cerebral LSTM beats an LSTM(2H) with a learned projection (does fixing the projection help?)", "cerebral",
     "lstmp", False),
)
# The family's claims (ours): listed, tested and counted in the one correction only when both arms ran.
FAMILY_CLAIMS = (
    ("Cerebral GRU beats a single GRU", "cerebral-gru", "gru", False),
    ("three paths beat two (Cerebral LSTM, K = 3 vs K = 2)", "cerebral-k3", "cerebral", False),
    ("peephole paths beat plain LSTM paths (Cerebral peephole LSTM vs Cerebral LSTM)", "cerebral-peephole",
     "cerebral", False),
)


# -- CSV tables ------------------------------------------------------------------------------------------------


def metric_columns(task: Task, tuning: bool = False) -> tuple[str, ...]:
    cols = ("model", "seed", "epoch", "train_loss", "val_loss", *(f"val_{c}" for c in task.columns), "seconds")
    return (("trial", "lr", "input_dropout", "output_dropout", "weight_decay", "forget_bias") + cols) if tuning \
        else cols


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    return str(v)


def metrics_csv(rows: list[dict], task: Task, tuning: bool = False) -> str:
    """Per-epoch rows as CSV; floats written with repr, so they read back exactly."""
    cols = metric_columns(task, tuning)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    key = (lambda r: (r["model"], r["trial"], r["epoch"])) if tuning else (lambda r: (r["model"], r["seed"],
                                                                                    r["epoch"]))
    for r in sorted(rows, key=key):
        w.writerow([_cell(r.get(c)) for c in cols])
    return buf.getvalue()


_INT_COLUMNS = {"seed", "epoch", "trial", "epochs", "best_epoch", "width", "parameters"}
_TEXT_COLUMNS = {"model", "phase", "stopped"}


def _parse(col: str, text: str):
    if col in _TEXT_COLUMNS:
        return text
    if text == "":
        return None
    if col in _INT_COLUMNS:
        return int(text)
    if text in ("True", "False"):
        return text == "True"
    return float(text)


def read_csv(path: str) -> list[dict]:
    """Read metrics.csv, tuning_metrics.csv or runs.csv back (numbers as int/float, empty cells as None)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: _parse(k, v) for k, v in r.items()} for r in csv.DictReader(f)]


def run_columns(task: Task) -> tuple[str, ...]:
    return ("phase", "model", "seed", "trial", "lr", "input_dropout", "output_dropout", "weight_decay",
            "forget_bias", "rnn_weight_dropout", "recurrent_dropout", "zoneout", "layer_norm", "width", "parameters", "epochs", "stopped",
            "best_epoch", "best_val_loss", *(f"best_val_{c}" for c in task.columns), "final_train_loss",
            "test_loss", *(f"test_{c}" for c in task.columns), "success")


def run_row(r: dict, task: Task, params: dict) -> dict:
    spec, res = r["spec"], r["result"]
    row = {"phase": spec["phase"], "model": spec["arm"], "seed": spec["seed"], "trial": spec["trial"],
           "lr": spec["lr"], "input_dropout": spec.get("input_dropout", 0.0),
           "output_dropout": spec.get("output_dropout", 0.0), "weight_decay": spec.get("weight_decay", 0.0),
           "rnn_weight_dropout": spec.get("rnn_weight_dropout", 0.0),
           "recurrent_dropout": spec.get("recurrent_dropout", 0.0), "zoneout": spec.get("zoneout", 0.0),
           "layer_norm": bool(spec.get("layer_norm", False)),
           "forget_bias": spec["forget_bias"], "width": r.get("width"),
           "parameters": params.get(spec["arm"]), "epochs": res["epochs"], "stopped": res["stopped"],
           "best_epoch": res["best_epoch"], "best_val_loss": res["best_val"]["loss"],
           "final_train_loss": res["final_train_loss"], "success": res.get("success")}
    for c in task.columns:
        row[f"best_val_{c}"] = res["best_val"][c]
    test = res.get("test") or {}
    row["test_loss"] = test.get("loss")
    for c in task.columns:
        row[f"test_{c}"] = test.get(c)
    return row


def runs_csv(results: list[dict], task: Task, params: dict) -> str:
    """One row per run (tuning trials and final seeds): setting, epochs, how it stopped, best epoch, best
    validation metrics, final train loss, and for final runs the test metrics (best-validation weights)."""
    cols = run_columns(task)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    rows = [run_row(r, task, params) for r in results]
    for row in sorted(rows, key=lambda r: (r["phase"] != "tune", r["model"], r["trial"] or 0, r["seed"])):
        w.writerow([_cell(row[c]) for c in cols])
    return buf.getvalue()


# -- claims ------------------------------------------------------------------------------------------------------


def per_seed(final_results: list[dict], arm: str, task: Task) -> dict[str, dict[int, float]]:
    """For one arm, {seed: value}: test metric (the verdicts' metric), final train loss, best validation
    loss and primary metric, epochs run, best epoch."""
    out = {"test": {}, "final_train_loss": {}, "best_val_loss": {}, "best_val": {}, "epochs": {},
           "best_epoch": {}, "success": {}}
    key = task.primary.key
    for r in final_results:
        if r["spec"]["arm"] != arm or r["spec"]["phase"] != "final" or "test" not in r["result"]:
            continue
        s, res = r["spec"]["seed"], r["result"]
        out["test"][s] = res["test"][key]
        out["final_train_loss"][s] = res["final_train_loss"]
        out["best_val_loss"][s] = res["best_val"]["loss"]
        out["best_val"][s] = res["best_val"][key]
        out["epochs"][s] = res["epochs"]
        out["best_epoch"][s] = res["best_epoch"]
        if res.get("success") is not None:
            out["success"][s] = res["success"]
    return out


def evaluate_claims(final_results: list[dict], task: Task, delta: float, arms: list[str]) -> list[dict]:
    """Every claim whose two arms ran: paired statistics of the test metric with a four-way verdict (one
    Bonferroni correction over every claim tested, see :mod:`.stats`), and the paired difference of the final
    training loss (the paper's metric) beside it with its 95% interval, without a verdict. The family's claims
    are added only where both of their arms ran."""
    tested, rows = [], []
    family = tuple(c for c in FAMILY_CLAIMS if c[1] in arms and c[2] in arms)
    for text, winner, loser, in_paper in CLAIMS + family:
        row = {"claim": text, "winner": winner, "loser": loser, "in_paper": in_paper,
               "metric": f"test {task.primary.key}", "higher_is_better": task.primary.higher_is_better}
        if winner not in arms or loser not in arms:
            row.update(verdict="NOT EVALUATED", reason="arm " + ", ".join(a for a in (winner, loser)
                                                                          if a not in arms) + " not in this run")
            rows.append(row)
            continue
        a, b = per_seed(final_results, winner, task), per_seed(final_results, loser, task)
        p = _stats.analyse(a["test"], b["test"], task.primary.higher_is_better, delta)
        _, tseeds = _stats.paired_differences(a["final_train_loss"], b["final_train_loss"], False)
        tmean, _, tlow, thigh = _stats.t_interval(tseeds)
        p.extra["train"] = {"differences": tseeds, "mean": tmean, "ci": [tlow, thigh], "n": len(tseeds)}
        tested.append(p)
        row["_paired"] = p
        rows.append(row)
    _stats.decide(tested)
    for row in rows:
        p = row.pop("_paired", None)
        if p is None:
            continue
        row.update(verdict=p.verdict, reason=p.reason, n=p.n, seeds=p.seeds, differences=p.differences,
                   mean=p.mean, sd=p.sd, ci=[p.low, p.high], confidence=p.confidence, m=p.m, delta=p.delta,
                   p_sup=p.p_sup, p_sup_adj=p.p_sup_adj, p_con=p.p_con, p_con_adj=p.p_con_adj, p_eq=p.p_eq,
                   p_eq_adj=p.p_eq_adj, mde=p.mde, eq_bound=p.eq_bound, seeds_needed=p.seeds_needed,
                   train_loss=p.extra["train"])
    return _json_safe(rows)


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _f(x, digits: int = 3, signed: bool = False) -> str:
    """``digits`` decimals; a nonzero number that would print as zero in scientific notation instead."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    sign = "+" if signed else ""
    if x != 0 and abs(x) < 0.5 * 10 ** -digits:
        return f"{x:{sign}.2e}"
    return f"{x:{sign}.{digits}f}"


def _p(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.3g}" if x >= 0.001 else f"{x:.1e}"


def _conf(c: dict) -> str:
    """The deciding interval's confidence as a percentage, e.g. '99.17%'."""
    conf = c.get("confidence")
    return "—" if conf is None else f"{100 * conf:.4g}%"


def verdict_lines(claims: list[dict]) -> list[str]:
    """One short line per claim, for the terminal."""
    out = []
    for c in claims:
        if c["verdict"] == "NOT EVALUATED":
            out.append(f"{c['winner']} vs {c['loser']}: not evaluated ({c['reason']})")
            continue
        line = (f"{c['winner']} vs {c['loser']}: {c['verdict']} on {c['metric']} (mean difference "
                f"{_f(c['mean'], 4, True)}, deciding {_conf(c)} interval [{_f(c['ci'][0], 4, True)}, "
                f"{_f(c['ci'][1], 4, True)}], n = {c['n']}, δ = {c['delta']:g})")
        if c["verdict"] == _stats.INCONCLUSIVE and c.get("seeds_needed"):
            line += f"; about {_stats.seeds_text(c['seeds_needed'])} paired seeds would decide it"
        out.append(line)
    return out


# -- the summary ---------------------------------------------------------------------------------------------------


def _wall_text(info: dict) -> str:
    runs = info.get("invocations") or []
    total = sum(i.get("wall_seconds", 0.0) for i in runs)
    if len(runs) > 1:
        return f"wall time {total:.0f} s over {len(runs)} invocations (it was interrupted and resumed)"
    if runs:
        return f"wall time {total:.0f} s"
    return f"wall time of this invocation {info['wall_seconds']:.0f} s"


def _seed_text(seeds: list[int]) -> str:
    """Seeds as ranges: 0-47, 50."""
    parts, run = [], []
    for s in sorted(seeds):
        if run and s == run[-1] + 1:
            run.append(s)
            continue
        if run:
            parts.append(f"{run[0]}–{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)))
        run = [s]
    if run:
        parts.append(f"{run[0]}–{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)))
    return ", ".join(parts)


def _verdict_p(c: dict):
    """The adjusted p-value of the test behind the verdict (for INCONCLUSIVE: the smallest of the three)."""
    ps = {_stats.SUPPORTED: c.get("p_sup_adj"), _stats.CONTRADICTED: c.get("p_con_adj"),
          _stats.EQUIVALENT: c.get("p_eq_adj")}
    if c["verdict"] in ps:
        return ps[c["verdict"]]
    finite = [p for p in ps.values() if p is not None and not (isinstance(p, float) and math.isnan(p))]
    return min(finite) if finite else None


def power_paragraph(claims: list[dict], unit: str) -> str:
    """The summary's first paragraph: what was decided, and which claims were underpowered and how many paired
    seeds would settle each."""
    tested = [c for c in claims if c["verdict"] != "NOT EVALUATED"]
    if not tested:
        return "No claim could be evaluated: no claim had both of its arms in this run."
    counts = {v: sum(c["verdict"] == v for c in tested) for v in _stats.VERDICTS}
    decided = ", ".join(f"{counts[v]} {v}" for v in _stats.VERDICTS[:3] if counts[v])
    n = sorted({c["n"] for c in tested})
    text = (f"**Result.** {len(tested)} claim(s) tested at δ = {tested[0]['delta']:g} {unit} with "
            f"{'/'.join(map(str, n))} paired seeds, family-wise error ≤ {_stats.ALPHA}: "
            f"{decided or 'none decided'}" + (f", {counts[_stats.INCONCLUSIVE]} INCONCLUSIVE" if
                                               counts[_stats.INCONCLUSIVE] else "") + ".")
    under = [c for c in tested if c["verdict"] == _stats.INCONCLUSIVE]
    if under:
        parts = []
        for c in under:
            need = c.get("seeds_needed")
            how = (f"about {_stats.seeds_text(need)} paired seeds at the observed sd" if need
                   else "more seeds than can be estimated (observed mean on ±δ, or fewer than 2 seeds)")
            parts.append(f"`{c['winner']}` vs `{c['loser']}` (n = {c['n']}; {how})")
        text += " Underpowered: " + "; ".join(parts) + "."
    else:
        text += " Every claim tested was decided."
    return text


def plot_claims(claims: list[dict], path: str, unit: str) -> bool:
    """claims.png: every tested claim's deciding interval and mean against the ±δ band, one row per claim, the
    verdict written beside it (a forest plot). False when no claim has an interval."""
    rows = [c for c in claims if c["verdict"] != "NOT EVALUATED" and c["ci"][0] is not None]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    delta = rows[0]["delta"]
    colours = {_stats.SUPPORTED: "tab:green", _stats.CONTRADICTED: "tab:red", _stats.EQUIVALENT: "tab:blue",
               _stats.INCONCLUSIVE: "tab:gray"}
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(rows) + 1.6))
    ax.axvspan(-delta, delta, color="tab:blue", alpha=0.12, label=f"±δ = ±{delta:g} {unit}")
    ax.axvline(0, color="black", linewidth=0.8)
    for i, c in enumerate(reversed(rows)):
        col = colours.get(c["verdict"], "black")
        ax.plot(c["ci"], [i, i], color=col, linewidth=2.5)
        ax.plot([c["mean"]], [i], "o", color=col)
        ax.annotate(c["verdict"], (c["ci"][1], i), xytext=(6, -3), textcoords="offset points", fontsize=8, color=col)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{c['winner']} vs {c['loser']} (n={c['n']})" for c in reversed(rows)], fontsize=8)
    ax.set_xlabel(f"mean d = advantage of A over B ({unit}; > 0: A better), deciding {_conf(rows[0])} interval")
    ax.set_title("The claims: deciding intervals against the ±δ band")
    ax.legend(loc="best", fontsize=8)
    ax.margins(x=0.25)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _mean_std(values) -> tuple[float, float]:
    values = list(values)
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def fmt_mean_std(values, digits: int = 3) -> str:
    m, s = _mean_std(values)
    if math.isnan(m):
        return "—"
    return f"{_f(m, digits)} ± {_f(s, digits)}" if not math.isnan(s) else _f(m, digits)


TUNE_SEED0_TEXT = "10000"


def _storage_name(url: str) -> str:
    """A storage URL without a password, and a SQLite file by its name only."""
    if url.startswith("sqlite:///"):
        import os

        return "sqlite:///…/" + os.path.basename(url)
    _, at, tail = url.rpartition("@")
    return ("…@" + tail) if at else url


def _setting(chosen: dict | None) -> str:
    if not chosen:
        return "—"
    s = f"{chosen['lr']:.3g}"
    if chosen.get("input_dropout") or chosen.get("output_dropout"):
        s += f", dropout {chosen.get('input_dropout', 0):.2f}/{chosen.get('output_dropout', 0):.2f}"
    if chosen.get("weight_decay"):
        s += f", wd {chosen['weight_decay']:.1e}"
    if chosen.get("rnn_weight_dropout") or chosen.get("recurrent_dropout"):
        s += (f", RNN weight/recurrent dropout {chosen.get('rnn_weight_dropout', 0):.2f}/"
              f"{chosen.get('recurrent_dropout', 0):.2f}")
    if chosen.get("zoneout"):
        s += f", zoneout {chosen['zoneout']:.2f}"
    if chosen.get("layer_norm"):
        s += ", layer norm"
    if chosen.get("forget_bias") is not None:
        s += f", fb {chosen['forget_bias']:g}"
    return s


def summary_markdown(rows: list[dict], final_results: list[dict], info: dict) -> tuple[str, list[dict]]:
    """The run's summary and its claims (JSON-ready). ``info``: task, data, arms, seeds, params, widths,
    config, chosen, tuning, min_effect, path_gaps, wall_seconds, world_size, jobs."""
    task, cfg, arms = info["task"], info["config"], info["arms"]
    m, key = task.primary, task.primary.key
    claims = evaluate_claims(final_results, task, info["min_effect"], arms)
    out = [f"# Cerebral LSTM study — task `{task.name}`", "", power_paragraph(claims, m.unit), "",
           task.intro(cfg, info["data"]), ""]
    if info.get("claims_png"):
        import os

        if plot_claims(claims, info["claims_png"], m.unit):
            info["forest_plot"] = os.path.basename(info["claims_png"])
    tuned = cfg["tune"] > 0
    if tuned:
        setting = (f"a setting tuned per arm ({cfg['tune']} Optuna trials over the same search space, see "
                   f"Tuning)")
    else:
        setting = (f"learning rate {cfg['lr']:g}, input dropout {cfg.get('input_dropout', 0):g}, output dropout "
                   f"{cfg.get('output_dropout', 0):g}, weight decay {cfg.get('weight_decay', 0):g} for every arm "
                   f"(not tuned)")
    stop = (f"early stopping when the validation loss has not improved for {cfg['patience']} epochs, at most "
            f"{cfg['epochs']} epochs" if cfg["patience"] else f"{cfg['epochs']} epochs (no early stopping)")
    out.append(f"Every arm: hidden size H = {cfg['hidden']}, AdamW with a constant learning rate and {setting}, "
               f"batch {cfg['batch_size']}, gradient clipping {cfg['clip']}, {stop}; the test split is measured "
               f"once per run, on the weights of its best validation epoch. Seeds {_seed_text(info['seeds'])} "
               f"({len(info['seeds'])}; seed = initial weights and data order; paired across arms). "
               f"{info['world_size']} process(es), {info['jobs']} run(s) at a time, device {cfg['device']}; "
               f"{_wall_text(info)}.")
    succ = task.success_rule()
    out += ["", "## Arms", "", f"Mean ± standard deviation over seeds. Test {m.label} ({m.unit}) on each run's "
            f"best-validation weights; final train loss ({task.loss_label}) at the run's last epoch (the paper's "
            "metric)." + (f" Successes: runs with {succ}." if succ else ""), ""]
    head = (f"| arm | RNN width | parameters | setting | epochs run | best epoch | final train loss | best val {key} | "
            f"**test {key}** |" + (" successes |" if succ else "") + " s / epoch |")
    out += [head, "|" + "---|" * (head.count("|") - 1)]
    by_run = {}
    for r in rows:
        by_run.setdefault(r["model"], []).append(r["seconds"])
    for arm in arms:
        s = per_seed(final_results, arm, task)
        if not s["test"]:
            continue
        sec = statistics.fmean(by_run[arm]) if by_run.get(arm) else math.nan
        line = (f"| `{arm}` | {info['widths'][arm]} | {info['params'][arm]:,} | {_setting(info['chosen'].get(arm))} | "
                f"{fmt_mean_std(s['epochs'].values(), 1)} | {fmt_mean_std(s['best_epoch'].values(), 1)} | "
                f"{fmt_mean_std(s['final_train_loss'].values())} | {fmt_mean_std(s['best_val'].values())} | "
                f"**{fmt_mean_std(s['test'].values())}** |")
        if succ:
            line += f" {sum(s['success'].values())}/{len(s['success'])} |"
        out.append(line + f" {sec:.2f} |")
    out += ["", ("Seconds per epoch include the validation pass; with several runs at a time they also include "
                 "waiting for a core. The LSTM arms run torch's fused LSTM op, the Cerebral arms the library's "
                 "default backend, so speed differences are partly implementation differences.")]

    out += ["", "## The claims", ""]
    direction = "higher" if m.higher_is_better else "lower"
    tested = [c for c in claims if c["verdict"] != "NOT EVALUATED"]
    n_tested = len(tested)
    conf = _conf(tested[0]) if tested else "—"
    out.append(
        f"Verdicts are about the **test {m.label}** ({m.unit}, {direction} is better). For each claim \"A beats B\" "
        f"and each seed both arms ran, d = the test metric's advantage of A over B (positive: A better on that "
        f"seed). Minimum effect declared in advance: δ = {info['min_effect']:g} {m.unit}. Each claim is decided "
        f"by its **deciding interval**, the two-sided {conf} t-interval of the mean d (Bonferroni over the "
        f"{n_tested} claims tested here: 1 − {_stats.ALPHA}/{n_tested}): **SUPPORTED** if it lies above +δ, "
        f"**CONTRADICTED** if below −δ, **EQUIVALENT** if inside ±δ (two one-sided tests), otherwise "
        f"**INCONCLUSIVE**. The family-wise error of all verdicts together is at most {_stats.ALPHA}. The p "
        f"column is the Bonferroni-adjusted p-value of the test behind the verdict reached, or of the nearest "
        f"one for INCONCLUSIVE (beyond +δ, beyond −δ, within ±δ: below {_stats.ALPHA} exactly when that verdict "
        f"is reached). Power at {int(_stats.POWER * 100)}%: *detectable* is the smallest true |mean d| this run "
        f"would call SUPPORTED or CONTRADICTED four times in five (its n, the observed sd, the correction); "
        f"*equivalence if* the largest true |mean d| it would call EQUIVALENT four times in five; *seeds to "
        f"decide* the paired seeds that the observed mean and sd would need for a verdict. The paper's own metric, "
        f"the final training loss, is shown beside it as a paired mean difference (positive: A lower) with its "
        f"95% interval, without a verdict: a lower training loss is not evidence of a better model.")
    out += ["", (f"| claim | A vs B | verdict (test {key}) | mean d | sd | deciding interval | n | p (adj.) | "
                f"detectable | equivalence if | seeds to decide | paper's metric: final train loss d [95% CI] |"),
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in claims:
        tag = "" if c["in_paper"] else " *(ours)*"
        pair = f"`{c['winner']}` vs `{c['loser']}`"
        if c["verdict"] == "NOT EVALUATED":
            out.append(f"| {c['claim']}{tag} | {pair} | not evaluated: {c['reason']} | | | | | | | | | |")
            continue
        t = c["train_loss"]
        eq = "—" if c.get("eq_bound") is None else f"< {_f(c['eq_bound'], 4)}"
        seeds = _stats.seeds_text(c.get("seeds_needed")) if c["verdict"] == _stats.INCONCLUSIVE else "decided"
        out.append(f"| {c['claim']}{tag} | {pair} | **{c['verdict']}** | {_f(c['mean'], 4, True)} | "
                   f"{_f(c['sd'], 4)} | [{_f(c['ci'][0], 4, True)}, {_f(c['ci'][1], 4, True)}] | {c['n']} | "
                   f"{_p(_verdict_p(c))} | {_f(c.get('mde'), 4)} | {eq} | {seeds} | "
                   f"{_f(t['mean'], 3, True)} [{_f(t['ci'][0], 3, True)}, {_f(t['ci'][1], 3, True)}] |")
    reasons = [f"- `{c['winner']}` vs `{c['loser']}`: INCONCLUSIVE because {c['reason']}." for c in claims
               if c["verdict"] != "NOT EVALUATED" and c["n"] < 2]
    if reasons:
        out += ["", *reasons]
    if info.get("forest_plot"):
        out += ["", f"![The deciding intervals against the ±δ band]({info['forest_plot']})"]
    if task.name == "charlm":
        paper = ", ".join(f"{k} {v}" for k, v in PAPER_EPOCH500.items())
        out += ["", (f"For reference, the paper reports training losses at epoch 500 of {paper} (nats/char; its "
                     f"corpus and sizes differ from this run's, and it reports no held-out metric).")]

    out += ["", "## Runs", "", "Final runs; test metrics on the best-validation weights.", ""]
    cols = ["arm", "seed", "lr", "epochs", "stop", "best epoch", "best val loss", *(f"best val {c}"
            for c in task.columns), "test loss", *(f"test {c}" for c in task.columns)] + (["success"] if succ else [])
    out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in sorted(final_results, key=lambda r: (arms.index(r["spec"]["arm"]) if r["spec"]["arm"] in arms else 99,
                                                  r["spec"]["seed"])):
        res, sp = r["result"], r["spec"]
        vals = [f"`{sp['arm']}`", str(sp["seed"]), f"{sp['lr']:.3g}", str(res["epochs"]), res["stopped"],
                str(res["best_epoch"]), _f(res["best_val"]["loss"], 4),
                *(_f(res["best_val"][c], 4) for c in task.columns), _f(res["test"]["loss"], 4),
                *(_f(res["test"][c], 4) for c in task.columns)]
        if succ:
            vals.append("yes" if res.get("success") else "no")
        out.append("| " + " | ".join(vals) + " |")

    if info.get("tuning"):
        tu = info["tuning"]
        out += ["", "## Tuning", "",
                (f"One Optuna study per arm, each with the same search space ({tu['search_space']}), the same "
                 f"sampler ({tu['sampler']}: its points do not depend on the results, so every arm is tuned over "
                 f"the same {tu['trials_per_arm']} settings) and the same {tu['trials_per_arm']} trials; trial t "
                 f"trains with seed {TUNE_SEED0_TEXT} + t (never a final seed), the same epoch cap and early "
                 f"stopping; scored by the best validation loss. The chosen trial (**bold**) sets the arm's "
                 f"setting for its final seeds. The test split is not used. Studies stored in "
                 f"`{_storage_name(tu['storage'])}`."), "",
                "| arm | trial | lr | input dropout | output dropout | weight decay | forget bias | epochs | "
                "best epoch | best val loss | best val " + key + " |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for arm in arms:
            for t in tu["trials"].get(arm, []):
                bold = "**" if tu["chosen"].get(arm, {}).get("trial") == t["trial"] else ""
                fb = "default" if t["forget_bias"] is None else f"{t['forget_bias']:g}"
                if t["forget_bias"] is not None and arm in _arms.ARMS and not _arms.ARMS[arm].forget_gate:
                    fb = "n/a (no forget gate)"
                out.append(f"| `{arm}` | {bold}{t['trial']}{bold} | {bold}{t['lr']:.3g}{bold} | "
                           f"{t.get('input_dropout', 0):.3f} | {t.get('output_dropout', 0):.3f} | "
                           f"{t.get('weight_decay', 0):.2e} | {fb} | {t['epochs']} | {t['best_epoch']} | "
                           f"{bold}{_f(t['best_val']['loss'], 4)}{bold} | {_f(t['best_val'][key], 4)} |")

    gaps = info.get("path_gaps") or {}
    if gaps:
        out += ["", "## Symmetry check", ""]
        for arm, values in gaps.items():
            if not values:
                continue
            g = max(values)
            if g == 0.0:
                note = "the two paths are still exactly equal: the model stayed a single LSTM with h = 2·o·tanh(c)"
            elif g < 1e-4:
                note = ("equal up to float rounding: the paths are computed by different rows of the same matrix "
                        "products, whose rounding can differ, so they drift apart only by rounding noise")
            else:
                note = "the two paths differ"
            out.append(f"- `{arm}`: max |upper − lower| over all RNN parameters after training = {g:.3g} "
                       f"(largest over {len(values)} seed(s)) — {note}.")
    return "\n".join(out) + "\n", claims


# -- curves ------------------------------------------------------------------------------------------------


def _by_run(rows: list[dict]) -> dict[tuple[str, int], list[dict]]:
    runs: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        runs.setdefault((r["model"], r["seed"]), []).append(r)
    for v in runs.values():
        v.sort(key=lambda r: r["epoch"])
    return runs


def plot_curves(rows: list[dict], path: str, arms: list[str], task: Task) -> None:
    """Train and validation loss per epoch: mean line and min–max band over the seeds still training at that
    epoch (runs stop early at different epochs), one colour per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
    runs = _by_run(rows)
    for arm in arms:
        seeds = [run for (m, _), run in runs.items() if m == arm]
        if not seeds:
            continue
        epochs = sorted({r["epoch"] for run in seeds for r in run})
        for ax, key in zip(axes, ("train_loss", "val_loss")):
            vals = [[r[key] for run in seeds for r in run if r["epoch"] == e] for e in epochs]
            mean = [statistics.fmean(v) for v in vals]
            line, = ax.plot(epochs, mean, label=arm, marker="." if len(epochs) < 30 else None)
            ax.fill_between(epochs, [min(v) for v in vals], [max(v) for v in vals], color=line.get_color(),
                            alpha=0.2, linewidth=0)
    for ax, title in zip(axes, ("training loss (epoch mean)", "validation loss")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(task.loss_label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Cerebral LSTM study, task {task.name}: mean over seeds, band = min–max")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- text samples ------------------------------------------------------------------------------------------


@torch.no_grad()
def generate(model, vocab: _corpus.Vocab, prime: str, length: int, temperature: float, seed: int = 0) -> str:
    """Prime the model with ``prime`` then sample ``length`` characters (never the unknown symbol)."""
    if not isinstance(prime, str) or not prime:
        raise ValueError("--prime: expected a non-empty text")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"--length: expected a positive int, got {length!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"--temperature: expected a positive number, got {temperature!r}")
    ids = vocab.encode(prime)
    if bool((ids == 0).all()):
        raise ValueError(f"--prime: none of the characters of {prime!r} is in the checkpoint's vocabulary")
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    logits, state = model(ids.view(-1, 1).to(device))  # (L, 1, V)
    out = []
    for _ in range(length):
        z = logits[-1, 0].float().cpu() / temperature
        z[0] = -math.inf  # never emit the unknown symbol
        nxt = int(torch.multinomial(torch.softmax(z, dim=-1), 1, generator=g))
        out.append(nxt)
        logits, state = model(torch.tensor([[nxt]], device=device), state)
    return vocab.decode(out)


def model_from_checkpoint(ckpt: dict):
    """(model, vocabulary) of a charlm checkpoint; ValueError for another task's."""
    task = ckpt.get("task_info", {}).get("task")
    if task != "charlm":
        raise ValueError(f"--checkpoint: a {task} checkpoint; generate needs one from --task charlm")
    model = _model.build_model(ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    return model, _corpus.Vocab(list(ckpt["task_info"]["vocab"]))

"""What a study run leaves behind: metrics CSV, markdown summary with the paper's claims checked against the
metrics, PNG loss curves and text samples. Everything here is computed from the metrics rows."""

from __future__ import annotations

import csv
import io
import math
import statistics

import torch

from . import corpus as _corpus
from . import models as _models

METRIC_COLUMNS = ("model", "seed", "epoch", "train_loss", "val_loss", "val_bpc", "seconds")

# Train loss (nats/char) at epoch 500 in the paper (Kumar 2020), for reference only.
PAPER_EPOCH500 = {"cerebral": 0.398, "lstm": 0.911, "lstm2": 0.568}

# The paper's claims: (text, arm that should win, arm it should beat). Lower loss wins.
CLAIMS = (
    ("Cerebral LSTM beats a single LSTM", "cerebral", "lstm", True),
    ("Cerebral LSTM beats a two-stacked LSTM", "cerebral", "lstm2", True),
    ("distinct initialisation beats identical initialisation", "cerebral", "cerebral-identical", True),
    ("Cerebral LSTM beats a single LSTM with as many parameters", "cerebral", "lstm-matched", False),
)


# -- metrics CSV -------------------------------------------------------------------------------------------


def metrics_csv(rows: list[dict]) -> str:
    """CSV text with exactly METRIC_COLUMNS; floats written with repr, so they read back exactly."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(METRIC_COLUMNS)
    for r in sorted(rows, key=lambda r: (r["model"], r["seed"], r["epoch"])):
        w.writerow([r["model"], r["seed"], r["epoch"], *(repr(float(r[k])) for k in METRIC_COLUMNS[3:])])
    return buf.getvalue()


def read_metrics_csv(path: str) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return [{"model": r["model"], "seed": int(r["seed"]), "epoch": int(r["epoch"]),
                 **{k: float(r[k]) for k in METRIC_COLUMNS[3:]}} for r in csv.DictReader(f)]


# -- aggregation -------------------------------------------------------------------------------------------


def _by_run(rows: list[dict]) -> dict[tuple[str, int], list[dict]]:
    runs: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        runs.setdefault((r["model"], r["seed"]), []).append(r)
    for v in runs.values():
        v.sort(key=lambda r: r["epoch"])
    return runs


def per_seed(rows: list[dict], arm: str) -> dict[str, list[float]]:
    """For one arm, one value per seed: final train loss, best validation loss and bpc, last epoch,
    mean seconds per epoch."""
    out = {"final_train_loss": [], "best_val_loss": [], "best_val_bpc": [], "epochs": [], "seconds": []}
    for (model, _seed), run in sorted(_by_run(rows).items()):
        if model != arm:
            continue
        out["final_train_loss"].append(run[-1]["train_loss"])
        out["best_val_loss"].append(min(r["val_loss"] for r in run))
        out["best_val_bpc"].append(min(r["val_bpc"] for r in run))
        out["epochs"].append(run[-1]["epoch"])
        out["seconds"].append(statistics.fmean(r["seconds"] for r in run))
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def fmt_mean_std(values: list[float], digits: int = 3) -> str:
    m, s = _mean_std(values)
    if math.isnan(m):
        return "—"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if not math.isnan(s) else f"{m:.{digits}f}"


def compare(rows: list[dict], winner: str, loser: str, metric: str) -> dict | None:
    """Does ``winner`` have a lower ``metric`` (a per_seed key) than ``loser``? None when either arm is
    missing. ``beyond_spread``: the seed ranges [min, max] of the two arms do not overlap (None with < 2 seeds)."""
    a, b = per_seed(rows, winner)[metric], per_seed(rows, loser)[metric]
    if not a or not b:
        return None
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        beyond = None
    else:
        beyond = max(a) < min(b) or max(b) < min(a)
    return {"winner": winner, "loser": loser, "metric": metric, "mean_winner": ma, "mean_loser": mb,
            "difference": mb - ma, "relative": (mb - ma) / mb if mb else math.nan,
            "supported": ma < mb, "beyond_spread": beyond, "seeds": (len(a), len(b))}


def _verdict(c: dict) -> str:
    if c["beyond_spread"] is None:
        spread = "spread unknown (one seed)"
    elif c["beyond_spread"]:
        spread = "beyond the seed spread"
    else:
        spread = "within the seed spread"
    word = "supports" if c["supported"] else "does not support"
    return f"{word} it ({spread})"


def claim_lines(rows: list[dict]) -> list[str]:
    """One markdown line per claim, judged on final training loss (the paper's measure) and best
    validation bpc, from the metrics alone."""
    lines = []
    for text, winner, loser, in_paper in CLAIMS:
        tag = "paper's claim" if in_paper else "not in the paper; a parameter-fair check"
        train = compare(rows, winner, loser, "final_train_loss")
        val = compare(rows, winner, loser, "best_val_bpc")
        if train is None or val is None:
            missing = [a for a in (winner, loser) if not per_seed(rows, a)["epochs"]]
            lines.append(f"- **{text}** ({tag}): not evaluated — arm {', '.join(missing)} not in this run.")
            continue
        verdict = "SUPPORTED" if train["supported"] and val["supported"] else (
            "NOT SUPPORTED" if not train["supported"] and not val["supported"] else "MIXED")
        lines.append(
            f"- **{text}** ({tag}; `{winner}` vs `{loser}`): **{verdict}**. "
            f"Final train loss {train['mean_winner']:.3f} vs {train['mean_loser']:.3f} nats/char "
            f"(difference {train['difference']:+.3f}, {100 * train['relative']:+.1f}%): this run "
            f"{_verdict(train)}. Best validation {val['mean_winner']:.3f} vs {val['mean_loser']:.3f} bpc "
            f"(difference {val['difference']:+.3f}, {100 * val['relative']:+.1f}%): {_verdict(val)}.")
    return lines


def summary_markdown(rows: list[dict], info: dict) -> str:
    """The run's summary. ``info``: arms, params {arm: n}, widths {arm: w}, train_chars_per_epoch, config,
    corpus (describe()), path_gaps {arm: [gap per seed]}, wall_seconds, world_size."""
    cfg = info["config"]
    out = ["# Cerebral LSTM study — summary", ""]
    c = info["corpus"]
    out.append(f"Character-level language model (embedding {cfg['embedding']} → RNN → linear head over "
               f"{info['vocab_size']} symbols), windows of {cfg['seq_len']} characters, batch "
               f"{cfg['batch_size']}, Adam lr {cfg['lr']}, gradient clipping {cfg['clip']}, "
               f"{cfg['epochs']} epochs, seeds {', '.join(map(str, info['seeds']))}. Corpus "
               f"`{c['source']}` ({c['characters']} characters, sha256 `{c['sha256'][:16]}…`, "
               f"Python {c['python_version']}); 90/10 contiguous split. Hidden size H = {cfg['hidden']}. "
               f"{info['world_size']} process(es), device {cfg['device']}, wall time of this invocation "
               f"{info['wall_seconds']:.0f} s.")
    out += ["", ("Mean ± standard deviation over seeds. Train loss: mean per-character cross-entropy (nats) of "
                 "the last epoch. Validation: best epoch's bits per character."), ""]
    out.append("| arm | RNN width | parameters | final train loss | best val bpc | s / epoch | train chars / s |")
    out.append("|---|---|---|---|---|---|---|")
    for arm in info["arms"]:
        s = per_seed(rows, arm)
        if not s["epochs"]:
            continue
        sec = statistics.fmean(s["seconds"])
        cps = info["train_chars_per_epoch"] / sec if sec > 0 else math.nan
        out.append(f"| `{arm}` | {info['widths'][arm]} | {info['params'][arm]:,} | "
                   f"{fmt_mean_std(s['final_train_loss'])} | {fmt_mean_std(s['best_val_bpc'])} | {sec:.2f} | "
                   f"{cps:,.0f} |")
    out += ["", ("Seconds per epoch include the validation pass; characters per second are training characters "
                 "per epoch divided by that. The LSTM arms run torch's fused LSTM op, the Cerebral arms the "
                 "library's default backend, so speed differences are partly implementation differences."), ""]
    out += ["## The paper's claims, checked against this run", ""]
    out += claim_lines(rows)
    paper = ", ".join(f"{k} {v}" for k, v in PAPER_EPOCH500.items())
    out += ["", ("A difference is *beyond the seed spread* when the two arms' ranges over seeds do not overlap. "
                 f"For reference, the paper reports training losses at epoch 500 of {paper} (nats/char; its "
                 f"corpus and sizes differ from this run's {cfg['epochs']} epochs).")]
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
    return "\n".join(out) + "\n"


# -- curves ------------------------------------------------------------------------------------------------


def plot_curves(rows: list[dict], path: str, arms: list[str]) -> None:
    """Train and validation loss per epoch: mean line and min–max band over seeds, one colour per arm."""
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
        ax.set_ylabel("cross-entropy (nats / character)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("Cerebral LSTM study: mean over seeds, band = min–max")
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
    model = _models.build_model(ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    return model, _corpus.Vocab(list(ckpt["vocab"]))

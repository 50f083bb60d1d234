"""``cerebral-rnn`` — the command line: ``reproduce`` (the study) and ``generate`` (text from a checkpoint)."""

from __future__ import annotations

import argparse
import math
import os
import sys

TASKS = ("charlm", "classify", "adding", "copy")
LR_RANGE = (5e-4, 2e-2)  # tuning: learning rates log-uniform over this range
WD_RANGE = (1e-6, 1e-1)  # tuning: AdamW weight decay log-uniform over this range
DROPOUT_MAX = 0.5  # tuning: input and output dropout uniform over [0, DROPOUT_MAX]
_REG = {"input_dropout": 0.0, "output_dropout": 0.0, "weight_decay": 0.0, "dropout_max": DROPOUT_MAX,
        "weight_decay_range": WD_RANGE}

# Presets: values shared by every task, then each task's own. Every flag given explicitly overrides them.
_COMMON = {
    # quick: what `make run` runs (charlm: the first 70,000 characters, about 5 minutes on an idle 2-core CPU
    # from a fresh clone). One torch thread per run and two runs at a time: at these sizes a second
    # thread inside a run gains little on an idle machine and loses up to tenfold when other programs compete
    # for the cores, while two independent runs use both cores fully.
    "quick": {"seeds": 3, "clip": 1.0, "tune": 0, "lr_range": LR_RANGE, "tune_forget_bias": False,
              "threads": 1, "jobs": 2, "min_effect": None, **_REG},
    # tuned: quick, with every arm tuned (4 Optuna trials per arm over the learning rate, dropout and weight decay).
    "tuned": {"seeds": 3, "clip": 1.0, "tune": 4, "lr_range": LR_RANGE, "tune_forget_bias": False,
              "threads": 1, "jobs": 2, "min_effect": None, **_REG},
    # decide: the quick preset's data and sizes with regularised, tuned arms (8 Optuna trials per arm) and as
    # many paired seeds as the power analysis of the quick setting asks for to decide every claim at δ
    # (charlm: δ = 0.02 bpc, about 1% of the test bpc; paired sd up to about 0.05 bpc at the quick setting).
    "decide": {"seeds": 48, "clip": 1.0, "tune": 8, "lr_range": LR_RANGE, "tune_forget_bias": False,
               "threads": 1, "jobs": 2, "min_effect": None, **_REG},
    # paper: the paper's setting as far as it is known, made to finish: 500 epochs as a cap with early
    # stopping, 5 seeds, 8 tuning trials per arm over the learning rate, dropout, weight decay and the
    # forget-gate bias.
    "paper": {"seeds": 5, "clip": 1.0, "tune": 8, "lr_range": LR_RANGE, "tune_forget_bias": True,
              "threads": 1, "jobs": 2, "min_effect": None, **_REG},
}
_TASK = {
    "charlm": {
        "quick": {"epochs": 40, "patience": 3, "hidden": 128, "embedding": 32, "seq_len": 20, "batch_size": 64,
                  "lr": 3e-3, "max_chars": 70_000},
        "paper": {"epochs": 500, "patience": 5, "hidden": 128, "embedding": 32, "seq_len": 20, "batch_size": 64,
                  "lr": 2e-3, "max_chars": None},
    },
    "classify": {
        "quick": {"epochs": 60, "patience": 5, "hidden": 64, "embedding": 32, "batch_size": 32, "lr": 3e-3,
                  "vocab_size": 5000, "max_words": 200},
        "paper": {"epochs": 500, "patience": 10, "hidden": 128, "embedding": 64, "batch_size": 32, "lr": 2e-3,
                  "vocab_size": 10_000, "max_words": 400},
    },
    "adding": {
        "quick": {"epochs": 40, "patience": 5, "hidden": 64, "embedding": 32, "batch_size": 64, "lr": 3e-3,
                  "length": 50, "examples": 10_000},
        "paper": {"epochs": 500, "patience": 10, "hidden": 128, "embedding": 32, "batch_size": 64, "lr": 2e-3,
                  "length": 200, "examples": 50_000},
    },
    "copy": {
        "quick": {"epochs": 40, "patience": 5, "hidden": 64, "embedding": 16, "batch_size": 64, "lr": 3e-3,
                  "length": 20, "examples": 10_000},
        "paper": {"epochs": 500, "patience": 10, "hidden": 128, "embedding": 16, "batch_size": 64, "lr": 2e-3,
                  "length": 100, "examples": 50_000},
    },
}
for _t in TASKS:  # tuned and decide train on exactly the quick preset's data and sizes
    _TASK[_t]["tuned"] = _TASK[_t]["quick"]
    _TASK[_t]["decide"] = _TASK[_t]["quick"]
_TASK["charlm"]["decide"] = {**_TASK["charlm"]["quick"], "min_effect": 0.02}
PRESETS = {p: {t: {**_COMMON[p], **_TASK[t][p]} for t in TASKS} for p in _COMMON}

# Flags that override a preset value (the cfg key is the flag's dest).
_OVERRIDES = ("epochs", "patience", "seeds", "hidden", "embedding", "seq_len", "batch_size", "lr", "clip",
              "max_chars", "threads", "jobs", "tune", "lr_range", "vocab_size", "max_words", "length", "examples",
              "input_dropout", "output_dropout", "weight_decay", "dropout_max", "weight_decay_range",
              "tune_forget_bias", "min_effect", "storage", "rnn_weight_dropout", "recurrent_dropout",
              "zoneout", "layer_norm", "tune_recurrent")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _float_parser(positive: bool, below: float | None = None, expected: str | None = None):
    """argparse type: a finite float, > 0 if ``positive`` else >= 0, and < ``below`` when given."""
    expected = expected or ("a positive number" if positive else "a number >= 0")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if (not math.isfinite(value) or value < 0 or (positive and value == 0)
                or (below is not None and value >= below)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    return parse


_positive_float = _float_parser(positive=True)
_nonnegative_float = _float_parser(positive=False)
_dropout = _float_parser(positive=False, below=1.0, expected="a probability in [0, 1)")


def _seeds(text: str):
    """--seeds: N (seeds 0..N-1), a range A-B (inclusive), or a comma-separated list of both."""
    text = text.strip()
    if text.isdigit():
        n = int(text)
        if n < 1:
            raise argparse.ArgumentTypeError(f"expected a positive count, a range A-B or a list, got {text!r}")
        return n
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        try:
            if dash:
                a, b = int(lo), int(hi)
                if a > b:
                    raise ValueError
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive count N, a range A-B (A <= B) or a "
                                             f"comma-separated list of seeds and ranges, got {text!r}") from None
    if any(s < 0 for s in out) or len(set(out)) != len(out):
        raise argparse.ArgumentTypeError(f"expected distinct seeds >= 0, got {text!r}")
    return out


def _lr_range(text: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH with 0 < LOW < HIGH, got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH with 0 < LOW < HIGH, got {text!r}")
    return lo, hi


def _split(text: str) -> tuple[float, float, float]:
    from cerebral_rnn.study.data import parse_split

    try:
        return parse_split(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--split: ")) from None


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout; shows a default only where there is one (not None, not False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text \
                and action.option_strings:
            text += " (default: %(default)s)"
        return text


def _fmt(key: str, value) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    if value is None:
        return "the task's default" if key == "min_effect" else "all"
    return str(value)


def presets_text() -> str:
    """Every preset's values, per task where they differ: the epilog of ``reproduce --help``."""
    lines = ["presets (explicit flags override them):"]
    for name, per_task in PRESETS.items():
        shared = {k: v for k, v in per_task["charlm"].items() if all(per_task[t].get(k) == v for t in TASKS)}
        lines.append(f"  {name}: " + ", ".join(f"{k}={_fmt(k, v)}" for k, v in shared.items()))
        for t in TASKS:
            own = {k: v for k, v in per_task[t].items() if k not in shared}
            lines.append(f"    --task {t}: " + ", ".join(f"{k}={_fmt(k, v)}" for k, v in own.items()))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from cerebral_rnn.study.arms import ARMS, DEFAULT_ARMS

    parser = argparse.ArgumentParser(prog="cerebral-rnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser(
        "reproduce", help="train every arm of the Cerebral LSTM comparison and report",
        description="Train models that differ only in their recurrent layer (the arms) on the same data, order, "
                    "optimizer (Adam), clipping and seeds, with early stopping on a validation split and a test "
                    "split measured once per run; optionally tune every arm's learning rate with the same "
                    "budget; check the claims with paired statistics over seeds. Writes manifest.json, "
                    "metrics.csv, runs.csv, summary.md, loss_curves.png, samples.txt (charlm) and checkpoints/ "
                    "into --out. Under torchrun it trains with DistributedDataParallel. Explicit flags override "
                    "the preset; a preset's values depend on --task.",
        epilog=presets_text(), formatter_class=_Formatter)
    r.add_argument("--task", choices=TASKS, default="charlm",
                   help="charlm: character language model (the paper's); classify: sequence classification "
                        "(digits pixel by pixel, or --csv); adding, copy: synthetic long-memory problems")
    r.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                   help="quick: 3 seeds, small data, no tuning (make run: under 10 minutes on 2 CPU cores); "
                        "tuned: quick with 4 tuning trials per arm; decide: quick's data with 8 tuning trials per "
                        "arm and 48 seeds, sized to decide the claims (about 1.5 hours on 2 cores); paper: the "
                        "paper's sizes, 5 seeds, 8 tuning trials per arm, 500 epochs as a cap (hours); every "
                        "value is listed at the end")
    g = r.add_argument_group("training (every task)")
    g.add_argument("--epochs", type=_positive_int, metavar="N",
                   help="the cap: at most N passes over the training split (preset)")
    g.add_argument("--patience", type=_nonnegative_int, metavar="P",
                   help="stop a run when its validation loss has not improved for P epochs; 0 = never (preset)")
    g.add_argument("--seeds", type=_seeds, metavar="N|A-B|LIST",
                   help="final seeds: N means 0..N-1; A-B the seeds A to B; or a comma-separated list of seeds "
                        "and ranges, so that seeds can be spread over invocations (preset)")
    g.add_argument("--hidden", type=_positive_int, metavar="H", help="hidden size H of every arm (preset)")
    g.add_argument("--embedding", type=_positive_int, metavar="E",
                   help="token embedding size (charlm, copy, classify --csv) (preset)")
    g.add_argument("--batch-size", type=_positive_int, metavar="B",
                   help="examples per optimizer step, over all processes (preset)")
    g.add_argument("--lr", type=_positive_float, metavar="X",
                   help="AdamW learning rate, constant, for every arm when not tuning (preset)")
    g.add_argument("--clip", type=_nonnegative_float, metavar="X",
                   help="gradient-norm clipping threshold, 0 = off (preset)")
    g.add_argument("--input-dropout", type=_dropout, metavar="P",
                   help="dropout on the RNN's input (embedding or features), every arm, when not tuning (preset)")
    g.add_argument("--output-dropout", type=_dropout, metavar="P",
                   help="dropout on the RNN's output before the head, every arm, when not tuning (preset)")
    g.add_argument("--weight-decay", type=_nonnegative_float, metavar="X",
                   help="AdamW's decoupled weight decay, every arm, when not tuning (preset)")
    g.add_argument("--rnn-weight-dropout", type=_dropout, metavar="P",
                   help="the recurrent layer's weight dropout (DropConnect on W_hh, every backend), every arm, when "
                        "not tuning (default 0)")
    g.add_argument("--recurrent-dropout", type=_dropout, metavar="P",
                   help="the recurrent layer's variational dropout of h where it enters W_hh h, every arm, when not "
                        "tuning (default 0)")
    g.add_argument("--zoneout", type=_dropout, metavar="P",
                   help="the recurrent layer's zoneout: each unit of h (and of every path's c) keeps its previous "
                        "value with probability P in training, the expectation at eval; every arm, when not "
                        "tuning (default 0)")
    g.add_argument("--layer-norm", action="store_true", default=None,
                   help="layer norm inside every arm's recurrent layer (the gates' input and recurrent parts, and "
                        "c for the LSTM kinds; never tuned, the same for every arm; default off)")
    g.add_argument("--split", type=_split, metavar="TR/VA/TE", default=None,
                   help="train/validation/test percentages (default: 90/5/5 contiguous for charlm; 80/10/10 "
                        "stratified for classify; 80/10/10 of each seed's generated examples for adding, copy)")
    g.add_argument("--models", metavar="a,b,...", default=",".join(DEFAULT_ARMS),
                   help="arms to train, from: " + "; ".join(f"{k} = {v.description}" for k, v in ARMS.items()))
    t = r.add_argument_group("tuning and statistics")
    t.add_argument("--tune", type=_nonnegative_int, metavar="N",
                   help="tuning trials per arm (0 = none): the same N settings for every arm, on tuning seeds "
                        "10000.., same cap and early stopping, scored on validation; the final seeds use each "
                        "arm's best (preset)")
    t.add_argument("--lr-range", type=_lr_range, metavar="LOW,HIGH",
                   help=f"tuning: learning rates log-uniform over [LOW, HIGH] (preset: {LR_RANGE[0]:g},"
                        f"{LR_RANGE[1]:g})")
    t.add_argument("--dropout-max", type=_dropout, metavar="P",
                   help="tuning: input and output dropout uniform over [0, P]; 0 = not tuned (preset)")
    t.add_argument("--weight-decay-range", type=_lr_range, metavar="LOW,HIGH",
                   help="tuning: AdamW weight decay log-uniform over [LOW, HIGH] (preset)")
    t.add_argument("--tune-forget-bias", action=argparse.BooleanOptionalAction, default=None,
                   help="tuning: also draw the forget-gate bias of each trial from {0, 1} (preset: on for paper)")
    t.add_argument("--tune-recurrent", action="store_true", default=None,
                   help="tuning: also draw the recurrent layer's weight dropout, recurrent dropout and zoneout, "
                        "each from [0, --dropout-max], for every arm")
    t.add_argument("--storage", metavar="URL", default=None,
                   help="tuning: the Optuna storage (any SQLAlchemy URL, e.g. postgresql://host/db, to share the "
                        "studies between machines); default: sqlite in --out/tuning.db")
    t.add_argument("--min-effect", type=_nonnegative_float, metavar="DELTA", default=None,
                   help="the minimum effect δ a claim must beat, in the test metric's unit (default: charlm "
                        "0.01 bpc; classify 0.5 percentage points of accuracy; adding 0.01 MSE; copy 5%% of the "
                        "memoryless baseline cross-entropy)")
    c = r.add_argument_group("charlm")
    c.add_argument("--corpus", metavar="PATH", default=None,
                   help="UTF-8 (or --encoding) text file; default: CPython's pydoc_data.topics, no download")
    c.add_argument("--encoding", default="utf-8", metavar="ENC", help="text encoding of --corpus or --csv")
    c.add_argument("--seq-len", type=_positive_int, metavar="L",
                   help="characters per training window; the paper used 20 (preset)")
    c.add_argument("--max-chars", type=_positive_int, metavar="N",
                   help="use only the corpus's first N characters (preset: quick and tuned 70000, paper all)")
    k = r.add_argument_group("classify")
    k.add_argument("--digits-rows", action="store_true",
                   help="read the embedded digits row by row (8 steps of 8 pixels) instead of pixel by pixel")
    k.add_argument("--csv", metavar="PATH", default=None,
                   help="a CSV with a header row: classify its texts (--text-column) into its labels "
                        "(--label-column) instead of the digits")
    k.add_argument("--text-column", metavar="C", default=None, help="with --csv: the column holding the text")
    k.add_argument("--label-column", metavar="C", default=None, help="with --csv: the column holding the label")
    k.add_argument("--vocab-size", type=_positive_int, metavar="N",
                   help="with --csv: keep the N most frequent words of the training split (preset)")
    k.add_argument("--max-words", type=_positive_int, metavar="N",
                   help="with --csv: keep the first N words of each text (preset)")
    s = r.add_argument_group("adding, copy")
    s.add_argument("--length", type=_positive_int, metavar="T",
                   help="sequence length T (adding) or number of blanks T (copy: T + 20 steps) (preset)")
    s.add_argument("--examples", type=_positive_int, metavar="N",
                   help="examples generated per seed, split by --split (preset)")
    o = r.add_argument_group("running")
    o.add_argument("--out", metavar="DIR", default="runs/study", help="output folder")
    o.add_argument("--resume", action="store_true",
                   help="continue the run in --out where it stopped (per run), skipping finished runs; the config "
                        "must match its manifest (--epochs, --seeds, --models, --jobs and --threads may change); "
                        "keep --threads and the machine the same for bit-identical losses")
    o.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to train")
    o.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: this machine, --jobs runs at a time in worker processes; ray: every run a Ray task "
                        "on the cluster at --address (every node needs this package and --out on a shared file "
                        "system)")
    o.add_argument("--address", metavar="ADDR", default=None,
                   help="with --executor ray: the cluster to join (default: $RAY_ADDRESS, else a local cluster "
                        "of --jobs CPUs)")
    o.add_argument("--dry-run", action="store_true",
                   help="print the plan (the runs, and their time estimated from one timed epoch of each arm) "
                        "and stop; nothing is written")
    o.add_argument("--report-only", action="store_true",
                   help="train nothing: rebuild summary.md, runs.csv and the plots from the runs finished in --out "
                        "(every final seed found there), with the config in its manifest.json")
    o.add_argument("--jobs", type=_positive_int, metavar="N",
                   help="train up to N runs at once in separate processes (1 under torchrun) (preset: 2)")
    o.add_argument("--threads", type=_positive_int, metavar="N", default=None,
                   help="CPU threads for torch per run (preset: 1); 1 is much faster at small sizes when other "
                        "programs compete for the cores")
    o.add_argument("--quiet", action="store_true", help="print nothing but errors")
    o.add_argument("--stop-after-epochs", type=_positive_int, default=None, help=argparse.SUPPRESS)  # test hook

    g = sub.add_parser("generate", help="sample text from a charlm study checkpoint",
                       description="Prime a trained character model from a checkpoint written by `reproduce "
                                   "--task charlm` and sample characters from it.",
                       formatter_class=_Formatter)
    g.add_argument("--checkpoint", required=True, metavar="PATH", help="a .pt file from <out>/checkpoints/")
    g.add_argument("--prime", required=True, metavar="TEXT", help="text to start from")
    g.add_argument("--length", type=_positive_int, default=200, metavar="N", help="characters to sample")
    g.add_argument("--temperature", type=_positive_float, default=0.8, metavar="T",
                   help="softmax temperature: < 1 safer, > 1 wilder")
    g.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the sampler")
    return parser


def reproduce_config(args: argparse.Namespace) -> dict:
    """The preset's values for the task, overridden by every flag given explicitly."""
    from cerebral_rnn.study.arms import check_arms
    from cerebral_rnn.study.tasks import get_task

    task = get_task(args.task)
    cfg = dict(PRESETS[args.preset][args.task])
    for key in _OVERRIDES:
        value = getattr(args, key)
        if value is not None:
            cfg[key] = value
    cfg["lr_range"] = tuple(cfg["lr_range"])
    cfg["weight_decay_range"] = tuple(cfg["weight_decay_range"]) if cfg.get("weight_decay_range") else None
    cfg["split"] = tuple(args.split) if args.split is not None else task.default_split
    cfg["models"] = check_arms([m.strip() for m in args.models.split(",") if m.strip()])
    cfg["task"] = args.task
    cfg["corpus"] = os.path.abspath(args.corpus) if args.corpus is not None else None
    cfg["csv"] = os.path.abspath(args.csv) if args.csv is not None else None
    cfg["text_column"], cfg["label_column"] = args.text_column, args.label_column
    cfg["digits_rows"] = bool(args.digits_rows)
    cfg["encoding"] = args.encoding
    cfg["device"] = args.device
    cfg["preset"] = args.preset
    cfg["executor"] = args.executor
    cfg["address"] = args.address
    _check_task_flags(args)
    return cfg


_TASK_FLAGS = {"charlm": ("corpus", "seq_len", "max_chars"),
               "classify": ("csv", "text_column", "label_column", "vocab_size", "max_words", "digits_rows"),
               "adding": ("length", "examples"), "copy": ("length", "examples")}


def _check_task_flags(args: argparse.Namespace) -> None:
    """A flag of another task is an error (it would silently do nothing)."""
    own = set(_TASK_FLAGS[args.task])
    for task, flags in _TASK_FLAGS.items():
        for flag in flags:
            value = getattr(args, flag)
            if flag not in own and value not in (None, False):
                raise ValueError(f"--{flag.replace('_', '-')}: a flag of --task {task}, not of --task {args.task}")


def _manifest_config(out: str) -> dict:
    """--report-only: the config a study in ``out`` was made with (its manifest.json)."""
    import json

    path = os.path.join(out, "manifest.json")
    if not os.path.exists(path):
        raise ValueError(f"--report-only: {out} holds no study (no manifest.json)")
    with open(path, encoding="utf-8") as f:
        cfg = dict(json.load(f)["config"])
    for key in ("lr_range", "weight_decay_range", "split"):
        if cfg.get(key) is not None:
            cfg[key] = tuple(cfg[key])
    cfg.setdefault("executor", "local")
    return cfg


def _reproduce(args: argparse.Namespace) -> int:
    if args.dry_run and args.report_only:
        raise ValueError("--dry-run and --report-only: choose one")
    cfg = _manifest_config(args.out) if args.report_only else reproduce_config(args)
    from cerebral_rnn.study.reproduce import StopRequested, reproduce

    mode = "plan" if args.dry_run else "report" if args.report_only else "run"
    try:
        reproduce(cfg, args.out, resume=args.resume, quiet=args.quiet, stop_after_epochs=args.stop_after_epochs,
                  mode=mode)
    except StopRequested as e:
        if not args.quiet:
            print(f"cerebral-rnn: {e}; continue with --resume", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"\ncerebral-rnn: interrupted; every finished epoch is saved in {args.out}: run the same command with "
              f"--resume to continue", file=sys.stderr)
        return 130
    return 0


def _generate(args: argparse.Namespace) -> int:
    from cerebral_rnn.study.checkpoint import load_checkpoint
    from cerebral_rnn.study.report import generate, model_from_checkpoint

    model, vocab = model_from_checkpoint(load_checkpoint(args.checkpoint))
    text = generate(model, vocab, args.prime, args.length, args.temperature, seed=args.seed)
    print(args.prime + text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = _reproduce(args) if args.command == "reproduce" else _generate(args)
    except ValueError as e:  # bad input found after parsing: same form and exit status as argparse errors
        parser.exit(2, f"{parser.prog} {args.command}: error: {e}\n")
    finally:
        if "torch" in sys.modules:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())

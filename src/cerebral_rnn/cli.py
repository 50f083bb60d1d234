"""``cerebral-rnn`` — the command line: ``reproduce`` (the study) and ``generate`` (text from a checkpoint)."""

from __future__ import annotations

import argparse
import math
import os
import sys

PRESETS = {
    # What `make run` runs: every arm, two seeds, the first 100k characters of the corpus; a few minutes on
    # a 2-core CPU. One thread: at these sizes a second thread gains little on an idle machine and loses up to
    # tenfold when other programs compete for the cores.
    "quick": {"epochs": 8, "seeds": 2, "hidden": 128, "embedding": 32, "seq_len": 20, "batch_size": 64,
              "lr": 3e-3, "clip": 1.0, "max_chars": 100_000, "threads": 1},
    # The paper's setting as far as it is known: windows of 20 characters, 500 epochs, the whole corpus.
    "paper": {"epochs": 500, "seeds": 3, "hidden": 128, "embedding": 32, "seq_len": 20, "batch_size": 64,
              "lr": 2e-3, "clip": 1.0, "max_chars": None, "threads": None},
}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _float_parser(positive: bool):
    """argparse type: a finite float, > 0 if ``positive`` else >= 0."""
    expected = "a positive number" if positive else "a number >= 0"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    return parse


_positive_float = _float_parser(positive=True)
_nonnegative_float = _float_parser(positive=False)


def build_parser() -> argparse.ArgumentParser:
    from cerebral_rnn.study.models import ARMS

    parser = argparse.ArgumentParser(prog="cerebral-rnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser(
        "reproduce", help="train every arm of the Cerebral LSTM comparison and report",
        description="Train character-level language models (embedding -> RNN -> linear head) that differ only "
                    "in their RNN, on the same data, order, optimizer (Adam), schedule, clipping and seeds; "
                    "write manifest.json, metrics.csv, summary.md, loss_curves.png, samples.txt and "
                    "checkpoints/ into --out. Under torchrun it trains with DistributedDataParallel. "
                    "Explicit flags override the preset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("--corpus", metavar="PATH", default=None,
                   help="UTF-8 (or --encoding) text file; default: CPython's pydoc_data.topics, no download")
    r.add_argument("--encoding", default="utf-8", metavar="ENC", help="text encoding of --corpus")
    r.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                   help="quick: all arms, 2 seeds, 100k characters, a few minutes on 2 CPU cores (make run); "
                        "paper: windows of 20, 500 epochs, whole corpus, 3 seeds (many hours)")
    r.add_argument("--epochs", type=_positive_int, metavar="N", help="passes over the training part (preset)")
    r.add_argument("--seeds", type=_positive_int, metavar="N", help="number of seeds: 0..N-1 (preset)")
    r.add_argument("--hidden", type=_positive_int, metavar="H", help="hidden size H of every arm (preset)")
    r.add_argument("--embedding", type=_positive_int, metavar="E", help="character embedding size (preset)")
    r.add_argument("--seq-len", type=_positive_int, metavar="L",
                   help="characters per training window; the paper used 20 (preset)")
    r.add_argument("--batch-size", type=_positive_int, metavar="B",
                   help="windows per optimizer step, over all processes (preset)")
    r.add_argument("--lr", type=_positive_float, metavar="X", help="Adam learning rate, constant (preset)")
    r.add_argument("--clip", type=_nonnegative_float, metavar="X",
                   help="gradient-norm clipping threshold, 0 = off (preset)")
    r.add_argument("--max-chars", type=_positive_int, metavar="N",
                   help="use only the corpus's first N characters (preset: quick 100000, paper all)")
    r.add_argument("--models", metavar="a,b,...", default=",".join(ARMS),
                   help="arms to train, from: " + "; ".join(f"{k} = {v}" for k, v in ARMS.items()))
    r.add_argument("--out", metavar="DIR", default="runs/study", help="output folder")
    r.add_argument("--resume", action="store_true",
                   help="continue the run in --out where it stopped (per arm and seed), skipping finished arms; "
                        "the config must match its manifest (--epochs, --seeds and --models may change); keep --threads "
                        "and the machine the same for bit-identical losses")
    r.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to train")
    r.add_argument("--threads", type=_positive_int, metavar="N", default=None,
                   help="CPU threads for torch (preset: quick 1, paper torch's default = all cores); 1 is much "
                        "faster at small sizes when other programs compete for the cores")
    r.add_argument("--quiet", action="store_true", help="print nothing but errors")
    r.add_argument("--stop-after-epochs", type=_positive_int, default=None, help=argparse.SUPPRESS)  # test hook

    g = sub.add_parser("generate", help="sample text from a study checkpoint",
                       description="Prime a trained model from a checkpoint written by `reproduce` and sample "
                                   "characters from it.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g.add_argument("--checkpoint", required=True, metavar="PATH", help="a .pt file from <out>/checkpoints/")
    g.add_argument("--prime", required=True, metavar="TEXT", help="text to start from")
    g.add_argument("--length", type=_positive_int, default=200, metavar="N", help="characters to sample")
    g.add_argument("--temperature", type=_positive_float, default=0.8, metavar="T",
                   help="softmax temperature: < 1 safer, > 1 wilder")
    g.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the sampler")
    return parser


def reproduce_config(args: argparse.Namespace) -> dict:
    """The preset's values, overridden by every flag given explicitly."""
    from cerebral_rnn.study.models import check_arms

    cfg = dict(PRESETS[args.preset])
    for key in ("epochs", "seeds", "hidden", "embedding", "seq_len", "batch_size", "lr", "clip", "max_chars",
                "threads"):
        value = getattr(args, key)
        if value is not None:
            cfg[key] = value
    cfg["models"] = check_arms([m.strip() for m in args.models.split(",") if m.strip()])
    cfg["corpus"] = os.path.abspath(args.corpus) if args.corpus is not None else None
    cfg["encoding"] = args.encoding
    cfg["device"] = args.device
    cfg["preset"] = args.preset
    return cfg


def _reproduce(args: argparse.Namespace) -> int:
    from cerebral_rnn.study.train import StopRequested, reproduce

    cfg = reproduce_config(args)
    try:
        reproduce(cfg, args.out, resume=args.resume, quiet=args.quiet, stop_after_epochs=args.stop_after_epochs)
    except StopRequested as e:
        if not args.quiet:
            print(f"cerebral-rnn: {e}; continue with --resume", file=sys.stderr)
        return 3
    return 0


def _generate(args: argparse.Namespace) -> int:
    from cerebral_rnn.study.report import generate, model_from_checkpoint
    from cerebral_rnn.study.train import load_checkpoint

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
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())

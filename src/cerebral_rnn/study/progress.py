"""What a study prints while it runs: a tqdm bar over the runs (with its ETA) on a terminal, plain lines
otherwise, nothing with ``quiet``."""

from __future__ import annotations

import sys


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Progress:
    """tqdm bars on a terminal (one process), plain log lines otherwise, nothing with ``quiet``."""

    def __init__(self, enabled: bool, total_runs: int, bars: bool = True) -> None:
        self.enabled = enabled
        self.bars = enabled and bars and sys.stderr.isatty()
        self.tqdm = None
        if self.bars:
            try:
                from tqdm.auto import tqdm
                self.tqdm = tqdm
            except ImportError:  # the study extra is not installed: fall back to log lines
                self.bars = False
        self.runs = self.tqdm(total=total_runs, desc="runs", position=0, unit="run") if self.bars else None

    def log(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.bars:
            self.tqdm.write(msg, file=sys.stderr)
        else:
            _log(msg)

    def epochs(self, name: str, start: int, total: int):
        if self.bars:
            return self.tqdm(total=total, initial=start, desc=name, position=1, leave=False, unit="epoch")
        return None

    def run_done(self) -> None:
        if self.runs is not None:
            self.runs.update(1)

    def close(self) -> None:
        if self.runs is not None:
            self.runs.close()

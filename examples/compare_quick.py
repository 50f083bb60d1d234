"""A one-minute look: a Cerebral LSTM and an LSTM of the same width learn CPython's pydoc_data.topics.

Character-level language model, truncated BPTT over windows of 50 characters; prints both training losses.
"""

from __future__ import annotations

import time

import torch
from pydoc_data.topics import topics
from torch import nn

from cerebral_rnn import LSTM, CerebralLSTM

SECONDS_PER_MODEL, SEQ, BATCH, HIDDEN, EMBED = 25.0, 50, 32, 128, 32


class CharModel(nn.Module):
    def __init__(self, vocab: int, rnn: nn.Module) -> None:
        super().__init__()
        self.embed, self.rnn, self.head = nn.Embedding(vocab, EMBED), rnn, nn.Linear(HIDDEN, vocab)

    def forward(self, x, state=None):
        y, state = self.rnn(self.embed(x), state)
        return self.head(y), state


def main() -> None:
    text = "".join(topics[k] for k in sorted(topics))[:200_000]
    chars = sorted(set(text))
    data = torch.tensor([chars.index(ch) for ch in text])
    for name, make in (("cerebral", lambda: CerebralLSTM(EMBED, HIDDEN)), ("lstm", lambda: LSTM(EMBED, HIDDEN))):
        torch.manual_seed(0)
        model = CharModel(len(chars), make())
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        streams = data[: len(data) // BATCH * BATCH].view(BATCH, -1).t()  # (L, B): B contiguous streams
        start, pos, state, losses = time.perf_counter(), 0, None, []
        while time.perf_counter() - start < SECONDS_PER_MODEL:
            if pos + SEQ + 1 > streams.shape[0]:
                pos, state = 0, None
            x, y = streams[pos: pos + SEQ], streams[pos + 1: pos + SEQ + 1]
            logits, state = model(x, state)
            state = tuple(s.detach() for s in state)
            loss = nn.functional.cross_entropy(logits.reshape(-1, len(chars)), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            pos += SEQ
        n = sum(p.numel() for p in model.parameters())
        tail = sum(losses[-20:]) / len(losses[-20:])
        print(f"{name:9s} params={n:7d} steps={len(losses):4d} first loss={losses[0]:.3f} "
              f"last-20 mean loss={tail:.3f} (nats/char)")


if __name__ == "__main__":
    main()

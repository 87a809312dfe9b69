"""The training tasks of the harness, on data that is on the machine (no downloads): the paper's three
model families at small scale. Each task gives its data split, a model, the loss and the test metric.

  digits        a small ResNet on scikit-learn's bundled 8x8 digit images (accuracy)
  cifar10       ResNet-20 on the CIFAR-10 python-pickle files in --data-dir, when a user has them
  char-lstm     a character-level LSTM language model on CPython's pydoc topics text (val. bits/char)
  transformer   a small causal Transformer language model on the same text (val. bits/char)
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Task:
    name: str
    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    model: Callable[[], nn.Module]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metric: str  # what `evaluate` reports
    higher_is_better: bool


# ---- images ---------------------------------------------------------------------------------------
class Block(nn.Module):
    """A basic residual block (two 3x3 convolutions with batch norm) and a 1x1 projection on stride."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Sequential()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.skip(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016): 3 stages of n blocks; n=3 is ResNet-20."""

    def __init__(self, in_channels: int, classes: int, widths=(16, 32, 64), blocks: int = 3):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks):
                layers.append(Block(cin, w, 2 if (b == 0 and i > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(self.layers(self.stem(x)).mean((2, 3)))


def digits(test_fraction: float = 0.2) -> Task:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - x.mean()) / x.std()
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))  # a fixed split
    cut = int(len(y) * (1 - test_fraction))
    train, test = order[:cut], order[cut:]
    return Task(
        "digits",
        (x[train], y[train]),
        (x[test], y[test]),
        lambda: ResNet(1, 10, widths=(16, 32, 64), blocks=1),
        F.cross_entropy,
        "test accuracy",
        True,
    )


def cifar10(data_dir: str | None) -> Task:
    folder = Path(data_dir or "data/cifar-10-batches-py")
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise SystemExit(
            f"cifar10: {folder} lacks {', '.join(missing)}. Download and unpack CIFAR-10's python "
            "version (cifar-10-python.tar.gz, https://www.cs.toronto.edu/~kriz/cifar.html) and pass "
            "--data-dir pointing at its cifar-10-batches-py folder."
        )

    def load(name):
        with open(folder / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        x = torch.tensor(batch[b"data"], dtype=torch.float32).view(-1, 3, 32, 32) / 255.0
        return x, torch.tensor(batch[b"labels"], dtype=torch.long)

    parts = [load(n) for n in names[:-1]]
    x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    tx, ty = load(names[-1])
    mean, std = x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True)
    return Task(
        "cifar10",
        ((x - mean) / std, y),
        ((tx - mean) / std, ty),
        lambda: ResNet(3, 10),
        F.cross_entropy,
        "test accuracy",
        True,
    )


# ---- text -----------------------------------------------------------------------------------------
def _text_split(seq_len: int, val_fraction: float = 0.1):
    """pydoc_data.topics (CPython's own help text), topics in sorted order, as characters; the last 10%
    is the validation text. Sequences of seq_len + 1 characters, non-overlapping."""
    from pydoc_data.topics import topics

    text = "\n".join(topics[k] for k in sorted(topics))
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    cut = int(len(ids) * (1 - val_fraction))

    def sequences(stream):
        n = (len(stream) - 1) // seq_len
        inputs = stream[: n * seq_len].view(n, seq_len)
        targets = stream[1 : n * seq_len + 1].view(n, seq_len)
        return inputs, targets

    return sequences(ids[:cut]), sequences(ids[cut:]), len(vocab)


def _lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


class CharLSTM(nn.Module):
    def __init__(self, vocab: int, width: int = 128, layers: int = 1):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.lstm = nn.LSTM(width, width, layers, batch_first=True)
        self.head = nn.Linear(width, vocab)

    def forward(self, x):
        return self.head(self.lstm(self.embed(x))[0])


class TinyTransformer(nn.Module):
    """A causal pre-norm Transformer language model (GPT-style), learned positions."""

    def __init__(self, vocab: int, seq_len: int, width: int = 96, heads: int = 4, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.randn(seq_len, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq_len), persistent=False)

    def forward(self, x):
        t = x.shape[1]
        h = self.embed(x) + self.position[:t]
        return self.head(self.norm(self.blocks(h, mask=self.mask[:t, :t], is_causal=True)))


def char_lstm(seq_len: int = 64) -> Task:
    train, val, vocab = _text_split(seq_len)
    return Task("char-lstm", train, val, lambda: CharLSTM(vocab), _lm_loss, "val bits/char", False)


def transformer(seq_len: int = 64) -> Task:
    train, val, vocab = _text_split(seq_len)
    return Task("transformer", train, val, lambda: TinyTransformer(vocab, seq_len), _lm_loss, "val bits/char", False)


TASKS = {
    "digits": lambda args: digits(),
    "cifar10": lambda args: cifar10(args.data_dir),
    "char-lstm": lambda args: char_lstm(),
    "transformer": lambda args: transformer(),
}


@torch.no_grad()
def evaluate(task: Task, model: nn.Module, device, batch: int = 512) -> float:
    """Test accuracy (classification) or validation bits per character (language models)."""
    model.eval()
    x, y = task.test
    total, count = 0.0, 0
    for i in range(0, len(y), batch):
        xb, yb = x[i : i + batch].to(device), y[i : i + batch].to(device)
        out = model(xb)
        if task.higher_is_better:
            total += float((out.argmax(-1) == yb).sum())
            count += len(yb)
        else:
            total += float(_lm_loss(out, yb)) * yb.numel()
            count += yb.numel()
    model.train()
    return total / count if task.higher_is_better else total / count / math.log(2)

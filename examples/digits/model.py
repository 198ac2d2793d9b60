"""A teacher CNN and smaller student CNNs for the 8x8 digits, with seeded training.

``student()`` and ``teacher()`` are the project's model entry points: each
builds its network and trains it on the train split (a few seconds on a CPU).
The classes themselves are the *untrained* architectures distillation starts from
(``[distill] student = "examples/digits/model.py:StudentCNN"``); ``TinyCNN`` is a
690-parameter student for the distillation benchmark (benchmarks/kd_table.py).
"""

from __future__ import annotations

import torch
from torch import nn

from data import load_splits


class StudentCNN(nn.Module):
    """~72k parameters (a quarter of the teacher): two 3x3 convolutions, one pooling, a small MLP."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(32 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class TinyCNN(nn.Module):
    """690 parameters: one 3x3 convolution with 4 channels, one pooling, a linear classifier."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Linear(4 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class TeacherCNN(nn.Module):
    """~285k parameters: wider convolutions with batch norm and a wider hidden layer."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(64 * 4 * 4, 256), nn.ReLU(), nn.Linear(256, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def train_classifier(model: nn.Module, epochs: int = 20, lr: float = 3e-3, batch_size: int = 64,
                     seed: int = 0) -> nn.Module:
    """Plain cross-entropy training with Adam; deterministic for a given seed."""
    torch.manual_seed(seed)
    x, y = (torch.from_numpy(a) for a in load_splits()["train"])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def student() -> nn.Module:
    torch.manual_seed(0)
    return train_classifier(StudentCNN())


def teacher() -> nn.Module:
    torch.manual_seed(0)
    return train_classifier(TeacherCNN(), epochs=15)

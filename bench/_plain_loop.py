"""The plain loop the site agent is measured against (bench/recipe.py): 50 lines of timm and torch.

ResNet-18 from scratch at the images' own size, AdamW at 1e-3, 12 epochs of
batch 128, a class-weighted loss, and the epoch with the best validation loss
kept. Nothing else: no augmentation, no schedule, no calibration, no export.
"""

from __future__ import annotations

import time

import numpy as np
import timm
import torch
from sklearn.metrics import roc_auc_score


def _tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).float().div(255).permute(0, 3, 1, 2)
    return (x - 0.5) / 0.5


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        return torch.cat([model(x[i : i + 512]) for i in range(0, len(x), 512)])


def plain_loop(splits: dict[str, np.ndarray], n_classes: int, seed: int = 0) -> dict[str, float]:
    """Trains and tests; ``splits`` holds MedMNIST's keys (images ``[N, H, W, C]``, labels)."""
    torch.manual_seed(seed)
    started = time.monotonic()
    x_tr, y_tr = _tensor(splits["train_images"]), torch.from_numpy(splits["train_labels"])
    x_va, y_va = _tensor(splits["val_images"]), torch.from_numpy(splits["val_labels"])
    model = timm.create_model("resnet18", num_classes=n_classes, in_chans=x_tr.shape[1])
    counts = torch.bincount(y_tr, minlength=n_classes).clamp(min=1).float()
    loss_fn = torch.nn.CrossEntropyLoss(weight=len(y_tr) / (n_classes * counts))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    best, best_state = float("inf"), None
    for _ in range(12):
        model.train()
        for rows in torch.randperm(len(y_tr)).split(128):
            optimizer.zero_grad()
            loss_fn(model(x_tr[rows]), y_tr[rows]).backward()
            optimizer.step()
        val_loss = float(loss_fn(_logits(model, x_va), y_va))
        if val_loss < best:
            best, best_state = val_loss, {k: v.clone() for k, v in model.state_dict().items()}
    assert best_state is not None
    model.load_state_dict(best_state)
    seconds = time.monotonic() - started
    probs = torch.softmax(_logits(model, _tensor(splits["test_images"])), 1).numpy()
    y_te = splits["test_labels"]
    auc = (
        roc_auc_score(y_te, probs[:, 1])
        if n_classes == 2
        else roc_auc_score(y_te, probs, multi_class="ovr", average="macro")
    )
    return {
        "accuracy": float((probs.argmax(1) == y_te).mean()),
        "macro_auc": float(auc),
        "seconds": seconds,
    }

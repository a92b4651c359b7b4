"""Training AdaCLIP's prompts on an auxiliary labelled dataset (zero-shot protocol: train on VisA, test on MVTec)."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.datasets import Sample, load_dataset, load_mask
from ..errors import DatasetError
from ..files import atomic_write, atomic_write_text
from ..images import load_image
from .adaclip import PROMPT_LENGTH, AdaClip, AdaClipSettings
from ..backends.clip import ClipBackbone

FOCAL_GAMMA = 2.0
PROMPTS_FILE = "adaclip_prompts.pt"
STATE_FILE = "last.pt"


@dataclass(frozen=True)
class TrainOptions:
    """What to train on and how."""

    dataset: str
    root: Path
    out_dir: Path
    clip: Path
    epochs: int = 5
    batch_size: int = 8
    learning_rate: float = 1e-3
    seed: int = 111
    layers: tuple[int, ...] = ()  # empty: four evenly spaced layers
    prompt_length: int = PROMPT_LENGTH
    prompt_depth: int = 0  # 0: AdaCLIP's 4, or the CLIP's depth when it is shallower
    limit: int = 0  # at most this many training images (0: all)
    device: str = "cpu"
    progress: bool = True


def focal_loss(probability: torch.Tensor, target: torch.Tensor, gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """Binary focal loss on probabilities: hard pixels weigh more, the many easy normal ones less."""
    probability = probability.clamp(1e-6, 1 - 1e-6)
    p_true = torch.where(target > 0.5, probability, 1 - probability)
    return (-(1 - p_true) ** gamma * p_true.log()).mean()


def dice_loss(probability: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice overlap per image, averaged; an all-normal image counts through its false positives."""
    dims = tuple(range(1, probability.dim()))
    intersection = (probability * target).sum(dims)
    total = probability.sum(dims) + target.sum(dims)
    return (1 - (2 * intersection + 1) / (total + 1)).mean()


def adaclip_loss(model: AdaClip, pixels: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Focal + Dice on every layer's map (upsampled to the input size), plus BCE on the HSF image score."""
    patch_maps, image_probability = model(pixels)
    size = pixels.shape[-1]
    maps = F.interpolate(patch_maps, size=(size, size), mode="bilinear", align_corners=False)
    pixel_loss = sum(focal_loss(maps[:, i], masks) + dice_loss(maps[:, i], masks) for i in range(maps.shape[1])) / maps.shape[1]
    image_loss = F.binary_cross_entropy(image_probability.clamp(1e-6, 1 - 1e-6), labels)
    return pixel_loss + image_loss


def training_samples(options: TrainOptions) -> list[Sample]:
    dataset = load_dataset(options.dataset, options.root)
    samples = [sample for category in dataset.categories for sample in dataset.samples(category)]
    if options.limit:
        samples = samples[: options.limit]
    if not samples:
        raise DatasetError(f"no training images in {options.root}")
    return samples


def load_batch(samples: list[Sample], model: AdaClip) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixels, masks resized to the CLIP input (nearest) and labels of a batch."""
    images = [load_image(sample.image_path).pixels for sample in samples]
    size = model.backbone.image_size
    masks = [torch.from_numpy(load_mask(s, *im.shape[:2]).astype(np.float32))[None, None] for s, im in zip(samples, images)]
    masks = torch.cat([F.interpolate(m, size=(size, size), mode="nearest") for m in masks])[:, 0]
    labels = torch.tensor([float(sample.label) for sample in samples])
    device = model.backbone.device
    return model.backbone.preprocess(images), masks.to(device), labels.to(device)


def train_adaclip(options: TrainOptions, note: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> tuple[Path, list[float]]:
    """Train (or resume training of) the prompts; returns the prompt file and this run's per-step losses."""
    torch.manual_seed(options.seed)
    backbone = ClipBackbone(options.clip, options.device)
    settings = AdaClipSettings.for_backbone(backbone, options.layers, options.prompt_length, options.prompt_depth)
    model = AdaClip(backbone, settings)
    optimizer = torch.optim.Adam(model.prompts.parameters(), lr=options.learning_rate)
    out_dir = Path(options.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / STATE_FILE
    start_epoch, history, earlier = 0, [], []  # earlier: the losses of the runs this one resumes
    log_path = out_dir / "train_log.json"
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        saved = {**state["settings"], "layers": tuple(state["settings"]["layers"])}
        if saved != asdict(settings) or state["seed"] != options.seed:
            raise DatasetError(f"{state_path} belongs to another run (prompt settings or seed differ); use a new -o folder")
        model.prompts.load_state_dict(state["prompts"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"]) + 1
        earlier = json.loads(log_path.read_text(encoding="utf-8"))["losses"] if log_path.is_file() else []
        note(f"resuming from epoch {start_epoch + 1} of {options.epochs} ({state_path})")
    samples = training_samples(options)
    model.train()
    for epoch in range(start_epoch, options.epochs):
        order = np.random.default_rng(options.seed + epoch).permutation(len(samples))  # same order when resumed
        batches = [order[i:i + options.batch_size] for i in range(0, len(order), options.batch_size)]
        bar = tqdm(batches, desc=f"adaclip epoch {epoch + 1}/{options.epochs}", unit="batch", disable=not options.progress)
        for batch in bar:
            pixels, masks, labels = load_batch([samples[i] for i in batch], model)
            loss = adaclip_loss(model, pixels, masks, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history.append(float(loss.detach()))
            bar.set_postfix(loss=f"{history[-1]:.4f}")
        model.save(out_dir / PROMPTS_FILE, {"trained_on": options.dataset, "epochs_done": epoch + 1})
        state = {"prompts": model.prompts.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                 "settings": asdict(settings), "seed": options.seed}
        atomic_write(state_path, lambda temporary: torch.save(state, temporary))
        atomic_write_text(log_path, json.dumps({"epoch": epoch + 1, "losses": earlier + history}) + "\n")
    model.eval()
    return out_dir / PROMPTS_FILE, history

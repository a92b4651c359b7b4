"""Training AdaCLIP on auxiliary labelled datasets, as caoyunkang/AdaCLIP train.py and method/trainer.py do.

Zero-shot protocol of the reference (README, train.sh): train on MVTec AD + ColonDB to test on VisA and
the other sets, on VisA + ClinicDB to test on MVTec AD. Every test image (normal and anomalous) of the
auxiliary sets is a training image; MVTec AD images become a four-image mosaic with probability 0.2.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...backends.clip import ClipBackbone
from ...data.datasets import Sample, load_mask
from ...images import load_image
from ...prompt_learning import PromptTrainer, TrainOptions, dice_loss, mosaic, training_samples, two_class_focal_loss
from .model import INPUT_SIZE, PROMPT_LENGTH, AdaClip, AdaClipSettings

PROMPTS_FILE = "adaclip_prompts.pt"
BETAS = (0.5, 0.999)  # method/trainer.py: AdamW(..., betas=(0.5, 0.999))
MOSAIC_RATES = {"mvtec": 0.2}  # dataset/mvtec.py aug_rate=0.2; VisA, ColonDB, ClinicDB and the rest: 0.0


@dataclass(frozen=True)
class AdaClipArchitecture:
    """AdaCLIP's own choices beside the shared TrainOptions."""

    layers: tuple[int, ...] = ()  # empty: four evenly spaced layers
    prompt_length: int = PROMPT_LENGTH
    prompt_depth: int = 0  # 0: AdaCLIP's 4, or the CLIP's depth when it is shallower
    image_size: int = INPUT_SIZE


def adaclip_loss(model: AdaClip, pixels: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
                 class_names: Sequence[str]) -> torch.Tensor:
    """method/trainer.py `train_one_batch`: focal on the image score + per layer focal + Dice(anomalous) + Dice(normal).

    Each layer's logits are upsampled (bilinear, align_corners True) to the input size and soft-maxed on
    their own (`aggregation=False`); the per-layer losses are summed, not averaged.
    """
    output = model(pixels, class_names)
    size = pixels.shape[-1]
    target = masks.float()
    loss = two_class_focal_loss(output.image_probabilities.float(), labels.float())
    for layer in range(output.layer_logits.shape[1]):
        logits = output.layer_logits[:, layer].float()
        probabilities = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=True).softmax(dim=1)
        loss = loss + two_class_focal_loss(probabilities, target) + reference_dice(probabilities[:, 1], target) \
            + reference_dice(probabilities[:, 0], 1 - target)
    return loss


def reference_dice(probability: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice loss grouped as the reference groups it: per image, but per row of the map for a batch of one.

    method/trainer.py squeezes the (1, 1, H, W) mask to (H, W) and loss.py `BinaryDiceLoss` takes its
    first dimension as the batch, so at the reference's batch size 1 every row is its own Dice term.
    Checked against the official code on a random CLIP (docs/methods/adaclip.md).
    """
    if len(target) == 1:
        return dice_loss(probability[0], target[0])
    return dice_loss(probability, target)


class AdaClipBatches:
    """Loads AdaCLIP batches: pixels at the input size, masks, labels and class names, with the mosaic."""

    def __init__(self, backbone: ClipBackbone, image_size: int, samples: Sequence[Sample], rates: dict[Path, float]) -> None:
        self.backbone, self.image_size, self.rates = backbone, image_size, rates
        self.by_category: dict[str, list[Sample]] = {}
        for sample in samples:
            self.by_category.setdefault(sample.category, []).append(sample)

    def _image_and_mask(self, sample: Sample, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The sample's pixels and mask, or with the dataset's rate a mosaic of four images of its category.

        dataset/base_dataset.py `__getitem__`: the mosaic draws four images of the class (without
        replacement), and the item keeps the label of the drawn index, as the reference does.
        """
        partners = self.by_category.get(sample.category, [])
        if rng.random() < self.rates.get(sample.image_path, 0.0) and len(partners) >= 4:
            chosen = [partners[i] for i in rng.choice(len(partners), 4, replace=False)]
            loaded = [self._plain(other) for other in chosen]
            return mosaic([image for image, _ in loaded], [mask for _, mask in loaded])
        return self._plain(sample)

    @staticmethod
    def _plain(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        pixels = load_image(sample.image_path).pixels
        return pixels, load_mask(sample, *pixels.shape[:2])

    def __call__(self, samples: list[Sample], rng: np.random.Generator):
        loaded = [self._image_and_mask(sample, rng) for sample in samples]
        pixels = self.backbone.preprocess_to([image for image, _ in loaded], self.image_size)
        size = (self.image_size, self.image_size)
        # dataset target_transform: Resize (PIL bilinear) of the 0/255 mask, then > 0.5 (method/trainer.py)
        masks = torch.cat([F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=size, mode="bilinear",
                                         align_corners=False, antialias=True) for _, mask in loaded])[:, 0] > 0.5
        labels = torch.tensor([float(sample.label) for sample in samples])
        device = self.backbone.device
        return pixels, masks.float().to(device), labels.to(device), [sample.category for sample in samples]


def auxiliary_samples(sources: Sequence[tuple[str, Path]], limit: int = 0) -> tuple[list[Sample], dict[Path, float]]:
    """Every test sample of the auxiliary datasets and each image's mosaic rate (by its dataset)."""
    samples, rates = [], {}
    for name, root in sources:
        loaded = training_samples(name, Path(root))
        samples.extend(loaded)
        rates.update({sample.image_path: MOSAIC_RATES.get(name, 0.0) for sample in loaded})
    return (samples[:limit] if limit else samples), rates


def train_adaclip(options: TrainOptions, architecture: AdaClipArchitecture = AdaClipArchitecture(),
                  note: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
                  sources: Sequence[tuple[str, Path]] = ()):
    """Train (or resume) AdaCLIP on `sources` (default: the options' one dataset); returns the file and the losses."""
    torch.manual_seed(options.seed)
    backbone = ClipBackbone(options.clip, options.device)
    settings = AdaClipSettings.for_backbone(backbone, architecture.layers, architecture.prompt_length,
                                            architecture.prompt_depth, architecture.image_size)
    model = AdaClip(backbone, settings)
    optimizer = torch.optim.AdamW(model.prompts.parameters(), lr=options.learning_rate, betas=BETAS)
    samples, rates = auxiliary_samples(sources or [(options.dataset, options.root)], options.limit)
    loader = AdaClipBatches(backbone, settings.image_size, samples, rates)
    path, history = PromptTrainer(model, optimizer, options, PROMPTS_FILE, note, batch_loader=loader).run(samples)
    model.eval()
    return path, history

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
from ...errors import ConfigError
from ...images import load_image
from ...prompt_learning import PromptTrainer, TrainOptions, dice_loss, mosaic, training_samples, two_class_focal_loss
from .model import INPUT_SIZE, PROMPT_LENGTH, AdaClip, AdaClipSettings, check_input_size

PROMPTS_FILE = "adaclip_prompts.pt"
OFFICIAL_FILE = "adaclip_official.pth"  # --save-format official: beside our file, which resuming still needs
SAVE_FORMATS = ("iapas", "official")
KEEP_RULES = ("last", "best")
BEST_FILE = "adaclip_best.pt"  # keep="best": the best epoch's prompts, in our format
BEST_RECORD = "best.json"  # its epoch and validation F1, read back when a run resumes
BETAS = (0.5, 0.999)  # method/trainer.py: AdamW(..., betas=(0.5, 0.999))
MOSAIC_RATES = {"mvtec": 0.2}  # dataset/mvtec.py aug_rate=0.2; VisA, ColonDB, ClinicDB and the rest: 0.0


@dataclass(frozen=True)
class AdaClipArchitecture:
    """AdaCLIP's own choices beside the shared TrainOptions."""

    layers: tuple[int, ...] = ()  # empty: four evenly spaced layers
    prompt_length: int = PROMPT_LENGTH
    prompt_depth: int = 0  # 0: AdaCLIP's 4, or the CLIP's depth when it is shallower
    image_size: int = INPUT_SIZE
    resize: str = "antialiased"  # "pil": the official loader's PIL resize (model.PIXEL_RESIZES)
    prompt_precision: str = "fp32"  # "fp16": every inserted prompt rounded through fp16, as the official code (model.PROMPT_PRECISIONS)
    save_format: str = "iapas"  # "official": also write the checkpoint in the layout caoyunkang/AdaCLIP test.py loads
    keep: str = "last"  # "best": the epoch with the highest pixel F1-max on the validation set below (train.py keeps its best)
    val_dataset: str = ""  # the validation set for keep="best": a dataset name and its root, named by the user
    val_root: Path | None = None


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

    def __init__(self, model: AdaClip, samples: Sequence[Sample], rates: dict[Path, float]) -> None:
        self.model, self.backbone, self.image_size, self.rates = model, model.backbone, model.settings.image_size, rates
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
        pixels = self.model.pixels([image for image, _ in loaded])  # the model's resize rule, as at test time
        size = (self.image_size, self.image_size)
        # dataset target_transform: Resize (PIL bilinear) of the 0/255 mask, then > 0.5 (method/trainer.py)
        masks = torch.cat([F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=size, mode="bilinear",
                                         align_corners=False, antialias=True) for _, mask in loaded])[:, 0] > 0.5
        labels = torch.tensor([float(sample.label) for sample in samples])
        device = self.backbone.device
        return pixels, masks.float().to(device), labels.to(device), [sample.category for sample in samples]


def validation_f1(model: AdaClip, samples: Sequence[Sample], batch_size: int = 1) -> float:
    """Pixel F1-max on `samples`, per category then averaged, as method/trainer.py `evaluation` measures it.

    Test-time maps (sigma-4 smoothing) and masks both at the input size (masks: bilinear then > 0.5, the
    loaders' rule); a category without anomalous pixels counts 0, as tools/metrics.py `calculate_px_metrics`
    returns it. F1 comes from iapas's binned pixel metrics (4096 thresholds), not sklearn's exact curve.
    """
    from ...evaluation.metrics import PixelMetrics
    from ...prompt_learning import gaussian_smooth
    from .model import MAP_SIGMA

    per_category: dict[str, PixelMetrics] = {}
    size = (model.settings.image_size, model.settings.image_size)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            batch = list(samples[start:start + batch_size])
            loaded = [AdaClipBatches._plain(sample) for sample in batch]
            output = model(model.pixels([image for image, _ in loaded]), [sample.category for sample in batch])
            heat = model.anomaly_map(output.layer_logits)
            for sample, (_, mask), one in zip(batch, loaded, heat):
                target = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=size, mode="bilinear",
                                       align_corners=False, antialias=True)[0, 0].numpy() > 0.5
                metrics = per_category.setdefault(sample.category, PixelMetrics(with_pro=False))
                metrics.update(np.clip(gaussian_smooth(one, MAP_SIGMA), 0, 1), target, str(sample.image_path))
    scores = [metrics.summary()["pixel_f1_max"] if metrics.positive.sum() else 0.0 for metrics in per_category.values()]
    return float(np.mean(scores)) if scores else 0.0


class BestKeeper:
    """After each epoch: the validation F1, and the prompts of the best epoch so far in `adaclip_best.pt` (resumable)."""

    def __init__(self, model: AdaClip, samples: Sequence[Sample], out_dir: Path, note: Callable[[str], None]) -> None:
        import json

        self.model, self.samples, self.out_dir, self.note = model, samples, Path(out_dir), note
        record = self.out_dir / BEST_RECORD
        self.best = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {"epoch": 0, "f1": -1.0}

    def __call__(self, epoch: int) -> None:
        import json

        from ...files import atomic_write_text

        f1 = validation_f1(self.model, self.samples)
        if f1 > self.best["f1"]:  # the first of equal epochs stays, as train.py's `f1_px > best_f1`
            self.model.save(self.out_dir / BEST_FILE, {"epochs_done": epoch + 1, "validation_f1": f1})
            self.best = {"epoch": epoch + 1, "f1": f1}
            atomic_write_text(self.out_dir / BEST_RECORD, json.dumps(self.best) + "\n")
        self.note(f"epoch {epoch + 1}: validation pixel F1-max {f1:.4f} (best: epoch {self.best['epoch']}, {self.best['f1']:.4f})")


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
    """Train (or resume) AdaCLIP on `sources` (default: the options' one dataset); returns the file and the losses.

    With `save_format` "official" the returned file is the official-layout copy (`checkpoint.to_official`).
    """
    from .checkpoint import official_arguments, official_layout_problem, read_checkpoint, to_official

    if architecture.save_format not in SAVE_FORMATS:
        raise ConfigError(f"AdaCLIP save format must be one of {', '.join(SAVE_FORMATS)}, got {architecture.save_format!r}")
    if architecture.keep not in KEEP_RULES:
        raise ConfigError(f"AdaCLIP --keep must be one of {', '.join(KEEP_RULES)}, got {architecture.keep!r}")
    if architecture.keep == "best" and not (architecture.val_dataset and architecture.val_root):
        raise ConfigError("--keep best selects the epoch on a validation set: add --val-dataset NAME --val-root DIR")
    torch.manual_seed(options.seed)
    backbone = ClipBackbone(options.clip, options.device)
    settings = AdaClipSettings.for_backbone(backbone, architecture.layers, architecture.prompt_length,
                                            architecture.prompt_depth, check_input_size(architecture.image_size, backbone))
    if architecture.save_format == "official" and official_layout_problem(settings):  # refused before any training
        raise ConfigError(f"--save-format official: {official_layout_problem(settings)}")
    model = AdaClip(backbone, settings, resize=architecture.resize, prompt_precision=architecture.prompt_precision)
    optimizer = torch.optim.AdamW(model.prompts.parameters(), lr=options.learning_rate, betas=BETAS)
    samples, rates = auxiliary_samples(sources or [(options.dataset, options.root)], options.limit)
    loader = AdaClipBatches(model, samples, rates)
    keeper = None
    if architecture.keep == "best":  # loaded before training, so a bad validation set fails early
        validation = training_samples(architecture.val_dataset, Path(architecture.val_root))
        keeper = BestKeeper(model, validation, options.out_dir, note)
    path, history = PromptTrainer(model, optimizer, options, PROMPTS_FILE, note, batch_loader=loader,
                                  after_epoch=keeper).run(samples)
    model.eval()
    if keeper is not None:  # the best epoch's prompts, in place of the last's
        path = path.with_name(BEST_FILE)
        model.prompts.load_state_dict(read_checkpoint(path, backbone.depth)[1])
    if architecture.save_format == "official":
        path = to_official(path, path.with_name(OFFICIAL_FILE))
        note(f"official AdaCLIP checkpoint: {path} (caoyunkang/AdaCLIP test.py --ckt_path {path.name} {official_arguments(settings)})")
    return path, history

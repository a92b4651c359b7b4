"""One training loop for every learned CLIP method: seed, progress bar, a checkpoint every epoch, resume.

A method supplies a `Learner`: a module whose trainable tensors are `learner.prompts`, a loss on a batch
and a `save` that writes its prompt file. The loop owns everything else, so every method resumes,
logs and checkpoints the same way.
"""
from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.datasets import Sample, load_dataset, load_mask
from ..errors import CorruptWeightsError, DatasetError
from ..files import atomic_write, atomic_write_text
from ..images import load_image
from ..runs.fingerprint import check_fingerprint, record_fingerprint

STATE_FILE = "last.pt"
LOG_FILE = "train_log.json"


@dataclass(frozen=True)
class TrainOptions:
    """What to train on and how; the method's own architecture settings travel separately."""

    dataset: str
    root: Path
    out_dir: Path
    clip: Path
    epochs: int = 5
    batch_size: int = 8
    learning_rate: float = 1e-3
    seed: int = 111
    limit: int = 0  # at most this many training images (0: all)
    device: str = "cpu"
    progress: bool = True
    save_format: str = "iapas"  # iapas | official: the prompt file in the authors' full key layout (learners that have one)
    sources: tuple[tuple[str, str], ...] = ()  # every (dataset, root) trained on, when more than `dataset` at `root`
    overwrite: bool = False  # start over in a folder that holds a run of other settings (--overwrite)

    def fingerprint(self, learner: "Learner") -> dict[str, Any]:
        """What defines the trained prompts, kept beside the checkpoint: a resume under other settings is refused.

        Epochs are left out (a resume may train further), and so are the device and the progress bar.
        """
        from ..runs.fingerprint import FINGERPRINT_VERSION, path_identity

        sources = self.sources or ((self.dataset, str(self.root)),)
        return {"version": FINGERPRINT_VERSION, "command": "train", "method": learner.name,
                "settings": learner.settings_record(), "clip": path_identity(self.clip),
                "data": [[name, str(Path(root).expanduser().resolve())] for name, root in sources],
                "batch_size": self.batch_size, "learning_rate": self.learning_rate, "seed": self.seed, "limit": self.limit}


class Learner(Protocol):
    """A learned CLIP method as the training loop sees it."""

    name: str
    prompts: torch.nn.Module
    backbone: Any

    # a learner with `needs_class_names = True` gets `class_names=[sample.category, ...]` as a keyword of `loss`
    def loss(self, pixels: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...

    def save(self, path: str | Path, extra: dict | None = None) -> Path: ...

    def settings_record(self) -> dict: ...


def training_samples(dataset_name: str, root: Path, limit: int = 0) -> list[Sample]:
    """Every test sample (normal and anomalous, with masks) of every category of an auxiliary dataset."""
    dataset = load_dataset(dataset_name, root)
    samples = [sample for category in dataset.categories for sample in dataset.samples(category)]
    if limit:
        samples = samples[:limit]
    if not samples:
        raise DatasetError(f"no training images in {root}")
    return samples


def training_samples_from(sources: Sequence[tuple[str, Path]], limit: int = 0) -> list[Sample]:
    """Every test sample of several auxiliary datasets, in order (AdaCLIP trains on two at once, e.g. MVTec AD + ColonDB)."""
    samples = [sample for name, root in sources for sample in training_samples(name, root)]
    return samples[:limit] if limit else samples


BatchLoader = Callable[[list[Sample], np.random.Generator], tuple]
"""Loads a batch: the positional arguments of `learner.loss`; the generator is seeded per epoch, so resumes repeat it."""


def resized_mask(mask: np.ndarray, size: int, rule: str = "nearest") -> torch.Tensor:
    """(size, size) float 0/1 training mask from an (H, W) bool mask.

    nearest: iapas's default. bilinear: as zqhang/AnomalyCLIP utils.py get_transform's target_transform
    (torchvision Resize on the 0/255 PIL mask, i.e. PIL's bilinear with uint8 rounding) and train.py's gt > 0.5.
    """
    if rule == "bilinear":
        from PIL import Image

        grey = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.BILINEAR)
        return torch.from_numpy((np.asarray(grey) / 255.0 > 0.5).astype(np.float32))
    square = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(square, size=(size, size), mode="nearest")[0, 0]


def load_batch(samples: list[Sample], backbone: Any, size: int | None = None,
               preprocess: Callable[[list[np.ndarray]], torch.Tensor] | None = None,
               mask_rule: str = "nearest") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixels, masks resized to the input size (`resized_mask`'s rule) and labels of a batch.

    The size is the CLIP's unless given, and the pixels come from the CLIP's own preprocessing unless
    the method brings its own (at that size).
    """
    images = [load_image(sample.image_path).pixels for sample in samples]
    size = size or backbone.image_size
    masks = torch.stack([resized_mask(load_mask(s, *im.shape[:2]), size, mask_rule) for s, im in zip(samples, images)])
    labels = torch.tensor([float(sample.label) for sample in samples])
    device = backbone.device
    pixels = preprocess(images) if preprocess is not None else backbone.preprocess(images, size)
    return pixels, masks.to(device), labels.to(device)


def default_batch(samples: list[Sample], learner: Any) -> tuple:
    """`learner.loss`'s arguments: pixels, masks, labels, and the class names when the learner's prompts name the
    object (GenCLIP: "a photo of a good [cls]"); at the learner's own input size, resizing and mask rule when it has them."""
    pixels, masks, labels = load_batch(samples, learner.backbone, getattr(learner, "input_size", None),
                                       getattr(learner, "preprocess", None), getattr(learner, "mask_rule", "nearest"))
    if getattr(learner, "needs_class_names", False):
        return pixels, masks, labels, [sample.category for sample in samples]
    return pixels, masks, labels


def mixed_precision(device: torch.device | str, precision: str = "auto"):
    """bf16 autocast on a GPU, iapas's choice for speed (AdaCLIP's reference trains in fp16; AnomalyCLIP's and
    FAPrompt's in fp32, which precision "fp32" keeps, as their official recipe does); full precision on the CPU."""
    if precision == "auto" and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


class PromptTrainer:
    """Trains `learner.prompts` with `optimizer`, writing `<prompts_file>`, `last.pt` and `train_log.json` each epoch."""

    def __init__(self, learner: Learner, optimizer: torch.optim.Optimizer, options: TrainOptions, prompts_file: str,
                 note: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
                 batch_loader: BatchLoader | None = None, after_epoch: Callable[[int], None] | None = None) -> None:
        self.learner, self.optimizer, self.options = learner, optimizer, options
        self.after_epoch = after_epoch  # called with each finished epoch's index, after its checkpoint (e.g. keep the best)
        self.prompts_file, self.note = prompts_file, note
        # a method with its own inputs (class names, augmentation) brings its loader; the default reads pixels, masks, labels
        # a learner may train at its own input size with its own resizing (AnomalyCLIP, FAPrompt: 518 px)
        self.batch_loader = batch_loader or (lambda batch, rng: default_batch(batch, learner))

    def run(self, samples: list[Sample] | None = None) -> tuple[Path, list[float]]:
        """Train (or resume); returns the prompt file and this run's per-step losses."""
        options, learner = self.options, self.learner
        out_dir = Path(options.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        fingerprint = options.fingerprint(learner)
        check_fingerprint(out_dir, fingerprint, options.overwrite)  # one line naming what changed, before any work
        if options.overwrite:
            for name in (STATE_FILE, LOG_FILE):
                (out_dir / name).unlink(missing_ok=True)
        record_fingerprint(out_dir, fingerprint)
        start_epoch, earlier = self._resume(out_dir)
        samples = samples if samples is not None else training_samples(options.dataset, options.root, options.limit)
        history: list[float] = []
        learner.prompts.train()
        for epoch in range(start_epoch, options.epochs):
            order = np.random.default_rng(options.seed + epoch).permutation(len(samples))  # same order when resumed
            augment = np.random.default_rng([options.seed, epoch])  # the loader's draws, also repeated on resume
            batches = [order[i:i + options.batch_size] for i in range(0, len(order), options.batch_size)]
            bar = tqdm(batches, desc=f"{learner.name} epoch {epoch + 1}/{options.epochs}", unit="batch",
                       disable=not options.progress)
            for batch in bar:
                inputs = self.batch_loader([samples[i] for i in batch], augment)
                with mixed_precision(learner.backbone.device, getattr(learner, "train_precision", "auto")):
                    loss = learner.loss(*inputs)
                self.optimizer.zero_grad()
                loss.float().backward()
                self.optimizer.step()
                history.append(float(loss.detach()))
                bar.set_postfix(loss=f"{history[-1]:.4f}")
            self._checkpoint(out_dir, epoch, earlier + history)
            if self.after_epoch is not None:
                self.after_epoch(epoch)
                learner.prompts.train()
        learner.prompts.eval()
        return out_dir / self.prompts_file, history

    def _resume(self, out_dir: Path) -> tuple[int, list[float]]:
        """The epoch to start from and the losses logged before, from `last.pt` when it belongs to this run."""
        state_path = out_dir / STATE_FILE
        if not state_path.is_file():
            return 0, []
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise CorruptWeightsError(f"training state {state_path} is corrupt or truncated "
                                      f"({str(error).splitlines()[0][:120]}); delete it to start over") from None
        if state.get("method") != self.learner.name or state.get("settings") != self.learner.settings_record() \
                or state.get("seed") != self.options.seed:
            raise DatasetError(f"{state_path} belongs to another run (method, settings or seed differ); use a new -o folder")
        self.learner.prompts.load_state_dict(state["prompts"])
        self.optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"]) + 1
        log_path = out_dir / LOG_FILE
        earlier = json.loads(log_path.read_text(encoding="utf-8"))["losses"] if log_path.is_file() else []
        self.note(f"resuming from epoch {start_epoch + 1} of {self.options.epochs} ({state_path})")
        return start_epoch, earlier

    def _checkpoint(self, out_dir: Path, epoch: int, losses: list[float]) -> None:
        """The prompt file, the resumable state and the loss log of a finished epoch, each written atomically."""
        layout = {} if self.options.save_format == "iapas" else {"layout": self.options.save_format}
        self.learner.save(out_dir / self.prompts_file, {"trained_on": self.options.dataset, "epochs_done": epoch + 1}, **layout)
        state = {"method": self.learner.name, "prompts": self.learner.prompts.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "epoch": epoch, "settings": self.learner.settings_record(),
                 "seed": self.options.seed}
        atomic_write(out_dir / STATE_FILE, lambda temporary: torch.save(state, temporary))
        atomic_write_text(out_dir / LOG_FILE, json.dumps({"epoch": epoch + 1, "losses": losses}) + "\n")

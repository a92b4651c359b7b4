"""AnomalyDINO on a frozen DINOv2: nearest-neighbour patch distances to a memory of K normal references."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ...errors import ConfigError, IapasError
from ...types import Boxes, Masks, Result
from ..batching import rgb_pixels
from .preprocess import ROTATION_ANGLES, Preprocessing, settings

DEFAULT_RESOLUTION = 448  # run_anomalydino.py --resolution
MASK_THRESHOLD = 10.0  # src/backbones.py compute_background_mask(threshold=10)
MASK_BORDER = 0.2
MASK_KERNEL = 3
MAP_SIGMA = 4  # src/utils.py dists2map: gaussian_filter(sigma=4)


def prepared_pixels(image: np.ndarray, resolution: int, patch: int) -> torch.Tensor:
    """(1, 3, h, w) ImageNet-normalised pixels: the shorter side resized to `resolution` (PIL bicubic), then cropped
    from the top-left corner to multiples of the patch size (src/backbones.py DINOv2Wrapper transform, prepare_image)."""
    from PIL import Image

    height, width = image.shape[:2]
    short, long = min(height, width), max(height, width)
    new_long = int(resolution * long / short)  # torchvision Resize(int): the longer side truncated
    size = (resolution, new_long) if height <= width else (new_long, resolution)
    resized = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BICUBIC), dtype=np.float32) / 255
    pixels = torch.from_numpy(resized).permute(2, 0, 1)
    pixels = (pixels - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    cropped = pixels[:, :size[0] - size[0] % patch, :size[1] - size[1] % patch]
    return cropped[None]


def rotated(image: np.ndarray, angle: float) -> np.ndarray:
    """src/utils.py rotate_image: about the centre, same size, bilinear, reflected border (cv2.BORDER_DEFAULT)."""
    import cv2

    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_DEFAULT)


def background_mask(features: np.ndarray, grid: tuple[int, int], seed: int = 0) -> np.ndarray:
    """(P,) foreground patches: the first principal component above 10, its sign flipped when the centre is mostly
    background, then a 3x3 dilation and closing of the patch column (src/backbones.py compute_background_mask).

    The authors' PCA is sklearn's randomized solver with no seed; iapas fixes `seed` so a run is repeatable.
    """
    import cv2
    from sklearn.decomposition import PCA

    first = PCA(n_components=1, svd_solver="randomized", random_state=seed).fit_transform(features.astype(np.float32))
    mask = first > MASK_THRESHOLD
    rows, cols = grid
    centre = mask.reshape(grid)[int(rows * MASK_BORDER):int(rows * (1 - MASK_BORDER)), int(cols * MASK_BORDER):int(cols * (1 - MASK_BORDER))]
    if centre.sum() <= centre.size * 0.35:  # the object is assumed to sit in the centre
        mask = -first > MASK_THRESHOLD
    # the authors dilate and close the (P, 1) column of patches, not the 2-D grid: a patch's neighbours are the ones
    # before and after it in row-major order (wrapping from one row's end to the next row's start)
    kernel = np.ones((MASK_KERNEL, MASK_KERNEL), np.uint8)
    mask = cv2.dilate(mask.astype(np.uint8), kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel).astype(bool)
    return mask.reshape(-1)


def mean_top_percent(distances: np.ndarray) -> float:
    """src/post_eval.py mean_top1p: the mean of the highest 1 % of the patch distances (the maximum below 100 patches)."""
    count = int(len(distances) * 0.01)
    if count == 0:
        return float(np.max(distances))
    return float(np.mean(np.sort(distances.reshape(-1))[::-1][:count]))


def distance_map(distances: np.ndarray, height: int, width: int) -> np.ndarray:
    """src/utils.py dists2map: the patch grid resized to the image (cv2 bilinear), then a Gaussian of sigma 4 (scipy)."""
    import cv2
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(cv2.resize(distances, (width, height), interpolation=cv2.INTER_LINEAR), sigma=MAP_SIGMA)


@dataclass
class AnomalyDino:
    """AnomalyDINO (Damm et al., WACV 2025): K normal references, DINOv2 ViT-S/14 patch features, 1-NN cosine distances.

    `preprocess` names the authors' per-category masking and rotation rules (src/utils.py); the references come
    from `set_references`, or in `prepare` from `reference_dir` (else the category's normal training images).
    """

    backbone: object  # iapas.backends.dinov2.Dinov2Backbone
    shots: int = 1
    reference_dir: Path | None = None
    resolution: int = DEFAULT_RESOLUTION
    preprocess: str = "agnostic"
    neighbours: int = 1
    category: str = "object"
    dataset: str = ""
    name: str = "anomalydino"
    default_image_score: str = "method"  # the mean of the top 1 % of patch distances (src/post_eval.py)
    rules: Preprocessing = field(init=False)
    memory: torch.Tensor | None = field(init=False, default=None)
    references: tuple[Path, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        if self.shots < 1:
            raise ConfigError(f"AnomalyDINO needs --shots K of at least 1 normal reference (paper: 1, 2, 4, 8, 16), got {self.shots}")
        if self.neighbours < 1:
            raise ConfigError(f"anomalydino.neighbours must be 1 or more, got {self.neighbours}")
        if self.resolution < self.backbone.patch_size:
            raise ConfigError(f"anomalydino.resolution must be at least the patch size {self.backbone.patch_size}, got {self.resolution}")
        self.rules = settings(self.preprocess, self.dataset, self.category)

    def use_dataset(self, dataset: str) -> None:
        """Take the dataset's masking and rotation tables (src/utils.py get_dataset_info)."""
        self.dataset = dataset
        self.rules = settings(self.preprocess, self.dataset, self.category)

    @torch.inference_mode()
    def features(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """(P, D) float32 normed last-block patch tokens and the (rows, cols) grid of one RGB image."""
        pixels = prepared_pixels(image, self.resolution, self.backbone.patch_size)
        tokens = self.backbone.patch_tokens(pixels.to(self.backbone.device))[0]
        grid = (pixels.shape[2] // self.backbone.patch_size, pixels.shape[3] // self.backbone.patch_size)
        return tokens.float().cpu().numpy(), grid

    def set_references(self, images: Sequence[np.ndarray]) -> None:
        """The memory: every patch of every reference (each rotated by 45-degree steps when the rules say so), unit length.

        src/detection.py: references are not masked (`mask_ref_images` defaults to False).
        """
        if not images:
            raise IapasError("AnomalyDINO needs at least one normal reference image")
        bank = []
        for image in images:
            for view in ([rotated(image, angle) for angle in ROTATION_ANGLES] if self.rules.rotation else [image]):
                bank.append(self.features(view)[0])
        memory = torch.from_numpy(np.concatenate(bank))
        self.memory = memory / memory.norm(dim=1, keepdim=True)

    def patch_distances(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """(P,) cosine distances of each patch to its nearest memory patches (0 for masked background patches), and the grid.

        src/detection.py, knn_metric L2_normalized: squared L2 between unit vectors, halved (= 1 - cosine); with
        k > 1 neighbours the squared distances are averaged first.
        """
        if self.memory is None:
            raise IapasError("AnomalyDINO has no references: call set_references or prepare with --shots K")
        features, grid = self.features(image)
        keep = background_mask(features, grid) if self.rules.masking else np.ones(len(features), dtype=bool)
        query = torch.from_numpy(features[keep])
        query = query / query.norm(dim=1, keepdim=True)
        distances = (1 - query @ self.memory.T).clamp(min=0)
        nearest = torch.topk(distances, min(self.neighbours, distances.shape[1]), dim=1, largest=False).values.mean(dim=1)
        full = np.zeros(len(features), dtype=np.float64)
        full[keep] = nearest.numpy()
        return full, grid

    def segment(self, image: np.ndarray) -> Result:
        """The smoothed distance map at the image's size and the mean of the top 1 % of patch distances."""
        image = rgb_pixels(image)
        start = time.perf_counter()
        distances, grid = self.patch_distances(image)
        found = time.perf_counter()
        height, width = image.shape[:2]
        heat = distance_map(distances.reshape(grid), height, width)
        # cosine distances lie in [0, 2]: halved into the Result's [0, 1] (a fixed scale: every ranking metric unchanged)
        heat = np.clip(heat / 2, 0, 1).astype(np.float32)
        timings = {"nearest_neighbours": found - start, "smoothing": time.perf_counter() - found}
        return Result(heat, Boxes.empty(), Masks.empty(height, width), (), timings, self.name, mean_top_percent(distances))

    def prepare(self, category: str, normal_images: Sequence[Path], kind: str, out_dir: Path) -> None:
        """The category's rules and its K references: the first K of the sorted pool (run_anomalydino.py seed 0)."""
        from ...images import load_image
        from ..references import reference_pool

        self.category = category
        self.rules = settings(self.preprocess, self.dataset, category)
        pool, where = reference_pool(self.reference_dir, normal_images, self.shots, category)
        pool = sorted(pool, key=lambda path: Path(path).name)
        if len(pool) < self.shots:
            raise IapasError(f"--shots {self.shots} needs {self.shots} normal reference images; {where} has {len(pool)}")
        chosen = tuple(pool[:self.shots])  # src/detection.py: sorted(os.listdir(...))[seed * k:(seed + 1) * k], seed 0
        self.set_references([load_image(path).pixels for path in chosen])
        self.references = chosen

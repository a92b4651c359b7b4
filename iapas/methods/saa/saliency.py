"""SAA+'s visual saliency prompt: self-similarity of ImageNet CNN features (SAA/modelinet.py, SAA/model.py)."""
from __future__ import annotations

from pathlib import Path
import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ...errors import WeightsError

BACKBONE = "wide_resnet50_2"  # SAA/modelinet.py ModelINet default backbone
OUT_INDICES = (1, 2, 3)  # layer1..layer3 (strides 4, 8, 16)
SINGLE_SIZE = 256  # SAA/model.py single_object_similarity: image resized to 256 x 256 ("memory costly" otherwise)
MULTI_SIZE = 1024  # SAA/model.py visual_saliency_calculation, multi-instance: 1024 x 1024
NEAREST = 400  # SAA/model.py single_object_similarity: mean of each position's 400 largest dissimilarities
ARCHITECTURE_KEY = "timm_overrides"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SaliencyNet:
    """timm's `wide_resnet50_2` (features of layers 1-3) loaded from a local file, as ModelINet runs it."""

    def __init__(self, path: Path, device: torch.device) -> None:
        import timm

        from ...backends.base import require_path, warn_if_demo

        self.path = Path(path)
        require_path(self.path, "SAA+ saliency (wide_resnet50_2)", expect_dir=False)
        warn_if_demo(self.path)
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            # a demo file (iapas/weights/demo.py) names timm keyword overrides that shrink the layers; released weights name none
            overrides = dict(state.get(ARCHITECTURE_KEY, {})) if isinstance(state, dict) else {}
            state = state.get("state_dict", state)
            model = timm.create_model(BACKBONE, pretrained=False, features_only=True, out_indices=OUT_INDICES, **overrides)
            wanted = model.state_dict()
            # the released file holds the whole classifier; the feature extractor keeps its layers up to layer3
            model.load_state_dict({key: value for key, value in state.items() if key in wanted}, strict=True)
        except Exception as error:  # noqa: BLE001 - any unreadable or mismatching file is one line
            raise WeightsError(f"cannot load the SAA+ saliency network from {self.path}: {str(error).splitlines()[0][:200]}") from None
        self.model = model.to(device).eval()
        self.device = device

    @torch.inference_mode()
    def features(self, image: np.ndarray, size: int) -> torch.Tensor:
        """(1, C, h, w) L2-normalised features of a (size, size, 3) uint8 image, layers 2-3 up-sampled (nearest) to layer 1.

        SAA/modelinet.py ModelINet.preprocess + forward: pixels normalised with ImageNet's mean and std (x 255),
        no padding needed for a square input; F.interpolate's default (nearest) to the first map's size.
        """
        pixels = torch.as_tensor(np.ascontiguousarray(image), device=self.device).permute(2, 0, 1)[None].float()
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(-1, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD, device=self.device).view(-1, 1, 1) * 255
        maps = self.model((pixels - mean) / std)
        first = maps[0].shape[2:]
        joined = torch.cat([maps[0]] + [F.interpolate(m, first) for m in maps[1:]], dim=1)
        return F.normalize(joined, dim=1)


def single_object_saliency(net: SaliencyNet, image: np.ndarray) -> np.ndarray:
    """SAA/model.py single_object_similarity: each position's mean dissimilarity to its 400 least similar positions.

    The image is resized (cv2 bilinear) to 256 x 256; dissimilarity = (1 - cosine) / 2; the (h, w) map is
    resized (cv2 bilinear) back to the image. The object mask is not applied (SAA+ leaves that line commented).
    """
    resized = cv2.resize(image, (SINGLE_SIZE, SINGLE_SIZE))
    features = net.features(resized, SINGLE_SIZE)
    _, channels, height, width = features.shape
    flat = features.view(channels, height * width)
    dissimilarity = 0.5 * (1 - flat.T @ flat)
    top = dissimilarity.sort(dim=1, descending=True).values[:, :NEAREST]
    saliency = top.mean(dim=1).view(height, width).float().cpu().numpy()
    return cv2.resize(saliency, (image.shape[1], image.shape[0]))


def multi_object_saliency(net: SaliencyNet, image: np.ndarray, object_masks: np.ndarray) -> np.ndarray:
    """SAA/model.py visual_saliency_calculation, several objects: each object's features against the other objects'.

    Features of the image resized to 1024 x 1024; each object mask resized (nearest) to the feature grid; a
    position of object i scores (1 - its best cosine to any position of the other objects) / 2, where the other
    objects' positions that also belong to object i count as zero vectors (SAA+ zeroes them in its copy);
    the maximum over objects, resized (cv2 bilinear) to the image. With fewer than two objects SAA+ fails
    (nothing to compare with); iapas returns zeros there.
    """
    features = net.features(cv2.resize(image, (MULTI_SIZE, MULTI_SIZE)), MULTI_SIZE)[0]
    channels, height, width = features.shape
    grids = [cv2.resize(mask.astype(np.int32), (width, height), interpolation=cv2.INTER_NEAREST) > 0 for mask in object_masks]
    scores = np.zeros((height, width))
    if len(grids) < 2:
        return cv2.resize(scores, (image.shape[1], image.shape[0]))
    flat = features.reshape(channels, -1)
    per_object = []
    for index, grid in enumerate(grids):
        mine = torch.as_tensor(grid.reshape(-1), device=features.device)
        if not mine.any():
            continue
        others = torch.as_tensor(np.any([g for i, g in enumerate(grids) if i != index], axis=0).reshape(-1), device=features.device)
        if not others.any():
            continue
        cleared = flat.clone()
        cleared[:, mine] = 0
        best = (flat[:, mine].T @ cleared[:, others]).max(dim=1).values
        heat = np.zeros(height * width)
        heat[mine.cpu().numpy()] = (0.5 * (1 - best)).float().cpu().numpy()
        per_object.append(heat.reshape(height, width))
    if per_object:
        scores = np.max(per_object, axis=0)
    return cv2.resize(scores, (image.shape[1], image.shape[0]))

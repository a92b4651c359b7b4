"""HEPE's model (paper §3.3, Fig. 3): AdaCLIP's prompted CLIP with MLLM text prompts and DINOv2 attention prompts.

Everything AdaCLIP learns and computes (static and dynamic prompts, patch heads, HSF, maps) is
`iapas.methods.adaclip.model.AdaClip`; HEPE adds, through that class's hooks:
- text keys that carry the agent's defect phrases: each phrase is one more abnormal state "{class} with
  <phrase>" inside AdaCLIP's four templates (our choice; the paper says only that the generated text
  prompts go through the text encoder, §3.1), cut at CLIP's 77-token context with its EOS kept;
- the attention embedding: DINOv2's last-block patch tokens through AFS (`afs.py`) on CLIP's patch grid,
  added to every feature layer's unit patch embedding, then normalised again (§3.1 "merged" / Eq. 1's
  Q_E: where and how is our choice); HSF clusters these merged embeddings, so the image score sees them too;
- Eq. 1: the softmax of the plain cosine (`logit_scale` 1), where AdaCLIP's code scales by 100.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...backends.clip import ClipBackbone
from ...errors import ConfigError, WeightsError
from ..adaclip.model import AdaClip, AdaClipSettings
from ..adaclip.text import ABNORMAL_STATES, NORMAL_STATES, TEMPLATES
from .afs import AnomalyFeatureSelection, LinearSelection
from .agent import Description, PromptAgent

PROMPTS_FILE = "hepe_prompts.pt"
EQ1_LOGIT_SCALE = 1.0  # HEPE Eq. 1: exp(cos) / (exp(cos_A) + exp(cos_N)), no temperature
DESCRIPTION_MODES = ("image", "category")
KEY_SEPARATOR = "\n"  # a text key: the class name, then one defect phrase per line


@dataclass(frozen=True)
class HepeParts:
    """Which of HEPE's parts are on: the paper's Table 2 ablations switch them off."""

    text_prompts: bool = True  # Table 2 "Text Prompt": the agent's descriptions
    vfm: bool = True  # Table 2 "VFM": DINOv2 attention prompts
    afs: bool = True  # Table 2 "AFS": ODConv + DSConv (off: a 1 x 1 projection of the DINOv2 features)


def text_key(class_name: str, description: Description | None) -> str:
    """The key of a class name and its defect phrases (braces removed: the phrases go through str.format)."""
    phrases = [p.replace("{", "").replace("}", "").replace(KEY_SEPARATOR, " ") for p in (description.phrases if description else ())]
    return KEY_SEPARATOR.join([class_name, *phrases])


def key_sentences(key: str) -> tuple[list[str], list[str]]:
    """AdaCLIP's 28 normal and 20 abnormal sentences, plus 4 abnormal sentences per phrase ("{class} with <phrase>")."""
    class_name, *phrases = key.split(KEY_SEPARATOR)
    name = class_name.replace("-", " ")  # adaclip/text.py's rule for the class name
    states = (NORMAL_STATES, ABNORMAL_STATES + tuple(f"{{}} with {phrase}" for phrase in phrases))
    return tuple([template.format(state.format(name)) for state in group for template in TEMPLATES] for group in states)


class Hepe(AdaClip):
    """AdaCLIP + generated text prompts + DINOv2/AFS attention prompts, Eq. 1's plain cosine."""

    name = "hepe"

    def __init__(self, backbone: ClipBackbone, dinov2=None, settings: AdaClipSettings | None = None, *,
                 parts: HepeParts = HepeParts(), logit_scale: float = EQ1_LOGIT_SCALE, agent: PromptAgent | None = None,
                 descriptions: str = "image", reference_images: Sequence[Path] = (), seed: int = 111,
                 note: Callable[[str], None] = lambda m: print(f"iapas: {m}", file=sys.stderr), **rules) -> None:
        super().__init__(backbone, settings, **rules)
        if parts.vfm and dinov2 is None:
            raise WeightsError("HEPE's attention prompts need a DINOv2 ViT-S directory (--dinov2), or --ablate vfm")
        if descriptions not in DESCRIPTION_MODES:
            raise ConfigError(f"HEPE descriptions must be one of {', '.join(DESCRIPTION_MODES)}, got {descriptions!r}")
        self.parts, self.logit_scale, self.agent = parts, float(logit_scale), agent if parts.text_prompts else None
        self.descriptions, self.reference_images, self.seed, self.note = descriptions, list(reference_images), seed, note
        self.dinov2 = dinov2 if parts.vfm else None
        if parts.vfm:  # the learned attention branch joins AdaCLIP's learned modules (saved, trained, loaded with them)
            selection = AnomalyFeatureSelection if parts.afs else LinearSelection
            self.prompts.attention = selection(dinov2.hidden_size, backbone.embed_dim).to(backbone.device)
        self.reference: np.ndarray | None = None
        self.reference_path: Path | None = None
        self.category_key: str | None = None

    # ---- text -------------------------------------------------------------------------------------
    def sentences(self, key: str) -> tuple[list[str], list[str]]:
        return key_sentences(key)

    def text_keys(self, images: Sequence[np.ndarray]) -> list[str]:
        """Per image (paper Fig. 2) the agent's description of it against the normal reference; per category the first's."""
        if self.agent is None:
            return [self.class_name] * len(images)
        if self.descriptions == "category":
            if self.category_key is None:
                self.category_key = text_key(self.class_name, self.agent.describe(images[0], self.reference, self.class_name))
            return [self.category_key] * len(images)
        return [text_key(self.class_name, self.agent.describe(image, self.reference, self.class_name)) for image in images]

    def shown_prompts(self, key: str) -> tuple[str, ...]:
        """AdaCLIP's first normal and abnormal sentence, then the agent's defect phrases (the explainable prompts)."""
        return (*super().shown_prompts(key), *key.split(KEY_SEPARATOR)[1:])

    # ---- attention prompts ------------------------------------------------------------------------
    def attention_embedding(self, pixels: torch.Tensor, grid: int) -> torch.Tensor:
        """(B, g*g, E) attention prompts: DINOv2 on the same image (its own normalisation), AFS, on CLIP's g x g grid.

        The CLIP pixels are un-normalised (exactly: the normalisation is affine) and resized to g x DINOv2's
        patch size, so both grids match (both are 37 x 37 at 518 px for ViT-L/14 and ViT-S/14).
        """
        raw = pixels.float() * self.backbone.std + self.backbone.mean
        side = grid * self.dinov2.patch_size
        if raw.shape[-1] != side:
            raw = F.interpolate(raw, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        with torch.no_grad():  # DINOv2 stays frozen (§3.2: only AFS selects from its features)
            tokens = self.dinov2.patch_tokens(self.dinov2.normalise(raw.clamp(0, 1)))
        features = tokens.transpose(1, 2).reshape(len(tokens), -1, grid, grid).float()
        return self.prompts.attention(features).flatten(2).transpose(1, 2)

    def merge_attention(self, pixels: torch.Tensor, patches: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.dinov2 is None:
            return patches
        attention = self.attention_embedding(pixels, int(round(patches[0].shape[1] ** 0.5)))
        return [F.normalize(layer + attention, dim=-1) for layer in patches]

    # ---- the Method protocol ----------------------------------------------------------------------
    def prepare(self, category: str, normal_images: Sequence[Path], kind: str, out_dir: Path) -> None:
        """The class name, and (with the agent) one normal reference image drawn with the seed from --reference-images or the category's."""
        from ...images import load_image

        super().prepare(category, normal_images, kind, out_dir)
        self.category_key, self.reference, self.reference_path = None, None, None
        if self.agent is None or not self.agent.settings.normal_image:
            return
        pool = sorted(Path(p) for p in (self.reference_images or normal_images))
        if not pool:
            raise ConfigError("HEPE's agent needs a normal image beside each test image: give --reference-images DIR "
                              "(or --ablate normal-image)")
        self.reference_path = pool[int(np.random.default_rng(self.seed).integers(len(pool)))]
        self.reference = load_image(self.reference_path).pixels
        self.note(f"hepe: {self.class_name}: normal reference image {self.reference_path} (seed {self.seed})")

    def settings_record(self) -> dict:
        return {**super().settings_record(), "parts": asdict(self.parts), "logit_scale": self.logit_scale}

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        from ..adaclip.checkpoint import save_prompts

        return save_prompts(self, path, {"method": self.name, "parts": asdict(self.parts), "logit_scale": self.logit_scale,
                                         "dinov2": getattr(self.dinov2, "name", ""), **(extra or {})})

    @classmethod
    def load(cls, path: str | Path, backbone: ClipBackbone, dinov2=None, image_size: int = 0, *,
             parts: HepeParts = HepeParts(), **rules) -> "Hepe":
        """A checkpoint from `iapas train hepe` on a frozen CLIP and DINOv2; `parts` may switch off what it has, not add to it."""
        from dataclasses import replace

        from ..adaclip.checkpoint import load_into, read_checkpoint
        from ..adaclip.model import check_input_size

        trained = checkpoint_parts(path)
        check_parts(trained, parts, path)
        settings, state, clip = read_checkpoint(path, backbone.depth)
        if image_size:
            settings = replace(settings, image_size=check_input_size(image_size, backbone))
        model = cls(backbone, dinov2, settings, parts=parts, **rules)
        if not parts.vfm:  # the checkpoint's attention branch is not used (Table 2's first two rows)
            state = {key: value for key, value in state.items() if not key.startswith("attention.")}
        load_into(model.prompts, state, path, "HEPE", backbone.name)
        return model.eval()


def checkpoint_parts(path: str | Path) -> HepeParts:
    """The parts a HEPE checkpoint was trained with; a one-line WeightsError for a file that is not one."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"HEPE weights not found: {path} (train them: `iapas train hepe -o DIR`, then --prompts DIR/{PROMPTS_FILE})")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("method") != "hepe":
            raise ValueError("no method 'hepe' in it")
        return HepeParts(**payload["parts"])
    except Exception as error:
        raise WeightsError(f"not a HEPE checkpoint: {path} ({str(error).splitlines()[0][:120]})") from None


def check_parts(trained: HepeParts, asked: HepeParts, path: str | Path) -> None:
    """An ablation may drop a trained part; AFS on/off changes the learned branch, so it must match the checkpoint's."""
    if asked.vfm and not trained.vfm:
        raise WeightsError(f"{path} was trained without the VFM attention prompts: add --ablate vfm, or use a full checkpoint")
    if asked.vfm and asked.afs != trained.afs:
        hint = "add --ablate afs" if not trained.afs else "retrain with `iapas train hepe --ablate afs` for the no-AFS row"
        raise WeightsError(f"{path} was trained {'with' if trained.afs else 'without'} AFS: {hint}")

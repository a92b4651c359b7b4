"""GenCLIP (Kim et al., 2025): general query prompts augmented by multi-layer vision prompts, dual-branch inference.

No public code exists; each rule below cites the paper's section or equation. Where the paper is silent
the choice is marked "(our choice)" and listed in docs/methods/official-adaclip-genclip-winclip.md's GenCLIP table.

Learned (`GenClipPrompts`): the state tokens N_P, A_P and the two shared query tokens Q_P (§3.2, §4.1),
one text-layer prompt-tuning token for each text layer after the first (§3.2, B.4), and per vision layer i
a linear MLP_T^i making the vision prompt V_P^i (Eq. 1) and a linear MLP_I^i projecting patch features (Eq. 3),
both on the raw layer features.
Everything of CLIP stays frozen.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...backends.clip import ClipBackbone
from ...errors import WeightsError
from ...files import atomic_write
from ...acceleration.precision import full_precision
from ...prompt_learning import dice_loss, focal_loss, gaussian_smooth
from ...types import Boxes, Masks, Result
from ..batching import BatchedMethod, timed
from .prompts import GENERIC_WORD, STATES, filter_class_name, prompt_layout, readable_class_name
from .scoring import ALPHA, SIGMA, TOP_N1, TOP_N2, combine_branches, top_n_image_score

INPUT_SIZE = 518  # §4.1: images resized to 518 x 518
QUERY_LENGTH = 2  # §4.1: two instances of Q_P
MODIFIED_LENGTH = 1  # B.4: one prompt token modified for text prompt tuning
TOKEN_INIT_STD = 0.02  # (our choice) CoOp's initialisation of learnable word tokens
CHECKPOINT_FORMAT = 2  # 2: the paper's rules (plain cosine, raw features, no extra template slot); 1 is not read
# Eq. 15: epsilon in the denominator only, "a small constant to prevent division by zero" (its value: our choice)
DICE_EPSILON = 1e-6
# Eq. 16 is garbled in print (alpha and gamma on the anomalous term only) and gives no values: (our choice) the
# alpha-balanced focal loss of its reference [19] (Lin et al. 2017) with that paper's alpha 0.25 and gamma 2
FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


def default_layers(depth: int) -> tuple[int, ...]:
    """§4.1: four evenly spaced layers, 6, 12, 18, 24 of ViT-L/14's 24 (fewer for a shallower test CLIP)."""
    return tuple(sorted({max(1, round(depth * k / 4)) for k in (1, 2, 3, 4)}))


@dataclass(frozen=True)
class GenClipSettings:
    """Architecture of the learned parts; stored in every checkpoint."""

    layers: tuple[int, ...]
    input_size: int = INPUT_SIZE
    query_length: int = QUERY_LENGTH
    modified_length: int = MODIFIED_LENGTH

    @classmethod
    def for_backbone(cls, backbone: ClipBackbone, layers: Sequence[int] = (), input_size: int = INPUT_SIZE) -> "GenClipSettings":
        return cls(tuple(layers) or default_layers(backbone.depth), input_size)


class GenClipPrompts(torch.nn.Module):
    """Everything GenCLIP learns."""

    def __init__(self, settings: GenClipSettings, text_depth: int, text_width: int, vision_width: int, embed_dim: int) -> None:
        super().__init__()
        self.state = torch.nn.Parameter(TOKEN_INIT_STD * torch.randn(2, text_width))  # N_P, A_P (§3.2)
        self.query = torch.nn.Parameter(TOKEN_INIT_STD * torch.randn(settings.query_length, text_width))  # Q_P (§3.2, §4.1)
        # §3.2 "inserts learnable tokens before each Transformer layer's text embeddings", B.4 "one" token modified:
        # before text layers 2 .. N the token after the start token is replaced (as in the cited [3, 37]); layer 1
        # reads the template itself, whose first learned token is N_P / A_P
        self.modified = torch.nn.Parameter(TOKEN_INIT_STD * torch.randn(text_depth - 1, settings.modified_length, text_width))
        # Eq. 1: MLP_T^i, a single linear layer per vision layer; zero at first (our choice), so training
        # starts from the general query prompts alone and V_P^i grows from there
        self.vision_prompt = torch.nn.ModuleList(torch.nn.Linear(vision_width, text_width) for _ in settings.layers)
        for linear in self.vision_prompt:
            torch.nn.init.zeros_(linear.weight)
            torch.nn.init.zeros_(linear.bias)
        # Eq. 3: MLP_I^i, a single linear layer per vision layer into the joint space
        self.patch_projection = torch.nn.ModuleList(torch.nn.Linear(vision_width, embed_dim) for _ in settings.layers)


class GenClip(BatchedMethod, torch.nn.Module):
    """Frozen CLIP + GenCLIP's learned prompts -> anomaly map and image score."""

    name = "genclip"
    needs_class_names = True  # the training loop passes each sample's class name to `loss`

    def __init__(self, backbone: ClipBackbone, settings: GenClipSettings | None = None, *, alpha: float = ALPHA,
                 sigma: float = SIGMA, top_n1: int = TOP_N1, top_n2: int = TOP_N2, class_name_filter: bool = True) -> None:
        super().__init__()
        self.settings = settings or GenClipSettings.for_backbone(backbone)
        bad = backbone.missing_layers(self.settings.layers)
        if bad:
            raise WeightsError(f"GenCLIP layers {bad} do not exist in a {backbone.depth}-layer CLIP")
        self.backbone = backbone.use_input_size(self.settings.input_size)
        self.alpha, self.sigma, self.top_n1, self.top_n2 = alpha, sigma, top_n1, top_n2
        self.class_name_filter = class_name_filter
        self.class_name = GENERIC_WORD
        self._cnf_cache: dict[str, torch.Tensor] = {}
        self.prompts = self._initial_prompts()
        self.to(backbone.device)

    def _initial_prompts(self) -> GenClipPrompts:
        clip = self.backbone.clip
        text = clip.config.text_config
        prompts = GenClipPrompts(self.settings, int(text.num_hidden_layers), int(text.hidden_size),
                                 int(clip.config.vision_config.hidden_size), self.backbone.embed_dim)
        with torch.no_grad():  # (our choice) each MLP_I^i starts as CLIP's own visual projection
            for projection in prompts.patch_projection:
                projection.weight.copy_(clip.visual_projection.weight)
                projection.bias.zero_()
        return prompts

    # ---- vision side -------------------------------------------------------------------------------
    def layer_features(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """The raw (B, 1 + g*g, Dv) tokens F~_V^i of each chosen layer of the frozen vision encoder (no V-V attention, §2.1).

        Eq. 1 and 3 apply MLP_T^i and MLP_I^i to these features as they leave the layer: no LayerNorm between.
        """
        with torch.no_grad():  # CLIP is frozen and no prompt enters the vision encoder
            _, hidden = self.backbone.encode_tokens(self.backbone.tokens(pixels), self.settings.layers)
            return hidden

    # ---- text side ---------------------------------------------------------------------------------
    def text_embeddings(self, class_words: Sequence[str], additions: torch.Tensor) -> torch.Tensor:
        """(B, K, 2, E) unit normal/abnormal embeddings; image b's K prompts get Q_P + additions[b, k] (Eq. 2)."""
        backbone, settings = self.backbone, self.settings
        width = backbone.clip.text_model.embeddings.token_embedding.weight.shape[1]
        max_length = int(backbone.clip.config.text_config.max_position_embeddings)
        layouts = [[prompt_layout(backbone.tokenizer, state, word, settings.query_length, max_length) for state in STATES]
                   for word in class_words]
        length = max(len(layout.ids) for pair in layouts for layout in pair)
        pad = backbone.tokenizer.eos_token_id
        ids = torch.tensor([[list(l.ids) + [pad] * (length - len(l.ids)) for l in pair] for pair in layouts], device=backbone.device)
        words = backbone.clip.text_model.embeddings.token_embedding(ids)  # (B, 2, T, Dt)
        count = additions.shape[1]
        queries = self.prompts.query[None, None] + additions[:, :, None].to(self.prompts.query.dtype)  # (B, K, Q, Dt): V_Q^i
        sentences, eos = [], []
        for b, pair in enumerate(layouts):
            for s, layout in enumerate(pair):
                row = words[b, s][None].expand(count, -1, -1)
                q, p = layout.query_position, layout.state_position
                pieces = [row[:, :p], self.prompts.state[s][None, None].expand(count, 1, width),
                          row[:, p + 1:q], queries[b], row[:, q + settings.query_length:]]
                sentences.append(torch.cat(pieces, dim=1))
                eos.append(layout.eos_position)
        embeddings = torch.cat(sentences)  # (B * 2 * K, T, Dt) in (image, state, layer) order
        eos_positions = torch.tensor(eos, device=backbone.device).repeat_interleave(count)
        deep = self.prompts.modified[None].expand(len(embeddings), -1, -1, -1) if len(self.prompts.modified) else None
        text = backbone.encode_text_embeddings(embeddings, eos_positions, deep, prompt_start=1)
        return text.view(len(class_words), 2, count, -1).transpose(1, 2)

    # ---- maps --------------------------------------------------------------------------------------
    def score_maps(self, patches: torch.Tensor, text: torch.Tensor, size: int) -> torch.Tensor:
        """Eq. 4/6/7: Softmax(Up(cos(F_I, F_T))) -> (B, S, S) abnormal probability; patches (B, g*g, E), text (B, 2, E).

        The plain cosine, as the equations write it (no temperature): the softmax of two cosines stays within
        [0.12, 0.88], which the layer sum of Eq. 8 and the top-N score of Eq. 9-10 accept as they are.
        `patches` are unit vectors already; the text embeddings are unit from the encoder.
        """
        grid = round(patches.shape[1] ** 0.5)
        with full_precision(patches.device):  # scoring and up-sampling stay float32 under any --precision
            logits = patches.float() @ text.float().transpose(1, 2)  # (B, g*g, 2) cosines
            logits = logits.transpose(1, 2).reshape(len(patches), 2, grid, grid)
            return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False).softmax(dim=1)[:, 1]

    def forward(self, pixels: torch.Tensor, class_words: Sequence[str], query_branch: bool = True):
        """Per-layer maps of the vision-enhanced branch S_V (B, L, S, S) and of the query-only branch S_Q (or None)."""
        size = pixels.shape[-1]
        features = self.layer_features(pixels)
        # Eq. 1: V_P^i from the mean over all (1 + H*W) tokens of layer i
        vision_prompts = torch.stack([mlp(layer.mean(dim=1)) for mlp, layer in zip(self.prompts.vision_prompt, features)], dim=1)
        # Eq. 3: F_I^i, patch tokens only (the class token excluded)
        patches = [F.normalize(mlp(layer[:, 1:]).float(), dim=-1) for mlp, layer in zip(self.prompts.patch_projection, features)]
        text = self.text_embeddings(class_words, vision_prompts)  # (B, L, 2, E): F_T^i
        vision_maps = torch.stack([self.score_maps(p, text[:, i], size) for i, p in enumerate(patches)], dim=1)
        if not query_branch:
            return vision_maps, None
        # §3.5 query-only branch: T_Q with the universal word "object" and Q_P alone (no V_P, no CNF)
        general = self.text_embeddings([GENERIC_WORD], vision_prompts.new_zeros(1, 1, vision_prompts.shape[-1]))[:, 0]
        general = general.expand(len(pixels), -1, -1)
        query_maps = torch.stack([self.score_maps(p, general, size) for p in patches], dim=1)
        return vision_maps, query_maps

    # ---- class-name filtering ----------------------------------------------------------------------
    def filtered_class_word(self, image: np.ndarray) -> str:
        """§3.4 CNF for this image, with the frozen CLIP at its own resolution (our choice: where CLIP was trained)."""
        return self.filtered_class_words([image])[0]

    def filtered_class_words(self, images: Sequence[np.ndarray]) -> list[str]:
        """`filtered_class_word` of each image, the frozen CLIP's image embeddings taken in one forward."""
        if not self.class_name_filter:
            return [readable_class_name(self.class_name)] * len(images)
        backbone = self.backbone
        pixels = backbone.preprocess(images, backbone.native_size)
        embeddings, _ = backbone.encode_tokens(backbone.tokens(pixels))
        return [filter_class_name(self.class_name, embedding, self._cached_text) for embedding in embeddings]

    def _cached_text(self, sentences: Sequence[str]) -> torch.Tensor:
        key = "\n".join(sentences)
        if key not in self._cnf_cache:
            self._cnf_cache[key] = self.backbone.encode_text(sentences)
        return self._cnf_cache[key]

    # ---- the Method protocol -----------------------------------------------------------------------
    def prepare(self, category: str, normal_images: Sequence[Path], kind: str, out_dir: Path) -> None:
        """Remember the class name: the vision-enhanced branch names the object (after CNF)."""
        self.class_name = category or GENERIC_WORD

    @torch.inference_mode()
    def encode_batch(self, images: list[np.ndarray]) -> tuple[list[tuple[str, torch.Tensor, torch.Tensor]], dict[str, float]]:
        """CNF and both branches over the batch (one frozen-CLIP forward each): per image its class word and (L, S, S) maps."""
        start = time.perf_counter()
        words = self.filtered_class_words(images)
        filtered = time.perf_counter()
        vision_maps, query_maps = self(self.backbone.preprocess(images), words)
        timings = {"class_name_filter": filtered - start, "prompted_clip": time.perf_counter() - filtered}
        return list(zip(words, vision_maps, query_maps)), timings

    @torch.inference_mode()
    def finish(self, image: np.ndarray, encoded: tuple[str, torch.Tensor, torch.Tensor], timings: dict[str, float]) -> Result:
        """Eq. 8 map (divided by L into [0, 1]) at the image's resolution, and the Eq. 9-10 image score."""
        start = time.perf_counter()
        word, vision_maps, query_maps = encoded
        height, width = image.shape[:2]
        seg = gaussian_smooth(combine_branches(vision_maps.float(), query_maps.float(), self.alpha), self.sigma)
        score = top_n_image_score(seg, self.top_n1, self.top_n2)  # on the 518 px S_seg, as the paper defines it
        layers = len(self.settings.layers)
        heat = F.interpolate(torch.from_numpy(seg / layers)[None, None], size=(height, width), mode="bilinear", align_corners=False)
        heat = heat[0, 0].clamp(0, 1).numpy().astype(np.float32)
        prompts = tuple(f"[{s}] photo of a {state} {word} [Q][Q] object." for s, state in zip(("N_P", "A_P"), STATES))
        timed(timings, "smoothing_and_score", start)
        return Result(heat, Boxes.empty(), Masks.empty(height, width), prompts, timings, self.name, score)

    # ---- training and checkpoints ------------------------------------------------------------------
    def loss(self, pixels: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
             class_names: Sequence[str] | None = None) -> torch.Tensor:
        """Eq. 5: sum over layers of focal (Eq. 16) + Dice (Eq. 15) between S_V^i and the mask (no CNF, no query branch, Fig. 2).

        Both sum over the pixels of an image as the equations do; (our choice) a batch's images are averaged.
        """
        words = [readable_class_name(name) for name in class_names] if class_names else [GENERIC_WORD] * len(pixels)
        vision_maps, _ = self(pixels, words, query_branch=False)
        vision_maps = vision_maps.float()
        return sum(focal_loss(vision_maps[:, i], masks, FOCAL_GAMMA, alpha=FOCAL_ALPHA, reduction="sum")
                   + dice_loss(vision_maps[:, i], masks, smooth=0.0, epsilon=DICE_EPSILON) for i in range(vision_maps.shape[1]))

    def settings_record(self) -> dict:
        """The architecture settings as plain data, stored with every checkpoint and compared on resume."""
        return {**asdict(self.settings), "layers": list(self.settings.layers)}

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        """Only the learned prompts and their settings: the CLIP stays where the user keeps it."""
        payload = {"format": CHECKPOINT_FORMAT, "method": self.name, "settings": self.settings_record(),
                   "clip": self.backbone.name, "prompts": self.prompts.state_dict(), **(extra or {})}
        return atomic_write(path, lambda temporary: torch.save(payload, temporary))

    @classmethod
    def load(cls, path: str | Path, backbone: ClipBackbone, **options) -> "GenClip":
        """Trained prompts from `save` on a frozen CLIP; a one-line WeightsError when they do not fit."""
        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"GenCLIP prompt weights not found: {path} (train them with `iapas train genclip`)")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            if payload.get("method") != cls.name:
                raise ValueError(f"method {payload.get('method')!r}")
            if payload.get("format") != CHECKPOINT_FORMAT:  # format 1 ran a temperature, a post-LayerNorm and an extra slot
                raise ValueError(f"format {payload.get('format')}, this iapas reads format {CHECKPOINT_FORMAT} "
                                 "(the paper's rules); retrain")
            settings = GenClipSettings(**{**payload["settings"], "layers": tuple(payload["settings"]["layers"])})
        except Exception as error:
            raise WeightsError(f"not a GenCLIP prompt checkpoint: {path} ({str(error).splitlines()[0][:120]})") from None
        model = cls(backbone, settings, **options)
        try:
            model.prompts.load_state_dict(payload["prompts"])
        except RuntimeError:
            raise WeightsError(f"{path} was trained on CLIP {payload.get('clip')!r} and does not fit CLIP {backbone.name!r}") from None
        return model.eval()

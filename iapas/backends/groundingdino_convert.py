"""Original Grounding DINO checkpoints (groundingdino_swint_ogc.pth, groundingdino_swinb_cogcoor.pth) as transformers models.

The released files are `{"model": state_dict}` of the IDEA-Research/GroundingDINO model, saved from a
DistributedDataParallel wrapper (keys start with "module."). Their keys are renamed into
transformers' `GroundingDinoForObjectDetection`; the fused attention projections (Swin's `qkv`, the
text layers' `in_proj_weight`) are split into query, key and value. The architecture comes from the
original config files (IDEA-Research/GroundingDINO groundingdino/config/GroundingDINO_SwinT_OGC.py and
GroundingDINO_SwinB_cfg.py), checked against the tensor shapes; what the weights do not show (the number of
attention heads) is taken from those files. The text encoder's config and tokenizer come from a
local BERT directory (the original builds `bert-base-uncased`); its weights are in the checkpoint.

The module names on each side were read from groundingdino-py 0.4.0 (models/GroundingDINO/*.py) and
transformers 5 (models/grounding_dino/modeling_grounding_dino.py, models/swin/modeling_swin.py); the
pairing follows huggingface/transformers convert_grounding_dino_to_hf.py, written for transformers 4's names.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from ..files import atomic_directory, atomic_write_text, built_once, exclusive
from ..errors import WeightsError

if TYPE_CHECKING:  # transformers is imported where it is used: `iapas --help` stays fast
    from transformers import BertConfig, GroundingDinoConfig

# The tokenizer and image processor the original uses: bert-base-uncased's WordPiece (lower-cased) and
# RandomResize([800], max_size=1333) + ImageNet normalisation (groundingdino/util/inference.py load_image).
SHORTEST_EDGE, LONGEST_EDGE = 800, 1333
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SwinShape:
    """A Swin backbone as the original names it (groundingdino/models/GroundingDINO/backbone/swin_transformer.py)."""

    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int
    pretrain_image_size: int
    patch_size: int = 4
    mlp_ratio: float = 4.0


# build_swin_transformer's table, for the two backbones of the released checkpoints.
SWIN_BACKBONES: dict[str, SwinShape] = {
    "swin_T_224_1k": SwinShape(96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 224),
    "swin_B_384_22k": SwinShape(128, (2, 2, 18, 2), (4, 8, 16, 32), 12, 384),
}


@dataclass(frozen=True)
class OriginalConfig:
    """The settings of an original config file that decide the architecture, under the original's names."""

    backbone: SwinShape
    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    num_queries: int = 900
    num_feature_levels: int = 4
    enc_n_points: int = 4
    dec_n_points: int = 4
    return_interm_indices: tuple[int, ...] = (1, 2, 3)
    max_text_len: int = 256
    pe_temperature: int = 20
    two_stage_bbox_embed_share: bool = False
    dec_pred_bbox_embed_share: bool = True
    embed_init_tgt: bool = True
    transformer_activation: str = "relu"


# groundingdino/config/GroundingDINO_SwinT_OGC.py and GroundingDINO_SwinB_cfg.py differ only in the backbone.
ORIGINAL_CONFIGS: dict[str, OriginalConfig] = {
    "GroundingDINO_SwinT_OGC": OriginalConfig(SWIN_BACKBONES["swin_T_224_1k"]),
    "GroundingDINO_SwinB_cfg": OriginalConfig(SWIN_BACKBONES["swin_B_384_22k"]),
}


def hf_config(original: OriginalConfig, text_config: BertConfig) -> GroundingDinoConfig:
    """The transformers GroundingDinoConfig of an original configuration, with the given BERT config as text side."""
    from transformers import GroundingDinoConfig, SwinConfig

    swin = original.backbone
    backbone = SwinConfig(
        image_size=swin.pretrain_image_size, patch_size=swin.patch_size, embed_dim=swin.embed_dim,
        depths=list(swin.depths), num_heads=list(swin.num_heads), window_size=swin.window_size, mlp_ratio=swin.mlp_ratio,
        # the original returns stages 1-3 (0-based); transformers counts the stem as stage 0
        out_indices=[index + 1 for index in original.return_interm_indices],
    )
    return GroundingDinoConfig(
        backbone_config=backbone.to_dict(), text_config=text_config.to_dict(),
        d_model=original.hidden_dim, encoder_attention_heads=original.nheads, decoder_attention_heads=original.nheads,
        encoder_layers=original.enc_layers, decoder_layers=original.dec_layers,
        encoder_ffn_dim=original.dim_feedforward, decoder_ffn_dim=original.dim_feedforward,
        num_queries=original.num_queries, num_feature_levels=original.num_feature_levels,
        encoder_n_points=original.enc_n_points, decoder_n_points=original.dec_n_points,
        max_text_len=original.max_text_len, positional_embedding_temperature=original.pe_temperature,
        two_stage=True, two_stage_bbox_embed_share=original.two_stage_bbox_embed_share,
        decoder_bbox_embed_share=original.dec_pred_bbox_embed_share, embedding_init_target=original.embed_init_tgt,
        activation_function=original.transformer_activation, query_dim=4, layer_norm_eps=1e-5,
    )


def read_original_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of an original checkpoint, "module." prefixes removed; a WeightsError for anything else."""
    try:
        # weights only (no code runs from the file); DINO-style training scripts also save their argparse
        # Namespace beside the model, which is plain data
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        message = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise WeightsError(f"cannot read Grounding DINO checkpoint {path}: {message}") from None
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise WeightsError(f"{path} is not an original Grounding DINO checkpoint (no state dict in it)")
    state = {re.sub(r"^module\.", "", key): value for key, value in state.items() if isinstance(value, torch.Tensor)}
    needed = ("backbone.0.patch_embed.proj.weight", "transformer.level_embed", "bert.embeddings.word_embeddings.weight")
    if any(key not in state for key in needed):
        raise WeightsError(f"{path} is not an original Grounding DINO checkpoint (no {', '.join(k for k in needed if k not in state)})")
    return state


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    return len({match.group(1) for key in state if (match := re.match(pattern, key))})


def original_config_from_state(state: dict[str, torch.Tensor]) -> OriginalConfig:
    """The original configuration of a state dict: the preset its backbone matches, with every size the shapes show."""
    stages = _count(state, r"backbone\.0\.layers\.(\d+)\.")
    tables = [state[f"backbone.0.layers.{stage}.blocks.0.attn.relative_position_bias_table"] for stage in range(stages)]
    embed_dim = int(state["backbone.0.patch_embed.proj.weight"].shape[0])
    window = (round(tables[0].shape[0] ** 0.5) + 1) // 2
    swin = SwinShape(
        embed_dim=embed_dim,
        depths=tuple(_count(state, rf"backbone\.0\.layers\.{stage}\.blocks\.(\d+)\.") for stage in range(stages)),
        num_heads=tuple(int(table.shape[1]) for table in tables),
        window_size=int(window),
        pretrain_image_size=384 if window == 12 else 224,  # swin_B_384_22k's window is 12, the 224 backbones' 7
        patch_size=int(state["backbone.0.patch_embed.proj.weight"].shape[2]),
        mlp_ratio=state["backbone.0.layers.0.blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
    )
    preset = ORIGINAL_CONFIGS["GroundingDINO_SwinB_cfg" if window == 12 else "GroundingDINO_SwinT_OGC"]
    levels, hidden = (int(size) for size in state["transformer.level_embed"].shape)
    return replace(
        preset, backbone=swin, hidden_dim=hidden, num_feature_levels=levels,
        enc_n_points=_points(state["transformer.encoder.layers.0.self_attn.sampling_offsets.weight"], preset.nheads, levels),
        dec_n_points=_points(state["transformer.decoder.layers.0.cross_attn.sampling_offsets.weight"], preset.nheads, levels),
        enc_layers=_count(state, r"transformer\.encoder\.layers\.(\d+)\."),
        dec_layers=_count(state, r"transformer\.decoder\.layers\.(\d+)\."),
        dim_feedforward=int(state["transformer.encoder.layers.0.linear1.weight"].shape[0]),
        num_queries=int(state["transformer.tgt_embed.weight"].shape[0]),
        return_interm_indices=tuple(sorted(int(m.group(1)) for k in state if (m := re.fullmatch(r"backbone\.0\.norm(\d+)\.weight", k)))),
    )


def _points(sampling_offsets: torch.Tensor, heads: int, levels: int) -> int:
    """Sampling points per head and level: the offsets layer has heads x levels x points x 2 outputs."""
    outputs = int(sampling_offsets.shape[0])
    if outputs % (heads * levels * 2):
        raise WeightsError(f"Grounding DINO sampling offsets of size {outputs} do not fit {heads} heads and {levels} levels")
    return outputs // (heads * levels * 2)


SWIN = "model.backbone.conv_encoder.model.swin."
_ENCODER_PARTS = {  # transformer.encoder.<part>.N.  ->  model.encoder.layers.N.<layer>.
    "layers": "deformable_layer", "text_layers": "text_enhancer_layer", "fusion_layers": "fusion_layer",
}
# Renames inside a layer: (original sub-name, transformers sub-name), per kind of layer. In-proj splits are separate.
_INNER: dict[str, tuple[tuple[str, str], ...]] = {
    "deformable_layer": (("self_attn.", "self_attn."), ("norm1.", "self_attn_layer_norm."), ("linear1.", "fc1."),
                         ("linear2.", "fc2."), ("norm2.", "final_layer_norm.")),
    "text_enhancer_layer": (("self_attn.out_proj.", "self_attn.out_proj."), ("linear1.", "fc1."), ("linear2.", "fc2."),
                            ("norm1.", "layer_norm_before."), ("norm2.", "layer_norm_after.")),
    "fusion_layer": (("gamma_v", "vision_param"), ("gamma_l", "text_param"), ("layer_norm_v.", "layer_norm_vision."),
                     ("layer_norm_l.", "layer_norm_text."), ("attn.v_proj.", "attn.vision_proj."), ("attn.l_proj.", "attn.text_proj."),
                     ("attn.values_v_proj.", "attn.values_vision_proj."), ("attn.values_l_proj.", "attn.values_text_proj."),
                     ("attn.out_v_proj.", "attn.out_vision_proj."), ("attn.out_l_proj.", "attn.out_text_proj.")),
    "decoder_layer": (("cross_attn.", "encoder_attn."), ("norm1.", "encoder_attn_layer_norm."),
                      ("ca_text.out_proj.", "encoder_attn_text.out_proj."), ("catext_norm.", "encoder_attn_text_layer_norm."),
                      ("self_attn.out_proj.", "self_attn.out_proj."), ("norm2.", "self_attn_layer_norm."),
                      ("linear1.", "fc1."), ("linear2.", "fc2."), ("norm3.", "final_layer_norm.")),
}
_SWIN_BLOCK = (("norm1.", "layernorm_before."), ("norm2.", "layernorm_after."), ("attn.proj.", "attention.o_proj."),
               ("attn.relative_position_bias_table", "attention.relative_position_bias.relative_position_bias_table"),
               ("mlp.", "mlp."))
_PREFIXES = (  # whole-prefix renames outside the layers
    ("backbone.0.patch_embed.proj.", SWIN + "embeddings.patch_embeddings.projection."),
    ("backbone.0.patch_embed.norm.", SWIN + "embeddings.norm."),
    ("bert.", "model.text_backbone."), ("feat_map.", "model.text_projection."), ("input_proj.", "model.input_proj_vision."),
    ("transformer.level_embed", "model.level_embed"), ("transformer.tgt_embed.", "model.query_position_embeddings."),
    ("transformer.enc_output_norm.", "model.enc_output_norm."), ("transformer.enc_output.", "model.enc_output."),
    ("transformer.enc_out_bbox_embed.", "model.encoder_output_bbox_embed."),
    ("transformer.decoder.norm.", "model.decoder.layer_norm."),
    ("transformer.decoder.ref_point_head.", "model.decoder.reference_points_head."),
    ("transformer.decoder.bbox_embed.", "model.decoder.bbox_embed."), ("bbox_embed.", "bbox_embed."),
)
# Kept in the file but not in the transformers model: buffers it recomputes and BERT's pooler, which the
# original never calls (GroundingDINO.forward reads BERT's last hidden state only).
_UNUSED = (re.compile(r".*\.relative_position_index$"), re.compile(r".*\.attn_mask$"),
           re.compile(r"^bert\.pooler\."), re.compile(r"^bert\.embeddings\.position_ids$"))
# In the transformers model but not in the file: Swin's final norm, which the backbone never applies
# (SwinBackbone normalises each returned stage with hidden_states_norms instead).
ALLOWED_MISSING = re.compile(r"^model\.backbone\.conv_encoder\.model\.swin\.layernorm\.")


def _split(prefix: str, suffix: str, tensor: torch.Tensor, names: tuple[str, str, str]) -> dict[str, torch.Tensor]:
    """A fused q/k/v projection (weight or bias) as three tensors named prefix + name + suffix."""
    return {f"{prefix}{name}{suffix}": part.contiguous() for name, part in zip(names, tensor.chunk(3, dim=0))}


def _rename_inner(rest: str, renames: tuple[tuple[str, str], ...]) -> str | None:
    for old, new in renames:
        if rest.startswith(old):
            return new + rest[len(old):]
    return None


def _convert_key(key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """The transformers key(s) of one original key, or None when the original key is unknown."""
    if match := re.fullmatch(r"backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\.(.+)", key):
        stage, block, rest = match.groups()
        prefix = f"{SWIN}encoder.layers.{stage}.blocks.{block}."
        if rest.startswith("attn.qkv."):
            return _split(prefix + "attention.", "_proj." + rest.split(".")[-1], tensor, ("q", "k", "v"))
        new = _rename_inner(rest, _SWIN_BLOCK)
        return None if new is None else {prefix + new: tensor}
    if match := re.fullmatch(r"backbone\.0\.layers\.(\d+)\.downsample\.(.+)", key):
        return {f"{SWIN}encoder.layers.{match.group(1)}.downsample.{match.group(2)}": tensor}
    if match := re.fullmatch(r"backbone\.0\.norm(\d+)\.(weight|bias)", key):  # output norm of stage i is transformers' stage i+1
        return {f"model.backbone.conv_encoder.model.hidden_states_norms.stage{int(match.group(1)) + 1}.{match.group(2)}": tensor}
    if match := re.fullmatch(r"transformer\.(encoder|decoder)\.(layers|text_layers|fusion_layers)\.(\d+)\.(.+)", key):
        part, kind, index, rest = match.groups()
        layer = "decoder_layer" if part == "decoder" else _ENCODER_PARTS[kind]
        prefix = f"model.{part}.layers.{index}." + ("" if part == "decoder" else layer + ".")
        if fused := re.fullmatch(r"(self_attn|ca_text)\.in_proj_(weight|bias)", rest):
            module = {"self_attn": "self_attn", "ca_text": "encoder_attn_text"}[fused.group(1)]
            return _split(f"{prefix}{module}.", "." + fused.group(2), tensor, ("query", "key", "value"))
        new = _rename_inner(rest, _INNER[layer])
        return None if new is None else {prefix + new: tensor}
    for old, new in _PREFIXES:
        if key.startswith(old):
            return {new + key[len(old):]: tensor}
    return None


def convert_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original keys -> transformers GroundingDinoForObjectDetection keys; a WeightsError names an unknown key."""
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if any(pattern.match(key) for pattern in _UNUSED):
            continue
        renamed = _convert_key(key, tensor)
        if renamed is None:
            raise WeightsError(f"unknown key in the Grounding DINO checkpoint: {key}")
        converted.update(renamed)
    return converted


def check_against_model(converted: dict[str, torch.Tensor], model_state: dict[str, torch.Tensor], source: Path | str) -> None:
    """Every key of the model filled with a tensor of its shape, and nothing left over; else one WeightsError line."""
    missing = [key for key in model_state if key not in converted and not ALLOWED_MISSING.match(key)]
    unexpected = [key for key in converted if key not in model_state]
    wrong = [key for key in converted if key in model_state and tuple(converted[key].shape) != tuple(model_state[key].shape)]
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what}: {keys[0]} (+{len(keys) - 1})" for what, keys in
                           (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys)
        raise WeightsError(f"Grounding DINO conversion of {source} does not fit transformers' model: {detail}")


def load_bert_dir(bert_dir: Path):
    """The BERT config and fast tokenizer of a local bert-base-uncased-like directory."""
    from transformers import BertConfig, BertTokenizerFast

    bert_dir = Path(bert_dir)
    if not (bert_dir / "config.json").is_file():
        raise WeightsError(
            f"converting a Grounding DINO checkpoint needs BERT's config and vocabulary at {bert_dir} (manifest entry "
            "'bert-base-uncased'), or run `iapas weights convert-groundingdino FILE --bert DIR -o DIR`"
        )
    try:
        return BertConfig.from_pretrained(bert_dir, local_files_only=True), BertTokenizerFast.from_pretrained(bert_dir, local_files_only=True)
    except (OSError, ValueError, TypeError) as error:
        raise WeightsError(f"cannot load the BERT tokenizer from {bert_dir}: {str(error).splitlines()[0][:160]}") from None


def check_special_tokens(tokenizer, bert_dir: Path) -> None:
    """The tokenizer's [CLS], [SEP], "." and "?" ids are the ones transformers' Grounding DINO splits sub-sentences by.

    The original asks its tokenizer for these ids (groundingdino.py `specical_tokens`); transformers fixes
    them to bert-base-uncased's (modeling_grounding_dino.py SPECIAL_TOKENS), so another vocabulary would
    silently change the text attention masks.
    """
    from transformers.models.grounding_dino.modeling_grounding_dino import SPECIAL_TOKENS

    ids = tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]", ".", "?"])
    if list(ids) != list(SPECIAL_TOKENS):
        raise WeightsError(f"the vocabulary in {bert_dir} gives [CLS] [SEP] . ? the ids {ids}, "
                           f"transformers' Grounding DINO expects bert-base-uncased's {list(SPECIAL_TOKENS)}")


def convert_groundingdino_checkpoint(checkpoint: Path, bert_dir: Path, out_dir: Path) -> Path:
    """Write a transformers Grounding DINO directory (model, tokenizer, image processor) from an original checkpoint."""
    from transformers import GroundingDinoForObjectDetection, GroundingDinoImageProcessor, GroundingDinoProcessor

    state = read_original_state(Path(checkpoint))
    text_config, tokenizer = load_bert_dir(Path(bert_dir))
    words = state["bert.embeddings.word_embeddings.weight"].shape
    if (text_config.vocab_size, text_config.hidden_size) != tuple(words):
        raise WeightsError(f"BERT in {bert_dir} has {text_config.vocab_size} x {text_config.hidden_size} word embeddings, "
                           f"{checkpoint} has {words[0]} x {words[1]}")
    if len(tokenizer) != text_config.vocab_size:
        raise WeightsError(f"the tokenizer in {bert_dir} has {len(tokenizer)} tokens, its config {text_config.vocab_size}")
    check_special_tokens(tokenizer, Path(bert_dir))
    try:
        original = original_config_from_state(state)
    except KeyError as error:
        raise WeightsError(f"{checkpoint} is not a complete Grounding DINO checkpoint: no {error}") from None
    config = hf_config(original, text_config)
    converted = convert_state(state)
    model = GroundingDinoForObjectDetection(config)
    check_against_model(converted, model.state_dict(), checkpoint)
    model.load_state_dict(converted, strict=False)  # only ALLOWED_MISSING stays as built, checked above
    image_processor = GroundingDinoImageProcessor(
        size={"shortest_edge": SHORTEST_EDGE, "longest_edge": LONGEST_EDGE}, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD)
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    return out_dir


CONVERSION_RECORD = "iapas_conversion.json"  # in a versioned <file>.hf/: the converter's version and the source's sha256
# Grounding DINO's converter version. 2: conversions are recorded, and those made before the box-refinement epsilon
# became a recipe setting (config detection.refinement_eps) are made again rather than trusted.
GROUNDING_DINO_CONVERTER_VERSION = 2


def _source_record(checkpoint: Path, version: int, known: dict) -> dict:
    """What defines a conversion: the converter's version and the source's sha256 (rehashed only when its size or time moved)."""
    from ..weights.manifest import sha256_of

    stat = checkpoint.stat()
    same_file = known.get("size") == stat.st_size and known.get("mtime_ns") == stat.st_mtime_ns
    digest = known["sha256"] if same_file and "sha256" in known else sha256_of(checkpoint)
    return {"converter_version": version, "sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def converted_once(checkpoint: Path, convert: Callable[[Path], Path], what: str, version: int | None = None) -> Path:
    """<file>.hf/ made by `convert` on first use (into <file>.hf.partial/, renamed when complete) and reused after.

    With a converter `version`, the directory records it and the source's sha256, and is made again (written
    aside, moved into place) when either differs from the current ones: a fixed converter or a replaced file
    never leaves a stale conversion in use.
    """
    target = checkpoint.with_name(checkpoint.name + ".hf")
    if version is None:
        return built_once(target, convert, lambda done: (done / "config.json").is_file(),  # one process converts, others wait
                          lambda: print(f"note: converting {what} checkpoint {checkpoint} to {target}/ (once)", file=sys.stderr))
    if _versioned_conversion(checkpoint, target, convert, what, version, check_only=True):
        return target  # current: no lock taken, so a read-only weights folder works
    with exclusive(target):  # two processes converting at once: one converts, the other waits and finds it current
        return _versioned_conversion(checkpoint, target, convert, what, version)


def _versioned_conversion(checkpoint: Path, target: Path, convert: Callable[[Path], Path], what: str, version: int,
                          check_only: bool = False) -> Path | None:
    """converted_once's versioned rule (under the target's lock unless `check_only`: then None when it must be made)."""
    record_path = target / CONVERSION_RECORD
    present = (target / "config.json").is_file()
    try:
        known = json.loads(record_path.read_text(encoding="utf-8")) if present else {}
    except (OSError, ValueError):
        known = {}
    current = _source_record(checkpoint, version, known)
    if present and known.get("converter_version") == version and known.get("sha256") == current["sha256"]:
        if known != current and not check_only:  # the same bytes touched: remember the new size and time
            atomic_write_text(record_path, json.dumps(current) + "\n")
        return target if known == current or not check_only else None
    if check_only:
        return None
    why = "once" if not present else ("the converter changed" if known.get("converter_version") != version else "the file changed")
    print(f"note: converting {what} checkpoint {checkpoint} to {target}/ ({why})", file=sys.stderr)

    def fill(partial: Path) -> None:
        convert(partial)
        (partial / CONVERSION_RECORD).write_text(json.dumps(current) + "\n", encoding="utf-8")

    atomic_directory(target, fill)
    return target


def bert_dir_beside(checkpoint: Path) -> Path:
    """Where the manifest's text encoder (bert-base-uncased) sits when the .pth is in a weights dir."""
    from ..weights.manifest import entries_for

    entries = entries_for("text-encoder")
    return Path(checkpoint).parent / (entries[0].expected_path if entries else "bert-base-uncased")


def converted_groundingdino_dir(checkpoint: Path, bert_dir: Path | None = None) -> Path:
    """The transformers conversion of an original .pth, with the BERT directory beside it unless one is given."""
    checkpoint = Path(checkpoint)
    bert_dir = Path(bert_dir) if bert_dir else bert_dir_beside(checkpoint)
    return converted_once(checkpoint, lambda out: convert_groundingdino_checkpoint(checkpoint, bert_dir, out),
                          "Grounding DINO", GROUNDING_DINO_CONVERTER_VERSION)

"""Tiny randomly initialised models with the real architectures, saved in the real on-disk formats.

`iapas weights make-demo` and the tests use them: they prove loading, wiring, shapes and file
formats end to end. Their outputs are meaningless by construction.
"""
from __future__ import annotations

import re
import string
import tomllib
from pathlib import Path

import torch

from ..backends.base import quiet_loading
from ..backends.sam import SamGeometry, build_sam
from ..config import GROUNDING_DINO_MAX_TEXT_TOKENS
from ..vocabulary import DEFECT_WORDS_FILE, LEXICON_FILE, TAG_VOCABULARY_FILE, read_word_list

DEMO_NOTE = "Random demo weights built by `iapas weights make-demo`: their output is meaningless.\n"
DEMO_WORDS = (
    "a the of and in on with abnormal defect crack scratch hole stain dent cut tear missing "
    "broken bent contamination fabric metal wood glass plastic leather tile carpet grid screw bottle object"
).split()


BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # BERT's order: [PAD] is 0, as Grounding DINO expects


def shipped_words() -> list[str]:
    """Every single word iapas itself may put in a prompt: fixed prompts, demo words, defect words, the lexicon, tags."""
    lexicon = tomllib.loads(LEXICON_FILE.read_text(encoding="utf-8"))
    phrases = [*DEMO_WORDS, *read_word_list(DEFECT_WORDS_FILE), *read_word_list(TAG_VOCABULARY_FILE), *lexicon["generic"]]
    for name, row in lexicon["materials"].items():
        phrases += [name, *row.get("aliases", []), *row["defects"]]
    return list(dict.fromkeys(word for phrase in phrases for word in re.findall(r"[a-z0-9]+", phrase.lower())))


def demo_vocab() -> list[str]:
    """A BERT WordPiece vocabulary: specials, punctuation, every shipped word whole, and characters to spell the rest."""
    characters = list(string.ascii_lowercase + string.digits)
    tokens = [*BERT_SPECIAL_TOKENS, ".", ",", "-", "'", "(", ")", "/", *shipped_words(), *characters, *[f"##{c}" for c in characters]]
    return list(dict.fromkeys(tokens))


def write_demo_vocab(path: Path) -> list[str]:
    """Write the demo vocabulary as BERT's vocab.txt (one token a line, the line number is the id)."""
    tokens = demo_vocab()
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return tokens


def build_demo_grounding_dino(directory: Path, image_size: int = 128, seed: int = 0) -> Path:
    """Save a tiny GroundingDinoForObjectDetection with its processor (BERT tokenizer) to `directory`."""
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokens = write_demo_vocab(directory / "vocab.txt")
    # transformers 5's BertTokenizer ignores vocab_file and keeps a 5-token vocabulary (every word [UNK]):
    # the vocabulary is passed as a mapping, and saved with the processor as tokenizer.json and vocab.txt.
    tokenizer = BertTokenizer(vocab={token: index for index, token in enumerate(tokens)}, do_lower_case=True)
    if tokenizer.vocab_size != len(tokens):
        raise RuntimeError(f"demo tokenizer holds {tokenizer.vocab_size} tokens, expected {len(tokens)}")
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": image_size, "longest_edge": image_size})
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(
            embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4, image_size=image_size,
            out_features=["stage2", "stage3", "stage4"],
        ),
        text_config=BertConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=GROUNDING_DINO_MAX_TEXT_TOKENS,
        ),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=30, max_text_len=GROUNDING_DINO_MAX_TEXT_TOKENS,
        encoder_n_points=2, decoder_n_points=2, use_timm_backbone=False, backbone=None,
    )
    with torch.random.fork_rng(devices=[]):  # the caller's global seed is left as it was
        torch.manual_seed(seed)
        model = GroundingDinoForObjectDetection(config).eval()
    with quiet_loading():
        model.save_pretrained(directory)
        processor.save_pretrained(directory)
    (directory / "DEMO_WEIGHTS").write_text(DEMO_NOTE, encoding="utf-8")
    return directory


DEMO_SAM_GEOMETRY = SamGeometry(
    embed_dim=32, depth=2, num_heads=2, patch_size=16, image_size=256, window_size=4, global_attn_indexes=(1,),
    mlp_ratio=2.0, prompt_dim=32, mask_in_chans=16, decoder_depth=2, decoder_mlp_dim=64, iou_head_hidden_dim=32,
)


def with_relative_positions(state: dict[str, torch.Tensor], scale: float = 0.1) -> dict[str, torch.Tensor]:
    """A SAM state dict with its relative-position tables filled from the current torch seed.

    A fresh SAM starts them at zero; released ones learned them. Filled, every path that reads them (the fused
    attention's bias, the exported encoders) is exercised by random models too.
    """
    for key in [k for k in state if k.endswith((".rel_pos_h", ".rel_pos_w"))]:
        state[key] = scale * torch.randn(state[key].shape)
    return state


def build_demo_sam_checkpoint(path: Path, seed: int = 0, geometry: SamGeometry = DEMO_SAM_GEOMETRY) -> Path:
    """Save a tiny segment_anything Sam state dict as a .pth file, as Meta's checkpoints are."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = with_relative_positions(build_sam(geometry).state_dict())
    torch.save(state, path)
    return path


def build_demo_hf_sam(directory: Path, seed: int = 0) -> Path:
    """Save a tiny transformers SamModel with its processor to `directory`."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    directory = Path(directory)
    config = SamConfig(
        vision_config=dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, output_channels=16, image_size=256,
            mlp_dim=64, global_attn_indexes=[1], window_size=4, num_pos_feats=8,
        ),
        prompt_encoder_config=dict(hidden_size=16, image_size=256, image_embedding_size=16),
        mask_decoder_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_dim=32, iou_head_hidden_dim=16),
    )
    with torch.random.fork_rng(devices=[]), quiet_loading():  # the caller's global seed is left as it was
        torch.manual_seed(seed)
        model = SamModel(config).eval()
        model.save_pretrained(directory)
    image_processor = SamImageProcessor(size={"longest_edge": 256}, pad_size={"height": 256, "width": 256})
    SamProcessor(image_processor=image_processor).save_pretrained(directory)
    (directory / "DEMO_WEIGHTS").write_text(DEMO_NOTE, encoding="utf-8")
    return directory


def tiny_clip_text(vocab: dict[str, int], **sizes: int) -> dict:
    """A tiny CLIP text tower's settings over the character tokenizer's `vocab` (demo CLIP and SAM 3 share it)."""
    return dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_attention_heads=2,
                bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
                **sizes)


def tiny_clip_towers(vocab: dict[str, int], image_size: int) -> dict[str, dict]:
    """Text and vision tower settings of the tiny CLIPs (the demo CLIPModel and CLIPSeg): two narrow layers each, 8 px patches."""
    return {
        "text_config": tiny_clip_text(vocab, num_hidden_layers=2, max_position_embeddings=77),
        "vision_config": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=8),
    }


def build_demo_clip(directory: Path, seed: int = 0, image_size: int = 32) -> Path:
    """Save a tiny transformers CLIPModel with a character-level BPE tokenizer to `directory`."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    directory = Path(directory)
    tokenizer = write_char_clip_tokenizer(directory)
    config = CLIPConfig(**tiny_clip_towers(tokenizer.get_vocab(), image_size), projection_dim=16)
    with torch.random.fork_rng(devices=[]), quiet_loading():
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
        model.save_pretrained(directory)
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    (directory / "DEMO_WEIGHTS").write_text(DEMO_NOTE, encoding="utf-8")
    return directory


DEMO_FAST_IMAGE_SIZE = 128  # the fast families' demo input side: feature maps of 32, 16 and 8 cells (strides 4, 8, 16)


def _tiny_sam2_parts(image_size: int = DEMO_FAST_IMAGE_SIZE) -> tuple[dict, dict, list[list[int]]]:
    """Prompt encoder and mask decoder settings shared by the tiny SAM 2 and EdgeTAM, and their feature sizes."""
    grid = image_size // 4
    prompt = dict(hidden_size=32, image_size=image_size, patch_size=16)
    decoder = dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32)
    return prompt, decoder, [[grid, grid], [grid // 2, grid // 2], [grid // 4, grid // 4]]


def _save_sam2_family(model: torch.nn.Module, directory: Path, image_size: int) -> Path:
    from transformers import Sam2ImageProcessor, Sam2Processor

    directory = Path(directory)
    with quiet_loading():
        model.save_pretrained(directory)
        Sam2Processor(image_processor=Sam2ImageProcessor(size={"height": image_size, "width": image_size})).save_pretrained(directory)
    (directory / "DEMO_WEIGHTS").write_text(DEMO_NOTE, encoding="utf-8")
    return directory


def build_demo_sam2(directory: Path, seed: int = 0, image_size: int = DEMO_FAST_IMAGE_SIZE) -> Path:
    """Save a tiny transformers Sam2Model (a 4-stage Hiera of 5 blocks) with its processor to `directory`."""
    from transformers import Sam2Config, Sam2Model

    prompt, decoder, feature_sizes = _tiny_sam2_parts(image_size)
    config = Sam2Config(
        vision_config=dict(
            # a global-attention block may not open a query-pooling stage (its window would pool to 0): block 3 is
            # the second of stage 3
            backbone_config=dict(
                model_type="sam2_hiera_det_model", hidden_size=12, num_attention_heads=1, image_size=[image_size, image_size],
                blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[12, 24, 48, 96], num_attention_heads_per_stage=[1, 1, 1, 1],
                window_size_per_stage=[4, 4, 2, 2], global_attention_blocks=[3], window_positional_embedding_background_size=[2, 2],
            ),
            backbone_channel_list=[96, 48, 24, 12], backbone_feature_sizes=feature_sizes, fpn_hidden_size=32,
        ),
        prompt_encoder_config=prompt, mask_decoder_config=decoder,
    )
    with torch.random.fork_rng(devices=[]):  # the caller's global seed is left as it was
        torch.manual_seed(seed)
        model = Sam2Model(config).eval()
    return _save_sam2_family(model, directory, image_size)


def build_demo_edgetam(directory: Path, seed: int = 0, image_size: int = DEMO_FAST_IMAGE_SIZE) -> Path:
    """Save a tiny transformers EdgeTamModel (timm RepViT narrowed to 4 one-block stages) with its processor."""
    from transformers import EdgeTamConfig, EdgeTamModel, TimmWrapperConfig

    prompt, decoder, feature_sizes = _tiny_sam2_parts(image_size)
    # EdgeTAM's image encoder is timm's repvit_m1 (transformers EdgeTamVisionConfig); timm's builder takes
    # embed_dim and depth overrides, which keep the architecture and shrink it
    backbone = TimmWrapperConfig(architecture="repvit_m1", model_args={
        "in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3], "embed_dim": [8, 16, 32, 64], "depth": [1, 1, 1, 1]})
    config = EdgeTamConfig(
        vision_config=dict(backbone_config=backbone, backbone_channel_list=[64, 32, 16, 8], backbone_feature_sizes=feature_sizes,
                           fpn_hidden_size=32),
        prompt_encoder_config=prompt, mask_decoder_config=decoder,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EdgeTamModel(config).eval()
    return _save_sam2_family(model, directory, image_size)


def write_char_clip_tokenizer(directory: Path):
    """A character-level CLIP BPE tokenizer (vocab.json and merges.txt) in `directory`, returned loaded."""
    import json

    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    characters = list(string.ascii_lowercase + string.digits + ".,'-/()")
    vocab = {token: index for index, token in enumerate(characters + [f"{c}</w>" for c in characters])}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))


def build_demo_omdet_turbo(directory: Path, seed: int = 0, image_size: int = DEMO_FAST_IMAGE_SIZE) -> Path:
    """Save a tiny transformers OmDetTurboForObjectDetection with its processor (CLIP tokenizer, DETR image processor)."""
    from transformers import (CLIPTextConfig, DetrImageProcessor, OmDetTurboConfig, OmDetTurboForObjectDetection,
                              OmDetTurboProcessor, SwinConfig)

    directory = Path(directory)
    tokenizer = write_char_clip_tokenizer(directory)
    vocab = tokenizer.get_vocab()
    config = OmDetTurboConfig(
        # transformers' Swin backbone instead of the released timm Swin-T: it returns channels-first maps,
        # so the layer norms meant for timm's channels-last maps are off
        backbone_config=SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
                                   image_size=image_size, out_indices=[2, 3, 4]),
        use_timm_backbone=False, apply_layernorm_after_vision_backbone=False,
        text_config=CLIPTextConfig(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        ),
        # class_embed_dim must differ from decoder_hidden_dim: transformers only builds the task projection then
        text_projection_in_dim=32, text_projection_out_dim=32, task_encoder_hidden_dim=64, class_embed_dim=32,
        num_queries=20, encoder_hidden_dim=64, vision_features_channels=[64, 64, 64], encoder_in_channels=[32, 64, 128],
        encoder_attention_heads=2, encoder_dim_feedforward=64, decoder_hidden_dim=64, decoder_num_heads=2,
        decoder_num_layers=2, decoder_dim_feedforward=64, decoder_num_points=2, image_size=image_size,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = OmDetTurboForObjectDetection(config).eval()
    processor = OmDetTurboProcessor(
        image_processor=DetrImageProcessor(size={"height": image_size, "width": image_size}, do_pad=False), tokenizer=tokenizer)
    with quiet_loading():
        model.save_pretrained(directory)
        processor.save_pretrained(directory)
    (directory / "DEMO_WEIGHTS").write_text(DEMO_NOTE, encoding="utf-8")
    return directory


def build_demo_clipseg(directory: Path, seed: int = 0, image_size: int = 32) -> Path:
    """Save a tiny transformers CLIPSegForImageSegmentation with its processor (character-level CLIP tokenizer)."""
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, ViTImageProcessor

    directory = Path(directory)
    tokenizer = write_char_clip_tokenizer(directory)
    config = CLIPSegConfig(
        **tiny_clip_towers(tokenizer.get_vocab(), image_size), projection_dim=16, extract_layers=[0, 1], reduce_dim=16,
        decoder_num_attention_heads=2, decoder_intermediate_size=32,
        use_complex_transposed_convolution=True,  # as CIDAS/clipseg-rd64-refined
    )
    with torch.random.fork_rng(devices=[]), quiet_loading():
        torch.manual_seed(seed)
        model = CLIPSegForImageSegmentation(config).eval()
        model.save_pretrained(directory)
    # CIDAS's processor: ViTImageProcessor resizing to a square (352 there), CLIP's normalisation
    image_processor = ViTImageProcessor(size={"height": image_size, "width": image_size},
                                        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
    CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    (directory / "DEMO_WEIGHTS").write_text(DEMO_NOTE, encoding="utf-8")
    return directory


def build_demo_saa_saliency(path: Path, seed: int = 0) -> Path:
    """Save a narrow timm wide_resnet50_2 feature extractor (one block per stage, base width 8) as SAA+'s saliency .pth.

    The file names its timm overrides beside the state dict, so the method's loader builds the same narrow net.
    """
    import timm

    from ..methods.saa.saliency import ARCHITECTURE_KEY, BACKBONE, OUT_INDICES

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    overrides = {"layers": [1, 1, 1, 1], "base_width": 8}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(BACKBONE, pretrained=False, features_only=True, out_indices=OUT_INDICES, **overrides)
    torch.save({ARCHITECTURE_KEY: overrides, "state_dict": model.state_dict()}, path)
    path.with_name(path.name + ".DEMO_WEIGHTS").write_text(DEMO_NOTE, encoding="utf-8")
    return path


DEMO_RAM_TAGS = 8  # the demo RAM's bias is set so that about this many tags pass on a grey image


def build_demo_ram(path: Path, seed: int = 0) -> Path:
    """Save a tiny RAM (Swin at 224 px, narrow 2-layer head, the real 4585 tags) as the releases are saved.

    The file holds {"model": state dict} under the released names, so `--tagger ram` loads it through the
    same loader as ram_swin_large_14m.pth. fc's bias is chosen so that a few tags pass on a grey image.
    """
    from ..backends.ram import RamModel, RamShape, class_thresholds
    from ..backends.ram.swin import SwinShape
    from ..backends.ram.tagging_head import HeadShape

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = RamShape(swin=SwinShape(image_size=224, embed_dim=8, depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2), window_size=7),
                     head=HeadShape(hidden=32, intermediate=64))
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        model = RamModel(shape).eval()
        model.label_embed.normal_()
        logits = model(torch.zeros(1, 3, 224, 224))[0]  # the normalised grey image
        margin = logits - torch.logit(class_thresholds(shape.classes))
        ranked = margin.topk(DEMO_RAM_TAGS + 1).values
        model.fc.bias -= (ranked[-2] + ranked[-1]) / 2  # halfway between the last tag kept and the first left out
    torch.save({"model": model.state_dict()}, path)
    return path


def make_demo_weights(weights_dir: Path) -> list[Path]:
    """Write the demo detector, segmenter and CLIP where the manifest's demo entries expect them."""
    from .manifest import load_manifest

    builders = {"grounding-dino-demo": build_demo_grounding_dino, "sam-demo": build_demo_sam_checkpoint, "clip-demo": build_demo_clip,
                "sam2-demo": build_demo_sam2, "edgetam-demo": build_demo_edgetam, "omdet-turbo-demo": build_demo_omdet_turbo,
                "clipseg-demo": build_demo_clipseg, "saa-saliency-demo": build_demo_saa_saliency, "ram-demo": build_demo_ram}
    written = []
    for entry in load_manifest():
        if entry.demo and entry.name in builders:
            written.append(builders[entry.name](entry.location(Path(weights_dir))))
    return written


def build_demo_dinov2(directory: Path, seed: int = 0, image_size: int = 28) -> Path:
    """Save a tiny transformers Dinov2Model (2 blocks, patch 7) with random weights to `directory`."""
    from transformers import Dinov2Config, Dinov2Model

    directory = Path(directory)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=7,
                          image_size=image_size)
    with torch.random.fork_rng(devices=[]), quiet_loading():
        torch.manual_seed(seed)
        Dinov2Model(config).eval().save_pretrained(directory)
    (directory / "DEMO_WEIGHTS").write_text(DEMO_NOTE, encoding="utf-8")
    return directory


def build_demo_sam3(directory: Path, seed: int = 0, image_size: int = 112) -> Path:
    """Save a tiny transformers Sam3Model (2-block ViT, patch 14, 10 queries) and its processor to `directory`."""
    from transformers import Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor

    directory = Path(directory)
    tokenizer = write_char_clip_tokenizer(directory)
    vocab = tokenizer.get_vocab()
    grid = image_size // 14
    hidden = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2)
    config = Sam3Config(
        vision_config=dict(backbone_config=dict(model_type="sam3_vit_model", num_hidden_layers=2, image_size=image_size, patch_size=14,
                                                pretrain_image_size=image_size // 2, window_size=4, global_attn_indexes=[1], **hidden),
                           fpn_hidden_size=32, backbone_feature_sizes=[[grid * 4, grid * 4], [grid * 2, grid * 2], [grid, grid]]),
        text_config=tiny_clip_text(vocab, num_hidden_layers=1, max_position_embeddings=32, projection_dim=32),
        geometry_encoder_config=dict(num_layers=1, **hidden),
        detr_encoder_config=dict(num_layers=1, **hidden),
        detr_decoder_config=dict(num_layers=1, num_queries=10, **hidden),
        mask_decoder_config=dict(hidden_size=32, num_attention_heads=2),
    )
    with torch.random.fork_rng(devices=[]), quiet_loading():
        torch.manual_seed(seed)
        Sam3Model(config).eval().save_pretrained(directory)
    processor = Sam3Processor(image_processor=Sam3ImageProcessor(size={"height": image_size, "width": image_size}), tokenizer=tokenizer)
    processor.save_pretrained(directory)
    (directory / "DEMO_WEIGHTS").write_text(DEMO_NOTE, encoding="utf-8")
    return directory

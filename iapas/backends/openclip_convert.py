"""open_clip checkpoints (e.g. ViT-B-16-plus-240, WinCLIP's backbone) converted into a transformers CLIPModel.

open_clip saves a plain state dict and keeps the architecture in a named config, so the numbers are
read off the tensor shapes; the two things the weights do not show are the attention head width
(64 in every open_clip and OpenAI ViT, settable per tower) and the activation: QuickGELU for OpenAI's
weights (OpenAI's CLIP and zqhang/AnomalyCLIP AnomalyCLIP_lib/AnomalyCLIP.py build them with it), GELU for
open_clip's own. `activation="auto"` tells the two apart by the file (`checkpoint_family`).
"""
from __future__ import annotations

import gzip
import json
import re
import warnings
from pathlib import Path

import torch

from ..errors import CorruptWeightsError, WeightsError

# Bumped whenever a conversion made by an earlier iapas would differ (1: GELU for every file; 2: QuickGELU for
# OpenAI's files). A cached `<file>.hf/` records it and the source's sha256, and is made again when either differs.
CONVERTER_VERSION = 2
ACTIVATIONS = {"openai": "quick_gelu", "open_clip": "gelu"}  # the activation each checkpoint family was trained with
# OpenAI's released .pt files (a TorchScript archive, or its state dict) carry these three integers beside the tensors
OPENAI_MARKERS = ("input_resolution", "context_length", "vocab_size")

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
BPE_MERGES = 49152 - 256 - 2  # merges used by CLIP's tokenizer, as in OpenAI's SimpleTokenizer


def _load_any(path: Path) -> dict:
    """The tensors of a .safetensors file, a torch state dict, or a TorchScript archive (OpenAI's released format)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        with warnings.catch_warnings():  # torch says it dispatches a TorchScript archive; weights_only refuses it below
            warnings.filterwarnings("ignore", message=".*TorchScript archive.*")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        import zipfile

        if not zipfile.is_zipfile(path):
            raise
        # OpenAI's ViT-*.pt are TorchScript archives; their state dict is the tensors open_clip would load
        archive = torch.jit.load(str(path), map_location="cpu")
        return {OPENAI_MARKERS[0]: torch.tensor(0)} | dict(archive.state_dict())  # the marker even where it is absent


def read_openclip_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .pt/.bin (optionally under "state_dict", keys maybe prefixed "module."), a TorchScript
    archive or a .safetensors file."""
    try:
        state = _load_any(path)
    except Exception as error:
        raise CorruptWeightsError(f"cannot read open_clip checkpoint {path}: {str(error).splitlines()[0][:160]}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {re.sub(r"^module\.", "", k): v for k, v in state.items()}
    if "visual.conv1.weight" not in state or "token_embedding.weight" not in state:
        raise WeightsError(f"{path} is not an open_clip ViT checkpoint (no visual.conv1 / token_embedding)")
    return state


def checkpoint_family(state: dict[str, torch.Tensor]) -> str:
    """ "openai" for OpenAI's CLIP weights (a TorchScript archive, or a state dict with its integer entries), else "open_clip"."""
    return "openai" if any(marker in state for marker in OPENAI_MARKERS) else "open_clip"


def _layers(state: dict[str, torch.Tensor], prefix: str) -> int:
    return len({int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))})


def heads_for(width: int, head_width: int, tower: str) -> int:
    """Attention heads of a tower of `width` at `head_width`, or a one-line WeightsError where they do not divide."""
    if head_width < 1 or width % head_width:
        raise WeightsError(f"the {tower} tower is {width} wide, which {head_width}-wide attention heads do not divide: "
                           f"give its head width (--{tower}-head-width)")
    return width // head_width


def clip_config_from_state(state: dict[str, torch.Tensor], head_width: int | tuple[int, int] = 64, activation: str = "gelu"):
    """A transformers CLIPConfig whose shapes match the open_clip state dict.

    `head_width` is one width for both towers or (vision, text); `activation` "auto" is the file's family's.
    """
    from transformers import CLIPConfig

    vision_head, text_head = (head_width, head_width) if isinstance(head_width, int) else head_width
    if activation == "auto":
        activation = ACTIVATIONS[checkpoint_family(state)]
    vision_width, _, patch, _ = state["visual.conv1.weight"].shape
    grid = int(round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5))
    text_width = state["token_embedding.weight"].shape[1]
    vocab = state["token_embedding.weight"].shape[0]
    vision_heads = heads_for(int(vision_width), vision_head, "vision")
    text_heads = heads_for(int(text_width), text_head, "text")
    return CLIPConfig(
        projection_dim=int(state["visual.proj"].shape[1]),
        vision_config=dict(
            hidden_size=int(vision_width), intermediate_size=int(state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
            num_hidden_layers=_layers(state, "visual.transformer.resblocks."), num_attention_heads=vision_heads,
            image_size=int(grid * patch), patch_size=int(patch), hidden_act=activation, layer_norm_eps=1e-5,
        ),
        text_config=dict(
            vocab_size=int(vocab), hidden_size=int(text_width),
            intermediate_size=int(state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
            num_hidden_layers=_layers(state, "transformer.resblocks."), num_attention_heads=text_heads,
            max_position_embeddings=int(state["positional_embedding"].shape[0]), hidden_act=activation, layer_norm_eps=1e-5,
            bos_token_id=int(vocab - 2), eos_token_id=int(vocab - 1), pad_token_id=int(vocab - 1),
        ),
    )


def _block(source: str, target: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    converted = {}
    for key in {k[len(source):].split(".")[0] for k in state if k.startswith(source)}:
        old, new = f"{source}{key}.", f"{target}{key}."
        q, k, v = state[old + "attn.in_proj_weight"].chunk(3)
        qb, kb, vb = state[old + "attn.in_proj_bias"].chunk(3)
        converted.update({
            new + "self_attn.q_proj.weight": q, new + "self_attn.k_proj.weight": k, new + "self_attn.v_proj.weight": v,
            new + "self_attn.q_proj.bias": qb, new + "self_attn.k_proj.bias": kb, new + "self_attn.v_proj.bias": vb,
            new + "self_attn.out_proj.weight": state[old + "attn.out_proj.weight"],
            new + "self_attn.out_proj.bias": state[old + "attn.out_proj.bias"],
        })
        for a, b in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            converted[new + b + ".weight"] = state[old + a + ".weight"]
            converted[new + b + ".bias"] = state[old + a + ".bias"]
    return converted


def convert_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip keys -> transformers CLIPModel keys (attention in_proj split into q, k, v; projections transposed)."""
    converted = {
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "visual_projection.weight": state["visual.proj"].T.contiguous(),
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_projection.weight": state["text_projection"].T.contiguous(),
        "logit_scale": state["logit_scale"].reshape(()),
    }
    for a, b in (("visual.ln_pre", "vision_model.pre_layrnorm"), ("visual.ln_post", "vision_model.post_layernorm"),
                 ("ln_final", "text_model.final_layer_norm")):
        converted[b + ".weight"], converted[b + ".bias"] = state[a + ".weight"], state[a + ".bias"]
    converted.update(_block("visual.transformer.resblocks.", "vision_model.encoder.layers.", state))
    converted.update(_block("transformer.resblocks.", "text_model.encoder.layers.", state))
    return converted


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes, in OpenAI's order: printable Latin-1 first, the rest after 255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return [chr(byte) for byte in printable] + [chr(256 + index) for index in range(len(others))]


def write_clip_tokenizer_from_bpe(bpe_gz: Path, directory: Path) -> None:
    """vocab.json and merges.txt of CLIP's BPE, built from open_clip's bpe_simple_vocab_16e6.txt.gz as OpenAI's tokenizer builds them."""
    with gzip.open(bpe_gz) as handle:
        merges = handle.read().decode("utf-8").split("\n")[1:BPE_MERGES + 1]
    merges = [tuple(merge.split()) for merge in merges]
    vocab = byte_symbols()
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(merge) for merge in merges] + ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(vocab)}), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")


def convert_openclip_checkpoint(
    checkpoint: Path, out_dir: Path, tokenizer_dir: Path | None = None, head_width: int | tuple[int, int] = 64,
    activation: str = "auto",
) -> Path:
    """Write a transformers CLIP directory (model, tokenizer, image processor) from an open_clip or OpenAI checkpoint.

    `head_width`: one for both towers or (vision, text); `activation`: gelu, quick_gelu, or auto (the file's family).
    A conversion whose tensors would not fit the model's shapes is refused in one line.
    """
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    state = read_openclip_state(Path(checkpoint))
    config = clip_config_from_state(state, head_width, activation)
    model = CLIPModel(config)
    converted = convert_state(state)
    own = model.state_dict()
    wrong = [key for key, tensor in converted.items() if key in own and own[key].shape != tensor.shape]
    if wrong:
        raise WeightsError(f"open_clip conversion of {checkpoint} does not fit: {wrong[0]} is {tuple(converted[wrong[0]].shape)} "
                           f"in the file but {tuple(own[wrong[0]].shape)} in the converted model")
    missing, unexpected = model.load_state_dict(converted, strict=False)
    missing = [key for key in missing if not key.endswith("position_ids")]
    if missing or unexpected:
        raise WeightsError(f"open_clip conversion of {checkpoint} left keys unmatched: {(missing + unexpected)[:3]}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is not None:
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    else:
        try:
            import open_clip
        except ImportError:
            raise WeightsError("converting an open_clip checkpoint needs a tokenizer: pass --tokenizer DIR or install open-clip-torch") from None
        write_clip_tokenizer_from_bpe(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz", out_dir)
        tokenizer = CLIPTokenizer(str(out_dir / "vocab.json"), str(out_dir / "merges.txt"))
    if len(tokenizer) != config.text_config.vocab_size:
        raise WeightsError(f"tokenizer has {len(tokenizer)} tokens but {checkpoint} embeds {config.text_config.vocab_size}")
    size = config.vision_config.image_size
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                         image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD))
    model.save_pretrained(out_dir)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    return out_dir

"""HEPE: the prompt agent against a local stub endpoint, AFS against hand-computed convolutions, ablations, training."""
import json
import socket
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from iapas.backends.clip import ClipBackbone
from iapas.backends.llm import CachedLLM, OpenAICompatibleLLM
from iapas.config import Config
from iapas.errors import ConfigError, LLMError, WeightsError
from iapas.methods.hepe import parts_and_agent_settings
from iapas.methods.hepe.afs import DepthwiseSeparableConv2d, ODConv2d
from iapas.methods.hepe.agent import AgentSettings, PromptAgent, agent_for_config, phrases, step_two_for_config
from iapas.methods.hepe.model import Hepe, HepeParts, key_sentences, text_key
from test_adaclip import vitl_like_dir  # noqa: F401  (the tiny CLIP fixture, shared)

STEP_ONE_ANSWER = "The test sample has a thin scratch near the top edge and is rotated by 90 degrees."
STEP_TWO_ANSWER = "1. thin scratch near the top edge\n2. dent in the centre"


class Endpoint(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint: step-one requests (with images) and step-two ones get known answers."""

    requests: list = []
    stall_s = 0.0

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Endpoint.requests.append(body)
        time.sleep(Endpoint.stall_s)
        content = body["messages"][0]["content"]
        answer = STEP_ONE_ANSWER if isinstance(content, list) else STEP_TWO_ANSWER
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client gave up (timeout test)
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    """A stub server on 127.0.0.1 that stops after the test, and by itself after 60 s at the latest."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    server.daemon_threads = True
    Endpoint.requests, Endpoint.stall_s = [], 0.0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stopper = threading.Timer(60.0, server.shutdown)
    stopper.daemon = True
    stopper.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    stopper.cancel()
    server.shutdown()
    server.server_close()


def images(seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8), rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def agent_at(url: str, cache: Path, settings: AgentSettings = AgentSettings(), timeout: float = 10.0) -> PromptAgent:
    config = Config()
    config.clip_methods.hepe_mllm_url, config.clip_methods.hepe_mllm_model = url, "qwen2-vl-stub"
    config.calibration.cache_dir, config.calibration.llm_timeout = str(cache), timeout
    return agent_for_config(config, settings)


# ---- the agent ------------------------------------------------------------------------------------
def test_the_agent_sends_both_images_then_the_category_and_caches_every_answer(endpoint, tmp_path):
    test, normal = images()
    agent = agent_at(endpoint, tmp_path)
    description = agent.describe(test, normal, "metal_nut")
    assert description.differences == STEP_ONE_ANSWER
    assert description.phrases == ("thin scratch near the top edge", "dent in the centre")
    first, second = Endpoint.requests
    parts = first["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]  # normal, then test, then the question
    assert all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in parts[:2])
    assert parts[0]["image_url"] != parts[1]["image_url"]
    assert first["temperature"] == 0 and first["model"] == "qwen2-vl-stub"
    prompt = second["messages"][0]["content"]
    assert "metal nut" in prompt and STEP_ONE_ANSWER in prompt and "orientation" in prompt  # category + constraint
    assert agent_at(endpoint, tmp_path).describe(test, normal, "metal_nut") == description
    assert len(Endpoint.requests) == 2  # a cache hit asks nothing
    agent_at(endpoint, tmp_path).describe(normal, test, "metal_nut")  # other images: another step-one key
    assert len(Endpoint.requests) == 3  # (the same step-one answer makes the same step-two request: cached)
    assert set(agent.record()["prompts"]) == {"hepe_describe_v1", "hepe_refine_v1"}


def test_table3_ablations_change_exactly_the_request(endpoint, tmp_path):
    test, normal = images()
    agent_at(endpoint, tmp_path, AgentSettings(normal_image=False)).describe(test, None, "screw")
    agent_at(endpoint, tmp_path, AgentSettings(anti_false_alarm=False)).describe(test, normal, "screw")
    single, _, pair, plain = Endpoint.requests
    assert [p["type"] for p in single["messages"][0]["content"]] == ["image_url", "text"]
    assert [p["type"] for p in pair["messages"][0]["content"]] == ["image_url", "image_url", "text"]
    assert "orientation" not in plain["messages"][0]["content"] and "screw" in plain["messages"][0]["content"]


def test_a_timeout_and_a_refused_connection_are_one_line(endpoint, tmp_path):
    Endpoint.stall_s = 2.0
    with pytest.raises(LLMError) as slow:
        agent_at(endpoint, tmp_path / "a", timeout=0.5).describe(*images(), "screw")
    assert "did not answer within 0.5 s" in str(slow.value) and "\n" not in str(slow.value)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: the connection is refused
        with pytest.raises(LLMError) as refused:
            agent_at(f"http://127.0.0.1:{port}/v1", tmp_path / "b").describe(*images(), "screw")
    assert str(refused.value).startswith("cannot reach LLM endpoint") and "\n" not in str(refused.value)


def test_no_mllm_means_no_agent_and_lexicon_is_refused_for_step_two(tmp_path):
    assert agent_for_config(Config()) is None
    config = Config()
    config.clip_methods.hepe_step_two = "lexicon"
    with pytest.raises(ConfigError, match="lexicon backend: it ignores"):
        step_two_for_config(config, OpenAICompatibleLLM("http://127.0.0.1:9/v1", "m"))
    with pytest.raises(ConfigError, match="cannot ablate 'afs2'"):
        parts_and_agent_settings(["afs2"])


def test_phrases_and_text_keys():
    assert phrases("- scratch on the rim.\n2) none\n\n3. bent lead") == ("scratch on the rim", "bent lead")
    assert phrases("None.") == ()
    normal, abnormal = key_sentences(text_key("metal_nut", None))
    assert (len(normal), len(abnormal)) == (28, 20)
    from iapas.methods.hepe.agent import Description

    normal, abnormal = key_sentences(text_key("metal_nut", Description("", ("a {bad} scratch",))))
    assert len(abnormal) == 24 and abnormal[-1] == "a cropped photo of the metal_nut with a bad scratch."


# ---- AFS ------------------------------------------------------------------------------------------
def test_odconv_equals_a_hand_computed_dynamic_convolution():
    torch.manual_seed(0)
    conv = ODConv2d(3, 2, kernel_size=3, kernels=2)
    x = torch.randn(2, 3, 5, 4)
    out = conv(x)
    for b in range(2):
        hidden = torch.relu(conv.squeeze.weight @ x[b].mean(dim=(1, 2)) + conv.squeeze.bias)
        a_c = torch.sigmoid(conv.channel.weight @ hidden + conv.channel.bias)
        a_f = torch.sigmoid(conv.filter.weight @ hidden + conv.filter.bias)
        a_s = torch.sigmoid(conv.spatial.weight @ hidden + conv.spatial.bias).view(3, 3)
        a_w = torch.softmax(conv.kernel.weight @ hidden + conv.kernel.bias, dim=0)
        weight = sum(a_w[i] * a_s * a_c[None, :, None, None] * a_f[:, None, None, None] * conv.weight[i] for i in range(2))
        expected = F.conv2d(x[b:b + 1], weight, padding=1)
        assert torch.allclose(out[b:b + 1], expected, atol=1e-5)


def test_dsconv_is_depthwise_then_pointwise():
    torch.manual_seed(0)
    conv = DepthwiseSeparableConv2d(3, 4)
    x = torch.randn(1, 3, 6, 6)
    depthwise = torch.cat([F.conv2d(x[:, c:c + 1], conv.depthwise.weight[c:c + 1], conv.depthwise.bias[c:c + 1], padding=1)
                           for c in range(3)], dim=1)
    expected = torch.einsum("oc,bchw->bohw", conv.pointwise.weight[:, :, 0, 0], depthwise) + conv.pointwise.bias[None, :, None, None]
    assert torch.allclose(conv(x), expected, atol=1e-5)


# ---- the model --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_dir(vitl_like_dir):
    """A tiny random CLIP with ViT-L-14-336's proportions (patch 14), saved as transformers saves it."""
    return vitl_like_dir


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory):
    """A tiny random DINOv2 (patch 7) saved as transformers saves it."""
    from transformers import Dinov2Config, Dinov2Model

    directory = tmp_path_factory.mktemp("dino") / "dinov2-tiny"
    torch.manual_seed(2)
    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=7,
                             image_size=28)).eval().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def backbones(clip_dir, dinov2_dir):
    from iapas.backends.dinov2 import Dinov2Backbone

    return ClipBackbone(clip_dir), Dinov2Backbone(dinov2_dir)


def tiny_hepe(backbones, parts=HepeParts(), **rules) -> Hepe:
    from iapas.methods.adaclip.model import AdaClipSettings

    clip, dinov2 = backbones
    torch.manual_seed(3)
    return Hepe(clip, dinov2, AdaClipSettings.for_backbone(clip, image_size=56), parts=parts, **rules).eval()


def run_map(model: Hepe, image: np.ndarray, keys=None) -> torch.Tensor:
    with torch.no_grad():
        output = model(model.pixels([image]), keys or [model.class_name])
        return model.anomaly_map(output.layer_logits)[0]


def test_eq1_uses_the_plain_cosine(backbones):
    image = images(size=56)[0]
    plain, scaled = tiny_hepe(backbones), tiny_hepe(backbones, logit_scale=100.0)
    with torch.no_grad():
        a = plain(plain.pixels([image]), ["screw"]).layer_logits
        b = scaled(scaled.pixels([image]), ["screw"]).layer_logits
    assert torch.allclose(100 * a, b, atol=1e-4) and a.abs().max() <= 1.0 + 1e-5  # cosines, not 100 x cosines


def test_each_table2_ablation_removes_exactly_its_part(backbones, endpoint, tmp_path):
    image = images(size=56)[0]
    full = tiny_hepe(backbones)
    keys = set(full.prompts.state_dict())
    assert any(k.startswith("attention.odconv.") for k in keys) and any(k.startswith("attention.dsconv.") for k in keys)
    no_vfm = tiny_hepe(backbones, HepeParts(vfm=False))
    assert set(no_vfm.prompts.state_dict()) == {k for k in keys if not k.startswith("attention.")}
    assert no_vfm.dinov2 is None
    no_afs = tiny_hepe(backbones, HepeParts(afs=False))
    assert {k for k in no_afs.prompts.state_dict() if k.startswith("attention.")} == {"attention.projection.weight",
                                                                                    "attention.projection.bias"}
    reference = run_map(full, image)
    assert not torch.allclose(reference, run_map(no_vfm, image))
    assert not torch.allclose(reference, run_map(no_afs, image))
    # text prompts: with the agent, the key carries the phrases and the map changes; ablated, no agent is kept
    full.agent = agent_at(endpoint, tmp_path)
    from PIL import Image

    normals = [tmp_path / f"good{i}.png" for i in range(3)]
    for i, path in enumerate(normals):
        Image.fromarray(images(10 + i, 56)[0]).save(path)
    full.prepare("screw", normals, "object", tmp_path)
    drawn = full.reference_path
    assert drawn in normals  # drawn with the seed
    full.prepare("screw", list(reversed(normals)), "object", tmp_path)
    assert full.reference_path == drawn  # the draw does not depend on the listing order
    described = full.text_keys([image])
    assert described[0].split("\n")[1:] == ["thin scratch near the top edge", "dent in the centre"]
    assert not torch.allclose(reference, run_map(full, image, described))
    assert full.segment(image).prompts[2:] == ("thin scratch near the top edge", "dent in the centre")  # shown in the Result
    assert tiny_hepe(backbones, HepeParts(text_prompts=False), agent=full.agent).agent is None


def test_checkpoints_round_trip_and_refuse_a_missing_part(backbones, tmp_path):
    clip, dinov2 = backbones
    image = images(size=56)[0]
    model = tiny_hepe(backbones)
    path = model.save(tmp_path / "hepe_prompts.pt")
    loaded = Hepe.load(path, clip, dinov2)
    assert torch.equal(run_map(model, image), run_map(loaded, image))
    assert "attention.odconv.weight" not in Hepe.load(path, clip, None, parts=HepeParts(vfm=False)).prompts.state_dict()
    with pytest.raises(WeightsError, match="trained with AFS: retrain with `iapas train hepe --ablate afs`"):
        Hepe.load(path, clip, dinov2, parts=HepeParts(afs=False))
    no_vfm = tiny_hepe(backbones, HepeParts(vfm=False)).save(tmp_path / "novfm.pt")
    with pytest.raises(WeightsError, match="without the VFM"):
        Hepe.load(no_vfm, clip, dinov2)


def test_a_few_training_steps_lower_the_loss(backbones):
    model = tiny_hepe(backbones).train()
    image = images(4, 56)[0]
    pixels = model.pixels([image])
    masks = torch.zeros(1, 56, 56)
    masks[:, 10:30, 20:40] = 1
    labels = torch.ones(1)
    optimizer = torch.optim.AdamW(model.prompts.parameters(), lr=0.01, betas=(0.5, 0.999))
    losses = []
    for _ in range(6):
        loss = model.loss(pixels, masks, labels, ["screw"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert model.prompts.attention.odconv.weight.grad is not None  # the attention branch learns


# ---- the command line -------------------------------------------------------------------------------
def test_cli_trains_then_segments_and_evaluates_with_ablations(capsys, clip_dir, dinov2_dir, endpoint, tmp_path):
    from iapas.cli import main
    from iapas.data.synth import SynthSpec, write_synth_dataset

    root = write_synth_dataset(tmp_path / "aux", SynthSpec(categories=("washer",), defects=("hole",), train_good=2,
                                                            test_good=1, per_defect=2, size=56))
    common = ["--clip", str(clip_dir), "--dinov2", str(dinov2_dir), "--no-progress"]
    ckpt = tmp_path / "ckpt"
    assert main(["train", "hepe", "--dataset", "mvtec", "--root", str(root), "-o", str(ckpt), "--epochs", "1",
                 "--image-size", "56", *common]) == 0
    prompts = str(ckpt / "hepe_prompts.pt")
    assert "HEPE prompts: " in capsys.readouterr().err
    run = ["--clip", str(clip_dir), "--dinov2", str(dinov2_dir), "--prompts", prompts]
    picture = next((root / "washer" / "test" / "hole").glob("*.png"))
    assert main(["segment", str(picture), "--method", "hepe", "--category", "washer", "-o", str(tmp_path / "seg"), *run]) == 0
    assert "no MLLM configured" in capsys.readouterr().err  # fixed prompts, said in one line
    with socket.socket() as probe:  # an endpoint that refuses: one line, exit 2
        probe.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
        good = tmp_path / "good"
        good.mkdir()
        (good / "g.png").write_bytes(next((root / "washer" / "train" / "good").glob("*.png")).read_bytes())
        assert main(["segment", str(picture), "--method", "hepe", "--category", "washer", "-o", str(tmp_path / "seg2"), *run,
                     "--mllm-url", refused, "--reference-images", str(good), "--llm-timeout", "5"]) == 1  # the image failed
    error = capsys.readouterr().err
    assert "cannot reach LLM endpoint" in error and "Traceback" not in error
    assert np.load(tmp_path / "seg" / f"{picture.name}.npy").shape == (56, 56)
    agent = ["--mllm-url", endpoint, "--mllm-model", "stub", "--cache-dir", str(tmp_path / "cache")]
    for ablate in ("", "vfm"):
        out = tmp_path / f"eval-{ablate or 'full'}"
        assert main(["eval", "--dataset", "mvtec", "--root", str(root), "--categories", "washer", "--method", "hepe",
                     "-o", str(out), "--limit", "2", *run, *agent, *(["--ablate", ablate] if ablate else [])]) == 0
    assert any(isinstance(r["messages"][0]["content"], list) for r in Endpoint.requests)  # the agent was asked
    fingerprint = json.loads(next((tmp_path / "eval-full").rglob("iapas-fingerprint.json")).read_text())
    assert "hepe_prompt_version" in json.dumps(fingerprint) and endpoint in json.dumps(fingerprint)
    assert main(["eval", "--dataset", "mvtec", "--root", str(root), "--categories", "washer", "--method", "hepe",
                 "-o", str(tmp_path / "bad"), "--ablate", "afs", *run]) == 2
    assert "retrain with `iapas train hepe --ablate afs`" in capsys.readouterr().err
    assert main(["train", "hepe", "--dataset", "mvtec", "--root", str(root), "-o", str(tmp_path / "x"), "--ablate", "text",
                 *common]) == 2
    assert "the agent's ablations apply at `iapas eval`" in capsys.readouterr().err


# ---- a local transformers VLM -----------------------------------------------------------------------
def build_tiny_qwen2_vl(out: Path) -> Path:
    """A tiny random Qwen2-VL directory (byte-level vocabulary, one layer each) saved as transformers saves it."""
    from transformers import Qwen2TokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    specials = ["<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    tokenizer = Qwen2TokenizerFast(vocab=vocab, merges=[], unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
                "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
                "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112), tokenizer=tokenizer,
                     video_processor=Qwen2VLVideoProcessor(), chat_template=template).save_pretrained(out)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in specials + ["<|im_end|>", "<|endoftext|>"]}
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], bos_token_id=None),
        vision_config=dict(depth=1, embed_dim=16, num_heads=2, hidden_size=32, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_chans=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).eval().save_pretrained(out)
    return out


def test_a_local_transformers_vlm_directory_answers_both_steps_deterministically(tmp_path):
    from iapas.backends.llm import GenerationOptions
    from iapas.methods.hepe.agent import TransformersVLM

    directory = build_tiny_qwen2_vl(tmp_path / "qwen2-vl-tiny")
    test, normal = images(size=40)
    config = Config()
    config.clip_methods.hepe_mllm_model, config.calibration.cache_dir = str(directory), str(tmp_path / "cache")
    agent = agent_for_config(config, replace(AgentSettings(), version="v1"))
    assert isinstance(agent.mllm.llm, TransformersVLM) and agent.llm.llm is agent.mllm.llm  # step two: the same model
    agent.options = GenerationOptions(max_new_tokens=6)
    first = agent.describe(test, normal, "screw")
    assert first.differences and first == agent.describe(test, normal, "screw")
    assert agent.mllm.hits == 1  # the second time from the cache
    fresh = TransformersVLM(directory)
    assert fresh.generate(agent.step_one_messages(test, normal), ["screw"], agent.options) == first.differences  # greedy
    with pytest.raises(ConfigError, match="not a transformers model directory"):
        TransformersVLM(tmp_path / "missing")


def test_per_category_descriptions_ask_once_per_category(backbones, endpoint, tmp_path):
    model = tiny_hepe(backbones, HepeParts(vfm=False), agent=agent_at(endpoint, tmp_path), descriptions="category",
                      reference_images=[])
    from PIL import Image

    good = tmp_path / "good.png"
    Image.fromarray(images(7, 56)[0]).save(good)
    model.prepare("screw", [good], "object", tmp_path)
    keys = model.text_keys([images(1, 56)[0]]) + model.text_keys([images(2, 56)[0], images(3, 56)[0]])
    assert len(set(keys)) == 1 and len(Endpoint.requests) == 2  # one step one, one step two, reused
    model.prepare("nut", [good], "object", tmp_path)  # a new category asks again
    assert model.text_keys([images(1, 56)[0]])[0].startswith("nut\n")

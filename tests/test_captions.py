"""Synthetic Fashion-MNIST captions: templates, articles, held-out split."""

from __future__ import annotations

import pytest

from unissl.errors import UnisslError
from unissl.methods.reptok.captions import (
    FASHION_MNIST_CLASSES,
    HELDOUT_TEMPLATES,
    TRAIN_TEMPLATES,
    class_captions,
    class_of_prompt,
    class_phrase,
    fill,
    heldout_prompts,
)


def test_heldout_templates_are_disjoint_from_training_templates():
    assert not set(TRAIN_TEMPLATES) & set(HELDOUT_TEMPLATES)
    train = {s for c in class_captions(FASHION_MNIST_CLASSES, TRAIN_TEMPLATES) for s in c}
    held = {p for p, _ in heldout_prompts(FASHION_MNIST_CLASSES)}
    assert not train & held
    assert len(held) == len(HELDOUT_TEMPLATES) * 10  # every held-out prompt is distinct


def test_captions_name_the_class_with_the_right_article():
    assert fill("a photo of {a_cls}", "Ankle boot") == "a photo of an ankle boot"
    assert fill("a grey {cls} on black background", "T-shirt/top") == "a grey t-shirt on black background"
    assert fill("{a_cls}", "Trouser") == "a pair of trousers"
    caps = class_captions(FASHION_MNIST_CLASSES)
    assert len(caps) == 10 and all(len(c) == len(TRAIN_TEMPLATES) for c in caps)
    for name, cs in zip(FASHION_MNIST_CLASSES, caps):
        assert all(class_phrase(name) in s for s in cs)
    for prompt, i in heldout_prompts(FASHION_MNIST_CLASSES):
        assert class_phrase(FASHION_MNIST_CLASSES[i]) in prompt


def test_phrases_distinguish_every_class():
    phrases = [class_phrase(c) for c in FASHION_MNIST_CLASSES]
    assert len(set(phrases)) == 10
    # no phrase contains another as a whole word sequence ("shirt" vs "t-shirt" differ by the hyphen)
    assert class_phrase("Unknown_Thing") == "unknown thing"


def test_bad_template_is_a_user_error():
    with pytest.raises(UnisslError, match="cls"):
        fill("a photo of {animal}", "Bag")
    with pytest.raises(UnisslError):
        class_captions([])


def test_class_of_prompt_recovers_the_class_of_every_caption():
    for template_set in (class_captions(FASHION_MNIST_CLASSES), class_captions(FASHION_MNIST_CLASSES, HELDOUT_TEMPLATES)):
        for i, caps in enumerate(template_set):
            assert all(class_of_prompt(s, FASHION_MNIST_CLASSES) == i for s in caps), caps
    assert class_of_prompt("a photo of a shirt", FASHION_MNIST_CLASSES) == 6
    assert class_of_prompt("a photo of a t-shirt", FASHION_MNIST_CLASSES) == 0
    assert class_of_prompt("a photo of a cat", FASHION_MNIST_CLASSES) == -1

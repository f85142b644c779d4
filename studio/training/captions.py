"""Training captions: ``"a photo of <trigger> <class word>"`` plus a photo's optional tags."""

from __future__ import annotations

import re
from collections.abc import Iterable

from studio.errors import ConfigError

DEFAULT_TRIGGER = "ohwx"
"""A rare token the base model knows little about, so the LoRA can bind the identity to it."""

DEFAULT_CLASS_WORD = "person"
"""What the trigger is a kind of; keeps the model's prior for people while learning the face."""

MAX_TOKEN_LENGTH = 32
_TOKEN = re.compile(r"[\w<>-]+")


def caption(trigger: str, class_word: str, tags: Iterable[str] = ()) -> str:
    """The caption of one photo, e.g. ``"a photo of ohwx person, smiling, outdoors"``."""
    return ", ".join([f"a photo of {trigger} {class_word}", *tags])


def check_token(value: str, flag: str) -> str:
    """Return ``value`` if it is one word fit for a trigger or class word; else a ConfigError."""
    if not value or len(value) > MAX_TOKEN_LENGTH or not _TOKEN.fullmatch(value):
        raise ConfigError(
            f"{flag} {value!r}: use one word of letters, digits or the characters < > _ -, "
            f"at most {MAX_TOKEN_LENGTH} characters, such as {DEFAULT_TRIGGER!r} or "
            f"{DEFAULT_CLASS_WORD!r}"
        )
    return value

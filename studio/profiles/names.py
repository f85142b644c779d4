"""Profile names: validation, case-insensitive identity, and a safe folder name on disk.

A name is what the user typed, NFC-normalised and stripped of surrounding white space. Two names
that differ only in case (``Zoë`` and ``ZOË``) are the same profile. Folder names never contain
the name itself beyond an ASCII slug, and end in a hash of the name so that ``Zoë`` and ``Zoe``
get different folders.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from studio.profiles.errors import ProfileNameError

MAX_NAME_LENGTH = 64
"""Longest profile name, in characters (after normalisation)."""

MAX_SLUG_LENGTH = 40
"""Longest ASCII part of a profile's folder name, before its hash suffix."""

DIR_HASH_LENGTH = 10
"""Hex digits of the name's SHA-256 at the end of a profile's folder name."""

DIR_NAME_PATTERN = re.compile(rf"[a-z0-9-]{{1,{MAX_SLUG_LENGTH}}}-[0-9a-f]{{{DIR_HASH_LENGTH}}}")
"""Every folder name :func:`dir_name` returns matches this pattern, and nothing the user chose."""

_SEPARATORS = ("/", "\\")
# Control characters, surrogates (undecodable command-line bytes), line and paragraph
# separators, and the bidirectional overrides that make a name display as something else.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def normalize_name(raw: str) -> str:
    """Return the profile name as stored, or raise :class:`ProfileNameError` naming the rule."""
    if not isinstance(raw, str):
        raise ProfileNameError(f"profile name must be text, got {type(raw).__name__}")
    name = unicodedata.normalize("NFC", raw).strip()
    shown = repr(raw)
    if not name:
        raise ProfileNameError(
            f"profile name {shown} is empty; use 1 to {MAX_NAME_LENGTH} characters"
        )
    if len(name) > MAX_NAME_LENGTH:
        raise ProfileNameError(
            f"profile name {shown[:24]}… is {len(name)} characters long; "
            f"use at most {MAX_NAME_LENGTH}"
        )
    if any(sep in name for sep in _SEPARATORS):
        raise ProfileNameError(
            f"profile name {shown} contains a path separator ('/' or '\\'); "
            "choose a name without them"
        )
    if any(
        unicodedata.category(ch) in _FORBIDDEN_CATEGORIES or ch in _BIDI_CONTROLS for ch in name
    ):
        raise ProfileNameError(
            f"profile name {shown} contains control or invisible formatting characters; "
            "use printable characters only"
        )
    if name in (".", ".."):
        raise ProfileNameError(f"profile name {shown} is not allowed: it means a folder")
    if name.startswith("."):
        raise ProfileNameError(f"profile name {shown} starts with a dot; choose a name without it")
    return name


def name_key(name: str) -> str:
    """The case-insensitive identity of a normalised name; one key, one profile."""
    return unicodedata.normalize("NFC", name.casefold())


def dir_name(name: str) -> str:
    """The deterministic folder name of a normalised profile name: ``<ascii slug>-<hash>``.

    The slug drops accents and everything outside ``a-z0-9`` (``Zoë Ng`` -> ``zoe-ng``), or is
    ``profile`` when nothing is left; the hash is of :func:`name_key`, so case variants share a
    folder and ``Zoë``/``Zoe`` do not.
    """
    ascii_text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:MAX_SLUG_LENGTH].strip("-")
    digest = hashlib.sha256(name_key(name).encode("utf-8")).hexdigest()[:DIR_HASH_LENGTH]
    return f"{slug or 'profile'}-{digest}"

"""``python -m studio profile create|add|remove|list|show|delete``: identity profiles.

Contracts other tools rely on: create/add print one line per photo (``FILE: accepted``,
``FILE: rejected: REASON``, ``FILE: skipped: REASON``) and a summary, and exit 0 when the
profile was created or updated, 1 otherwise. ``show --json`` prints one object: ``name``,
``path``, ``created``, ``updated``, ``consent`` {``given``, ``at``}, ``encoders`` (names),
``counts`` {``photos``, ``accepted``, ``rejected``}, ``photos``, a list of {``file``,
``stored_as``, ``accepted``, ``reasons``, ``similarity`` (float or null), ``notes``}, and
``loras``, oldest first, a list of {``name``, ``path``, ``trigger``, ``class_word``, ``family``,
``model_set``, ``steps``, ``best_step`` (int or null), ``best_similarity`` (float or null),
``created``}, and ``wplus``, the profile's StyleGAN W+ by e4e, a list of {``e4e``, ``photos``
(how many accepted photos the mean is of), ``computed``}; each photo also has ``wplus``, a list of
{``e4e``, ``ok``, ``reason`` (string or null), ``refine_steps``}.

``create`` and ``add`` take ``--models SET``: when that set's e4e is on this machine (the tiny set
builds its own), each photo's W+ is computed at intake; otherwise on first use
(``profile wplus``, or a portrait on a set with the W+ adapter).
"""

from __future__ import annotations

import argparse
import functools
import json
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from studio.commands.wplus import register_profile_wplus
from studio.errors import StudioError
from studio.faces.analyzer import DEFAULT_ENCODER
from studio.faces.encoders import ENCODERS
from studio.profiles.library import ProfileLibrary
from studio.profiles.types import (
    CONSENT_STATEMENT,
    PhotoOutcome,
    Profile,
    ProfileChange,
    ProfileLora,
)
from studio.settings import Settings

Handler = Callable[[argparse.Namespace, Settings], int]


def register(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "profile",
        help="identity profiles: a person's photos, checked and embedded",
        description="Create and manage identity profiles (a person's photos and embeddings).",
    )
    psub = p.add_subparsers(dest="profile_command", required=True, metavar="ACTION")

    create = psub.add_parser("create", parents=[common], help="create a profile from photos")
    create.add_argument("name", metavar="NAME")
    create.add_argument(
        "--photos", nargs="+", required=True, metavar="PATH", help="photos or folders of photos"
    )
    create.add_argument(
        "--consent", action="store_true", help=f"confirm: {CONSENT_STATEMENT} (required)"
    )
    create.add_argument(
        "--encoder",
        dest="encoders",
        action="append",
        choices=sorted(ENCODERS),
        help=f"identity encoder, repeatable; the first finds outliers (default {DEFAULT_ENCODER})",
    )
    _models_option(create)
    create.set_defaults(handler=create_profile)

    add = psub.add_parser("add", parents=[common], help="add photos to a profile")
    add.add_argument("name", metavar="NAME")
    add.add_argument("photos", nargs="+", metavar="PATH", help="photos or folders of photos")
    _models_option(add)
    add.set_defaults(handler=add_photos)

    remove = psub.add_parser("remove", parents=[common], help="remove photos from a profile")
    remove.add_argument("name", metavar="NAME")
    remove.add_argument("files", nargs="+", metavar="FILE", help="original or stored file name")
    remove.set_defaults(handler=remove_photos)

    ls = psub.add_parser("list", parents=[common], help="every profile")
    ls.set_defaults(handler=list_profiles)

    show = psub.add_parser("show", parents=[common], help="a profile's photos, verdicts and LoRAs")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=show_profile)

    delete = psub.add_parser("delete", parents=[common], help="delete a profile and its files")
    delete.add_argument("name", metavar="NAME")
    delete.set_defaults(handler=delete_profile)

    register_profile_wplus(psub, common)


def _models_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models",
        help="compute each photo's W+ at intake with this model set's e4e, when it is here",
    )


def _library(
    args: argparse.Namespace, settings: Settings
) -> AbstractContextManager[ProfileLibrary]:
    """The library; with ``--models``, the studio's, which computes W+ at intake when the
    set's e4e is here."""
    if not getattr(args, "models", None):
        return ProfileLibrary.from_settings(settings)
    from studio.orchestrator import Studio

    return Studio(settings, args.models).library()


def _storage_errors(handler: Handler) -> Handler:
    """Report storage failures (disk full, permissions, I/O) as errors, not tracebacks."""

    @functools.wraps(handler)
    def wrapped(args: argparse.Namespace, settings: Settings) -> int:
        try:
            return handler(args, settings)
        except (OSError, sqlite3.Error) as exc:
            raise StudioError(f"profile {args.profile_command} failed: {exc}") from exc

    return wrapped


@_storage_errors
def create_profile(args: argparse.Namespace, settings: Settings) -> int:
    with _library(args, settings) as library:
        change = library.create(
            args.name,
            args.photos,
            consent=args.consent,
            encoders=tuple(args.encoders or (DEFAULT_ENCODER,)),
        )
    _print_change(change, "created")
    return 0


@_storage_errors
def add_photos(args: argparse.Namespace, settings: Settings) -> int:
    with _library(args, settings) as library:
        change = library.add(args.name, args.photos)
    _print_change(change, "updated")
    return 0


@_storage_errors
def remove_photos(args: argparse.Namespace, settings: Settings) -> int:
    with ProfileLibrary.from_settings(settings) as library:
        change = library.remove_photos(args.name, args.files)
    _print_change(change, "updated")
    return 0


@_storage_errors
def list_profiles(args: argparse.Namespace, settings: Settings) -> int:
    with ProfileLibrary.from_settings(settings) as library:
        profiles = library.list()
    if not profiles:
        print(
            "no profiles yet; create one with "
            "`python -m studio profile create NAME --photos DIR --consent`"
        )
        return 0
    width = max(len(p.name) for p in profiles)
    for p in profiles:
        loras = f"  {p.loras} LoRA{'s' if p.loras > 1 else ''}" if p.loras else ""
        print(
            f"{p.name:<{width}}  {p.accepted} of {p.photos} photos accepted  "
            f"created {p.created:%Y-%m-%d %H:%M} UTC  ({', '.join(p.encoders)}){loras}"
        )
    return 0


@_storage_errors
def show_profile(args: argparse.Namespace, settings: Settings) -> int:
    with ProfileLibrary.from_settings(settings) as library:
        profile = library.get(args.name)
    if args.json:
        print(json.dumps(profile_record(profile), indent=2, ensure_ascii=False))
        return 0
    consent = f"given {profile.consent.at.isoformat()}" if profile.consent.given else "not given"
    encoders = ", ".join(
        f"{e.name} ({e.dim}-d, threshold {e.threshold:g})" for e in profile.encoders
    )
    print(f"profile {profile.name!r}")
    print(f"  folder:   {profile.path}")
    print(f"  created:  {profile.created.isoformat()} (updated {profile.updated.isoformat()})")
    print(f"  consent:  {consent}")
    print(f"  encoders: {encoders}")
    print(f"  photos:   {len(profile.accepted)} of {len(profile.photos)} accepted")
    for photo in profile.photos:
        status = "accepted" if photo.accepted else "rejected"
        quoted = photo.similarity is None or photo.reasons  # reasons quote it already
        similarity = "" if quoted else f"  similarity {photo.similarity:.2f}"
        details = "; ".join((*photo.reasons, *photo.notes))
        wplus = " [W+]" if any(w.latent is not None for w in photo.wplus.values()) else ""
        print(
            f"    {status}  {photo.file} [{photo.stored_name}]{similarity}{wplus}"
            + (f": {details}" if details else "")
        )
    print(f"  W+:       {_wplus_line(profile)}")
    print(f"  loras:    {len(profile.loras) or 'none'}")
    for lora in profile.loras:
        print(f"    {_lora_line(lora)}")
    return 0


@_storage_errors
def delete_profile(args: argparse.Namespace, settings: Settings) -> int:
    with ProfileLibrary.from_settings(settings) as library:
        name = library.delete(args.name)
    print(f"deleted profile {name!r}")
    return 0


def profile_record(profile: Profile) -> dict[str, Any]:
    """A profile as the JSON contract of ``profile show --json`` describes it."""
    accepted = len(profile.accepted)
    return {
        "name": profile.name,
        "path": str(profile.path),
        "created": profile.created.isoformat(),
        "updated": profile.updated.isoformat(),
        "consent": {"given": profile.consent.given, "at": profile.consent.at.isoformat()},
        "encoders": [e.name for e in profile.encoders],
        "counts": {
            "photos": len(profile.photos),
            "accepted": accepted,
            "rejected": len(profile.photos) - accepted,
        },
        "photos": [
            {
                "file": photo.file,
                "stored_as": photo.stored_name,
                "accepted": photo.accepted,
                "reasons": list(photo.reasons),
                "similarity": None if photo.similarity is None else round(photo.similarity, 4),
                "notes": list(photo.notes),
                "wplus": [
                    {
                        "e4e": w.e4e,
                        "ok": w.latent is not None,
                        "reason": w.reason,
                        "refine_steps": w.refine_steps,
                    }
                    for w in photo.wplus.values()
                ],
            }
            for photo in profile.photos
        ],
        "loras": [
            {
                "name": lora.name,
                "path": str(lora.path),
                "trigger": lora.trigger,
                "class_word": lora.class_word,
                "family": lora.family,
                "model_set": lora.model_set,
                "steps": lora.steps,
                "best_step": lora.best_step,
                "best_similarity": (
                    None if lora.best_similarity is None else round(lora.best_similarity, 4)
                ),
                "created": lora.created.isoformat(),
            }
            for lora in profile.loras
        ],
        "wplus": [
            {"e4e": w.e4e, "photos": w.photos, "computed": w.computed.isoformat()}
            for w in profile.wplus.values()
        ],
    }


def _wplus_line(profile: Profile) -> str:
    """Whether the profile has a W+ (per e4e), and how many accepted photos have theirs."""
    if not profile.wplus and not any(p.wplus for p in profile.accepted):
        return (
            "none yet (computed on first use on a model set with the W+ adapter, or with "
            "`python -m studio profile wplus NAME`)"
        )
    keys = dict.fromkeys(k for p in profile.accepted for k in p.wplus) | dict.fromkeys(
        profile.wplus
    )
    parts = []
    for key in keys:
        have = sum(
            1 for p in profile.accepted if key in p.wplus and p.wplus[key].latent is not None
        )
        mean = (
            f"profile W+ of {profile.wplus[key].photos}"
            if key in profile.wplus
            else "no profile W+"
        )
        parts.append(f"{key}: {mean}; {have} of {len(profile.accepted)} accepted photos have W+")
    return " | ".join(parts)


def _lora_line(lora: ProfileLora) -> str:
    best = (
        f", best at step {lora.best_step} (similarity {lora.best_similarity:.2f})"
        if lora.best_step is not None and lora.best_similarity is not None
        else ""
    )
    return (
        f"{lora.name}: prompt '{lora.trigger} {lora.class_word}', {lora.family} "
        f"({lora.model_set}), rank {lora.rank}, {lora.steps} steps{best}, "
        f"created {lora.created:%Y-%m-%d %H:%M} UTC [{lora.path}]"
    )


def _print_change(change: ProfileChange, verb: str) -> None:
    for outcome in change.photos:
        print(_outcome_line(outcome))
    for outcome in change.changed:
        print(f"earlier photo {_outcome_line(outcome)}")
    profile = change.profile
    skipped = sum(o.status == "skipped" for o in change.photos)
    summary = (
        f"{verb} profile {profile.name!r}: "
        f"{len(profile.accepted)} of {len(profile.photos)} photos accepted"
    )
    print(summary + (f", {skipped} skipped" if skipped else "") + f" ({profile.path})")
    if not profile.accepted:
        print("warning: no photo is accepted now; add more photos of the person")


def _outcome_line(outcome: PhotoOutcome) -> str:
    extras = list(outcome.notes)
    if outcome.similarity is not None and not outcome.reasons:  # reasons quote it already
        extras.insert(0, f"similarity {outcome.similarity:.2f}")
    line = f"{outcome.file}: {outcome.status}"
    if outcome.reasons:
        line += ": " + "; ".join(outcome.reasons)
    return line + (f" ({'; '.join(extras)})" if extras else "")

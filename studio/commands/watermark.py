"""``python -m studio verify-watermark``: is the Portrait Studio mark in these images?"""

from __future__ import annotations

import argparse
from typing import Any

from studio import watermark
from studio.commands.output import print_entries
from studio.images import ImageLoadError, iter_images, load_image
from studio.outputs import read_provenance
from studio.settings import Settings


def register(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "verify-watermark",
        parents=[common],
        help="check images for the Portrait Studio watermark",
        description=(
            "Look for the invisible Portrait Studio mark in each image and show its provenance "
            "metadata. Exit status 1 if any image could not be read."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="IMAGE", help="images or folders of images")
    p.add_argument("--json", action="store_true", help="one JSON array, an object per input")
    p.set_defaults(handler=run)


def check(path: str) -> dict[str, Any]:
    """The verdict on one file, as the ``--json`` output lists it."""
    entry: dict[str, Any] = {
        "path": path,
        "found": False,
        "bit_accuracy": None,
        "reason": None,
        "provenance": {},
        "error": None,
    }
    try:
        loaded = load_image(path)
    except ImageLoadError as exc:
        entry["error"] = str(exc)
        return entry
    result = watermark.detect(loaded.rgb)
    entry["found"] = result.found
    entry["bit_accuracy"] = round(result.bit_accuracy, 4)
    entry["reason"] = result.reason or None
    entry["provenance"] = read_provenance(path)
    return entry


def run(args: argparse.Namespace, settings: Settings) -> int:
    results = [check(str(path)) for path in iter_images(args.paths)]
    return print_entries(results, args.json, _print_entry)


def _print_entry(entry: dict[str, Any]) -> None:
    if entry["error"]:
        print(f"{entry['path']}: error: {entry['error']}")
        return
    if entry["reason"]:
        verdict = f"not checked: {entry['reason']}"
    else:
        found = "found" if entry["found"] else "not found"
        verdict = f"Portrait Studio mark {found} (bit accuracy {entry['bit_accuracy']:.2f})"
    print(f"{entry['path']}: {verdict}")
    for key, value in entry["provenance"].items():
        print(f"  {key}: {value}")

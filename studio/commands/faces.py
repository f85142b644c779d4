"""``python -m studio analyze`` and ``compare``: face perception from the shell, JSON on demand."""

from __future__ import annotations

import argparse
import json
from typing import Any

from studio.commands.output import print_entries
from studio.faces.analyzer import analyzer_from_settings
from studio.faces.encoders import ENCODERS, IdentityEmbedding
from studio.faces.types import Face
from studio.identity import photo_identity_embeds
from studio.images import ImageLoadError, iter_images, load_image
from studio.settings import Settings


def register(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "analyze",
        parents=[common],
        help="detect faces and judge photo quality",
        description="Detect every face in each photo, with keypoints, pose and a quality verdict.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="photos or folders of photos")
    p.add_argument("--json", action="store_true", help="one JSON array, an object per input")
    p.set_defaults(handler=analyze)

    c = sub.add_parser(
        "compare",
        parents=[common],
        help="are two photos the same person?",
        description="Cosine similarity of the largest face in A and B, and a same-person verdict.",
    )
    c.add_argument("a", metavar="A")
    c.add_argument("b", metavar="B")
    c.add_argument("--encoder", choices=sorted(ENCODERS), default="sface")
    c.add_argument("--json", action="store_true")
    c.set_defaults(handler=compare)


def face_record(face: Face) -> dict[str, Any]:
    """A face as the JSON contract of ``analyze`` describes it."""
    pose = face.pose
    return {
        "bbox": [round(float(v), 1) for v in face.bbox],
        "score": round(float(face.score), 4),
        "kps": [[round(float(x), 1), round(float(y), 1)] for x, y in face.kps],
        "pose": None
        if pose is None
        else {
            "yaw": round(pose.yaw, 1),
            "pitch": round(pose.pitch, 1),
            "roll": round(pose.roll, 1),
        },
        "quality": {"ok": face.quality.ok, "reasons": list(face.quality.reasons)},
    }


def analyze(args: argparse.Namespace, settings: Settings) -> int:
    analyzer = analyzer_from_settings(settings, encoders=())
    results = []
    for path in iter_images(args.paths):
        entry: dict[str, Any] = {"path": str(path), "faces": [], "notes": [], "error": None}
        try:
            loaded = load_image(path)
        except ImageLoadError as exc:
            entry["error"] = str(exc)
        else:
            entry["notes"] = list(loaded.notes)
            entry["faces"] = [face_record(f) for f in analyzer.analyze(loaded.rgb)]
        results.append(entry)
    return print_entries(results, args.json, _print_entry)


def _print_entry(entry: dict[str, Any]) -> None:
    if entry["error"]:
        print(f"{entry['path']}: error: {entry['error']}")
        return
    notes = f" ({'; '.join(entry['notes'])})" if entry["notes"] else ""
    print(f"{entry['path']}: {len(entry['faces'])} face(s){notes}")
    for i, face in enumerate(entry["faces"]):
        x, y, w, h = face["bbox"]
        verdict = "ok" if face["quality"]["ok"] else "; ".join(face["quality"]["reasons"])
        box = f"box {w:.0f}x{h:.0f} at ({x:.0f},{y:.0f})"
        print(f"  #{i} {box} score {face['score']:.2f}: {verdict}")


def compare(args: argparse.Namespace, settings: Settings) -> int:
    analyzer = analyzer_from_settings(settings, encoders=(args.encoder,))
    a, b = photo_identity_embeds(analyzer, (args.a, args.b), args.encoder).numpy()
    similarity = IdentityEmbedding(args.encoder, a).similarity(IdentityEmbedding(args.encoder, b))
    threshold = analyzer.encoders[args.encoder].threshold
    result = {
        "encoder": args.encoder,
        "similarity": round(similarity, 4),
        "threshold": threshold,
        "same_person": similarity >= threshold,
    }
    if args.json:
        print(json.dumps(result))
    else:
        verdict = "same person" if result["same_person"] else "different people"
        print(f"{args.encoder} similarity {similarity:.3f} (threshold {threshold}): {verdict}")
    return 0

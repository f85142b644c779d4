"""Automatic attribute repair (FreeCure): find the prompted attributes the identity lost, repair
only those, and report each.

For a request with ``repair`` on, the studio generates through the derived ``"repair"`` pipeline
(:mod:`pipelines.repair`, registered here with :func:`~studio.host.register_derived` for both
families) instead of the plain one. It makes the personalized image and the *foundation* image
(identity and profile LoRA off, the LoRA's trigger word replaced by its class word) from the
same noise; :class:`AttributeChecker`, the pipeline's mask function, parses both faces (the
studio's face parser: BiSeNet when installed, else the mesh parser) and compares, per attribute
named in the prompt (:func:`studio.faces.keywords.attributes_in`):

- the foundation shows it and the personalized image does too (area at least
  ``MIN_AREA_SHARE`` of the foundation's, covering ``MIN_OVERLAP`` of its pixels, mean colour
  within ``MAX_COLOUR_DISTANCE``): **found**, left alone;
- otherwise: **repaired** by FASA on the foundation's parser mask;
- no face parsed, or the parser cannot tell the attribute's classes, or the foundation does not
  show it either: **could not check**, left alone.

``auto`` checks the x0 previews at :data:`CHECK_STEP` of the steps and repairs in the same
batched run (FASA from that step on), then checks the final images for the report: an attribute
the previews did not show missing but the final images do is reported **missing** (not
repaired). With a profile LoRA (the foundation in its own call) it checks the final images and
repairs in a second pass. Attributes asked for by name (``--repair hair,glasses``) are repaired
without a check (the foundation alone, then pass 2), on the parser's mask where it has one, else
on the foundation's cross-attention map of the attribute's words.

Attributes the parser has no class for (the mesh parser's glasses, hat, earrings, necklace) are
checked by CLIP where its weights are present (:mod:`studio.clip_check`): missing when the
portrait's score for the prompt's words falls more than ``CLIP_MARGIN`` below the foundation's,
then repaired on the attention mask. The report (per attribute:
status, detail, mask source) goes into the sidecar under ``repair``; the foundation image is
saved beside the portrait with its own provenance, each sidecar naming the other.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from studio.clip_check import CAPTION
from studio.errors import StudioError
from studio.faces.keywords import attribute_mask, attribute_of, attributes_in
from studio.faces.mesh_parser import FaceParseError
from studio.faces.parsing import FaceParsing, ParsingError
from studio.families import BaseFamily
from studio.fileio import atomic_write_text
from studio.host import register_derived, run_pipeline
from studio.outputs import GenerationRecord, save_image

REPAIR_OFF, REPAIR_AUTO = "off", "auto"
FOUND, REPAIRED, UNCHECKED = "found", "repaired", "could not check"
MISSING = "missing"
"""Found missing after generation though the previews did not show it missing: not repaired."""
CHECK_STEP = 0.3
"""``--repair auto`` checks the previews at this fraction of the steps and repairs in the run."""
MIN_AREA_SHARE = 0.5
"""Below this share of the foundation's attribute area, the personalized image lacks it."""
MIN_OVERLAP = 0.3
"""Share of the foundation's attribute pixels the personalized attribute must cover."""
MAX_COLOUR_DISTANCE = 0.2
"""Largest distance of the two attributes' mean RGB colours (in [0, 1]) to count as found."""
MIN_AREA = 0.001
"""Smallest attribute area, as a share of the image, that counts as shown."""
CLIP_MARGIN = 0.02
"""Largest drop of the portrait's CLIP cosine score below the foundation's that counts as found
(ViT-L/14 scores of matching image-text pairs lie around 0.2-0.35; a default, not calibrated on
real weights here)."""


def _repair_pipeline_class(family: BaseFamily) -> type:
    from pipelines.repair import repair_pipeline_class

    return repair_pipeline_class(family.pipeline_class())


register_derived("repair", _repair_pipeline_class)


def parse_repair(value: str) -> tuple[str, ...] | str:
    """``"off"``, ``"auto"``, or the attributes a comma list names (checked against the keyword
    table); a bad name is a :class:`StudioError` naming ``--repair`` and the choices."""
    text = (value or REPAIR_OFF).strip().lower()
    if text in (REPAIR_OFF, REPAIR_AUTO):
        return text
    try:
        names = [attribute_of(part) for part in text.split(",") if part.strip()]
    except ParsingError as exc:
        raise StudioError(f"--repair: {exc}; or use 'auto' or 'off'") from None
    if not names:
        raise StudioError("--repair takes 'auto', 'off' or attributes such as 'hair,glasses'")
    return tuple(dict.fromkeys(names))


def repair_attributes(value: str, prompt: str) -> tuple[str, ...]:
    """The attributes a request repairs: those named, or with ``auto`` those in the prompt."""
    choice = parse_repair(value)
    if choice == REPAIR_OFF:
        return ()
    return attributes_in(prompt) if choice == REPAIR_AUTO else choice


def attribute_words(prompt: str, attribute: str) -> str:
    """The prompt's words for ``attribute``: the word naming it and the one before ("red hair",
    "round glasses"), else the attribute's own name."""
    words = re.findall(r"[a-z]+", prompt.lower())
    for index, word in enumerate(words):
        if attributes_in(word) == (attribute,):
            return " ".join(words[max(0, index - 1) : index + 1])
    return attribute


@dataclass(frozen=True)
class AttributeCheck:
    """What the repair found and did for one attribute of one image."""

    attribute: str
    status: str  #: ``found``, ``repaired`` or ``could not check``
    detail: str
    mask: str | None = None  #: ``parser`` or ``attention`` when repaired


@dataclass(frozen=True)
class RepairReport:
    """One image's repair: per-attribute checks and how the passes ran."""

    checks: tuple[AttributeCheck, ...]
    foundation_prompt: str
    foundation_mode: str  #: ``batched`` or ``separate`` (the LoRA off in its own call)
    fasa_start: int | None  #: step FASA started acting at; ``None``: nothing repaired
    check_step: int | None  #: step whose previews were checked; ``None``: the final images

    def sidecar(self) -> dict[str, Any]:
        return {
            "attributes": [asdict(check) for check in self.checks],
            "foundation_prompt": self.foundation_prompt,
            "foundation_mode": self.foundation_mode,
            "fasa_start": self.fasa_start,
            "check_step": self.check_step,
        }

    def lines(self) -> list[str]:
        """One line per attribute, e.g. ``hair: repaired (parser mask) - area 0.05 of ...``."""
        out = []
        for check in self.checks:
            mask = f" ({check.mask} mask)" if check.mask else ""
            out.append(f"{check.attribute}: {check.status}{mask} - {check.detail}")
        return out


@dataclass(frozen=True, eq=False)
class RepairedImage:
    """A repair's images for one seed: the result, pass 1's personalized and foundation images,
    the masks it repaired with and the report."""

    image: Image.Image
    personalized: Image.Image | None  #: ``None`` when not compared, or repaired in the run
    foundation: Image.Image
    masks: dict[str, Image.Image]
    report: RepairReport


class AttributeChecker:
    """The repair pipeline's mask function: parse both faces, keep per-image checks, and return
    the masks of the attributes to repair (``None``: repair on the attention map).

    Args:
        faces: RGB image -> faces found, largest first (the scoring analyzer's ``analyze``).
        parser: the studio's face parser.
        forced: attributes asked for by name, repaired without a check.
        clip: CLIP scores (:class:`~studio.clip_check.ClipScorer`) for the attributes the
            parser cannot tell; ``None``: those could not be checked.
        words: attribute -> the prompt's words for it, which CLIP scores (the name by default).
        clip_margin: how far the portrait's CLIP score may fall below the foundation's before
            the attribute counts as missing.
    """

    def __init__(
        self,
        faces: Callable,
        parser,
        forced: Sequence[str] = (),
        *,
        clip=None,
        words: Mapping[str, str] | None = None,
        clip_margin: float = CLIP_MARGIN,
    ):
        self.faces = faces
        self.parser = parser
        self.forced = set(forced)
        self.clip = clip
        self.words = dict(words or {})
        self.clip_margin = clip_margin
        self.checks: list[dict[str, AttributeCheck]] = []

    def __call__(self, personalized, foundation, names) -> list[dict[str, np.ndarray | None]]:
        """Per image, the attributes to repair and their masks; ``personalized`` is ``None``
        when only forced attributes are repaired (nothing to compare)."""
        self.checks = []
        masks = []
        for index, theirs in enumerate(foundation):
            mine = None if personalized is None else personalized[index]
            checks, chosen = {}, {}
            for name, (check, mask) in self._compare(mine, theirs, names).items():
                if name in self.forced and check.status != REPAIRED:
                    mask = mask if check.status == FOUND else None
                    check = replace(check, status=REPAIRED, detail=f"asked for ({check.detail})")
                checks[name] = check
                if check.status == REPAIRED:
                    chosen[name] = mask
            self.checks.append(checks)
            masks.append(chosen)
        return masks

    def after(self, images, foundation, names, step: int) -> list[dict[str, AttributeCheck]]:
        """The checks made on previews at ``step`` (:attr:`checks`), completed by a check of the
        final images: a repaired attribute stays repaired (the detail says how it ended); one
        the previews could not check or found is found or **missing** as the final images
        show it."""
        out = []
        for index, theirs in enumerate(foundation):
            final = self._compare(images[index], theirs, names)
            out.append(
                {name: _after(self.checks[index][name], final[name][0], step) for name in names}
            )
        return out

    def _parse(self, rgb: np.ndarray, whose: str) -> FaceParsing | str:
        """The largest face's parsing, or why there is none."""
        faces = self.faces(rgb)
        if not faces:
            return f"no face found in {whose}"
        try:
            return self.parser.parse(rgb, faces[0])
        except FaceParseError as exc:
            return f"the face in {whose} could not be parsed: {exc}"

    def _compare(self, mine, theirs, names) -> dict[str, tuple[AttributeCheck, np.ndarray | None]]:
        """Per attribute, the check of ``mine`` (``None``: not compared) against ``theirs``
        (``REPAIRED``: missing) and the foundation's mask."""
        theirs = np.asarray(theirs)
        mine = None if mine is None else np.asarray(mine)
        found_parsing = self._parse(theirs, "the foundation image")
        mine_parsing = None
        if not isinstance(found_parsing, str) and mine is not None:
            mine_parsing = self._parse(mine, "the portrait")
        return {
            name: self._attribute(name, mine, theirs, mine_parsing, found_parsing) for name in names
        }

    def _attribute(self, name, mine, theirs, mine_parsing, found_parsing):
        if isinstance(found_parsing, str):
            return AttributeCheck(name, UNCHECKED, found_parsing), None
        theirs_mask = attribute_mask(found_parsing, name)
        if theirs_mask is None:
            if self.clip is not None and mine is not None:
                return self._clip_check(name, mine, theirs), None
            detail = f"the {found_parsing.parser} parser cannot tell {name}"
            return AttributeCheck(name, UNCHECKED, detail), None
        if theirs_mask.mean() < MIN_AREA:
            return AttributeCheck(name, UNCHECKED, "the foundation image does not show it"), None
        if mine is None:
            return AttributeCheck(name, FOUND, "not compared"), theirs_mask
        if isinstance(mine_parsing, str):
            return AttributeCheck(name, UNCHECKED, mine_parsing), None
        mine_mask = attribute_mask(mine_parsing, name)
        area = mine_mask.sum() / theirs_mask.sum()
        overlap = (mine_mask & theirs_mask).sum() / theirs_mask.sum()
        colour = 1.0
        if mine_mask.any():
            difference = mine[mine_mask].mean(0) - theirs[theirs_mask].mean(0)
            colour = float(np.linalg.norm(difference / 255.0))
        detail = f"area {area:.2f} of the foundation's, overlap {overlap:.2f}, colour {colour:.2f}"
        missing = area < MIN_AREA_SHARE or overlap < MIN_OVERLAP or colour > MAX_COLOUR_DISTANCE
        return AttributeCheck(name, REPAIRED if missing else FOUND, detail), theirs_mask

    def _clip_check(self, name: str, mine: np.ndarray, theirs: np.ndarray) -> AttributeCheck:
        """Missing when the portrait's CLIP score for the attribute's words falls more than
        the margin below the foundation's (repaired on the attention mask: no parser mask)."""
        text = CAPTION.format(words=self.words.get(name, name))
        mine_score, theirs_score = self.clip.scores([mine, theirs], text)
        detail = f"CLIP {mine_score:.3f} vs the foundation's {theirs_score:.3f} for {text!r}"
        missing = theirs_score - mine_score > self.clip_margin
        return AttributeCheck(name, REPAIRED if missing else FOUND, detail)


def _after(preview: AttributeCheck, final: AttributeCheck, step: int) -> AttributeCheck:
    """One attribute's report from its preview check and its final check."""
    if preview.status == REPAIRED:
        return replace(preview, detail=f"at step {step}: {preview.detail}; after: {final.detail}")
    if final.status == REPAIRED:
        detail = (
            f"after generation: {final.detail}; at step {step}: {preview.detail}; repair it by "
            f"name (--repair {preview.attribute})"
        )
        return replace(preview, status=MISSING, detail=detail)
    if final.status == FOUND:
        return replace(
            final, detail=f"{final.detail} after generation; at step {step}: {preview.detail}"
        )
    if final.detail == preview.detail:
        return replace(preview, detail=f"{preview.detail} (at step {step} and after generation)")
    return replace(preview, detail=f"at step {step}: {preview.detail}; after: {final.detail}")


def generate_repaired(
    host,
    pipe,
    call: dict[str, Any],
    *,
    attributes: Sequence[str],
    forced: Sequence[str],
    user_prompt: str,
    foundation_prompt: str,
    faces: Callable,
    parser,
    clip=None,
) -> list[RepairedImage]:
    """Run the derived repair pipeline on the studio's generation ``call`` (one prompt per
    seed); one :class:`RepairedImage` per seed. With ``forced`` (attributes the user named)
    pass 1 makes the foundation images alone: nothing is compared."""
    repair_pipe = host.derived("repair")
    words = {name: attribute_words(user_prompt, name) for name in attributes}
    checker = AttributeChecker(faces, parser, forced, clip=clip, words=words)
    prompts = call.pop("prompt")
    negative = call.pop("negative_prompt", None)
    out = run_pipeline(
        repair_pipe,
        host.settings,
        prompt=prompts[0],
        negative_prompt=negative[0] if negative else None,
        foundation_prompt=foundation_prompt,
        num_images_per_prompt=len(prompts),
        attributes=words,
        mask_function=checker,
        compare=not forced,
        check_step=None if forced else CHECK_STEP,
        **call,
    )
    checks_per_image = checker.checks
    if out.check_step is not None:
        checks_per_image = checker.after(
            out.images, out.foundation_images, attributes, out.check_step
        )
    results = []
    for index, image in enumerate(out.images):
        sources = out.mask_sources[index]
        checks = []
        for name in attributes:
            check = checks_per_image[index][name]
            source = sources.get(name)
            if source == "given":
                check = replace(check, mask="parser")
            elif source == "attention":
                check = replace(check, mask="attention")
            elif source == "none":
                detail = f"{check.detail}; no mask: {words[name]!r} is not in the prompt's tokens"
                check = replace(check, status=UNCHECKED, detail=detail)
            checks.append(check)
        report = RepairReport(
            tuple(checks),
            foundation_prompt,
            out.foundation_mode,
            out.fasa_start if any(c.status == REPAIRED for c in checks) else None,
            out.check_step,
        )
        masks = {
            f"repair.{name}": Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
            for name, mask in out.masks[index].items()
        }
        results.append(
            RepairedImage(
                image,
                out.personalized_images[index] if out.personalized_images else None,
                out.foundation_images[index],
                masks,
                report,
            )
        )
    return results


def save_foundation(
    repaired: RepairedImage, portrait: Path, record: GenerationRecord, extra: dict[str, Any]
) -> Path:
    """Save the foundation image beside ``portrait`` with its provenance, and link the two
    sidecars (``repair.foundation_image`` / ``foundation_of``)."""
    record = replace(record, prompt=repaired.report.foundation_prompt)
    extra = {key: value for key, value in extra.items() if key != "repair"}
    extra.update(role="foundation", foundation_of=portrait.name, identity=None)
    path = save_image(repaired.foundation, record, portrait.parent, extra)
    sidecar = portrait.with_suffix(".json")
    data = json.loads(sidecar.read_text(encoding="utf-8"))
    data.setdefault("repair", {})["foundation_image"] = path.name
    atomic_write_text(sidecar, json.dumps(data, indent=2) + "\n")
    return path


def foundation_prompt_for(prompt: str, subject: str, class_word: str | None) -> str:
    """The foundation's prompt: the LoRA's ``"<trigger> <class>"`` subject replaced by the class
    word (``prompt`` unchanged without a LoRA)."""
    if not class_word or subject not in prompt:
        return prompt
    return prompt.replace(subject, class_word)

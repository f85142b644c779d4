"""The profile library: create, add to, remove from, delete, list and read identity profiles.

Layout under the library's root (``settings.profiles_dir``)::

    profiles.sqlite3                    metadata, verdicts, embeddings (see studio.profiles.store)
    <slug>-<hash>/photos/<sha><ext>     the accepted and rejected photos, copied in
    <slug>-<hash>/crops/<sha>.png       their 512 px head crops
    <slug>-<hash>/loras/<slug>-<hash>/  LoRAs trained from the profile: weights, lora.json, report
    .staging-*/                         files of an edit in progress

Every edit is all-or-nothing. New files are written to a staging folder first; then one SQL
transaction records them and, before it commits, moves them into place (a new profile's or
LoRA's whole folder in one rename). Whatever fails, the staging folder is removed and no row
refers to a missing file. Deleting commits first and removes files afterwards. Leftovers of a
crash (stale staging folders, folders or files that no row refers to) are removed when the
library opens.

After every change the photos are judged again (see :mod:`studio.profiles.selection`) with
the profile's first encoder, and each encoder's mean embedding is recomputed from the accepted
photos. A :class:`ProfileLibrary` is not thread-safe: use one per thread.

StyleGAN W+ (see :class:`~studio.profiles.types.WPlus`): a library given a ``wplus`` encoder
computes each new photo's W+ at intake (and any accepted photo's that is missing), in the same
transaction as the photos; without one, :meth:`ProfileLibrary.ensure_wplus` computes the missing
ones on first use and stores them. The profile's W+, the mean over the accepted photos, is
recomputed whenever the photos or their verdicts change, and dropped while an accepted photo has
not been through that e4e yet.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from studio.faces.analyzer import DEFAULT_ENCODER, FaceAnalyzer, analyzer_from_settings
from studio.faces.encoders import mean_embedding
from studio.profiles.errors import (
    ConsentRequiredError,
    LibraryError,
    NoUsablePhotosError,
    PhotoNotFoundError,
    PhotoWPlusError,
    ProfileError,
    ProfileExistsError,
    ProfileNameError,
    ProfileNotFoundError,
)
from studio.profiles.intake import CROPS_DIR, PHOTOS_DIR, StagedPhoto, listing, stage_photos
from studio.profiles.names import DIR_NAME_PATTERN, dir_name, name_key, normalize_name
from studio.profiles.selection import Verdict, judge
from studio.profiles.store import (
    LoraRow,
    PhotoRow,
    ProfileRow,
    ProfileStore,
    StoredLora,
    StoredPhoto,
)
from studio.profiles.types import (
    CONSENT_STATEMENT,
    Consent,
    EncoderInfo,
    Photo,
    PhotoOutcome,
    Profile,
    ProfileChange,
    ProfileLora,
    ProfileSummary,
    WPlus,
    WPlusEncoder,
)
from studio.settings import Settings

if TYPE_CHECKING:
    from studio.training.types import LoraMetadata

logger = logging.getLogger(__name__)

DATABASE_NAME = "profiles.sqlite3"
STAGING_PREFIX = ".staging-"
STALE_STAGING_S = 3600.0
"""A staging folder untouched this long belongs to an edit that died; it is removed on open."""
LORAS_DIR = "loras"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # studio.training.export.WEIGHTS_NAME
LORA_REPORT = "report.json"
_LORA_NAMES = frozenset({LORA_WEIGHTS, "lora.json", LORA_REPORT, "report.md"})
_LORA_SUFFIXES = frozenset({".svg", ".safetensors"})

AnalyzerFactory = Callable[[tuple[str, ...]], FaceAnalyzer]
"""Returns an analyzer with (at least) the named encoders; called only by edits that analyse."""


class ProfileLibrary:
    """Identity profiles stored under ``root``; photos are analysed with ``analyzers(encoders)``
    and, given a ``wplus`` encoder, encoded to W+ at intake."""

    def __init__(
        self, root: Path, analyzers: AnalyzerFactory, wplus: WPlusEncoder | None = None
    ) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LibraryError(
                f"profile library folder {self.root} cannot be created: {exc}"
            ) from exc
        self._analyzers = analyzers
        self._wplus = wplus
        self._store = ProfileStore(self.root / DATABASE_NAME)
        try:
            self._recover()
        except BaseException:
            self._store.close()
            raise

    @classmethod
    def from_settings(cls, settings: Settings, wplus: WPlusEncoder | None = None) -> ProfileLibrary:
        """The library in ``settings.profiles_dir``; analyzers load on first need, once each."""

        @functools.cache
        def analyzers(encoders: tuple[str, ...]) -> FaceAnalyzer:
            return analyzer_from_settings(settings, encoders=encoders)

        return cls(settings.profiles_dir, analyzers, wplus)

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> ProfileLibrary:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Reading

    def list(self) -> list[ProfileSummary]:
        """Every profile, by name (ignoring case)."""
        return [
            ProfileSummary(
                name=row.name,
                path=self.root / row.dir_name,
                created=row.created,
                photos=photos,
                accepted=accepted,
                encoders=tuple(e.name for e in row.encoders),
                loras=loras,
            )
            for row, photos, accepted, loras in self._store.profiles()
        ]

    def get(self, name: str) -> Profile:
        """The profile called ``name`` (ignoring case), with its photos, means and LoRAs."""
        row = self._require(name)
        return self._profile(row, self._store.photos(row.id), self._store.loras(row.id))

    # W+

    def ensure_wplus(self, name: str) -> WPlus:
        """The profile's W+ from the library's encoder; the accepted photos that have not been
        through that e4e are encoded first and stored, with the new mean, in one transaction.

        Raises a :class:`ProfileError` when no accepted photo can be encoded (with the reasons).
        """
        encoder = self._require_wplus()
        row = self._require(name)
        stored = self._store.profile_wplus(row.id)
        if encoder.key in stored:
            return stored[encoder.key]
        photos = self._store.photos(row.id)
        known = self._store.photo_wplus(row.id)
        missing = [
            p for p in photos if p.verdict.accepted and encoder.key not in known.get(p.id, {})
        ]
        new = self._encode_wplus(self.root / row.dir_name, [p.photo for p in missing])
        with self._store.transaction():
            self._check_unchanged(row, photos)
            for photo in missing:
                self._store.set_photo_wplus(photo.id, new[photo.photo.stored_name])
            self._update_profile_wplus(row.id, [p.id for p in photos if p.verdict.accepted])
        found = self._store.profile_wplus(row.id).get(encoder.key)
        if found is None:
            known = self._store.photo_wplus(row.id)
            reasons = [
                f"{p.photo.original_name}: {known[p.id][encoder.key].reason}"
                for p in photos
                if p.verdict.accepted and encoder.key in known.get(p.id, {})
            ]
            raise ProfileError(
                f"no accepted photo of profile {row.name!r} could be encoded to W+ "
                f"({'; '.join(reasons) or 'no accepted photo'}); add a larger, frontal photo"
            )
        return found

    def set_photo_wplus(self, name: str, file: str, wplus: WPlus) -> Profile:
        """Replace one photo's W+ (a refined one, say) and recompute the profile's mean."""
        row = self._require(name)
        photos = self._store.photos(row.id)
        photo = _find_photo(row.name, photos, file)
        if wplus.latent is None:
            raise ValueError("set_photo_wplus needs a latent")
        with self._store.transaction():
            self._check_unchanged(row, photos)
            self._store.set_photo_wplus(photo.id, wplus)
            self._update_profile_wplus(row.id, [p.id for p in photos if p.verdict.accepted])
        return self.get(row.name)

    # Editing

    def create(
        self,
        name: str,
        photos: Iterable[str | os.PathLike[str]],
        *,
        consent: bool,
        encoders: Sequence[str] = (DEFAULT_ENCODER,),
    ) -> ProfileChange:
        """Create a profile from ``photos`` (files or folders); all of it or nothing.

        ``consent`` confirms that the user is the person pictured or has that person's consent.
        Raises if the name is taken or invalid, consent is missing, or no photo is accepted.
        """
        name = normalize_name(name)
        if not consent:
            raise ConsentRequiredError(
                f"profile {name!r} was not created: a profile needs your confirmation that you "
                "are the person in the photos or have their consent to use them; "
                "confirm it with --consent"
            )
        key = name_key(name)
        _check_free(self._store.find_profile(key))
        encoders = _check_encoders(encoders)
        analyzer = self._analyzer(encoders)
        infos = tuple(
            EncoderInfo(n, analyzer.encoders[n].dim, analyzer.encoders[n].threshold)
            for n in encoders
        )
        now = _now()
        with _staging(self.root) as staging:
            results = stage_photos(
                photos, analyzer, encoders, staging, known={}, reference=(), added=now
            )
            staged = [r for r in results if isinstance(r, StagedPhoto)]
            verdicts = _judge([s.photo for s in staged], infos)
            outcomes = _outcomes(results, verdicts)
            if not any(v.accepted for v in verdicts.values()):
                raise NoUsablePhotosError(
                    listing(f"profile {name!r} was not created: no usable photo", outcomes)
                )
            wplus = self._encode_wplus(staging, [s.photo for s in staged])
            target = self.root / dir_name(name)
            with self._commit_moving(staging, target):
                _check_free(self._store.find_profile(key))
                profile_id = self._store.insert_profile(
                    name=name,
                    name_key=key,
                    dir_name=target.name,
                    created=now,
                    consent=Consent(given=True, at=now, statement=CONSENT_STATEMENT),
                    encoders=infos,
                )
                ids = self._insert(profile_id, staged)
                self._record(profile_id, infos, [s.photo for s in staged], ids, verdicts, wplus)
        logger.info("created profile %r in %s", name, target)
        return ProfileChange(self.get(name), outcomes, ())

    def add(self, name: str, photos: Iterable[str | os.PathLike[str]]) -> ProfileChange:
        """Add photos (files or folders) to a profile and judge all of its photos again."""
        row = self._require(name)
        existing = self._store.photos(row.id)
        encoders = tuple(e.name for e in row.encoders)
        analyzer = self._analyzer(encoders)
        profile_dir = self.root / row.dir_name
        with _staging(self.root) as staging:
            results = stage_photos(
                photos,
                analyzer,
                encoders,
                staging,
                known={p.photo.sha256: p.photo.original_name for p in existing},
                reference=[p.photo.embeddings[encoders[0]] for p in existing if p.verdict.accepted],
                added=_now(),
            )
            staged = [r for r in results if isinstance(r, StagedPhoto)]
            if not staged:
                raise NoUsablePhotosError(
                    listing(f"nothing was added to profile {row.name!r}", _outcomes(results, {}))
                )
            everything = [p.photo for p in existing] + [s.photo for s in staged]
            verdicts = _judge(everything, row.encoders)
            wplus = self._encode_wplus(staging, [s.photo for s in staged])
            wplus |= self._encode_wplus(profile_dir, self._lacking_wplus(row, existing, verdicts))
            moved: list[Path] = []
            try:
                with self._store.transaction():
                    self._check_unchanged(row, existing)
                    ids = {p.photo.stored_name: p.id for p in existing}
                    ids |= self._insert(row.id, staged)
                    self._record(row.id, row.encoders, everything, ids, verdicts, wplus)
                    for s in staged:
                        for sub, file in (
                            (PHOTOS_DIR, s.photo.stored_name),
                            (CROPS_DIR, s.photo.crop_name),
                        ):
                            (profile_dir / sub).mkdir(parents=True, exist_ok=True)
                            os.rename(staging / sub / file, profile_dir / sub / file)
                            moved.append(profile_dir / sub / file)
            except BaseException:
                for path in moved:
                    path.unlink(missing_ok=True)
                raise
        logger.info("added %d photo(s) to profile %r", len(staged), row.name)
        return ProfileChange(
            self.get(row.name), _outcomes(results, verdicts), _changed(existing, verdicts)
        )

    def remove_photos(self, name: str, files: Iterable[str]) -> ProfileChange:
        """Remove photos, named by original or stored file name, and judge the rest again."""
        row = self._require(name)
        existing = self._store.photos(row.id)
        chosen = {match.id: match for match in (_find_photo(row.name, existing, f) for f in files)}
        if not chosen:
            raise PhotoNotFoundError(f"name the photos to remove from profile {row.name!r}")
        rest = [p for p in existing if p.id not in chosen]
        if not rest:
            raise PhotoNotFoundError(
                f"removing every photo would leave profile {row.name!r} empty; "
                f"delete it instead with `python -m studio profile delete {row.name!r}`"
            )
        verdicts = _judge([p.photo for p in rest], row.encoders)
        profile_dir = self.root / row.dir_name
        wplus = self._encode_wplus(profile_dir, self._lacking_wplus(row, rest, verdicts))
        with self._store.transaction():
            self._check_unchanged(row, existing)
            self._store.delete_photos(list(chosen))
            ids = {p.photo.stored_name: p.id for p in rest}
            self._record(row.id, row.encoders, [p.photo for p in rest], ids, verdicts, wplus)
        for photo in chosen.values():
            (profile_dir / PHOTOS_DIR / photo.photo.stored_name).unlink(missing_ok=True)
            (profile_dir / CROPS_DIR / photo.photo.crop_name).unlink(missing_ok=True)
        removed = tuple(PhotoOutcome(p.photo.original_name, "removed") for p in chosen.values())
        logger.info("removed %d photo(s) from profile %r", len(chosen), row.name)
        return ProfileChange(self.get(row.name), removed, _changed(rest, verdicts))

    def add_lora(
        self,
        name: str,
        source_dir: Path,
        metadata: LoraMetadata,
        *,
        lora_name: str | None = None,
    ) -> ProfileLora:
        """Copy a trained LoRA's folder into the profile and register it; all of it or nothing.

        Copies ``pytorch_lora_weights.safetensors`` (required), ``lora.json``, the report
        (``report.json``, ``report.md``, ``*.svg``) and other ``*.safetensors`` (a kohya export),
        nothing else. ``lora_name`` follows the profile-name rules and defaults to
        ``lora-<UTC time>``; it must be new to the profile (ignoring case).
        """
        row = self._require(name)
        files = _lora_files(Path(source_dir))
        now = _now()
        lora_name = _lora_name(lora_name or f"lora-{now:%Y%m%d-%H%M%S}")
        self._check_lora_free(row, lora_name)
        stored = StoredLora(
            name=lora_name,
            dir_name=dir_name(lora_name),
            created=now,
            files=tuple(f.name for f in files),
            **metadata.record_fields(),
        )
        target = self.root / row.dir_name / LORAS_DIR / stored.dir_name
        with _staging(self.root) as staging:
            for file in files:
                _copy(file, staging / file.name)
            with self._commit_moving(staging, target):
                current = self._require(row.name)  # not deleted meanwhile
                self._check_lora_free(current, lora_name)
                self._store.insert_lora(current.id, name_key(lora_name), stored)
                self._store.set_updated(current.id, now)
        logger.info("added LoRA %r to profile %r in %s", lora_name, row.name, target)
        return self._lora(row.dir_name, stored)

    def remove_lora(self, name: str, lora_name: str) -> str:
        """Remove a LoRA and its folder from a profile; returns its name as stored."""
        row = self._require(name)
        lora_name = _lora_name(lora_name)
        with self._store.transaction():
            found = self._require_lora(row, lora_name)
            self._store.delete_lora(found.id)
            self._store.set_updated(row.id, _now())
        shutil.rmtree(
            self.root / row.dir_name / LORAS_DIR / found.lora.dir_name, ignore_errors=True
        )
        logger.info("removed LoRA %r from profile %r", found.lora.name, row.name)
        return found.lora.name

    def delete(self, name: str) -> str:
        """Delete a profile, its photos, crops and LoRAs; returns its name as stored."""
        row = self._require(name)
        with self._store.transaction():
            self._store.delete_profile(row.id)
        shutil.rmtree(self.root / row.dir_name, ignore_errors=True)
        logger.info("deleted profile %r", row.name)
        return row.name

    # Internals

    @contextmanager
    def _commit_moving(self, staging: Path, target: Path) -> Iterator[None]:
        """One write transaction whose last act renames ``staging`` to ``target``.

        If the commit fails after the rename, the folder is removed again: no folder without
        its rows, no rows without their folder.
        """
        moved = False
        try:
            with self._store.transaction():
                yield
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists():  # a crash's leftover: no row refers to it
                    shutil.rmtree(target)
                os.rename(staging, target)
                moved = True
        except BaseException:
            if moved:
                shutil.rmtree(target, ignore_errors=True)
            raise

    def _require(self, name: str) -> ProfileRow:
        row = self._store.find_profile(name_key(normalize_name(name)))
        if row is None:
            raise ProfileNotFoundError(
                f"no profile named {name!r}; see `python -m studio profile list`"
            )
        return row

    def _find_lora(self, row: ProfileRow, lora_name: str) -> LoraRow | None:
        key = name_key(lora_name)
        return next((r for r in self._store.loras(row.id) if name_key(r.lora.name) == key), None)

    def _check_lora_free(self, row: ProfileRow, lora_name: str) -> None:
        if (existing := self._find_lora(row, lora_name)) is not None:
            raise ProfileError(
                f"profile {row.name!r} already has a LoRA named {existing.lora.name!r}; "
                "choose another name or remove that LoRA first"
            )

    def _require_lora(self, row: ProfileRow, lora_name: str) -> LoraRow:
        if (found := self._find_lora(row, lora_name)) is None:
            raise ProfileError(
                f"profile {row.name!r} has no LoRA named {lora_name!r}; "
                f"see `python -m studio profile show {row.name!r}`"
            )
        return found

    def _check_unchanged(self, row: ProfileRow, read: Sequence[PhotoRow]) -> None:
        """In a transaction: fail if another edit changed the profile's photos since ``read``."""
        if {p.id for p in self._store.photos(row.id)} != {p.id for p in read}:
            raise ProfileError(
                f"profile {row.name!r} was changed by another edit meanwhile; run this again"
            )

    def _analyzer(self, encoders: tuple[str, ...]) -> FaceAnalyzer:
        analyzer = self._analyzers(encoders)
        missing = [n for n in encoders if n not in analyzer.encoders]
        if missing:
            raise ValueError(f"the analyzer factory returned an analyzer without {missing}")
        return analyzer

    def _insert(self, profile_id: int, staged: Sequence[StagedPhoto]) -> dict[str, int]:
        """Insert staged photos; returns their row ids by stored name."""
        return {s.photo.stored_name: self._store.insert_photo(profile_id, s.photo) for s in staged}

    def _record(
        self,
        profile_id: int,
        encoders: Sequence[EncoderInfo],
        photos: Sequence[StoredPhoto],
        ids: dict[str, int],
        verdicts: dict[str, Verdict],
        wplus: dict[str, WPlus],
    ) -> None:
        """Store the verdicts, each encoder's mean over the accepted photos, new W+ and the
        profile's W+, the update time.

        ``ids``, ``verdicts`` and ``wplus`` are keyed by the photos' stored names.
        """
        for photo in photos:
            self._store.set_verdict(ids[photo.stored_name], verdicts[photo.stored_name])
        accepted = [p.embeddings for p in photos if verdicts[p.stored_name].accepted]
        for encoder in encoders:
            mean = mean_embedding(e[encoder.name] for e in accepted) if accepted else None
            self._store.set_mean(profile_id, encoder.name, mean)
        for stored_name, latent in wplus.items():
            self._store.set_photo_wplus(ids[stored_name], latent)
        accepted_ids = [ids[p.stored_name] for p in photos if verdicts[p.stored_name].accepted]
        self._update_profile_wplus(profile_id, accepted_ids)
        self._store.set_updated(profile_id, _now())

    def _update_profile_wplus(self, profile_id: int, accepted: Sequence[int]) -> None:
        """Per e4e key: the mean W+ of the ``accepted`` photos once each has been through that
        e4e (those it could not encode left out), else none."""
        per_photo = self._store.photo_wplus(profile_id)
        keys = {key for found in per_photo.values() for key in found}
        keys |= set(self._store.profile_wplus(profile_id))
        for key in keys:
            entries = [per_photo.get(photo_id, {}).get(key) for photo_id in accepted]
            latents = [e.latent for e in entries if e is not None and e.latent is not None]
            mean = None
            if latents and all(e is not None for e in entries):
                average = np.mean(np.stack(latents), axis=0).astype(np.float32)
                mean = WPlus(key, average, _now(), photos=len(latents))
            self._store.set_profile_wplus(profile_id, key, mean)

    def _require_wplus(self) -> WPlusEncoder:
        if self._wplus is None:
            raise ValueError("this profile library was opened without a W+ encoder")
        return self._wplus

    def _lacking_wplus(
        self, row: ProfileRow, photos: Sequence[PhotoRow], verdicts: dict[str, Verdict]
    ) -> list[StoredPhoto]:
        """Photos already in the profile, accepted by ``verdicts``, without the encoder's W+."""
        if self._wplus is None:
            return []
        known = self._store.photo_wplus(row.id)
        return [
            p.photo
            for p in photos
            if verdicts[p.photo.stored_name].accepted and self._wplus.key not in known.get(p.id, {})
        ]

    def _encode_wplus(self, folder: Path, photos: Sequence[StoredPhoto]) -> dict[str, WPlus]:
        """W+ by stored name of ``photos`` (in ``folder``'s ``photos``), with the library's
        encoder (none without one); a face e4e cannot encode gets its reason instead."""
        if self._wplus is None:
            return {}
        found = {}
        for photo in photos:
            path = folder / PHOTOS_DIR / photo.stored_name
            try:
                latent = self._wplus.encode(path, photo.face_index, photo.face_count)
                found[photo.stored_name] = WPlus(
                    self._wplus.key, np.asarray(latent, dtype=np.float32), _now()
                )
            except PhotoWPlusError as exc:
                logger.info("%s: no W+: %s", photo.original_name, exc)
                found[photo.stored_name] = WPlus(self._wplus.key, None, _now(), reason=str(exc))
        return found

    def _profile(
        self, row: ProfileRow, photos: Sequence[PhotoRow], loras: Sequence[LoraRow]
    ) -> Profile:
        folder = self.root / row.dir_name
        wplus = self._store.photo_wplus(row.id)
        return Profile(
            name=row.name,
            path=folder,
            created=row.created,
            updated=row.updated,
            consent=row.consent,
            encoders=row.encoders,
            photos=tuple(
                Photo(
                    file=p.photo.original_name,
                    stored_name=p.photo.stored_name,
                    path=folder / PHOTOS_DIR / p.photo.stored_name,
                    crop_path=folder / CROPS_DIR / p.photo.crop_name,
                    sha256=p.photo.sha256,
                    added=p.photo.added,
                    face_index=p.photo.face_index,
                    face_count=p.photo.face_count,
                    accepted=p.verdict.accepted,
                    reasons=p.verdict.reasons,
                    similarity=p.verdict.similarity,
                    notes=p.photo.notes,
                    embeddings=p.photo.embeddings,
                    wplus=wplus.get(p.id, {}),
                )
                for p in photos
            ),
            means=row.means,
            loras=tuple(self._lora(row.dir_name, r.lora) for r in loras),
            wplus=self._store.profile_wplus(row.id),
        )

    def _lora(self, profile_dir: str, lora: StoredLora) -> ProfileLora:
        folder = self.root / profile_dir / LORAS_DIR / lora.dir_name
        return ProfileLora(
            name=lora.name,
            path=folder,
            weights=folder / LORA_WEIGHTS,
            report=folder / LORA_REPORT if LORA_REPORT in lora.files else None,
            created=lora.created,
            **lora.record_fields(),
        )

    def _recover(self) -> None:
        """Remove what crashed edits left behind; under the write lock, so no edit is mid-way."""
        with self._store.transaction():
            files = self._store.files_by_dir()
            lora_dirs = self._store.lora_dirs()
            for entry in self.root.iterdir():
                if entry.name.startswith(STAGING_PREFIX):
                    if _idle_seconds(entry) > STALE_STAGING_S:
                        logger.warning("removing %s, left by an interrupted edit", entry)
                        shutil.rmtree(entry, ignore_errors=True)
                elif entry.name in files:
                    for sub in (PHOTOS_DIR, CROPS_DIR):
                        folder = entry / sub
                        for path in folder.iterdir() if folder.is_dir() else ():
                            if path.name not in files[entry.name]:
                                logger.warning("removing %s: no profile photo refers to it", path)
                                path.unlink(missing_ok=True)
                    loras = entry / LORAS_DIR
                    for folder in loras.iterdir() if loras.is_dir() else ():
                        if (
                            folder.is_dir()
                            and DIR_NAME_PATTERN.fullmatch(folder.name)
                            and folder.name not in lora_dirs[entry.name]
                        ):
                            logger.warning("removing %s: no profile LoRA refers to it", folder)
                            shutil.rmtree(folder, ignore_errors=True)
                elif entry.is_dir() and DIR_NAME_PATTERN.fullmatch(entry.name):
                    logger.warning("removing %s: no profile refers to it", entry)
                    shutil.rmtree(entry, ignore_errors=True)


@contextmanager
def _staging(root: Path) -> Iterator[Path]:
    """A fresh staging folder inside the library, removed at the end unless moved away."""
    path = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _lora_name(raw: str) -> str:
    """A LoRA name, checked with the profile-name rules."""
    try:
        return normalize_name(raw)
    except ProfileNameError as exc:
        raise ProfileNameError(str(exc).replace("profile name", "LoRA name", 1)) from None


def _lora_files(source: Path) -> list[Path]:
    """The files of a trained LoRA's folder that a profile keeps (no subfolders)."""
    if not source.is_dir():
        raise ProfileError(f"LoRA folder {source} not found; give the folder training wrote")
    files = sorted(
        entry
        for entry in source.iterdir()
        if entry.is_file()
        and not entry.name.startswith(".")
        and (entry.name in _LORA_NAMES or entry.suffix.lower() in _LORA_SUFFIXES)
    )
    if not any(f.name == LORA_WEIGHTS for f in files):
        raise ProfileError(
            f"{source} has no {LORA_WEIGHTS}; give the folder of a finished training run"
        )
    return files


def _copy(source: Path, target: Path) -> None:
    """Copy a file's bytes and flush them to disk."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
        dst.flush()
        os.fsync(dst.fileno())


def _idle_seconds(folder: Path) -> float:
    """Seconds since anything was added to ``folder`` or to the folders directly inside it."""
    try:
        touched = [folder.stat().st_mtime]
        touched += [sub.stat().st_mtime for sub in folder.iterdir() if sub.is_dir()]
    except OSError:  # removed meanwhile by the edit that owns it
        return 0.0
    return time.time() - max(touched)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _check_encoders(encoders: Sequence[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(encoders))
    if not names:
        raise ProfileError("a profile needs at least one identity encoder, e.g. sface")
    return names


def _check_free(existing: ProfileRow | None) -> None:
    if existing is not None:
        raise ProfileExistsError(
            f"a profile named {existing.name!r} already exists; add photos to it with "
            f"`python -m studio profile add {existing.name!r} PHOTOS...` or choose another name"
        )


def _judge(photos: Sequence[StoredPhoto], encoders: Sequence[EncoderInfo]) -> dict[str, Verdict]:
    """Verdicts by stored name, from the first encoder's embeddings and threshold."""
    first = encoders[0]
    return judge({p.stored_name: p.embeddings[first.name] for p in photos}, first.threshold)


def _outcomes(
    results: Sequence[StagedPhoto | PhotoOutcome], verdicts: dict[str, Verdict]
) -> tuple[PhotoOutcome, ...]:
    outcomes = []
    for result in results:
        if isinstance(result, PhotoOutcome):
            outcomes.append(result)
            continue
        verdict = verdicts[result.photo.stored_name]
        outcomes.append(
            PhotoOutcome(
                file=str(result.source),
                status="accepted" if verdict.accepted else "rejected",
                reasons=verdict.reasons,
                similarity=verdict.similarity,
                notes=result.photo.notes,
            )
        )
    return tuple(outcomes)


def _changed(before: Sequence[PhotoRow], verdicts: dict[str, Verdict]) -> tuple[PhotoOutcome, ...]:
    """Photos already in the profile whose accepted flag flipped."""
    return tuple(
        PhotoOutcome(
            file=p.photo.original_name,
            status="accepted" if verdict.accepted else "rejected",
            reasons=verdict.reasons,
            similarity=verdict.similarity,
        )
        for p in before
        if (verdict := verdicts[p.photo.stored_name]).accepted != p.verdict.accepted
    )


def _find_photo(profile: str, photos: Sequence[PhotoRow], file: str) -> PhotoRow:
    """The photo whose original or stored file name is ``file`` (or the last part of it)."""
    base = Path(file).name
    matches = [p for p in photos if base in (p.photo.original_name, p.photo.stored_name)]
    if not matches:
        raise PhotoNotFoundError(
            f"profile {profile!r} has no photo named {file!r}; "
            f"see `python -m studio profile show {profile!r}`"
        )
    if len(matches) > 1:
        stored = ", ".join(p.photo.stored_name for p in matches)
        raise PhotoNotFoundError(
            f"{file!r} names several photos of profile {profile!r} ({stored}); "
            "remove them by their stored names"
        )
    return matches[0]

"""The profile library's SQLite database: schema, ordered migrations, and its SQL.

``PRAGMA user_version`` holds the number of migrations applied; opening a database applies the
missing ones in order, each in its own transaction together with the version bump, so a failed
upgrade leaves the previous version intact. Foreign keys are on (deleting a profile deletes its
rows) and the journal is WAL. Embeddings are little-endian float32 BLOBs with their encoder's
name and dimension beside them. Times are ISO 8601 strings in UTC. Schema 2 adds ``loras``: the
LoRAs trained from a profile, with the facts of their ``lora.json`` and the names of their files.
Schema 3 adds StyleGAN W+ latents, keyed by the e4e weights that made them: ``photo_wplus``, one
per photo (or the reason e4e could not encode it), and ``profile_wplus``, the mean over the
accepted photos. A W+ is a ``[rows, dim]`` float32 BLOB, kept as e4e returns it (not unit-norm).

One :class:`ProfileStore` holds one connection and is not thread-safe: use one per thread.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path

import numpy as np

from studio.faces.encoders import IdentityEmbedding
from studio.profiles.errors import LibraryError
from studio.profiles.selection import Verdict
from studio.profiles.types import Consent, EncoderInfo, LoraRecord, WPlus

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30.0
"""How long a connection waits for another process's write transaction before failing."""

_FLOAT32 = np.dtype("<f4")


@dataclass(frozen=True)
class Migration:
    """One schema step: SQL statements run in a single transaction."""

    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "profiles with consent, encoders and mean embeddings; photos with verdicts; embeddings",
        (
            """CREATE TABLE profiles (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                name_key TEXT NOT NULL UNIQUE,
                dir_name TEXT NOT NULL UNIQUE,
                created TEXT NOT NULL,
                updated TEXT NOT NULL,
                consent_given INTEGER NOT NULL CHECK (consent_given IN (0, 1)),
                consent_at TEXT NOT NULL,
                consent_statement TEXT NOT NULL
            )""",
            """CREATE TABLE profile_encoders (
                profile_id INTEGER NOT NULL REFERENCES profiles (id) ON DELETE CASCADE,
                encoder TEXT NOT NULL,
                position INTEGER NOT NULL,
                dim INTEGER NOT NULL CHECK (dim > 0),
                threshold REAL NOT NULL,
                mean BLOB CHECK (mean IS NULL OR length(mean) = 4 * dim),
                PRIMARY KEY (profile_id, encoder),
                UNIQUE (profile_id, position)
            )""",
            """CREATE TABLE photos (
                id INTEGER PRIMARY KEY,
                profile_id INTEGER NOT NULL REFERENCES profiles (id) ON DELETE CASCADE,
                original_name TEXT NOT NULL,
                stored_name TEXT NOT NULL,
                crop_name TEXT NOT NULL,
                sha256 TEXT NOT NULL,
                added TEXT NOT NULL,
                face_index INTEGER NOT NULL,
                face_count INTEGER NOT NULL,
                accepted INTEGER NOT NULL CHECK (accepted IN (0, 1)),
                reasons TEXT NOT NULL,
                similarity REAL,
                notes TEXT NOT NULL,
                UNIQUE (profile_id, sha256),
                UNIQUE (profile_id, stored_name)
            )""",
            "CREATE INDEX photos_by_profile ON photos (profile_id)",
            """CREATE TABLE embeddings (
                photo_id INTEGER NOT NULL REFERENCES photos (id) ON DELETE CASCADE,
                encoder TEXT NOT NULL,
                dim INTEGER NOT NULL CHECK (dim > 0),
                vector BLOB NOT NULL CHECK (length(vector) = 4 * dim),
                PRIMARY KEY (photo_id, encoder)
            )""",
        ),
    ),
    Migration(
        "LoRAs trained from a profile, with their metadata and file names",
        (
            """CREATE TABLE loras (
                id INTEGER PRIMARY KEY,
                profile_id INTEGER NOT NULL REFERENCES profiles (id) ON DELETE CASCADE,
                name TEXT NOT NULL,
                name_key TEXT NOT NULL,
                dir_name TEXT NOT NULL,
                created TEXT NOT NULL,
                trigger TEXT NOT NULL,
                class_word TEXT NOT NULL,
                family TEXT NOT NULL,
                model_set TEXT NOT NULL,
                rank INTEGER NOT NULL CHECK (rank > 0),
                steps INTEGER NOT NULL CHECK (steps >= 0),
                best_step INTEGER,
                best_similarity REAL,
                files TEXT NOT NULL,
                UNIQUE (profile_id, name_key),
                UNIQUE (profile_id, dir_name)
            )""",
        ),
    ),
    Migration(
        "StyleGAN W+ latents per photo and per profile, keyed by the e4e weights that made them",
        (
            """CREATE TABLE photo_wplus (
                photo_id INTEGER NOT NULL REFERENCES photos (id) ON DELETE CASCADE,
                e4e TEXT NOT NULL,
                rows INTEGER CHECK (rows > 0),
                dim INTEGER CHECK (dim > 0),
                latent BLOB CHECK (latent IS NULL OR length(latent) = 4 * rows * dim),
                reason TEXT CHECK ((latent IS NULL) = (reason IS NOT NULL)),
                refine_steps INTEGER NOT NULL DEFAULT 0 CHECK (refine_steps >= 0),
                computed TEXT NOT NULL,
                PRIMARY KEY (photo_id, e4e)
            )""",
            """CREATE TABLE profile_wplus (
                profile_id INTEGER NOT NULL REFERENCES profiles (id) ON DELETE CASCADE,
                e4e TEXT NOT NULL,
                rows INTEGER NOT NULL CHECK (rows > 0),
                dim INTEGER NOT NULL CHECK (dim > 0),
                latent BLOB NOT NULL CHECK (length(latent) = 4 * rows * dim),
                photos INTEGER NOT NULL CHECK (photos > 0),
                computed TEXT NOT NULL,
                PRIMARY KEY (profile_id, e4e)
            )""",
        ),
    ),
)
"""The schema's history, oldest first; append, never edit, to change it."""

SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class ProfileRow:
    """A profile's own row, its encoders (in order) and their mean embeddings."""

    id: int
    name: str
    dir_name: str
    created: datetime
    updated: datetime
    consent: Consent
    encoders: tuple[EncoderInfo, ...]
    means: Mapping[str, IdentityEmbedding]


@dataclass(frozen=True, eq=False)
class StoredPhoto:
    """A photo's facts that never change once it is in a profile."""

    original_name: str
    stored_name: str
    crop_name: str
    sha256: str
    added: datetime
    face_index: int
    face_count: int
    notes: tuple[str, ...]
    embeddings: Mapping[str, IdentityEmbedding]


@dataclass(frozen=True, kw_only=True)
class StoredLora(LoraRecord):
    """A LoRA registered with a profile: its folder, files and the facts of its training.

    ``files`` are the names of the files in the LoRA's folder.
    """

    name: str
    dir_name: str
    created: datetime
    files: tuple[str, ...]


@dataclass(frozen=True)
class LoraRow:
    id: int
    lora: StoredLora


@dataclass(frozen=True, eq=False)
class PhotoRow:
    """A photo as the database holds it: id, facts, and the current verdict."""

    id: int
    photo: StoredPhoto
    verdict: Verdict


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the migrations the database lacks, in order; return its schema version.

    Each step re-reads the version under the write lock, so processes that open an old database
    at the same time upgrade it once.
    """
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(migrations):
                raise LibraryError(
                    f"the profile library has schema version {version}, newer than this "
                    f"Portrait Studio understands ({len(migrations)}); upgrade Portrait Studio"
                )
            if version == len(migrations):
                conn.execute("COMMIT")
                return version
            step = migrations[version]
            try:
                for statement in step.statements:
                    conn.execute(statement)
            except sqlite3.Error as exc:
                raise LibraryError(
                    f"upgrading the profile library to schema {version + 1} "
                    f"({step.description}) failed: {exc}; it stays at schema {version}"
                ) from exc
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        logger.info("profile library upgraded to schema %d: %s", version + 1, step.description)


class ProfileStore:
    """The SQL of the profile library; writes happen inside :meth:`transaction`."""

    def __init__(self, path: Path, migrations: Sequence[Migration] = MIGRATIONS) -> None:
        self.path = Path(path)
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        except sqlite3.Error as exc:
            raise LibraryError(f"profile library {self.path} cannot be opened: {exc}") from exc
        try:
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self.version = migrate(self._conn, migrations)
        except sqlite3.OperationalError as exc:
            self._conn.close()
            raise LibraryError(
                f"profile library {self.path} cannot be opened ({exc}); if another Portrait "
                "Studio is using it, try again when it is done"
            ) from exc
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise LibraryError(
                f"profile library {self.path} cannot be read ({exc}); "
                "move the file away to start an empty library"
            ) from exc
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:  # another process held the lock too long
            raise LibraryError(
                f"profile library {self.path} is busy ({exc}); try again in a moment"
            ) from exc
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    # Reads

    def find_profile(self, name_key: str) -> ProfileRow | None:
        row = self._conn.execute(
            "SELECT * FROM profiles WHERE name_key = ?", (name_key,)
        ).fetchone()
        return None if row is None else self._profile_row(row)

    def profiles(self) -> list[tuple[ProfileRow, int, int, int]]:
        """Every profile by name, with its number of photos, of accepted photos and of LoRAs."""
        rows = self._conn.execute(
            """SELECT p.*, count(ph.id) AS n_photos, coalesce(sum(ph.accepted), 0) AS n_accepted,
                      (SELECT count(*) FROM loras AS l WHERE l.profile_id = p.id) AS n_loras
               FROM profiles AS p LEFT JOIN photos AS ph ON ph.profile_id = p.id
               GROUP BY p.id ORDER BY p.name_key"""
        ).fetchall()
        return [
            (self._profile_row(row), row["n_photos"], row["n_accepted"], row["n_loras"])
            for row in rows
        ]

    def photos(self, profile_id: int) -> list[PhotoRow]:
        """The profile's photos in the order they were added, with their embeddings."""
        vectors: dict[int, dict[str, IdentityEmbedding]] = {}
        for row in self._conn.execute(
            """SELECT e.* FROM embeddings AS e JOIN photos AS ph ON ph.id = e.photo_id
               WHERE ph.profile_id = ?""",
            (profile_id,),
        ):
            vectors.setdefault(row["photo_id"], {})[row["encoder"]] = _embedding(
                row["encoder"], row["vector"], row["dim"]
            )
        rows = self._conn.execute(
            "SELECT * FROM photos WHERE profile_id = ? ORDER BY id", (profile_id,)
        ).fetchall()
        return [
            PhotoRow(
                id=row["id"],
                photo=StoredPhoto(
                    original_name=row["original_name"],
                    stored_name=row["stored_name"],
                    crop_name=row["crop_name"],
                    sha256=row["sha256"],
                    added=datetime.fromisoformat(row["added"]),
                    face_index=row["face_index"],
                    face_count=row["face_count"],
                    notes=tuple(json.loads(row["notes"])),
                    embeddings=vectors.get(row["id"], {}),
                ),
                verdict=Verdict(
                    accepted=bool(row["accepted"]),
                    similarity=row["similarity"],
                    reasons=tuple(json.loads(row["reasons"])),
                ),
            )
            for row in rows
        ]

    def loras(self, profile_id: int) -> list[LoraRow]:
        """The profile's LoRAs in the order they were added."""
        rows = self._conn.execute(
            "SELECT * FROM loras WHERE profile_id = ? ORDER BY id", (profile_id,)
        ).fetchall()
        return [
            LoraRow(
                id=row["id"],
                lora=StoredLora(
                    name=row["name"],
                    dir_name=row["dir_name"],
                    created=datetime.fromisoformat(row["created"]),
                    files=tuple(json.loads(row["files"])),
                    **{f.name: row[f.name] for f in fields(LoraRecord)},  # columns of that name
                ),
            )
            for row in rows
        ]

    def photo_wplus(self, profile_id: int) -> dict[int, dict[str, WPlus]]:
        """The W+ of the profile's photos: by photo id, then by e4e key."""
        found: dict[int, dict[str, WPlus]] = {}
        for row in self._conn.execute(
            """SELECT w.* FROM photo_wplus AS w JOIN photos AS ph ON ph.id = w.photo_id
               WHERE ph.profile_id = ?""",
            (profile_id,),
        ):
            found.setdefault(row["photo_id"], {})[row["e4e"]] = WPlus(
                e4e=row["e4e"],
                latent=_latent(row["latent"], row["rows"], row["dim"]),
                computed=datetime.fromisoformat(row["computed"]),
                refine_steps=row["refine_steps"],
                reason=row["reason"],
            )
        return found

    def profile_wplus(self, profile_id: int) -> dict[str, WPlus]:
        """The profile's mean W+ by e4e key."""
        return {
            row["e4e"]: WPlus(
                e4e=row["e4e"],
                latent=_latent(row["latent"], row["rows"], row["dim"]),
                computed=datetime.fromisoformat(row["computed"]),
                photos=row["photos"],
            )
            for row in self._conn.execute(
                "SELECT * FROM profile_wplus WHERE profile_id = ?", (profile_id,)
            )
        }

    def lora_dirs(self) -> dict[str, set[str]]:
        """Every profile folder name, with the LoRA folder names its rows refer to."""
        dirs: dict[str, set[str]] = {
            row["dir_name"]: set() for row in self._conn.execute("SELECT dir_name FROM profiles")
        }
        for row in self._conn.execute(
            """SELECT p.dir_name, l.dir_name AS lora_dir
               FROM loras AS l JOIN profiles AS p ON p.id = l.profile_id"""
        ):
            dirs[row["dir_name"]].add(row["lora_dir"])
        return dirs

    def files_by_dir(self) -> dict[str, set[str]]:
        """Every profile folder name, with the photo and crop file names its rows refer to."""
        files: dict[str, set[str]] = {
            row["dir_name"]: set() for row in self._conn.execute("SELECT dir_name FROM profiles")
        }
        for row in self._conn.execute(
            """SELECT p.dir_name, ph.stored_name, ph.crop_name
               FROM photos AS ph JOIN profiles AS p ON p.id = ph.profile_id"""
        ):
            files[row["dir_name"]].update((row["stored_name"], row["crop_name"]))
        return files

    # Writes

    def insert_profile(
        self,
        *,
        name: str,
        name_key: str,
        dir_name: str,
        created: datetime,
        consent: Consent,
        encoders: Sequence[EncoderInfo],
    ) -> int:
        cursor = self._conn.execute(
            """INSERT INTO profiles (name, name_key, dir_name, created, updated, consent_given,
                                     consent_at, consent_statement)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                name,
                name_key,
                dir_name,
                created.isoformat(),
                created.isoformat(),
                int(consent.given),
                consent.at.isoformat(),
                consent.statement,
            ),
        )
        profile_id = int(cursor.lastrowid)
        self._conn.executemany(
            """INSERT INTO profile_encoders (profile_id, encoder, position, dim, threshold)
               VALUES (?, ?, ?, ?, ?)""",
            [(profile_id, e.name, i, e.dim, e.threshold) for i, e in enumerate(encoders)],
        )
        return profile_id

    def insert_photo(self, profile_id: int, photo: StoredPhoto) -> int:
        """Add a photo (not yet accepted: :meth:`set_verdict` decides) and its embeddings."""
        cursor = self._conn.execute(
            """INSERT INTO photos (profile_id, original_name, stored_name, crop_name, sha256, added,
                                   face_index, face_count, accepted, reasons, similarity, notes)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, '[]', NULL, ?)""",
            (
                profile_id,
                photo.original_name,
                photo.stored_name,
                photo.crop_name,
                photo.sha256,
                photo.added.isoformat(),
                photo.face_index,
                photo.face_count,
                json.dumps(list(photo.notes)),
            ),
        )
        photo_id = int(cursor.lastrowid)
        self._conn.executemany(
            "INSERT INTO embeddings (photo_id, encoder, dim, vector) VALUES (?, ?, ?, ?)",
            [
                (photo_id, embedding.encoder, embedding.dim, _blob(embedding))
                for embedding in photo.embeddings.values()
            ],
        )
        return photo_id

    def set_verdict(self, photo_id: int, verdict: Verdict) -> None:
        self._conn.execute(
            "UPDATE photos SET accepted = ?, reasons = ?, similarity = ? WHERE id = ?",
            (
                int(verdict.accepted),
                json.dumps(list(verdict.reasons)),
                verdict.similarity,
                photo_id,
            ),
        )

    def set_mean(self, profile_id: int, encoder: str, mean: IdentityEmbedding | None) -> None:
        self._conn.execute(
            "UPDATE profile_encoders SET mean = ? WHERE profile_id = ? AND encoder = ?",
            (None if mean is None else _blob(mean), profile_id, encoder),
        )

    def set_updated(self, profile_id: int, when: datetime) -> None:
        self._conn.execute(
            "UPDATE profiles SET updated = ? WHERE id = ?", (when.isoformat(), profile_id)
        )

    def delete_photos(self, photo_ids: Sequence[int]) -> None:
        self._conn.executemany("DELETE FROM photos WHERE id = ?", [(i,) for i in photo_ids])

    def set_photo_wplus(self, photo_id: int, wplus: WPlus) -> None:
        """Store (or replace) a photo's W+ under its e4e key, or the ``reason`` it has none."""
        rows, dim = (None, None) if wplus.latent is None else wplus.latent.shape[1:]
        self._conn.execute(
            """INSERT OR REPLACE INTO photo_wplus
                   (photo_id, e4e, rows, dim, latent, reason, refine_steps, computed)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                photo_id,
                wplus.e4e,
                rows,
                dim,
                None if wplus.latent is None else _latent_blob(wplus.latent),
                wplus.reason,
                wplus.refine_steps,
                wplus.computed.isoformat(),
            ),
        )

    def set_profile_wplus(self, profile_id: int, e4e: str, wplus: WPlus | None) -> None:
        """Store the profile's mean W+ under ``e4e``, or drop it (``None``)."""
        self._conn.execute(
            "DELETE FROM profile_wplus WHERE profile_id = ? AND e4e = ?", (profile_id, e4e)
        )
        if wplus is None or wplus.latent is None:
            return
        _, rows, dim = wplus.latent.shape
        self._conn.execute(
            """INSERT INTO profile_wplus (profile_id, e4e, rows, dim, latent, photos, computed)
               VALUES (?, ?, ?, ?, ?, ?, ?)""",
            (
                profile_id,
                e4e,
                rows,
                dim,
                _latent_blob(wplus.latent),
                wplus.photos,
                wplus.computed.isoformat(),
            ),
        )

    def insert_lora(self, profile_id: int, name_key: str, lora: StoredLora) -> int:
        cursor = self._conn.execute(
            """INSERT INTO loras (profile_id, name, name_key, dir_name, created, trigger,
                                  class_word, family, model_set, rank, steps, best_step,
                                  best_similarity, files)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                profile_id,
                lora.name,
                name_key,
                lora.dir_name,
                lora.created.isoformat(),
                lora.trigger,
                lora.class_word,
                lora.family,
                lora.model_set,
                lora.rank,
                lora.steps,
                lora.best_step,
                lora.best_similarity,
                json.dumps(list(lora.files)),
            ),
        )
        return int(cursor.lastrowid)

    def delete_lora(self, lora_id: int) -> None:
        self._conn.execute("DELETE FROM loras WHERE id = ?", (lora_id,))

    def delete_profile(self, profile_id: int) -> None:
        self._conn.execute("DELETE FROM profiles WHERE id = ?", (profile_id,))

    def _profile_row(self, row: sqlite3.Row) -> ProfileRow:
        encoder_rows = self._conn.execute(
            "SELECT * FROM profile_encoders WHERE profile_id = ? ORDER BY position", (row["id"],)
        ).fetchall()
        return ProfileRow(
            id=row["id"],
            name=row["name"],
            dir_name=row["dir_name"],
            created=datetime.fromisoformat(row["created"]),
            updated=datetime.fromisoformat(row["updated"]),
            consent=Consent(
                given=bool(row["consent_given"]),
                at=datetime.fromisoformat(row["consent_at"]),
                statement=row["consent_statement"],
            ),
            encoders=tuple(
                EncoderInfo(name=e["encoder"], dim=e["dim"], threshold=e["threshold"])
                for e in encoder_rows
            ),
            means={
                e["encoder"]: _embedding(e["encoder"], e["mean"], e["dim"])
                for e in encoder_rows
                if e["mean"] is not None
            },
        )


def _blob(embedding: IdentityEmbedding) -> bytes:
    return embedding.vector.astype(_FLOAT32).tobytes()


def _embedding(encoder: str, blob: bytes, dim: int) -> IdentityEmbedding:
    return IdentityEmbedding(encoder, np.frombuffer(blob, dtype=_FLOAT32, count=dim))


def _latent_blob(latent: np.ndarray) -> bytes:
    return np.ascontiguousarray(latent, dtype=_FLOAT32).tobytes()


def _latent(blob: bytes | None, rows: int, dim: int) -> np.ndarray | None:
    """A stored W+ as a writable float32 ``[1, rows, dim]`` array (``None`` stays ``None``)."""
    if blob is None:
        return None
    return np.frombuffer(blob, dtype=_FLOAT32, count=rows * dim).reshape(1, rows, dim).copy()

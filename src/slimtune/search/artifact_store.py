"""Where a run's artifacts live: an ``optuna.artifacts`` store, chosen by ``--artifact-store``.

- nothing (the default): the directory ``RUN_DIR/artifacts``;
- a path, or a ``file://`` URL: that directory (a shared file system, for example);
- ``s3://BUCKET[/PREFIX]``: an S3-compatible object store through boto3. The endpoint and
  credentials come from boto3's usual sources (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ...); the URL may not carry them, and they
  are never stored in the study or printed.

Each trial's ``.slim`` bytes are written to the store under a new id; its trial then
records the id twice in one commit: the user attribute ``artifact_id`` (what slimtune
reads) and Optuna's own ``artifacts:<id>`` system attribute (what
``optuna.artifacts.get_all_artifact_meta`` and optuna-dashboard read), so
``optuna.artifacts.download_artifact`` fetches it too. The store is written first: a
trial never names an object that was not completely written. The teacher's weights are a
study artifact the same way (``teacher_artifact``), so a driver joining the study or a
``finetune`` on another machine uses the very teacher the search distilled from.

Reading is bounded: an object is read up to the size its trial recorded, and a missing,
unreadable or wrong-sized one is one :class:`ArtifactStoreError` naming the trial and the
store.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from slimtune.errors import ConfigError, RunDirError

__all__ = ["ArtifactStoreError", "StoreURL", "TrialStore", "ARTIFACT_ATTR", "TEACHER_ATTR",
           "DEFAULT_DIR"]

#: the trial user attribute holding the id of its ``.slim`` artifact in the store
ARTIFACT_ATTR = "artifact_id"
#: the study user attribute naming the teacher's weights in the store: {id, sha256, bytes}
TEACHER_ATTR = "teacher_artifact"
#: the default store: this directory inside the run directory
DEFAULT_DIR = "artifacts"
#: an artifact larger than this is not one of ours (a store may be shared with others)
MAX_ARTIFACT_BYTES = 8 << 30
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


class ArtifactStoreError(RunDirError):
    """An artifact store that cannot be reached, or an artifact missing or damaged in it."""


@dataclass(frozen=True)
class StoreURL:
    """A parsed ``--artifact-store``: ``kind`` is ``dir`` or ``s3``. ``url`` is what the
    study keeps (None: the run directory's own ``artifacts`` folder)."""

    url: str | None = None
    kind: str = "dir"
    path: str | None = None  # dir: the directory (None: RUN_DIR/artifacts)
    bucket: str | None = None  # s3
    prefix: str = ""  # s3: keys are PREFIX/ID

    def __post_init__(self) -> None:
        if self.kind not in ("dir", "s3"):
            raise ConfigError(f"`--artifact-store` kind must be dir or s3, but got {self.kind!r}")

    @classmethod
    def parse(cls, url: str | os.PathLike[str] | None) -> StoreURL:
        if url is None or str(url) == "":
            return cls()
        text = str(url)
        parts = urlsplit(text)
        if parts.scheme == "s3":
            if parts.username or parts.password or "@" in parts.netloc:
                raise ConfigError(
                    "`--artifact-store` must not carry credentials (s3://KEY:SECRET@...): "
                    "give them as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) "
                    "in the environment, and the endpoint as AWS_ENDPOINT_URL")
            if parts.query or parts.fragment:
                raise ConfigError(f"`--artifact-store` must be s3://BUCKET[/PREFIX] without "
                                  f"?query or #fragment, but got {text!r}")
            if not _BUCKET.match(parts.netloc):
                raise ConfigError(f"`--artifact-store` needs an S3 bucket name of 3-63 "
                                  f"lowercase letters, digits, dots or hyphens, but got "
                                  f"{parts.netloc!r} in {text!r}")
            prefix = parts.path.strip("/")
            canonical = f"s3://{parts.netloc}" + (f"/{prefix}" if prefix else "")
            return cls(url=canonical, kind="s3", bucket=parts.netloc, prefix=prefix)
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise ConfigError(f"`--artifact-store` file:// URL must be local "
                                  f"(file:///PATH), but got {text!r}")
            path = unquote(parts.path)
        elif parts.scheme and len(parts.scheme) > 1:  # (a one-letter "scheme" is a drive)
            raise ConfigError(f"`--artifact-store` must be a directory or s3://BUCKET[/PREFIX] "
                              f"(scheme {parts.scheme}:// is not supported), but got {text!r}")
        else:
            path = text
        resolved = str(Path(path).expanduser().absolute())
        return cls(url=resolved, kind="dir", path=resolved)

    def where(self, run_dir: Path | None) -> str:
        """The store as messages name it (no credentials: it holds none)."""
        if self.kind == "s3":
            return str(self.url)
        return str(self.directory(run_dir))

    def directory(self, run_dir: Path | None) -> Path:
        if self.path is not None:
            return Path(self.path)
        if run_dir is None:
            raise ConfigError("the default artifact store is RUN_DIR/artifacts, but no run "
                              "directory was given; pass --artifact-store")
        return Path(run_dir) / DEFAULT_DIR

    def open(self, run_dir: Path | None) -> Any:
        """The ``optuna.artifacts`` store object (``open_reader``/``write``/``remove``)."""
        if self.kind == "s3":
            return _PrefixedS3Store(str(self.bucket), self.prefix)
        return _DirStore(self.directory(run_dir))


class _DirStore:
    """``optuna.artifacts.FileSystemArtifactStore`` that creates its directory and writes
    each object to a temporary file renamed into place (a crash leaves no half object)."""

    def __init__(self, base: Path) -> None:
        from optuna.artifacts import FileSystemArtifactStore

        self.base = base
        self._fs = FileSystemArtifactStore(base)

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self._fs.open_reader(artifact_id)  # type: ignore[no-any-return]

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        target = self._fs._get_filepath(artifact_id)  # its checks: no path escapes the base
        self.base.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{artifact_id}.", suffix=".tmp", dir=self.base)
        os.close(fd)
        tmp = Path(name)
        try:
            tmp.write_bytes(content_body.read())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def remove(self, artifact_id: str) -> None:
        self._fs.remove(artifact_id)


class _PrefixedS3Store:
    """``optuna.artifacts.Boto3ArtifactStore`` with keys under ``prefix/`` (its own keys
    are the bare ids). The client is boto3's default: endpoint and credentials from the
    environment."""

    def __init__(self, bucket: str, prefix: str) -> None:
        try:
            import boto3
        except ImportError:
            raise ConfigError("an s3:// artifact store needs boto3: pip install "
                              "'slimtune[s3]' (or pip install boto3)") from None
        from optuna.artifacts import Boto3ArtifactStore

        self.prefix = f"{prefix}/" if prefix else ""
        self._s3 = Boto3ArtifactStore(bucket, client=boto3.client("s3"), avoid_buf_copy=True)

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self._s3.open_reader(self.prefix + artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self._s3.write(self.prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self._s3.remove(self.prefix + artifact_id)


def _why(exc: BaseException) -> str:
    """One line for a store's error, without anything secret (boto3's messages name the
    operation, bucket and key, never the credentials)."""
    from optuna.artifacts.exceptions import ArtifactNotFound

    if isinstance(exc, ArtifactNotFound):
        return "it is not there"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300]


class TrialStore:
    """A run's artifact store, opened: put and get artifacts of its trials and study."""

    def __init__(self, spec: StoreURL, run_dir: Path | None) -> None:
        self.spec = spec
        self.where = spec.where(run_dir)
        self._store = spec.open(run_dir)

    @classmethod
    def of(cls, url: str | None, run_dir: Path | None) -> TrialStore:
        return cls(StoreURL.parse(url), run_dir)

    # -- writing ----------------------------------------------------------------------
    def check(self) -> None:
        """Write, read back and remove a small object: a store that cannot be written is
        one line before any trial runs, not a failure after its training."""
        probe_id = f"slimtune-probe-{uuid.uuid4()}"
        payload = b"slimtune artifact store check\n"
        try:
            self._store.write(probe_id, io.BytesIO(payload))
            with self._store.open_reader(probe_id) as r:
                back = r.read(len(payload) + 1)
            self._store.remove(probe_id)
        except Exception as exc:  # noqa: BLE001 - boto3, OS and network errors alike
            raise ArtifactStoreError(f"cannot use the artifact store {self.where}: "
                                     f"{_why(exc)}") from None
        if back != payload:
            raise ArtifactStoreError(f"the artifact store {self.where} returned other bytes "
                                     "than were written to it")

    def put(self, data: bytes, filename: str) -> tuple[str, dict[str, str]]:
        """Write ``data`` under a new id; (the id, the system attribute Optuna's artifact
        API keeps for it) to record on the trial or study in the same commit as the rest."""
        from optuna.artifacts import ArtifactMeta

        from slimtune.search.optuna_internals import ARTIFACTS_ATTR_PREFIX

        artifact_id = str(uuid.uuid4())
        try:
            self._store.write(artifact_id, io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001
            raise ArtifactStoreError(f"cannot write {filename} to the artifact store "
                                     f"{self.where}: {_why(exc)}") from None
        meta = ArtifactMeta(artifact_id=artifact_id, filename=filename,
                            mimetype="application/octet-stream", encoding=None)
        return artifact_id, {ARTIFACTS_ATTR_PREFIX + artifact_id: json.dumps(asdict(meta))}

    def put_teacher(self, study: Any, path: Path) -> dict[str, Any]:
        """Store the teacher's weights file as an artifact of ``study`` (once per study)."""
        data = path.read_bytes()
        artifact_id, system = self.put(data, "teacher.pt")
        ref = {"id": artifact_id, "sha256": hashlib.sha256(data).hexdigest(),
               "bytes": len(data)}
        for k, v in system.items():
            study._storage.set_study_system_attr(study._study_id, k, v)
        study.set_user_attr(TEACHER_ATTR, ref)
        return ref

    # -- reading ----------------------------------------------------------------------
    def get(self, artifact_id: Any, what: str, size: int | None = None) -> bytes:
        """The bytes of ``artifact_id`` (``what``: "trial 12's artifact"), read up to
        ``size`` (its recorded length) or :data:`MAX_ARTIFACT_BYTES`; checked to be that
        long."""
        if not isinstance(artifact_id, str) or not re.fullmatch(r"[0-9a-f\-]{36}", artifact_id):
            raise ArtifactStoreError(f"{what} has a malformed artifact id {artifact_id!r:.60}: "
                                     "not one slimtune recorded")
        cap = MAX_ARTIFACT_BYTES if size is None else size
        try:
            with self._store.open_reader(artifact_id) as r:
                data = r.read(cap + 1)
        except Exception as exc:  # noqa: BLE001
            raise ArtifactStoreError(f"{what} ({artifact_id}) cannot be read from the "
                                     f"artifact store {self.where}: {_why(exc)}; give the "
                                     "store the search used with --artifact-store") from None
        if len(data) > cap or (size is not None and len(data) != size):
            want = (f"its trial recorded {size:,}" if size is not None
                    else f"at most {cap:,} are allowed")
            raise ArtifactStoreError(
                f"{what} ({artifact_id}) in the artifact store {self.where} is "
                f"{len(data):,}{'+' if len(data) > cap else ''} bytes, but {want}: "
                "it is damaged or not that trial's artifact")
        return bytes(data)

    def fetch_teacher(self, ref: Any, path: Path) -> bool:
        """Make ``path`` the study's teacher (``ref``: its ``teacher_artifact``): kept if
        it already is (same SHA-256), else downloaded and renamed into place. False when
        the study records no teacher artifact."""
        if not isinstance(ref, dict) or not isinstance(ref.get("bytes"), int) \
                or not isinstance(ref.get("sha256"), str):
            return False
        if path.is_file() and path.stat().st_size == ref["bytes"] \
                and hashlib.sha256(path.read_bytes()).hexdigest() == ref["sha256"]:
            return True
        data = self.get(ref.get("id"), "the study's teacher", ref["bytes"])
        if hashlib.sha256(data).hexdigest() != ref["sha256"]:
            raise ArtifactStoreError(f"the teacher in the artifact store {self.where} does "
                                     "not match the SHA-256 its study recorded: it is damaged")
        from slimtune.files import atomic_path, write_into

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, "the teacher") as tmp:
            write_into(tmp, data, "the teacher", path)
        return True

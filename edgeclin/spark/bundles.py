"""How a bundle reaches the executors, and how each executor proves it has the one the driver verified.

The driver verifies the bundle (checksums, and the signature when a key is given) and takes the
sha256 of its ``manifest.json``. The manifest lists every file's checksum, so an executor that
finds a bundle with the same manifest digest and verifies its files against it runs exactly the
bundle the driver checked, without needing the signing key.

The bundle reaches the executors either from a path they all read (a shared file system,
``/dbfs/...``, or local mode), or shipped with the job by ``SparkContext.addArchive``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgeclin.artifacts import BundleManifest, manifest_digest
from edgeclin.errors import EdgeclinError
from edgeclin.runtime import KEY_FILE_VARIABLE, read_key_file, verify_bundle

SHIPPED_PREFIX = "edgeclin-bundle-"


@dataclass(frozen=True)
class BundleRef:
    """What a task needs to find the bundle: sent to the executors with the job."""

    path: str  # where the driver read it (absolute): used when it was not shipped
    digest: str  # sha256 of manifest.json as the driver verified it
    shipped: str | None = None  # the name SparkContext.addFile registered it under

    @property
    def name(self) -> str:
        return Path(self.path).name


def verify_on_driver(bundle: str | Path, key: bytes | None = None) -> tuple[BundleManifest, BundleRef]:
    """The verified manifest and the reference executors check against (``key`` None: $EDGECLIN_BUNDLE_KEY_FILE)."""
    path = Path(bundle).expanduser().resolve()
    if key is None and os.environ.get(KEY_FILE_VARIABLE):
        key = read_key_file(os.environ[KEY_FILE_VARIABLE])
    manifest = verify_bundle(path, key) if key is not None else verify_bundle(path)
    return manifest, BundleRef(str(path), manifest_digest(path))


_STAGING: list[Path] = []
_SHIPPED: dict[int, set[str]] = {}  # archive names added, per Spark application


def _staging_root() -> Path:
    if not _STAGING:
        root = Path(tempfile.mkdtemp(prefix="edgeclin-spark-"))
        _STAGING.append(root)
        atexit.register(shutil.rmtree, root, True)
    return _STAGING[0]


def ship(session, ref: BundleRef) -> BundleRef:
    """Send the bundle with the job: ``SparkContext.addArchive`` of a zip named after its manifest digest.

    Spark refuses to ship a local folder outside local mode, so the bundle goes as an archive,
    which every executor unpacks once into its working folder. The name is unique to the content
    (Spark keys shipped files by name, and "bundle" is a common one). The zip (stored, not
    compressed: ONNX weights hardly compress) lives until the driver exits, for executors that
    join later.
    """
    try:
        context = session.sparkContext
    except Exception:  # Spark Connect sessions have no SparkContext
        raise EdgeclinError("this Spark session cannot ship files (Spark Connect?): put the bundle on a path "
                            "every executor can read and pass ship=False") from None
    name = f"{SHIPPED_PREFIX}{ref.digest[:16]}.zip"
    archive = _staging_root() / name
    if not archive.exists():
        partial = archive.with_name(name + ".partial")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as bundle_zip:
            for file in sorted(Path(ref.path).iterdir()):
                if file.is_file():
                    bundle_zip.write(file, file.name)
        partial.rename(archive)
    shipped = _SHIPPED.setdefault(context.applicationId, set())
    if name not in shipped:
        context.addArchive(str(archive))
        shipped.add(name)
    return BundleRef(ref.path, ref.digest, name)


def locate(ref: BundleRef) -> Path:
    """The bundle's folder on this executor: the shipped copy, else the driver's (shared) path."""
    if ref.shipped:
        from pyspark import SparkFiles

        shipped = Path(SparkFiles.get(ref.shipped))
        if shipped.is_dir():
            return shipped
    path = Path(ref.path)
    if path.is_dir():
        return path
    where = f"shipped as {ref.shipped}" if ref.shipped else "not shipped"
    raise EdgeclinError(f"bundle {ref.path} is not readable on this executor ({where}); put it on a shared path "
                        "or let edgeclin ship it (ship=True)")


def verify_on_executor(ref: BundleRef) -> Path:
    """The bundle found here, refused unless its manifest is the one the driver verified.

    The files are then checked against that manifest by ``runtime.load``, as for edgeclin predict.
    """
    path = locate(ref)
    found = manifest_digest(path)
    if found != ref.digest:
        raise EdgeclinError(f"bundle {path} on this executor is not the one the driver verified "
                            f"(manifest sha256 {found[:12]}, expected {ref.digest[:12]})")
    return path

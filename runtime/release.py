"""Copy a published release into place atomically.

Layout of `--to DIR`: every release is a complete folder `DIR/releases/<name>-<version>-<hash12>/`
(the package, `manifest.json`, the reports, the golden vectors), written under a temporary name
and renamed into place once every file is written, fsynced and re-hashed against the manifest;
`DIR/current` is a symlink swapped with one atomic rename. A reader of `DIR/current` therefore sees
wholly the old release or wholly the new one, never a mix; an interrupted publish leaves at most
a `.tmp-*` folder that the next publish removes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from runtime.hashing import file_sha256


class ReleaseError(RuntimeError):
    pass


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def install(dest: Path, manifest_path: Path, files: dict[str, Path]) -> Path:
    """Write the release named by the manifest under dest/releases and point dest/current at it."""
    manifest: dict[str, Any] = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
    if set(files) != set(manifest["files"]):
        raise ReleaseError(f"the release files differ from the manifest: {sorted(set(files) ^ set(manifest['files']))}")
    dest = Path(dest)
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise ReleaseError(f"{dest} exists and is not a folder")
    releases = dest / "releases"
    releases.mkdir(parents=True, exist_ok=True)
    for leftover in releases.glob(".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    name = f"{manifest['name']}-{manifest['version']}-{manifest['package_hash'][:12]}"
    final = releases / name
    if final.exists():  # the same release published before: it must still be intact
        changed = [rel for rel, digest in manifest["files"].items()
                   if not (final / rel).is_file() or file_sha256(final / rel) != digest]
        if changed:
            raise ReleaseError(f"{final} exists but differs from the manifest ({changed[:3]}); move it away and publish again")
    else:
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=releases))
        try:
            for rel, src in sorted(files.items()):
                target = staging / rel
                if Path(rel).is_absolute() or ".." in Path(rel).parts:
                    raise ReleaseError(f"refusing release path {rel!r}")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, target)
                if file_sha256(target) != manifest["files"][rel]:
                    raise ReleaseError(f"{rel} changed since the manifest was written (sha256 differs); rerun modelspec run")
            shutil.copyfile(manifest_path, staging / "manifest.json")
            os.chmod(staging, 0o755)  # mkdtemp made it private
            _fsync_tree(staging)
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    link_tmp = dest / f".current-{os.getpid()}"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    os.symlink(Path("releases") / name, link_tmp)
    os.replace(link_tmp, dest / "current")
    return final


def release_of(package: Path) -> Path | None:
    """The release folder a package sits in (its folder holds manifest.json and tokenizer/), or None."""
    folder = Path(package).parent
    return folder if (folder / "manifest.json").is_file() and (folder / "tokenizer").is_dir() else None


def release_checks(release: Path, package: Path) -> list[dict[str, Any]]:
    """The release's own checks for `modelspec verify`: each {"name", "passed", "message"}.

    `tokenizer`: the release's tokenizer/ hashes to the package's stamped `modelspec.tokenizer_sha256`
    (the tokenizer an app loads is the one the package was built with); `tokenizer_recorded`: the
    manifest and runtime_config.json name that same hash; `files`: every file the manifest lists is
    there with its sha256."""
    from runtime.coreml.package import load_spec
    from runtime.hashing import tree_sha256

    release = Path(release)
    stamped = dict(load_spec(package).description.metadata.userDefined).get("modelspec.tokenizer_sha256")
    checks = []
    folder = release / "tokenizer"
    if not folder.is_dir():
        checks.append({"name": "tokenizer", "passed": False, "message": f"{folder} is missing: the release carries no tokenizer"})
    else:
        actual = tree_sha256(folder)
        ok = actual == stamped
        checks.append({"name": "tokenizer", "passed": ok, "message":
                       f"{folder} hashes to the package's stamped tokenizer ({actual[:12]})" if ok else
                       f"{folder} hashes to {actual}, but the package was built with tokenizer {stamped or '(none stamped)'} "
                       "(modelspec.tokenizer_sha256): this release's tokenizer is not the package's"})
    recorded = {}
    try:
        manifest = json.loads((release / "manifest.json").read_text(encoding="utf-8"))
        recorded["manifest.json"] = manifest.get("tokenizer_sha256")
        config_path = release / str(manifest.get("runtime_config") or "runtime_config.json")
        if config_path.is_file():
            recorded[config_path.name] = (json.loads(config_path.read_text(encoding="utf-8")).get("tokenizer") or {}).get("sha256")
    except (OSError, ValueError) as exc:
        checks.append({"name": "files", "passed": False, "message": f"cannot read {release / 'manifest.json'}: {exc}"})
        return checks
    wrong = {name: value for name, value in recorded.items() if value != stamped}
    checks.append({"name": "tokenizer_recorded", "passed": not wrong, "message":
                   f"{' and '.join(sorted(recorded))} record the package's tokenizer hash" if not wrong else
                   "; ".join(f"{name} records tokenizer {value}, the package's is {stamped}" for name, value in sorted(wrong.items()))})
    changed = []
    for rel, digest in sorted((manifest.get("files") or {}).items()):
        path = release / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts or not path.is_file() or file_sha256(path) != digest:
            changed.append(rel)
    checks.append({"name": "files", "passed": not changed, "message":
                   f"all {len(manifest.get('files') or {})} files match the manifest" if not changed else
                   f"{len(changed)} file(s) missing or differing from the manifest: {', '.join(changed[:5])}"})
    return checks

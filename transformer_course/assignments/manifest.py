"""`manifest.json`: what a release contains (notebooks, their hashes, exercises, points, checkers, preambles).

`release` writes it; `grade` reads it and checks it against the installed package, so that a manifest naming an
exercise or checker this package does not have is refused before any submission is run.
Leaves out: signing; a manifest is the instructor's own file.
"""
import hashlib
import json

from .. import exercises

VERSION = 1


class ManifestError(ValueError):
    """A manifest that cannot be used; the message says why."""


def sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def load(path) -> dict:
    """Read and validate a manifest; raise `ManifestError` naming the first problem."""
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except OSError as exc:
        raise ManifestError(f"cannot read the manifest {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"the manifest {path} is not JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("version") != VERSION:
        raise ManifestError(f"{path} is not a manifest written by `release` (version {VERSION})")
    for key in ("notebooks", "exercises", "preambles"):
        if not isinstance(manifest.get(key), dict):
            raise ManifestError(f"the manifest has no {key!r} table")
    for name, notebook in manifest["notebooks"].items():
        if not isinstance(notebook, dict) or notebook.get("chapter") not in manifest["preambles"]:
            raise ManifestError(f"the manifest's entry for {name} names no chapter with a preamble")
        for ex in notebook.get("exercises", []):
            if ex not in manifest["exercises"]:
                raise ManifestError(f"{name} lists {ex}, which the manifest does not describe")
    for ex, entry in manifest["exercises"].items():
        try:
            module, check = entry["checker"].split(".")
            getattr(getattr(exercises, module), check)
            float(entry["points"])
            entry["name"], entry["kind"], entry["chapter"]
        except Exception:  # noqa: BLE001 - any malformed entry
            raise ManifestError(f"the manifest's entry for {ex} is malformed or names a checker this package "
                                f"does not have ({entry!r:.200})") from None
        for req in entry.get("requires", []):
            if req not in manifest["exercises"]:
                raise ManifestError(f"{ex} requires {req}, which the manifest does not describe")
    return manifest

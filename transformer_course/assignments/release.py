"""Student notebooks from the chapters: every solution replaced by a stub, the self-checks kept.

For each exercise of a chapter (found by `cells.find_exercises`, checked against `table.EXERCISES`):
the definition cell becomes a stub (the function's signature with `raise NotImplementedError`, or the variable
set to `None`, the exercise's id and task in a comment) with its outputs cleared; the checker-call cell is kept,
its stored output (the reference's ✅ line) cleared; the `solution-start` / `solution-end` cells and the prose
between them are dropped. Every other cell and output is unchanged. `manifest.json` records, for each
released notebook, its sha256 and exercises, and for each exercise its chapter, name, kind, checker, points and
requirements, and each chapter's preamble.
Leaves out: hiding tests (the checkers are public: students run them).
"""
import ast
import copy
import json
import os
import pathlib
import re
import tempfile

from . import manifest as manifest_module
from . import table
from .cells import find_exercises, python_source, read_notebook, source
from .tablegen import BOOK, chapter_notebook


def stub(definition_source: str, name: str, kind: str, ex: str, prompt: str) -> str:
    """The student's starting point for exercise `ex`: `name`'s signature raising NotImplementedError, or None."""
    comment = "\n".join(f"# {line}".rstrip() for line in _wrap(f"{ex}: {prompt}"))
    if kind == "function":
        tree = ast.parse(python_source(definition_source))
        node = next(n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name)
        keyword = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
        returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
        return f"{comment}\n{keyword} {name}({ast.unparse(node.args)}){returns}:\n    raise NotImplementedError\n"
    return f"{comment}\n{name} = None\n"


def _wrap(text: str, width: int = 100) -> list:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return lines + ([line] if line else [])


def _prompt(prose: str, ex: str) -> str:
    """The exercise's task in at most 300 characters: the body of its `{exercise}` block."""
    lines, inside, body = prose.split("\n"), False, []
    for line in lines:
        stripped = line.strip()
        if "{exercise}" in stripped:
            inside, body = True, []
            continue
        if inside and stripped.startswith((":::", "```")):
            if any(ex in b for b in body) or not body:
                break
            inside = False
            continue
        if inside:
            body.append(line)
    text = " ".join(" ".join(b for b in body if not b.strip().startswith(":")).split())
    return text if len(text) <= 300 else text[:297].rsplit(" ", 1)[0] + " ..."


def release_notebook(nb: dict, chapter: str) -> tuple[dict, list]:
    """(the student notebook, the ids of its exercises) for one source chapter notebook."""
    found = find_exercises(nb)
    out = copy.deepcopy(nb)
    drop, ids = set(), []
    for e in found:
        entry = table.EXERCISES.get(e["id"])
        if entry is None:
            raise ValueError(f"{e['id']} has no entry in transformer_course/assignments/table.py")
        ids.append(e["id"])
        prose = source(nb["cells"][e["prose"]]) if e["prose"] is not None else ""
        cell = out["cells"][e["definition"]]
        text = stub(source(cell), entry["name"], entry["kind"], e["id"], _prompt(prose, e["id"]))
        cell["source"] = text.splitlines(keepends=True)
        cell["outputs"], cell["execution_count"] = [], None
        for index in (e["definition"], e["call"]):
            meta = out["cells"][index].setdefault("metadata", {})
            meta["tags"] = [t for t in meta.get("tags", []) if t != "solution"] or None
            if meta["tags"] is None:
                del meta["tags"]
        call = out["cells"][e["call"]]
        call["outputs"], call["execution_count"] = [], None
        drop |= {i for i in range(e["start"], e["end"] + 1)} - {e["definition"], e["call"]}
    out["cells"] = [c for i, c in enumerate(out["cells"]) if i not in drop]
    return out, ids


def _write_atomic(path: pathlib.Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def release(chapters: list, out, book=BOOK) -> dict:
    """Write the student notebooks of `chapters` and `manifest.json` into `out`; return the manifest."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"version": manifest_module.VERSION, "notebooks": {}, "exercises": {}, "preambles": {}}
    for chapter in chapters:
        path = chapter_notebook(chapter, book)
        student, ids = release_notebook(read_notebook(path), chapter)
        target = out / path.name
        _write_atomic(target, json.dumps(student, indent=1, ensure_ascii=False) + "\n")
        manifest["notebooks"][path.name] = {"chapter": chapter, "sha256": manifest_module.sha256(target),
                                            "exercises": ids}
        for ex in ids:
            manifest["exercises"][ex] = dict(table.EXERCISES[ex])
        manifest["preambles"][chapter] = table.PREAMBLES[chapter]
    _write_atomic(out / "manifest.json", json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


def parse_chapters(text: str | None) -> list:
    """`"01,05"` -> `["01", "05"]`; None -> every chapter in the table. Raises ValueError naming a bad one."""
    known = sorted(table.PREAMBLES)
    if text is None:
        return known
    chapters = []
    for part in text.split(","):
        part = part.strip()
        if not re.fullmatch(r"\d{1,2}", part):
            raise ValueError(f"--chapters takes two-digit numbers separated by commas (like 01,05), got {text!r}")
        part = part.zfill(2)
        if part not in known:
            raise ValueError(f"chapter {part} has no exercises in the table (known: {', '.join(known)})")
        if part not in chapters:
            chapters.append(part)
    return chapters

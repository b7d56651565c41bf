"""Reading notebook cells with `ast`: which top-level names a cell defines and which names it uses.

Used by the table builder (which exercise a chapter's cells hold), the release (stubbing a definition cell) and
the grader (finding, in a submission, the cells an exercise needs, wherever the student moved them).
Leaves out: IPython semantics beyond dropping `%magic` and `!shell` lines; names bound through `globals()` or
`exec` are invisible to it.
"""
import ast
import builtins
import json
import os
import re
import stat

EXERCISE_LABEL = re.compile(r"\{exercise\}[^\n]*\n(?:\s*:[^\n]*\n)*?\s*:label:\s*(ex-\d\d-[\w-]+)")
SOLUTION_START = re.compile(r"\{solution-start\}\s*(ex-\d\d-[\w-]+)")
SOLUTION_END = re.compile(r"\{solution-end\}")
BUILTINS = frozenset(dir(builtins)) | {"__name__", "__file__", "display", "get_ipython"}


MAX_NOTEBOOK_MIB = 50  # a larger submission is reported unreadable, not read


def read_notebook(path, folder=None, max_mib: float = MAX_NOTEBOOK_MIB) -> dict:
    """The notebook at `path` as a dict; raises ValueError naming what is wrong (not JSON, no cells, ...).

    Only a regular file is read: not a symlink (opened with O_NOFOLLOW), not a FIFO or device (O_NONBLOCK, then
    fstat), not a hard link to a file elsewhere, not larger than `max_mib`, and, given `folder`, not a path
    that resolves outside `folder` (a student's folder that is a symlink).
    """
    if folder is not None:
        real, top = os.path.realpath(path), os.path.realpath(folder)
        if os.path.commonpath([real, top]) != top:
            raise ValueError(f"not read: the path leads outside the submissions folder (to {real})")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        why = "it is a symlink" if os.path.islink(path) else exc.strerror or str(exc)
        raise ValueError(f"not a readable notebook ({why})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a readable notebook (not a regular file)")
        if info.st_nlink > 1:
            raise ValueError("not read: the file is a hard link to another file")
        cap = int(max_mib * (1 << 20))
        if info.st_size > cap:
            raise ValueError(f"not read: the file is {info.st_size / (1 << 20):.0f} MiB, over the {max_mib:g} MiB cap")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(cap + 1)
        if len(data) > cap:
            raise ValueError(f"not read: the file is over the {max_mib:g} MiB cap")
        nb = json.loads(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, MemoryError) as exc:
        text = "nested too deeply" if isinstance(exc, RecursionError) else f"{type(exc).__name__}: {exc}"
        raise ValueError(f"not a readable notebook ({text})") from None
    finally:
        os.close(fd)
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise ValueError("not a notebook: the JSON has no list of cells")
    return nb


def source(cell) -> str:
    text = cell.get("source", "")
    return "".join(text) if isinstance(text, list) else str(text)


def tags(cell) -> list:
    return list(cell.get("metadata", {}).get("tags", []))


def python_source(text: str) -> str:
    """The cell's text with IPython-only lines (`%magic`, `%%cell magic`, `!shell`) blanked, line numbers kept."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in text.split("\n"))


def _target_names(target) -> set:
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, (ast.Tuple, ast.List)):
        return set().union(*(_target_names(t) for t in target.elts)) if target.elts else set()
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    return set()


def defined_names(tree: ast.Module) -> dict:
    """Top-level names the module binds -> "function" (def, class) or "variable" (assignment, import, loop)."""
    found: dict = {}

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found[node.name] = "function"
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    found.update(dict.fromkeys(_target_names(target), "variable"))
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                found.update(dict.fromkeys(_target_names(node.target), "variable"))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    if alias.name != "*":
                        found[(alias.asname or alias.name).split(".")[0]] = "variable"
            elif isinstance(node, (ast.For, ast.AsyncFor)):
                found.update(dict.fromkeys(_target_names(node.target), "variable"))
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                for item in node.items:
                    if item.optional_vars is not None:
                        found.update(dict.fromkeys(_target_names(item.optional_vars), "variable"))
                visit(node.body)
            elif isinstance(node, (ast.If, ast.While)):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.Expr) and isinstance(node.value, ast.NamedExpr):
                found[node.value.target.id] = "variable"
    visit(tree.body)
    return found


def used_names(tree: ast.Module) -> set:
    """Names the module reads but never binds anywhere inside (its free names, minus builtins)."""
    loaded, stored = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else stored).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            stored.add(node.name)
        elif isinstance(node, ast.arg):
            stored.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            stored.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            stored.add(node.name)
    return loaded - stored - BUILTINS


def checker_call(tree: ast.Module) -> tuple | None:
    """`(chapter module, checker name, argument name)` of a cell `tc.exercises.chNN.check_x(name)`, else None."""
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            call = node.value
            func = ast.unparse(call.func)
            m = re.fullmatch(r"(?:tc|transformer_course)\.exercises\.(ch\d\d)\.(check_\w+)", func)
            if m and len(call.args) == 1 and isinstance(call.args[0], ast.Name) and not call.keywords:
                return m.group(1), m.group(2), call.args[0].id
    return None


def is_checker_statement(node) -> bool:
    """A top-level expression statement calling `tc.exercises...`: the self-check, never run by the grader."""
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
            and ast.unparse(node.value.func).startswith(("tc.exercises.", "transformer_course.exercises.")))


def find_exercises(nb: dict) -> list:
    """The exercises of a source chapter, in order: dicts with id, name, kind, checker, the cell indices
    (exercise prose, solution-start, definition, checker call, solution-end) and the definition's source."""
    cells, found = nb["cells"], []
    labels = {}
    for i, cell in enumerate(cells):
        if cell.get("cell_type") == "markdown":
            for label in EXERCISE_LABEL.findall(source(cell)):
                labels[label] = i
    for i, cell in enumerate(cells):
        if cell.get("cell_type") != "markdown":
            continue
        m = SOLUTION_START.search(source(cell))
        if not m:
            continue
        label = m.group(1)
        end = next(j for j in range(i + 1, len(cells))
                   if cells[j].get("cell_type") == "markdown" and SOLUTION_END.search(source(cells[j])))
        code = [j for j in range(i + 1, end) if cells[j].get("cell_type") == "code"]
        entry = {"id": label, "prose": labels.get(label), "start": i, "end": end, "code": code,
                 "definition": code[0] if code else None, "call": code[1] if len(code) > 1 else None}
        call = checker_call(ast.parse(python_source(source(cells[entry["call"]])))) if entry["call"] else None
        if call:
            entry["module"], entry["checker"], entry["name"] = call
            defs = defined_names(ast.parse(python_source(source(cells[entry["definition"]]))))
            entry["kind"] = defs.get(entry["name"])
        found.append(entry)
    return found


def setup_cell(nb: dict) -> str:
    """The chapter's setup cell (imports and `tc.setup_notebook()`): the preamble every exercise runs after."""
    for cell in nb["cells"]:
        if cell.get("cell_type") == "code" and "setup_notebook" in source(cell) and "remove-cell" not in tags(cell):
            return source(cell)
    raise ValueError("no setup cell (a code cell calling tc.setup_notebook())")

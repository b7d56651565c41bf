"""Finding, in a submitted notebook, the code an exercise needs: by the names it defines, not by cell position.

A student may reorder, split, merge or delete cells, add helpers or leave demo code around. For an exercise that
names `fn`, `plan()` takes the last cell binding `fn` (as running the notebook top to bottom would), then, for the
names that definition uses and the preamble does not provide, the last cells binding those (helpers, required
exercises), transitively. Inside each chosen cell a statement is kept only if every name it reads is available
(so a demo line using a chapter variable is dropped instead of failing), and the self-check call
`tc.exercises.chNN.check_x(...)` is never run. Cells run in dependency order.

Leaves out: names created through `exec`, `globals()` or `from x import *`; a definition that relies on the side
effect of a cell that binds nothing it needs.
"""
import ast
import re
from dataclasses import dataclass, field

from .cells import BUILTINS, defined_names, is_checker_statement, python_source, source, used_names

MAX_CELLS = 40  # more cells than this for one exercise means something else is going on


@dataclass
class Statement:
    node: ast.stmt
    binds: set
    uses: set
    now: set = None  # the names it reads when it runs: for a def or class, only its decorators, defaults, bases


def _header_uses(node) -> set:
    """The names a statement reads when it runs: a function body's run later, when called (by then any cell
    may have bound them); a class body runs now, its methods' bodies later."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        a = node.args
        args = a.posonlyargs + a.args + a.kwonlyargs + [x for x in (a.vararg, a.kwarg) if x]
        exprs = [*node.decorator_list, *a.defaults, *[d for d in a.kw_defaults if d], node.returns,
                 *[x.annotation for x in args]]
    elif isinstance(node, ast.ClassDef):
        exprs = [*node.decorator_list, *node.bases, *[k.value for k in node.keywords]]
        return used_names(ast.Module([ast.Expr(e) for e in exprs], [])).union(*(_header_uses(b) for b in node.body))
    else:
        return used_names(ast.Module([node], []))
    return used_names(ast.Module([ast.Expr(e) for e in exprs if e is not None], []))


@dataclass
class Cell:
    index: int                     # position among the notebook's cells
    text: str
    statements: list = field(default_factory=list)
    error: str | None = None       # a SyntaxError, described


@dataclass
class Plan:
    """What to run for one exercise: `code` (a list of (cell index, source)), or a `problem` to report."""
    code: list
    problem: str | None = None
    status: str = "ok"             # ok | missing | syntax-error


def parse_cells(nb: dict) -> list:
    """The notebook's code cells, each parsed into its top-level statements (or with its SyntaxError)."""
    cells = []
    for i, raw in enumerate(nb.get("cells", [])):
        if not isinstance(raw, dict) or raw.get("cell_type") != "code":
            continue
        text = python_source(source(raw))
        cell = Cell(i, text)
        try:
            tree = ast.parse(text)
        except SyntaxError as exc:
            cell.error = f"SyntaxError: {exc.msg} (line {exc.lineno})"
        except (ValueError, RecursionError) as exc:
            cell.error = f"{type(exc).__name__}: {exc}"
        else:
            for node in tree.body:
                if is_checker_statement(node):
                    continue
                module = ast.Module([node], [])
                cell.statements.append(Statement(node, set(defined_names(module)), used_names(module),
                                                 _header_uses(node)))
        cells.append(cell)
    return cells


def _binder(cells, name, skip=None):
    """The last cell (not `skip`) with a statement binding `name`, else None."""
    for cell in reversed(cells):
        if cell is not skip and any(name in s.binds for s in cell.statements):
            return cell
    return None


def _essential(cell, name) -> list:
    """The statements of `cell` that `name`'s last binding depends on inside the cell, and that binding."""
    last = max(i for i, s in enumerate(cell.statements) if name in s.binds)
    keep, wanted = {last}, set(cell.statements[last].uses)
    for i in range(last - 1, -1, -1):
        if cell.statements[i].binds & wanted:
            keep.add(i)
            wanted |= cell.statements[i].uses
    return [cell.statements[i] for i in sorted(keep)]


def _kept_text(cell, available: set) -> str:
    """The cell's source with the statements that could not run blanked (line numbers kept). A def needs only
    its decorators and defaults: its body may use a helper defined below it, in this cell or another."""
    lines = cell.text.split("\n")
    have = set(available)
    keep = [False] * len(lines)
    for s in cell.statements:
        if s.now <= have:
            have |= s.binds
            for line in range(s.node.lineno - 1, s.node.end_lineno):
                keep[line] = True
        # a statement whose inputs are missing is dropped, and so are those needing what it would bind
    return "\n".join(line if k else "" for line, k in zip(lines, keep))


def plan(cells: list, targets: list, preamble_names: set) -> Plan:
    """The code that defines `targets` (the exercise's name first, then those of the exercises it requires)."""
    base = set(preamble_names) | BUILTINS
    chosen: list = []           # cells, in the order they must run (providers first)
    provided: set = set(base)

    def need(name, owner=None, depth=0, target=False):
        if name in provided and not target:
            return True
        cell = _binder(cells, name)
        if cell is None:
            return False
        if cell in chosen:
            return True
        if depth > MAX_CELLS or len(chosen) >= MAX_CELLS:
            return False
        for s in _essential(cell, name):
            for used in sorted(s.uses - s.binds):
                if not any(used in t.binds for t in cell.statements):
                    need(used, cell, depth + 1)
        chosen.append(cell)
        for s in cell.statements:
            provided.update(s.binds)
        return True

    for rank, name in enumerate(targets):
        if need(name, target=True):
            continue
        if rank:  # a required exercise's name: its own grade says what is wrong; run what we have
            continue
        pattern = re.compile(rf"^\s*(def\s+{re.escape(name)}\b|{re.escape(name)}\s*[:=])", re.M)
        broken = [c for c in cells if c.error and pattern.search(c.text)]
        if broken:
            return Plan([], f"the cell that defines {name} does not parse: {broken[-1].error}", "syntax-error")
        return Plan([], f"no cell defines {name} (renamed or deleted?)", "missing")
    available = set(base)
    code = []
    for cell in chosen:
        code.append((cell.index, _kept_text(cell, available | _bound_elsewhere(chosen, cell))))
        for s in cell.statements:
            available |= s.binds
    return Plan(code)


def _bound_elsewhere(chosen, cell) -> set:
    """Names the other chosen cells bind: functions may use them before they run (late binding)."""
    out = set()
    for other in chosen:
        if other is not cell:
            for s in other.statements:
                out |= s.binds
    return out

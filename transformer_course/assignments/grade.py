"""Grading a class: each submission in its own sandbox, each answer compared in the clean parent.

For every exercise of a submitted notebook: `submission.plan` picks the cells defining its name, the sandbox
runs them after the chapter's preamble, and the installed package's checker is called *here*, with a proxy:
for a function, `RemoteFunction`, which sends the checker's arguments to the child and returns the child's
result (plain data only, see `sandbox`); for a variable, the value fetched from the child. A submission that
patches `torch.allclose` or a checker patches its own process only.

The checker runs as in a chapter, under `@checker`, which forks: the fork uses the sandbox's pipe; afterwards
`Sandbox.resync` checks the child is idle and in step, else the child is killed and the next exercise starts a
fresh one. Submissions are graded two at a time by a pool of worker processes (spawned, single-threaded, so
forking is safe).
Leaves out: partial credit within an exercise (a checker passes or fails), manual grading.
"""
import ast
import builtins
import concurrent.futures
import multiprocessing
import os
import pathlib
import time
from dataclasses import dataclass

from .cells import defined_names, read_notebook
from .sandbox import Limits, Sandbox, SandboxError, clock_ticks, kill_strays, set_subreaper
from .submission import parse_cells, plan

_SLOTS = None  # a worker's grading slot (0, 1, ...): its sandbox uid is Limits.uid + slot


@dataclass
class Row:
    student: str
    notebook: str
    exercise: str
    points: float
    max_points: float
    passed: bool
    status: str   # passed | failed | not-implemented | timeout | crashed | error | missing | syntax-error |
    #               unreadable | not-submitted
    hint: str
    seconds: float


class SubmissionTimeout(Exception):
    pass


class RemoteFunction:
    """A stand-in for the student's function: calling it runs the function in the sandbox."""

    def __init__(self, sandbox: Sandbox, space: str, name: str, deadline: float):
        self._sandbox, self._space, self.__name__, self._deadline = sandbox, space, name, deadline
        self.__qualname__ = name

    def __call__(self, *args, **kwargs):
        try:
            reply = self._sandbox.request("call", self._deadline, ns=self._space, name=self.__name__,
                                          args=args, kwargs=kwargs)
        except SandboxError as exc:
            if exc.kind == "timeout":
                raise SubmissionTimeout(f"the submission ran past its {self._sandbox.limits.wall_s:g} s limit") \
                    from None
            raise RuntimeError(f"the process running it ended: {exc}") from None
        if reply["ok"]:
            value = reply["value"]
            if isinstance(value, dict) and "__returned_argument__" in value:
                from .modules import apply_state

                return apply_state(args[value["__returned_argument__"]], value["state"])
            return value
        raise _remote_exception(reply["error"])

    def __repr__(self):
        return f"<function {self.__name__} (in the grading sandbox)>"


def _remote_exception(description: str) -> BaseException:
    """An exception whose type name and message are those the child raised, so a hint reads as it does locally."""
    text = description.split(": ", 1)[1] if description.startswith("cell ") and ": " in description else description
    name, _, message = text.partition(": ")
    cls = getattr(builtins, name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        cls = type(name if name.isidentifier() else "Error", (Exception,), {}) if name else Exception
    try:
        return cls(message) if message else cls()
    except Exception:  # noqa: BLE001 - e.g. an exception type whose constructor wants other arguments
        return Exception(text)


def _checker(entry: dict):
    from .. import exercises

    module, check = entry["checker"].split(".")
    return getattr(getattr(exercises, module), check)


def _status(result, answer) -> str:
    if result.passed:
        return "passed"
    text = result.message
    if answer is None or "raised NotImplementedError" in text:
        return "not-implemented"
    if "did not finish within" in text:
        return "timeout"
    if "the process running it ended" in text:
        return "crashed"
    return "failed"


def grade_notebook(student: str, notebook_name: str, path, manifest: dict, limits: Limits, slot: int = 0,
                   folder=None, hide=()) -> list:
    """The rows of one student's notebook: one per exercise the manifest lists for it. `folder`: the submissions
    folder (a path resolving outside it is not read); `hide`: folders the sandbox covers (see `Sandbox`)."""
    info = manifest["notebooks"][notebook_name]
    ids = info["exercises"]
    rows = []

    def row(ex, status, hint, seconds, passed=False):
        entry = manifest["exercises"][ex]
        points = float(entry["points"])
        rows.append(Row(student, notebook_name, ex, points if passed else 0.0, points, passed, status,
                        " ".join(str(hint).split())[:500], round(seconds, 2)))

    if path is None:
        for ex in ids:
            row(ex, "not-submitted", f"no {notebook_name} was submitted", 0.0)
        return rows
    try:
        nb = read_notebook(path, folder)
    except ValueError as exc:
        for ex in ids:
            row(ex, "unreadable", f"the notebook could not be read: {exc}", 0.0)
        return rows
    cells = parse_cells(nb)
    preamble = manifest["preambles"][info["chapter"]]
    preamble_names = set(defined_names(ast.parse(preamble)))
    sandbox = None
    try:
        for ex in ids:
            entry = manifest["exercises"][ex]
            start = time.monotonic()
            if entry.get("self_check_only"):
                row(ex, "self-check", f"not graded: {entry['self_check_only']}; run its self-check", 0.0)
                continue
            names = [entry["name"]] + [manifest["exercises"][r]["name"] for r in entry.get("requires", [])]
            p = plan(cells, names, preamble_names)
            if p.problem:
                row(ex, p.status, p.problem, time.monotonic() - start)
                continue
            try:
                if sandbox is None or not sandbox.alive:
                    if sandbox is not None:
                        sandbox.close()
                    sandbox = Sandbox(preamble, limits, slot, hide=hide)
                    sandbox.start()
                deadline = time.monotonic() + limits.wall_s
                reply = sandbox.request("exec", deadline, ns=ex, code=p.code)
                if not reply["ok"]:
                    row(ex, "error", f"running your code for {entry['name']} raised {reply['error']}",
                        time.monotonic() - start)
                    continue
                kind = sandbox.request("kind", deadline, ns=ex, name=entry["name"])["value"]
                if kind == "missing":
                    row(ex, "missing", f"your cells ran but did not define {entry['name']} (a statement it needs "
                        f"uses a name no cell defines?)", time.monotonic() - start)
                    continue
                if kind == "function":
                    answer = RemoteFunction(sandbox, ex, entry["name"], deadline)
                else:
                    got = sandbox.request("get", deadline, ns=ex, name=entry["name"])
                    if not got["ok"]:
                        row(ex, "error", f"{entry['name']}: {got['error']}", time.monotonic() - start)
                        continue
                    answer = got["value"]
            except SandboxError as exc:
                if exc.kind == "timeout":
                    hint = (f"running your code for {entry['name']} did not finish within {limits.wall_s:g} s "
                            f"(an endless loop, or far too much work?)")
                else:
                    hint = f"the process running your code ended: {exc}"
                row(ex, "timeout" if exc.kind == "timeout" else "crashed", hint, time.monotonic() - start)
                if sandbox is not None:
                    sandbox.close()
                sandbox = None
                continue
            result = _checker(entry)(answer)
            if not sandbox.resync():
                sandbox.close()
                sandbox = None
            row(ex, _status(result, answer), result.message, time.monotonic() - start, passed=result.passed)
    finally:
        if sandbox is not None:
            sandbox.close()
    return rows


def find_submissions(directory, manifest: dict) -> list:
    """`[(student, notebook name, path or None)]`: a folder per student holding the released notebooks by name
    (or, for a one-notebook release, any single .ipynb), or, for a one-notebook release, STUDENT.ipynb files."""
    directory = pathlib.Path(directory)  # symlinks and files other than regular ones: read_notebook refuses them
    names = sorted(manifest["notebooks"])
    found = []
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and not entry.is_symlink():
            notebooks = sorted(p for p in entry.iterdir() if p.suffix == ".ipynb" and not p.name.startswith("."))
            for name in names:
                path = entry / name
                if not os.path.lexists(path) and len(names) == 1 and len(notebooks) == 1:
                    path = notebooks[0]
                found.append((entry.name, name, path if os.path.lexists(path) else None))
        elif entry.is_symlink() and entry.is_dir():  # read_notebook reports it: it resolves outside the folder
            found.extend((entry.name, name, entry / name) for name in names)
        elif entry.suffix == ".ipynb" and len(names) == 1:
            found.append((entry.stem, names[0], entry))
    return found


def _init_worker(slots):
    global _SLOTS
    _SLOTS = slots.get()
    set_subreaper()  # a submission's orphans (a setsid daemon) become this worker's, for Sandbox.close to kill
    import torch

    torch.set_num_threads(1)


def _tracker_pid():
    from multiprocessing import resource_tracker

    return getattr(resource_tracker._resource_tracker, "_pid", None)


def _work(args):
    student, name, path, manifest, limits, folder, hide = args
    return grade_notebook(student, name, path, manifest, limits, _SLOTS, folder, hide)


def grade_all(directory, manifest: dict, limits: Limits = Limits(), jobs: int = 2, progress: bool = True,
              hide=()) -> list:
    """Grade every submission in `directory`, `jobs` at a time; return all rows, sorted by student.

    `hide`: more folders for the sandboxes to cover (the manifest's and the results folder); the submissions
    folder is always hidden. Returns only once every sandbox is closed and no process they started is alive.
    """
    from tqdm import tqdm

    since = clock_ticks()
    set_subreaper()  # a worker's orphans come here when it exits
    hide = tuple(str(h) for h in (directory, *hide))
    work = [(s, n, str(p) if p else None, manifest, limits, str(directory), hide)
            for s, n, p in find_submissions(directory, manifest)]
    rows = []
    context = multiprocessing.get_context("spawn")
    slots = context.Queue()
    for k in range(jobs):
        slots.put(k)
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker,
                                                initargs=(slots,)) as pool:
        futures = {pool.submit(_work, w): w for w in work}
        bar = tqdm(total=len(work), unit="notebook", desc="grading", disable=not progress)
        for future in concurrent.futures.as_completed(futures):
            student, name = futures[future][:2]
            try:
                rows.extend(future.result())
            except Exception as exc:  # noqa: BLE001 - a bug in the grader: report it for this notebook only
                for ex in manifest["notebooks"][name]["exercises"]:
                    points = float(manifest["exercises"][ex]["points"])
                    rows.append(Row(student, name, ex, 0.0, points, False, "error",
                                    f"the grader failed on this notebook ({type(exc).__name__}: {exc})", 0.0))
            bar.update(1)
        bar.close()
    keep = {p.pid for p in multiprocessing.active_children()} | {_tracker_pid()}
    left = kill_strays(since, keep)
    if left:
        raise RuntimeError(f"processes started by the submissions survived grading: {left}; no results written")
    order = {ex: i for i, ex in enumerate(manifest["exercises"])}
    return sorted(rows, key=lambda r: (r.student, r.notebook, order.get(r.exercise, 0)))

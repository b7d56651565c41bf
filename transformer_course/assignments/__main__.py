"""`python -m transformer_course.assignments release|grade|table ...`: see book/instructors.md.

Bad arguments (a missing folder, a bad chapter list, a bad manifest, --out inside the submissions) give one
line on stderr and exit code 2, never a traceback. The grader writes only in --out (and its sandboxes' scratch
folders, removed at the end); a --out or --out/feedback that is a symlink is refused.
"""
import argparse
import pathlib
import sys
import time


class UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    from .sandbox import Limits

    d = Limits()
    p = argparse.ArgumentParser(prog="python -m transformer_course.assignments",
                                description="Release the course's exercises to students and grade a class.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("release", help="write student notebooks and manifest.json")
    r.add_argument("--chapters", help="comma-separated chapters, e.g. 01,05 (default: all in the table)")
    r.add_argument("--out", required=True, help="folder for the student notebooks (created; must not be book/)")
    g = sub.add_parser("grade", help="grade a folder of submissions")
    g.add_argument("submissions", help="a folder per student holding the released notebooks (or STUDENT.ipynb "
                                       "files for a one-notebook release)")
    g.add_argument("--manifest", required=True, help="the manifest.json written by release")
    g.add_argument("--out", required=True, help="results folder: grades.csv, report.html, feedback/")
    g.add_argument("--jobs", type=int, default=2, help="submissions graded at a time (default 2)")
    g.add_argument("--wall", type=float, default=d.wall_s, help=f"seconds per exercise (default {d.wall_s:g})")
    g.add_argument("--cpu", type=int, default=d.cpu_s, help=f"CPU seconds per submission (default {d.cpu_s})")
    g.add_argument("--memory", type=int, default=d.memory_mib, help=f"MiB of address space (default {d.memory_mib})")
    g.add_argument("--output", type=int, default=d.output_mib, help=f"MiB a submission may write (default "
                                                                    f"{d.output_mib})")
    g.add_argument("--nproc", type=int, default=d.nproc, help=f"processes and threads (default {d.nproc})")
    g.add_argument("--disk", type=int, default=d.disk_mib, help=f"MiB of each private tmpfs: scratch, /tmp, /var/tmp, "
                                                                f"/dev/shm (default {d.disk_mib})")
    g.add_argument("--uid", type=int, default=d.uid, help=f"first unprivileged uid, one per job (default {d.uid})")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    t = sub.add_parser("table", help="print table.py's source, read from the chapters")
    t.add_argument("--chapters", help="comma-separated chapters (default: those in the table)")
    return p


def _inside(path: pathlib.Path, folder: pathlib.Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _drop_writable_paths() -> None:
    """`python -m` puts the working folder first on sys.path: if others may write there (/tmp, say), a module
    planted in it would be imported by the grader (and its spawned workers) instead of the real one."""
    import os
    import stat

    for entry in list(sys.path):
        try:
            mode = os.stat(entry or ".").st_mode
        except OSError:
            continue
        if stat.S_ISDIR(mode) and mode & stat.S_IWOTH:
            sys.path.remove(entry)


def main(argv=None) -> int:
    _drop_writable_paths()
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the previous results, if any, are unchanged", file=sys.stderr)
        return 130


def _run(args) -> int:
    from . import release as release_module
    from .tablegen import BOOK

    if args.command == "table":
        from . import tablegen

        try:
            chapters = release_module.parse_chapters(args.chapters) if args.chapters is None else \
                [c.strip().zfill(2) for c in args.chapters.split(",")]
            sys.stdout.write(tablegen.render(chapters))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return 0
    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    if args.command == "release":
        try:
            chapters = release_module.parse_chapters(args.chapters)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if _inside(out, BOOK) or _inside(BOOK, out):
            raise UsageError(f"--out {out} would overwrite the book's chapters: choose another folder")
        try:
            manifest = release_module.release(chapters, out)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        n = len(manifest["exercises"])
        print(f"released {len(chapters)} notebook(s) with {n} exercises to {out}/ (manifest.json beside them)")
        return 0
    from . import manifest as manifest_module
    from .grade import grade_all
    from .report import totals, write_results
    from .sandbox import Limits

    submissions = pathlib.Path(args.submissions)
    if not submissions.is_dir():
        raise UsageError(f"the submissions folder {submissions} does not exist or is not a folder")
    if _inside(out, submissions):
        raise UsageError(f"--out {out} is inside the submissions folder: it would be graded as a student")
    try:
        manifest = manifest_module.load(args.manifest)
    except manifest_module.ManifestError as exc:
        raise UsageError(str(exc)) from None
    for name, value in (("--jobs", args.jobs), ("--cpu", args.cpu), ("--memory", args.memory),
                        ("--output", args.output), ("--nproc", args.nproc), ("--disk", args.disk)):
        if value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    if not args.wall > 0:
        raise UsageError(f"--wall must be positive, got {args.wall}")
    for folder in (out, out / "feedback"):  # checked again when writing
        if folder.is_symlink():
            raise UsageError(f"{folder} is a symlink: the results are not written through it")
    limits = Limits(wall_s=args.wall, cpu_s=args.cpu, memory_mib=args.memory, output_mib=args.output,
                    nproc=args.nproc, uid=args.uid, disk_mib=args.disk)
    start = time.monotonic()
    hide = [pathlib.Path(args.manifest).resolve().parent, out.resolve()]  # covered in the sandboxes
    try:
        rows = grade_all(submissions, manifest, limits, jobs=args.jobs, progress=not args.no_progress, hide=hide)
    except RuntimeError as exc:
        raise UsageError(str(exc)) from None
    if not rows:
        raise UsageError(f"no submissions found in {submissions} (a folder per student, holding "
                         f"{', '.join(sorted(manifest['notebooks']))})")
    try:
        write_results(rows, out)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    students = totals(rows)
    print(f"graded {len(students)} students, {len(rows)} answers in {time.monotonic() - start:.0f} s: "
          f"{sum(r.passed for r in rows)} passed; results in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

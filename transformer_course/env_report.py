"""Print the environment for a bug report: `python -m transformer_course.env_report`.

Python, platform, the torch build and its devices, threads, and the versions of the packages the course
pins. Each line is computed on its own, so a broken install still yields a report that says what broke.

Leaves out: anything personal (paths, user and host names, environment variables).
"""
import importlib.metadata
import os
import platform
import sys

PACKAGES = ("numpy", "regex", "tqdm", "matplotlib", "ipywidgets", "ipykernel", "jupyter-book", "sphinx-exercise",
            "jupyterlab", "transformers", "tokenizers", "triton", "pytest", "nbval", "hypothesis", "playwright")


def _torch_lines() -> list[tuple[str, str]]:
    import torch

    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None)
    lines = [
        ("torch", torch.__version__),
        ("torch CUDA build", torch.version.cuda or "no (CPU-only build)"),
        ("CUDA available", f"yes, {torch.cuda.device_count()} device(s): {torch.cuda.get_device_name(0)}"
         if cuda else "no"),
        ("MPS (Apple) available", "yes" if mps is not None and mps.is_available() else "no"),
        ("torch threads", f"{torch.get_num_threads()} (CPU count {os.cpu_count()})"),
    ]
    from .utils import default_device

    lines.append(("default device (tc.default_device)", str(default_device())))
    return lines


def _checkpoint_lines() -> list[tuple[str, str]]:
    from .checkpoints import known_checkpoints

    return [("shipped checkpoints", ", ".join(known_checkpoints()) or "none")]


def _package_version() -> str:
    try:
        return importlib.metadata.version("transformer_course")
    except importlib.metadata.PackageNotFoundError:
        from . import __version__

        return f"{__version__} (not installed; imported from source)"


def report() -> str:
    """The report as text: one `name: value` per line."""
    lines = [("Python", sys.version.split()[0]), ("platform", platform.platform()),
             ("machine", platform.machine())]
    for name, get in (("transformer_course", lambda: [("transformer_course", _package_version())]),
                      ("torch", _torch_lines), ("shipped checkpoints", _checkpoint_lines)):
        try:
            lines += get()
        except Exception as exc:  # report it, keep going: this runs on broken machines
            lines.append((name, f"ERROR {type(exc).__name__}: {exc}"))
    for package in PACKAGES:
        try:
            lines.append((package, importlib.metadata.version(package)))
        except importlib.metadata.PackageNotFoundError:
            lines.append((package, "not installed"))
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name:<{width}} : {value}" for name, value in lines)


if __name__ == "__main__":
    print(report())

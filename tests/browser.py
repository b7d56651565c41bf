"""Find (or, as root on Debian, install) a headless Chromium for the site tests (CONVENTIONS §8)."""
import os
import pathlib
import shutil
import subprocess

LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--no-first-run",
    "--disable-sync", "--disable-quic",
]


def _system_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _playwright_chromium() -> str | None:
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            path = p.chromium.executable_path
        return path if path and os.path.exists(path) else None
    except Exception:
        return None


def find_or_install_chromium() -> str:
    """Return the path of a Chromium binary; install Debian's `chromium` when root on Debian and none exists."""
    path = _system_chromium() or _playwright_chromium()
    if path:
        return path
    if os.geteuid() == 0 and pathlib.Path("/etc/debian_version").exists():
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "fonts-dejavu-core"], check=True, env=env)
        path = _system_chromium()
        if path:
            return path
    raise RuntimeError(
        "No Chromium found for the site tests. Install one: `apt-get install chromium` (Debian/Ubuntu), "
        "or `python -m playwright install chromium`, then run `make test` again."
    )

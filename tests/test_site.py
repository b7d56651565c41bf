"""The built site: a clean `jupyter-book build -W -n`, then a real headless Chromium visiting every page.

Each page must load with no 4xx/5xx, no request leaving 127.0.0.1, rendered math, every image loaded and no
code block wider than the page column (long lines wrap: _static/course.css).
"""
import functools
import http.server
import pathlib
import shutil
import subprocess
import sys
import threading

import pytest

from browser import LAUNCH_ARGS, find_or_install_chromium

ROOT = pathlib.Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
# sphinx-thebe declares THEBE_JS_URL twice on every page; this one console error is known and harmless.
KNOWN_CONSOLE_ERRORS = ("Identifier 'THEBE_JS_URL' has already been declared",)


@pytest.fixture(scope="module")
def build_log():
    shutil.rmtree(ROOT / "_build", ignore_errors=True)
    jb = pathlib.Path(sys.executable).parent / "jupyter-book"
    proc = subprocess.run([str(jb), "build", ".", "-W", "-n", "--keep-going"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    return proc


@pytest.fixture(scope="module")
def site(build_log):
    assert build_log.returncode == 0, build_log.stdout[-4000:] + build_log.stderr[-4000:]
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = find_or_install_chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=LAUNCH_ARGS)
        yield b
        b.close()


def pages() -> list[str]:
    skip = {"_static", "_sources", "_images", "mathjax"}
    return sorted(
        p.relative_to(HTML).as_posix() for p in HTML.rglob("*.html") if not skip & set(p.relative_to(HTML).parts)
    )


def test_build_has_no_warnings(build_log):
    assert build_log.returncode == 0, build_log.stderr[-4000:]
    assert "WARNING" not in build_log.stdout + build_log.stderr


def test_mathjax_is_served_by_the_site(site):
    assert (HTML / "mathjax" / "tex-mml-chtml.js").stat().st_size > 100_000
    assert any((HTML / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))


def test_every_page_in_a_real_browser(site, browser):
    names = pages()
    assert "book/intro.html" in names and "book/notation.html" in names, names
    shots = ROOT / "_build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    problems = []
    for name in names:
        problems += visit(browser, site, name, shots / (name.replace("/", "_")[:-5] + ".png"))
    assert not problems, "\n".join(problems)


def visit(browser, base: str, name: str, screenshot: pathlib.Path | None = None) -> list[str]:
    """Open one page; return what is wrong with it (empty when nothing is)."""
    problems = []
    page = browser.new_page(viewport={"width": 1280, "height": 900})

    def route(r):
        url = r.request.url
        if url.startswith(base) or url.startswith(("data:", "blob:")):
            r.continue_()
        else:
            problems.append(f"{name}: request leaves the machine: {url}")
            r.abort()

    page.route("**/*", route)
    page.on("response", lambda resp: resp.status >= 400 and problems.append(
        f"{name}: HTTP {resp.status} for {resp.url}"))
    page.on("console", lambda msg: msg.type == "error" and not msg.text.startswith(KNOWN_CONSOLE_ERRORS)
            and problems.append(f"{name}: console error: {msg.text}"))
    page.on("pageerror", lambda exc: str(exc).startswith(KNOWN_CONSOLE_ERRORS[0].split("'")[0]) or
            KNOWN_CONSOLE_ERRORS[0] in str(exc) or problems.append(f"{name}: page error: {exc}"))
    page.goto(f"{base}/{name}", wait_until="networkidle")
    html = (HTML / name).read_text()
    if 'class="math' in html:
        unrendered = """() => [...document.querySelectorAll('.math')]
            .filter(e => !e.querySelector('mjx-container')).length"""
        try:  # MathJax typesets after load; a long chapter on a busy machine can take a while
            page.wait_for_function(f"({unrendered})() === 0", timeout=90_000)
        except Exception:
            problems.append(f"{name}: {page.evaluate(unrendered)} formula(s) left unrendered by MathJax")
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_load_state("networkidle")
    broken = page.evaluate("""() => [...document.images]
        .filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'))""")
    problems += [f"{name}: image not loaded: {src}" for src in broken]
    hidden = page.evaluate("""() => [...document.querySelectorAll('pre')]
        .filter(p => p.scrollWidth > p.clientWidth + 1).map(p => p.textContent.split('\\n')[0].slice(0, 60))""")
    problems += [f"{name}: a code block is wider than the page column (starts {text!r})" for text in hidden]
    if screenshot:
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(screenshot), full_page=True)
    page.close()
    return problems

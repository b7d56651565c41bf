"""The sandbox's limits, one at a time: as root (privilege drop, namespaces) and in the documented fallback.

The fallback (`TC_SANDBOX_FALLBACK=1`, what a grader not running as root gets) keeps no privilege drop and no PID
namespace; the memory, CPU, output, wall-clock and scratch-directory limits must still hold. `refused`
(`TC_SANDBOX_FALLBACK=2`) is the fallback on a host that refuses every namespace.
"""
import io
import os
import socket
import subprocess
import sys
import time

import pytest

from transformer_course.assignments.cells import read_notebook
from transformer_course.assignments.sandbox import (Limits, Sandbox, SandboxError, check_payload, live_processes,
                                                    repository_folders)

PREAMBLE = "import math\nimport torch\n"
ROOT = os.geteuid() == 0
# Whether root may unshare a network namespace here (a container without CAP_SYS_ADMIN may not: the
# sandbox then records it and runs on, the documented fallback).
NAMESPACES = ROOT and subprocess.run(
    [sys.executable, "-c", "import ctypes, sys; sys.exit(ctypes.CDLL(None).unshare(0x40000000) != 0)"]
).returncode == 0

# A mount namespace: as root, unshare(CLONE_NEWNS); in the fallback, inside a user namespace.
MOUNTS_ROOT = ROOT and subprocess.run(
    [sys.executable, "-c", "import ctypes, sys; sys.exit(ctypes.CDLL(None).unshare(0x20000) != 0)"]).returncode == 0
MOUNTS_USER = subprocess.run(
    [sys.executable, "-c", "import ctypes, sys; sys.exit(ctypes.CDLL(None).unshare(0x10000000 | 0x40000000 | 0x20000)"
                           " != 0)"]).returncode == 0

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the sandbox needs POSIX")


def run(sandbox, code, seconds=20.0):
    return sandbox.request("exec", time.monotonic() + seconds, ns="t", code=[(1, code)])


def get(sandbox, name):
    return sandbox.request("get", time.monotonic() + 10, ns="t", name=name)["value"]


@pytest.fixture(params=["root", "fallback"])
def mode(request, monkeypatch):
    if request.param == "root" and not ROOT:
        pytest.skip("the privileged path needs root")
    if request.param == "fallback":
        monkeypatch.setenv("TC_SANDBOX_FALLBACK", "1")
    return request.param


@pytest.fixture(params=["root", "fallback", "refused"])
def any_mode(request, monkeypatch):
    if request.param == "root" and not ROOT:
        pytest.skip("the privileged path needs root")
    if request.param != "root":
        monkeypatch.setenv("TC_SANDBOX_FALLBACK", "1" if request.param == "fallback" else "2")
    return request.param


def test_limits_hold_in_both_modes(mode, tmp_path):
    with Sandbox(PREAMBLE, Limits(memory_mib=3072, output_mib=4, cpu_s=60)) as sb:
        assert sb.isolation["limits"]["memory_mib"] == 3072
        # a scratch working directory of its own
        assert run(sb, "import os\ncwd = os.getcwd()")["ok"]
        assert get(sb, "cwd") == sb.scratch
        # RLIMIT_AS: 4 GB cannot be had
        reply = run(sb, "x = torch.ones(10**9)")
        assert not reply["ok"] and "allocate" in reply["error"]
        # RLIMIT_FSIZE: a 5 MB file (or 5 MB printed) fails past 4 MiB
        reply = run(sb, "open('big', 'wb').write(b'x' * 5_000_000)")
        assert not reply["ok"] and "File too large" in reply["error"]
        reply = run(sb, "print('y' * 5_000_000)")
        assert not reply["ok"] and "File too large" in reply["error"]
        # one thread
        assert run(sb, "n = torch.get_num_threads()")["ok"] and get(sb, "n") == 1
        # the wall-clock limit, enforced by the parent
        with pytest.raises(SandboxError) as info:
            run(sb, "while True:\n    pass", seconds=2)
        assert info.value.kind == "timeout"
        # a child process it started dies with it (killpg)
    with Sandbox(PREAMBLE, Limits()) as sb:
        assert run(sb, "import subprocess\np = subprocess.Popen(['sleep', '300'])\npid = p.pid")["ok"]
        pid = get(sb, "pid")
        sb.close()
    if mode == "fallback":  # the same PID namespace: the pid is ours to check
        assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2]


def test_cpu_limit_stops_a_busy_process(mode):
    with Sandbox(PREAMBLE, Limits(cpu_s=3, wall_s=60)) as sb:
        start = time.monotonic()
        with pytest.raises(SandboxError) as info:
            run(sb, "while True:\n    pass", seconds=60)
        assert info.value.kind == "crashed" and "CPU time limit" in str(info.value)
        assert time.monotonic() - start < 20


@pytest.mark.skipif(not ROOT, reason="the privileged path needs root")
def test_root_drops_privileges_and_unshares():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        with Sandbox(PREAMBLE, Limits(nproc=16), slot=1) as sb:
            uid = sb.uid
            assert 64000 <= uid < 64256 and sb.isolation["uid"] == uid
            assert sb.isolation["network_namespace"] == sb.isolation["pid_namespace"] == NAMESPACES
            assert run(sb, "import os\nids = (os.getuid(), os.getgid(), os.getgroups())")["ok"]
            assert get(sb, "ids") == (uid, uid, [])
            reply = run(sb, f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)")
            if NAMESPACES:  # no interface but a loopback that is down
                assert not reply["ok"] and ("unreachable" in reply["error"] or "refused" in reply["error"])
            reply = run(sb, "open('/etc/passwd', 'a')")
            assert not reply["ok"] and "PermissionError" in reply["error"]
            # RLIMIT_NPROC is enforced for the unprivileged uid: at most 16 processes and threads
            code = ("import os, time\nmade = 0\nfor _ in range(100):\n    try:\n        pid = os.fork()\n"
                    "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(300)\n        os._exit(0)\n"
                    "    made += 1\n")
            assert run(sb, code)["ok"]
            assert 0 < get(sb, "made") < 16
    finally:
        server.close()
    time.sleep(0.2)
    left = live_processes(uid)
    assert not left, "close() kills every process of the slot's uid"


def test_answers_come_back_as_plain_data_only(mode):
    with Sandbox(PREAMBLE, Limits()) as sb:
        assert run(sb, "class Evil:\n    def __reduce__(self):\n        return (print, ('pwned',))\n"
                       "evil = Evil()\nmodel = torch.nn.Linear(2, 2)\nok = {(1, 2): torch.ones(2), 'n': [1, 2.5]}")["ok"]
        for name in ("evil", "model"):
            reply = sb.request("get", time.monotonic() + 10, ns="t", name=name)
            assert not reply["ok"] and "takes back only" in reply["error"]
        value = get(sb, "ok")
        assert value["n"] == [1, 2.5] and value[(1, 2)].tolist() == [1.0, 1.0]


def test_a_module_changed_in_place_comes_back(mode):
    """ex-03-untie's shape: the function returns its model argument, changed; the checker sees the change."""
    import torch
    from torch import nn

    from transformer_course.assignments.grade import RemoteFunction

    code = ("def untie(model):\n    model[1].weight = nn.Parameter(model[0].weight.detach().clone() + 1)\n"
            "    model[1].flag = 'changed'\n    return model\n")
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[1].weight = model[0].weight  # tied
    model[1].flag = "tied"
    with Sandbox("import torch\nfrom torch import nn\n", Limits()) as sb:
        assert run(sb, code)["ok"]
        got = RemoteFunction(sb, "t", "untie", time.monotonic() + 20)(model)
    assert got is model and model[1].flag == "changed" and model[1].weight is not model[0].weight
    assert isinstance(model[1].weight, nn.Parameter)
    assert torch.equal(model[1].weight, model[0].weight + 1)


def test_the_book_and_the_class_are_hidden(any_mode, tmp_path):
    """Finding 1 and 6 of the red team: a mount namespace covers the book, tests, the submissions, and gives
    private, size-capped /tmp, /dev/shm and scratch; where it is refused, isolation says so (the fallback)."""
    secret = tmp_path / "submissions"
    secret.mkdir()
    (secret / "other.ipynb").write_text("{}")
    os.chmod(tmp_path, 0o755)
    expected = {"root": MOUNTS_ROOT, "fallback": MOUNTS_USER, "refused": False}[any_mode]
    book = repository_folders()[0]
    stem = f"tc-hidden-{os.getpid()}-{any_mode}"
    with Sandbox(PREAMBLE, Limits(disk_mib=8), hide=[secret]) as sb:
        info = sb.isolation
        assert info["mount_namespace"] == expected
        code = (f"import os\nseen = (os.path.exists({book!r} + '/05_self_attention.ipynb'), "
                f"os.path.exists({str(secret / 'other.ipynb')!r}))\n"
                f"for d in ('/tmp', '/dev/shm'):\n    open(d + '/{stem}', 'wb').write(b'x')\n"
                f"import transformer_course.exercises.ch05")
        assert run(sb, code)["ok"]  # the package stays importable
        seen = get(sb, "seen")
        if expected:
            assert seen == (False, False)
            assert book in info["hidden"] and str(secret.resolve()) in info["hidden"]
            assert {"/tmp", "/dev/shm", sb.scratch} <= set(info["private_tmp"])
            reply = run(sb, "open('/dev/shm/big', 'wb').write(b'x' * (9 << 20))")  # over the 8 MiB tmpfs
            assert not reply["ok"] and "No space left" in reply["error"]
        else:  # the documented fallback: nothing hidden, and it says so
            assert seen[0] and book in info["not_hidden"] and info["hidden"] == []
    planted = [f"{d}/{stem}" for d in ("/tmp", "/dev/shm") if os.path.exists(f"{d}/{stem}")]
    for path in planted:
        os.remove(path)
    assert not planted if expected else len(planted) == 2


def test_a_daemon_is_killed_on_close(any_mode):
    """Finding 5: a double fork and setsid leave the process group; close() kills it all the same (the
    grading process is the orphans' subreaper; as root, the uid's processes are killed too)."""
    code = ("import os, time\nr, w = os.pipe()\nif os.fork() == 0:\n    os.setsid()\n    pid = os.fork()\n"
            "    if pid == 0:\n        time.sleep(300)\n    os.write(w, str(pid).encode())\n    os._exit(0)\n"
            "time.sleep(0.5)\nos.close(w)\ndaemon = int(os.read(r, 32))\n")
    with Sandbox(PREAMBLE, Limits()) as sb:
        assert run(sb, code)["ok"]
        daemon = get(sb, "daemon")
        inside = sb.isolation.get("pid_namespace")
    if not inside:  # a pid of our namespace: it must be gone (or a zombie)
        time.sleep(0.2)
        assert not os.path.exists(f"/proc/{daemon}") or open(f"/proc/{daemon}/stat").read().split()[2] in "ZX"


def test_zip_bombs_and_foreign_frames_are_refused():
    """Finding 3: a deflated reply is refused before decoding, whatever its size; so is one over the cap."""
    import zipfile

    import torch

    buffer = io.BytesIO()
    torch.save({"value": torch.zeros(1 << 16)}, buffer)
    check_payload(buffer.getvalue(), 1 << 20)
    with pytest.raises(ValueError, match="over|more than"):
        check_payload(buffer.getvalue(), 1 << 10)
    plain, out = zipfile.ZipFile(io.BytesIO(buffer.getvalue())), io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for entry in plain.infolist():
            z.writestr(entry.filename, plain.read(entry.filename))
    with pytest.raises(ValueError, match="compressed"):
        check_payload(out.getvalue(), 1 << 30)
    with pytest.raises(ValueError, match="not an answer"):
        check_payload(b"junk", 1 << 30)


def test_only_regular_notebooks_are_read(tmp_path):
    """Findings 2, 4 and 9: symlinks, FIFOs, hard links, folders leading elsewhere, oversized and deeply nested
    files are refused with a reason (the grade reports them as unreadable)."""
    good = tmp_path / "class" / "good.ipynb"
    good.parent.mkdir()
    good.write_text('{"cells": []}')
    assert read_notebook(good, tmp_path / "class") == {"cells": []}
    (tmp_path / "class" / "link.ipynb").symlink_to(good)
    os.mkfifo(tmp_path / "class" / "fifo.ipynb")
    os.link(good, tmp_path / "hard.ipynb")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.ipynb").write_text('{"cells": []}')
    (tmp_path / "class" / "dir").symlink_to(tmp_path / "outside")
    (tmp_path / "class" / "deep.ipynb").write_text('{"cells": ' + "[" * 100_000 + "]" * 100_000 + "}")
    (tmp_path / "class" / "big.ipynb").write_text('{"cells": []}' + " " * (2 << 20))
    for name, reason in (("link.ipynb", "symlink"), ("fifo.ipynb", "not a regular file"),
                         ("dir/x.ipynb", "outside"), ("deep.ipynb", "nested too deeply")):
        with pytest.raises(ValueError, match=reason):
            read_notebook(tmp_path / "class" / name, tmp_path / "class")
    with pytest.raises(ValueError, match="hard link"):
        read_notebook(good)
    with pytest.raises(ValueError, match="cap"):
        read_notebook(tmp_path / "class" / "big.ipynb", max_mib=1)

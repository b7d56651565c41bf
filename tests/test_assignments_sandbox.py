"""The sandbox's limits, one at a time: as root (privilege drop, namespaces) and in the documented fallback.

The fallback (`TC_SANDBOX_FALLBACK=1`, what a grader not running as root gets) keeps no privilege drop and no PID
namespace; the memory, CPU, output, wall-clock and scratch-directory limits must still hold.
"""
import os
import socket
import subprocess
import sys
import time

import pytest

from transformer_course.assignments.sandbox import Limits, Sandbox, SandboxError, live_processes

PREAMBLE = "import math\nimport torch\n"
ROOT = os.geteuid() == 0
# Whether root may unshare a network namespace here (a container without CAP_SYS_ADMIN may not: the
# sandbox then records it and runs on, the documented fallback).
NAMESPACES = ROOT and subprocess.run(
    [sys.executable, "-c", "import ctypes, sys; sys.exit(ctypes.CDLL(None).unshare(0x40000000) != 0)"]
).returncode == 0

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

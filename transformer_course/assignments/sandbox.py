"""The child process that runs one submission's code, and the limits it runs under.

`Sandbox` starts `python -m transformer_course.assignments.sandbox` in a new session (its own process group),
with a scratch working directory made by `tempfile`, `OMP_NUM_THREADS=1` and a near-empty environment. The
child runs the chapter's preamble (trusted: the package's own imports), then, before reading any student code,
applies `Limits`: `RLIMIT_AS` (memory), `RLIMIT_CPU`, `RLIMIT_FSIZE` (output, including what it prints),
`RLIMIT_NPROC` (processes and threads), no core files; as root it also unshares a network namespace (no
interface but a loopback that is down) and a PID namespace with `unshare(2)` through ctypes, and drops to an
unprivileged uid/gid of its own: each sandbox locks one of `Limits.uid .. Limits.uid + 255` (a lock file in a
root-only folder), so no two sandboxes of any grading runs on the machine share a uid, and one submission's
processes never count against another's. The parent enforces the wall-clock limit and ends every run with
`killpg` plus, as root, a kill of every process left with the sandbox's uid (a child that called `setsid`
leaves the group, not the uid).

Not as root, or with `TC_SANDBOX_FALLBACK=1`: no privilege drop and no PID namespace; the network namespace is
tried through an unprivileged user namespace and otherwise skipped (reported in `Sandbox.isolation`). The
memory, CPU, output, wall-clock and scratch-directory limits hold in both modes; `RLIMIT_NPROC` counts all of the
grading user's processes, and the child can read and delete what the grading user can.

The pipe protocol: frames `b"TCG1" + <8-byte length> + payload`. Parent to child: pickle (the child trusts the
parent). Child to parent: `torch.save` of a plain dict, read with `torch.load(weights_only=True)` under a size
cap, so nothing the child sends can run code in the parent.
Leaves out: seccomp, containers, cgroups; see book/instructors.md for what that means.
"""
import ctypes
import io
import os
import pickle
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

MAGIC = b"TCG1"
CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWUSER = 0x40000000, 0x20000000, 0x10000000
MiB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """What one submission's process may use. Each is a command-line option of `grade` (see book/instructors.md)."""
    wall_s: float = 30.0          # per exercise: running its cells, then every call the checker makes
    cpu_s: int = 120              # RLIMIT_CPU of the whole process (SIGXCPU, then SIGKILL)
    memory_mib: int = 3072        # RLIMIT_AS: address space, torch and the preamble included (~1.5 GiB)
    output_mib: int = 16          # RLIMIT_FSIZE: the largest file it may write, its printed output included
    nproc: int = 64               # RLIMIT_NPROC: processes and threads of the unprivileged uid
    reply_mib: int = 64           # the largest answer the parent accepts from the child
    startup_s: float = 90.0       # starting Python, torch and the preamble
    uid: int = 64000              # first uid/gid for the privilege drop; each sandbox locks one of uid .. uid+255


class SandboxError(Exception):
    """The child did not answer: `kind` is "timeout" or "crashed"; str() says why, in words for a student."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def fallback_forced() -> bool:
    return os.environ.get("TC_SANDBOX_FALLBACK", "") not in ("", "0")


def _frame(payload: bytes) -> bytes:
    return MAGIC + struct.pack("<Q", len(payload)) + payload


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Sandbox:
    """One child process for one submission of one chapter. Use `start()`, `request()`, `close()`."""

    def __init__(self, preamble: str, limits: Limits = Limits(), slot: int = 0):
        self.preamble, self.limits, self.slot = preamble, limits, slot
        self.proc = None
        self.scratch = None
        self.isolation: dict = {}
        self._next = 0
        self._buffer = b""
        self.privileged = os.geteuid() == 0 and not fallback_forced()
        self.uid = None  # chosen in start(): a uid no other sandbox on this machine holds
        self._lock = None
        self._owner = os.getpid()  # a checker's forked process shares the pipes, not the right to wait()

    # ---- the parent's side ----
    def _claim_uid(self) -> None:
        """Lock a uid in [limits.uid, limits.uid + 256) that no other sandbox (of any grading run) holds."""
        import fcntl

        folder = os.path.join(tempfile.gettempdir(), "tc-grade-uids")
        os.makedirs(folder, mode=0o700, exist_ok=True)
        info = os.lstat(folder)
        if info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise SandboxError("crashed", f"{folder} must be a folder of the grading user with mode 700")
        for k in range(256):
            uid = self.limits.uid + (self.slot + k) % 256
            handle = open(os.path.join(folder, f"{uid}.lock"), "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            self.uid, self._lock = uid, handle
            while _kill_uid(uid):  # left over from a run that was itself killed
                time.sleep(0.02)
            return
        raise SandboxError("crashed", "all 256 sandbox uids are in use")

    def start(self) -> None:
        if self.privileged:
            self._claim_uid()
        else:
            self.uid = os.getuid()
        self.scratch = tempfile.mkdtemp(prefix="tc-grade-")
        log = os.path.join(self.scratch, "output.log")
        with open(log, "wb"):
            pass
        if self.privileged:
            os.chown(self.scratch, self.uid, self.uid)
            os.chown(log, self.uid, self.uid)
        os.chmod(self.scratch, 0o700)
        env = {"PATH": "/usr/bin:/bin", "HOME": self.scratch, "TMPDIR": self.scratch, "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MPLBACKEND": "Agg",
               "MPLCONFIGDIR": self.scratch, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0",
               "no_proxy": "*", "TC_SANDBOX_CHILD": "1"}
        for key in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "PYTHONPATH"):
            if key in os.environ:
                env[key] = os.environ[key]
        with open(log, "ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "transformer_course.assignments.sandbox"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=stderr, cwd=self.scratch, env=env, start_new_session=True,
                close_fds=True)
        config = {"preamble": self.preamble, "limits": asdict(self.limits), "scratch": self.scratch,
                  "privileged": self.privileged, "uid": self.uid}
        reply = self.request("start", time.monotonic() + self.limits.startup_s, config=config)
        if not reply["ok"]:
            self.close()
            raise SandboxError("crashed", f"the grader could not start: {reply['error']}")
        self.isolation = reply["value"]

    @property
    def alive(self) -> bool:
        if self.proc is None:
            return False
        if os.getpid() != self._owner:
            return True  # only the owner can tell; a dead child shows as a closed pipe
        return self.proc.poll() is None

    def request(self, op: str, deadline: float, **fields) -> dict:
        """Send one request; return the child's reply dict, or raise `SandboxError` (the child is then closed
        by the caller: after a timeout or a crash its state is unknown).

        Arguments that are functions which pickle cannot send (a checker's lambda) stay here: the child gets a
        stand-in that calls back, and this loop runs the function on the child's (plain-data) arguments.
        """
        self._next += 1
        ident = (os.getpid(), self._next)  # unique in a forked checker process too
        callbacks = {}
        for key in ("args", "kwargs"):
            if key in fields:
                fields[key] = _swap_callables(fields[key], callbacks)
        try:
            self._send({"op": op, "id": ident, **fields})
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise SandboxError("crashed", f"the grader could not send the checker's inputs ({exc})") from None
        while True:
            reply = self._read(deadline)
            if isinstance(reply, dict) and reply.get("callback") is not None and reply.get("id") == ident:
                fn = callbacks.get(reply["callback"])
                try:
                    answer = {"ok": True, "value": fn(*reply["args"], **reply["kwargs"])}
                except Exception as exc:  # noqa: BLE001 - the student passed it wrong arguments, say
                    answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                self._send({"op": "callback-result", "id": ident, **answer})
                continue
            if isinstance(reply, dict) and reply.get("id") == ident:
                return reply

    def _send(self, message: dict) -> None:
        data = _frame(pickle.dumps(message))
        try:
            _write_all(self.proc.stdin.fileno(), data)
        except OSError:
            raise SandboxError("crashed", self._death()) from None

    def _read(self, deadline: float):
        import torch

        fd = self.proc.stdout.fileno()
        cap = self.limits.reply_mib * MiB
        while True:
            if len(self._buffer) >= 12:
                if self._buffer[:4] != MAGIC:
                    self.close()
                    raise SandboxError("crashed", "the process sent something that is not an answer")
                size = struct.unpack("<Q", self._buffer[4:12])[0]
                if size > cap:
                    self.close()
                    raise SandboxError("crashed", f"the answer is larger than the {self.limits.reply_mib} MiB cap")
                if len(self._buffer) >= 12 + size:
                    payload, self._buffer = self._buffer[12:12 + size], self._buffer[12 + size:]
                    try:
                        return torch.load(io.BytesIO(payload), weights_only=True)
                    except Exception as exc:  # noqa: BLE001 - anything the child sent that is not plain data
                        self.close()
                        raise SandboxError("crashed", f"it sent an answer that is not plain data ({exc})") from None
            left = deadline - time.monotonic()
            if left <= 0:
                raise SandboxError("timeout", "timeout")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise SandboxError("crashed", self._death())
            self._buffer += chunk

    def resync(self, seconds: float = 2.0) -> bool:
        """After a checker ran (in a forked process that used this pipe): is the child idle and in step?"""
        if not self.alive:
            return False
        try:
            self._buffer = b""
            reply = self.request("ping", time.monotonic() + seconds)
            return reply["ok"]
        except SandboxError:
            return False

    def _death(self) -> str:
        if os.getpid() != self._owner:
            return "the process ended (did the code call exit() or os._exit(), or run out of CPU time?)"
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "the process stopped answering"
        if code < 0:
            sig = -code
            if sig == signal.SIGXCPU:
                return f"it used up its CPU time limit ({self.limits.cpu_s} s)"
            if sig == signal.SIGKILL:
                return f"it was killed (CPU time limit of {self.limits.cpu_s} s, or out of memory)"
            return f"it was killed by signal {signal.Signals(sig).name}"
        return f"the process exited with code {code} (did the code call exit() or os._exit()?)"

    def output_tail(self, n: int = 2000) -> str:
        """The last `n` characters the child printed (its output.log)."""
        try:
            with open(os.path.join(self.scratch, "output.log"), "rb") as f:
                f.seek(max(0, os.path.getsize(f.name) - n))
                return f.read().decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""

    def close(self) -> None:
        """Kill the child's process group (and, as root, every process of the slot's uid); remove the scratch."""
        if os.getpid() != self._owner:  # in a checker's fork: the owner closes
            return
        if self.proc is not None:
            for _ in range(250):  # up to 5 s: a fork bomb keeps forking while it is killed
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                left = _kill_uid(self.uid) if self.privileged else 0
                if self.proc.poll() is not None and not left:
                    break
                time.sleep(0.02)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (self.proc.stdin, self.proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            self.proc = None
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None
        if self._lock is not None:
            self._lock.close()  # releases the uid
            self._lock = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()


class _Callback:
    """Stands, in the child, for a function the parent keeps (see `Sandbox.request`)."""

    def __init__(self, key: int):
        self.key = key


def _swap_callables(value, callbacks: dict):
    if isinstance(value, dict):
        return {k: _swap_callables(v, callbacks) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return type(value)(_swap_callables(v, callbacks) for v in value)
    if callable(value) and not isinstance(value, type):
        try:
            pickle.dumps(value)
        except Exception:  # noqa: BLE001 - a lambda or closure: keep it here
            callbacks[len(callbacks)] = value
            return _Callback(len(callbacks) - 1)
    return value


_PLAIN = (int, float, bool, str, bytes, complex, type(None))


def plain(value, depth: int = 0) -> bool:
    """Is `value` plain data: numbers, strings, None, tensors, torch.Size and lists/tuples/dicts of them?"""
    import torch

    if depth > 20:
        return False
    if type(value) in _PLAIN or isinstance(value, (torch.Tensor, torch.Size, torch.dtype)) and \
            not isinstance(value, torch.nn.Parameter):
        return True
    if type(value) in (list, tuple):
        return all(plain(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(plain(k, depth + 1) and plain(v, depth + 1) for k, v in value.items())
    return False


def _kill_uid(uid: int) -> int:
    """SIGKILL every live process whose real uid is `uid`; return how many were found (zombies not counted)."""
    found = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
            if int(status["Uid"].split()[0]) == uid and not status["State"].strip().startswith(("Z", "X")):
                found += 1
                os.kill(int(name), signal.SIGKILL)
        except (OSError, KeyError, ValueError):
            continue
    return found


def live_processes(uid: int) -> list:
    """The pids of the live (not zombie) processes of `uid`."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/status") as f:
                    status = dict(line.split(":", 1) for line in f if ":" in line)
                if int(status["Uid"].split()[0]) == uid and not status["State"].strip().startswith(("Z", "X")):
                    out.append(int(name))
            except (OSError, KeyError, ValueError):
                continue
    return out


# ---- the child's side ----
def _unshare(flags: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.unshare(flags) == 0
    except (OSError, AttributeError):
        return False


def _apply_limits(config: dict) -> dict:
    limits, info = config["limits"], {}
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past RLIMIT_FSIZE then fails with EFBIG
    for name, value in (("RLIMIT_CORE", 0), ("RLIMIT_FSIZE", limits["output_mib"] * MiB),
                        ("RLIMIT_CPU", limits["cpu_s"]), ("RLIMIT_NPROC", limits["nproc"]),
                        ("RLIMIT_AS", limits["memory_mib"] * MiB)):
        if name == "RLIMIT_NPROC" and not config["privileged"]:
            continue  # it would count all of the grading user's processes: see the module docstring
        kind = getattr(resource, name)
        if name == "RLIMIT_CPU":
            resource.setrlimit(kind, (value, value + 5))
        else:
            resource.setrlimit(kind, (value, value))
    if config["privileged"]:
        info["network_namespace"] = _unshare(CLONE_NEWNET)
        info["pid_namespace"] = _unshare(CLONE_NEWPID)
        uid = config["uid"]
        _keep_import_paths()
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        info["uid"] = os.getuid()
    else:
        uid, gid = os.getuid(), os.getgid()
        info["network_namespace"] = False
        if _unshare(CLONE_NEWUSER | CLONE_NEWNET):
            try:  # map ourselves to the same ids, so that files keep their owner
                with open("/proc/self/setgroups", "w") as f:
                    f.write("deny")
                with open("/proc/self/uid_map", "w") as f:
                    f.write(f"{uid} {uid} 1")
                with open("/proc/self/gid_map", "w") as f:
                    f.write(f"{gid} {gid} 1")
                info["network_namespace"] = True
            except OSError:
                info["network_namespace"] = True  # the namespace exists; the ids are unmapped
        elif os.geteuid() == 0:  # forced fallback as root: a network namespace needs no user namespace
            info["network_namespace"] = _unshare(CLONE_NEWNET)
        info["pid_namespace"] = False
        info["uid"] = os.getuid()
    info["limits"] = {k: limits[k] for k in ("cpu_s", "memory_mib", "output_mib", "nproc")}
    return info


def _keep_import_paths() -> None:
    """Keep `import` working after the drop when Python lives under a private folder (e.g. /root/.pyenv).

    Each directory on sys.path is opened now and replaced by /proc/self/fd/N: lookups through that link start
    at the open directory, so a folder above it that the unprivileged uid may not enter does not matter, while
    what lies below keeps its own permissions.
    """
    import importlib

    moved = {}
    for i, entry in enumerate(list(sys.path)):
        if entry and os.path.isdir(entry):
            try:
                fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                continue
            sys.path[i] = moved[os.path.abspath(entry)] = f"/proc/self/fd/{fd}"

    def relink(path):
        for old, new in moved.items():
            if path == old or path.startswith(old + os.sep):
                return new + path[len(old):]
        return path

    for module in list(sys.modules.values()):  # packages already imported look for submodules in __path__
        search = getattr(module, "__path__", None)
        if isinstance(search, list):
            search[:] = [relink(p) for p in search]
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()


def _describe(exc: BaseException) -> str:
    tb = exc.__traceback__
    where = ""
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith("<cell "):
            where = f"{tb.tb_frame.f_code.co_filename[1:-1]}, line {tb.tb_lineno}: "
        tb = tb.tb_next
    text = str(exc).strip()
    return where + (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _child_main() -> None:
    import torch  # imported before the limits, as the preamble is

    from .modules import module_state, returned_argument

    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # the student's prints go to output.log (stderr), capped by RLIMIT_FSIZE
    sys.stdout = sys.stderr  # noqa: the same file
    reader = os.fdopen(proto_in, "rb", buffering=0)
    cap = MiB

    def read_message():
        header = _read_exact(reader, 12)
        if header is None:
            return None
        if header[:4] != MAGIC:
            os._exit(3)
        return pickle.loads(_read_exact(reader, struct.unpack("<Q", header[4:])[0]))

    def reply(ident, ok, value=None, error=None):
        buffer = io.BytesIO()
        if not plain(value):
            error = (f"TypeError: it returned a {type(value).__name__}: the grader takes back only numbers, strings, "
                     f"tensors and lists, tuples or dicts of them")
            ok, value = False, None
        try:
            torch.save({"id": ident, "ok": ok, "value": value, "error": error}, buffer)
        except Exception as exc:  # noqa: BLE001 - e.g. a function or a module: not plain data
            buffer = io.BytesIO()
            torch.save({"id": ident, "ok": False, "value": None, "unsendable": True,
                        "error": f"a {type(value).__name__} cannot be sent back to the grader ({exc})"}, buffer)
        data = buffer.getvalue()
        if len(data) > cap:
            buffer = io.BytesIO()
            torch.save({"id": ident, "ok": False, "value": None,
                        "error": f"the answer is {len(data) / MiB:.0f} MiB, over the cap"}, buffer)
            data = buffer.getvalue()
        _write_all(proto_out, _frame(data))

    current = [None]  # the id of the request being served, for callbacks

    def call_back(key, args, kwargs):
        buffer = io.BytesIO()
        torch.save({"id": current[0], "callback": key, "args": args, "kwargs": kwargs}, buffer)
        _write_all(proto_out, _frame(buffer.getvalue()))
        answer = read_message()
        if answer is None:
            os._exit(0)
        if not answer["ok"]:
            raise RuntimeError(answer["error"])
        return answer["value"]

    def unwrap(value):
        if isinstance(value, _Callback):
            return lambda *a, **k: call_back(value.key, a, k)
        if type(value) in (list, tuple):
            return type(value)(unwrap(v) for v in value)
        if type(value) is dict:
            return {k: unwrap(v) for k, v in value.items()}
        return value

    base: dict = {"__name__": "__main__", "__builtins__": __builtins__}
    spaces: dict = {}
    while True:
        message = read_message()
        if message is None:
            os._exit(0)
        op, ident = message["op"], message["id"]
        current[0] = ident
        try:
            if op == "start":
                config = message["config"]
                cap = config["limits"]["reply_mib"] * MiB
                exec(compile(config["preamble"], "<preamble>", "exec"), base)
                info = _apply_limits(config)
                os.chdir(config["scratch"])
                reply(ident, True, info)
            elif op == "ping":
                reply(ident, True, "pong")
            elif op == "exec":
                space = dict(base)
                spaces[message["ns"]] = space
                for index, text in message["code"]:
                    exec(compile(text, f"<cell {index}>", "exec"), space)
                reply(ident, True)
            elif op == "kind":
                space = spaces[message["ns"]]
                name = message["name"]
                reply(ident, True, "missing" if name not in space else
                      "function" if callable(space[name]) else "value")
            elif op == "get":
                reply(ident, True, spaces[message["ns"]][message["name"]])
            elif op == "call":
                fn = spaces[message["ns"]][message["name"]]
                args = unwrap(message["args"])
                value = fn(*args, **unwrap(message["kwargs"]))
                index = returned_argument(value, args)
                if index is not None:  # a module argument, changed in place: its state as plain data
                    value = {"__returned_argument__": index, "state": module_state(value)}
                reply(ident, True, value)
            else:
                reply(ident, False, error=f"unknown request {op!r}")
        except BaseException as exc:  # noqa: BLE001 - the student's code may raise anything, SystemExit too
            try:
                reply(ident, False, error=_describe(exc), value=None)
            except BaseException:  # noqa: BLE001
                os._exit(4)


def _read_exact(reader, n: int):
    data = b""
    while len(data) < n:
        chunk = reader.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


if __name__ == "__main__":
    from transformer_course.assignments.sandbox import _child_main as main  # one copy of the module's classes

    main()

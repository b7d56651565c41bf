"""The child process that runs one submission's code, and the limits it runs under.

`Sandbox` starts `python -m transformer_course.assignments.sandbox` in a new session (its own process group),
with a scratch working directory made by `tempfile`, `OMP_NUM_THREADS=1` and a near-empty environment. The
child runs the chapter's preamble (trusted: the package's own imports), then, before reading any student code,
applies `Limits`: `RLIMIT_AS` (memory), `RLIMIT_CPU`, `RLIMIT_FSIZE` (output, including what it prints),
`RLIMIT_NPROC` (processes and threads), no core files; as root it also unshares a network namespace (no
interface but a loopback that is down) and a PID namespace with `unshare(2)` through ctypes, and drops to an
unprivileged uid/gid of its own: each sandbox locks one of `Limits.uid .. Limits.uid + 255` (a lock file in a
root-only folder), so no two sandboxes of any grading runs on the machine share a uid, and one submission's
processes never count against another's. Before the drop it unshares a mount namespace (`_private_mounts`):
an empty read-only tmpfs over the repository's book/, _build/, tests/ and the `hide` folders (submissions,
manifest, results), a private tmpfs of `Limits.disk_mib` over /tmp, /var/tmp, /dev/shm and the scratch folder.
The parent enforces the wall-clock limit and ends every run with `killpg`, a kill of every descendant and of
every orphan reparented to it (the parent is a subreaper, PR_SET_CHILD_SUBREAPER) plus, as root, of every
process left with the sandbox's uid.

Not as root, or with `TC_SANDBOX_FALLBACK=1`: no privilege drop and no PID namespace; the network and mount
namespaces are tried inside an unprivileged user namespace and otherwise skipped (`TC_SANDBOX_FALLBACK=2`
skips them, as a host refusing them would). What was got is in `Sandbox.isolation`. The memory, CPU, output,
wall-clock and scratch-directory limits and the killing of every descendant hold in every mode; `RLIMIT_NPROC`
would count all of the grading user's processes (not set), and without namespaces the child can read and
delete what the grading user can.

The pipe protocol: frames `b"TCG1" + <8-byte length> + <request id: two 8-byte ints> + payload`. Parent to
child: pickle (the child trusts the parent). Child to parent: `torch.save` of a plain dict; a frame answering
another request than the one awaited kills the child before decoding, the payload must be a zip of stored
entries within the size cap (`check_payload`: no zip bomb), then `torch.load(weights_only=True)`, so nothing
the child sends can run code in, or exhaust, the parent.
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
import zipfile
from dataclasses import asdict, dataclass

MAGIC = b"TCG1"
CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWUSER, CLONE_NEWNS = 0x40000000, 0x20000000, 0x10000000, 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 1 << 12, 1 << 14, 1 << 18
PR_SET_CHILD_SUBREAPER = 36
PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm")
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
    disk_mib: int = 64            # size of each private tmpfs (scratch, /tmp, /var/tmp, /dev/shm) with namespaces


class SandboxError(Exception):
    """The child did not answer: `kind` is "timeout" or "crashed"; str() says why, in words for a student."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def fallback_forced() -> bool:
    return os.environ.get("TC_SANDBOX_FALLBACK", "") not in ("", "0")


def namespaces_refused() -> bool:
    """`TC_SANDBOX_FALLBACK=2`: the fallback as on a host that refuses every namespace (for the tests)."""
    return os.environ.get("TC_SANDBOX_FALLBACK", "") == "2"


HEADER = 28  # MAGIC, the payload's length, the request id (pid, number) it answers


def _frame(payload: bytes, ident=(0, 0)) -> bytes:
    return MAGIC + struct.pack("<Qqq", len(payload), *ident) + payload


def check_payload(payload: bytes, cap: int) -> None:
    """Refuse, before torch.load decodes it, a reply that is not a zip of stored (uncompressed) entries adding
    up to at most `cap` bytes: a deflated entry could decode to gigabytes (a zip bomb)."""
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as z:
            entries = z.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ValueError(f"not an answer ({exc})") from None
    if any(e.compress_type != zipfile.ZIP_STORED or e.file_size != e.compress_size for e in entries):
        raise ValueError("a compressed answer (the grader accepts stored entries only)")
    if sum(e.file_size for e in entries) > cap:
        raise ValueError(f"the answer unpacks to more than {cap // MiB} MiB")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Sandbox:
    """One child process for one submission of one chapter. Use `start()`, `request()`, `close()`."""

    live: set = set()  # pids of this process's running sandbox children

    def __init__(self, preamble: str, limits: Limits = Limits(), slot: int = 0, hide=()):
        """`hide`: folders to cover with an empty tmpfs in the child (with a mount namespace), besides the
        repository's book/, _build/ and tests/."""
        self.preamble, self.limits, self.slot = preamble, limits, slot
        self.hide = [os.path.abspath(h) for h in hide]
        self._since = 0
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
        set_subreaper()  # what the child leaves behind (a double fork, setsid) comes back here, to be killed
        self._since = clock_ticks()
        with open(log, "ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "transformer_course.assignments.sandbox"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=stderr, cwd=self.scratch, env=env, start_new_session=True,
                close_fds=True)
        Sandbox.live.add(self.proc.pid)
        config = {"preamble": self.preamble, "limits": asdict(self.limits), "scratch": self.scratch,
                  "privileged": self.privileged, "uid": self.uid, "hide": hidden_folders(self.hide),
                  "no_namespaces": namespaces_refused()}
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
        self._awaited = ident
        callbacks = {}
        for key in ("args", "kwargs"):
            if key in fields:
                fields[key] = _swap_callables(fields[key], callbacks)
        try:
            self._send({"op": op, "id": ident, **fields})
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise SandboxError("crashed", f"the grader could not send the checker's inputs ({exc})") from None
        while True:
            reply = self._read(deadline, ident)
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
            self.close()
            raise SandboxError("crashed", "the process sent an answer that is not one")

    def _send(self, message: dict) -> None:
        data = _frame(pickle.dumps(message), message["id"])
        try:
            _write_all(self.proc.stdin.fileno(), data)
        except OSError:
            raise SandboxError("crashed", self._death()) from None

    def _read(self, deadline: float, ident):
        """The next frame, decoded: it must answer `ident` (checked before decoding) and pass `check_payload`;
        anything else kills the child (the student's code can write to the pipe)."""
        import torch

        fd = self.proc.stdout.fileno()
        cap = self.limits.reply_mib * MiB
        while True:
            if len(self._buffer) >= HEADER:
                if self._buffer[:4] != MAGIC:
                    self.close()
                    raise SandboxError("crashed", "the process sent something that is not an answer")
                size, pid, number = struct.unpack("<Qqq", self._buffer[4:HEADER])
                if (pid, number) != tuple(ident):
                    self.close()
                    raise SandboxError("crashed", "the process sent an answer to a question the grader did not ask")
                if size > cap:
                    self.close()
                    raise SandboxError("crashed", f"the answer is larger than the {self.limits.reply_mib} MiB cap")
                if len(self._buffer) >= HEADER + size:
                    payload, self._buffer = self._buffer[HEADER:HEADER + size], self._buffer[HEADER + size:]
                    try:
                        check_payload(payload, cap)
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
            Sandbox.live.discard(self.proc.pid)
            for _ in range(250):  # up to 5 s: a fork bomb keeps forking while it is killed
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                left = _kill_uid(self.uid) if self.privileged else 0
                left += _kill_pids(descendants(self.proc.pid))
                if self.proc.poll() is not None and not left:
                    break
                time.sleep(0.02)
            # orphans (a double fork, setsid) reparented to this process, its subreaper; not other sandboxes'
            others = set(Sandbox.live)
            for pid in Sandbox.live:
                others.update(descendants(pid))
            kill_strays(self._since, others)
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


def set_subreaper() -> bool:
    """prctl(PR_SET_CHILD_SUBREAPER): orphans among this process's descendants reparent to it, not to init."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def clock_ticks() -> int:
    """Now, in the unit of /proc/PID/stat's start time (clock ticks since boot)."""
    with open("/proc/uptime") as f:
        return int(float(f.read().split()[0]) * os.sysconf("SC_CLK_TCK")) - 1


def _processes() -> dict:
    """{pid: (ppid, start time in clock ticks, state letter)} of every process."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                table[int(name)] = (int(fields[1]), int(fields[19]), fields[0])
            except (OSError, IndexError, ValueError):
                continue
    return table


def descendants(root: int, since: int = 0, table=None) -> list:
    """The live (not zombie) descendants of `root` started at or after `since` (clock ticks), by ppid links."""
    table = _processes() if table is None else table
    children: dict = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            if table[pid][1] >= since and table[pid][2] not in "ZX":
                found.append(pid)
            todo.append(pid)
    return found


def _kill_pids(pids) -> int:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return len(pids)


def kill_strays(since: int, keep=()) -> list:
    """Kill this process's descendants started since `since` (clock ticks) except `keep` and theirs; reap
    those that were its children. Returns those still alive after 5 s (none, unless something is wrong)."""
    keep = set(keep)
    left = []
    for _ in range(250):
        table = _processes()
        spared = set(keep)
        for pid in keep:
            spared.update(descendants(pid, table=table))
        left = [p for p in descendants(os.getpid(), since, table) if p not in spared]
        _kill_pids(left)
        for pid, (ppid, _, state) in table.items():  # reap the zombies that are ours and nobody else's
            if ppid == os.getpid() and pid not in spared and table[pid][1] >= since:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
        if not left:
            return []
        time.sleep(0.02)
    return left


def repository_folders() -> list:
    """book/, _build/ and tests/ beside the installed package, where they exist (a checkout)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return [os.path.join(root, d) for d in ("book", "_build", "tests") if os.path.isdir(os.path.join(root, d))]


def needed_folders() -> list:
    """What the child must still reach: the folder holding the package, and Python's prefixes."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [os.path.realpath(p) for p in (package, sys.prefix, sys.base_prefix)]


def hidden_folders(extra=()) -> list:
    """The folders the child covers: the repository's and `extra`, except any holding the package or Python
    (covering those would break the child's imports: they are then left visible, which isolation reports)."""
    needed = needed_folders()
    out = []
    for folder in [*repository_folders(), *extra]:
        real = os.path.realpath(folder)
        if os.path.isdir(real) and real not in out and \
                not any(n == real or n.startswith(real.rstrip("/") + "/") for n in needed):
            out.append(real)
    return out


# ---- the child's side ----
def _unshare(flags: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.unshare(flags) == 0
    except (OSError, AttributeError):
        return False


def _mount(source, target: str, fstype, flags: int, data=None) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    encode = lambda text: text.encode() if text is not None else None  # noqa: E731
    return libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data)) == 0


def _private_mounts(config: dict, uid: int, gid: int) -> dict:
    """A mount namespace of the child's own: an empty read-only tmpfs over each folder of `config["hide"]`
    (the book, the other submissions, the manifest's and the results folder), a private tmpfs of `disk_mib`
    over /tmp, /var/tmp, /dev/shm and the scratch folder. The host's mounts are untouched (MS_PRIVATE)."""
    info = {"mount_namespace": False, "hidden": [], "private_tmp": [], "not_hidden": [], "bound_back": []}
    if not (_unshare(CLONE_NEWNS) and _mount(None, "/", None, MS_REC | MS_PRIVATE)):
        info["not_hidden"] = list(config["hide"])
        return info
    info["mount_namespace"] = True
    size, scratch = config["limits"]["disk_mib"], config["scratch"]
    safe = MS_NOSUID | MS_NODEV
    covered = lambda path, top: path == top or path.startswith(top.rstrip("/") + "/")  # noqa: E731
    for folder in PRIVATE_TMP:
        if not os.path.isdir(folder):
            continue
        # The course itself may live under /tmp (a fresh clone): keep a handle on each needed folder
        # there, cover the folder, then bind the host's copy back at the same path.
        inside = [n for n in needed_folders() if covered(n, folder)]
        handles = [os.open(n, os.O_PATH | os.O_DIRECTORY) for n in inside]
        try:
            if not _mount("tc-grade", folder, "tmpfs", safe, f"size={size}m,mode=1777"):
                continue
            info["private_tmp"].append(folder)
            for path, fd in zip(inside, handles):
                os.makedirs(path, exist_ok=True)
                if _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC):
                    info["bound_back"].append(path)
        finally:
            for fd in handles:
                os.close(fd)
    for folder in config["hide"]:
        if any(covered(folder, top) for top in info["private_tmp"]) and \
                not any(covered(folder, back) for back in info["bound_back"]):
            info["hidden"].append(folder)  # gone with the host's /tmp
        elif not covered(scratch, folder) and \
                _mount("tc-grade", folder, "tmpfs", safe | MS_RDONLY, "size=4k,mode=755"):
            info["hidden"].append(folder)
        else:
            info["not_hidden"].append(folder)
    os.makedirs(scratch, exist_ok=True)  # inside the private /tmp: the same path, a fresh folder
    if _mount("tc-grade", scratch, "tmpfs", safe, f"size={size}m,mode=700,uid={uid},gid={gid}"):
        info["private_tmp"].append(scratch)
    return info


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
        info.update(_private_mounts(config, uid, uid))
        _keep_import_paths()
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        info["uid"] = os.getuid()
    else:
        uid, gid = os.getuid(), os.getgid()
        info["network_namespace"] = False
        if not config["no_namespaces"] and _unshare(CLONE_NEWUSER | CLONE_NEWNET):
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
            info.update(_private_mounts(config, uid, gid))  # the user namespace may mount tmpfs
        elif os.geteuid() == 0 and not config["no_namespaces"]:  # forced fallback as root: no user namespace needed
            info["network_namespace"] = _unshare(CLONE_NEWNET)
        info["pid_namespace"] = False
        info.setdefault("mount_namespace", False)
        info.setdefault("hidden", [])
        info.setdefault("not_hidden", list(config["hide"]))
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
        header = _read_exact(reader, HEADER)
        if header is None:
            return None
        if header[:4] != MAGIC:
            os._exit(3)
        return pickle.loads(_read_exact(reader, struct.unpack("<Qqq", header[4:])[0]))

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
        _write_all(proto_out, _frame(data, ident))

    current = [None]  # the id of the request being served, for callbacks

    def call_back(key, args, kwargs):
        buffer = io.BytesIO()
        torch.save({"id": current[0], "callback": key, "args": args, "kwargs": kwargs}, buffer)
        _write_all(proto_out, _frame(buffer.getvalue(), current[0]))
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

    # a notebook's display() and get_ipython() do nothing here, so a cell using them runs as it does locally
    base: dict = {"__name__": "__main__", "__builtins__": __builtins__, "display": _display,
                  "get_ipython": lambda: _NoIPython()}
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


def _display(*args, **kwargs):
    return None


class _NoIPython:
    """What get_ipython() returns in the sandbox: every method does nothing."""

    def __getattr__(self, name):
        return _display


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

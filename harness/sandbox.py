"""
The sandbox a patched experiment's processes run in: no network, nothing writable but the run dir.

A patch is code the agent wrote, running with the user's permissions. Every process that imports it (the import
check and one-step smoke run of harness/patches.py, the training runs, the sealed re-score of model/seal.py) runs
under bubblewrap (the `bwrap` command; Debian's `bubblewrap` package) with
- namespaces of its own for everything: no network (a loopback of its own, so torchrun still works), its own
  process ids, IPC and host name;
- a file system of read-only views: the system (/usr, the lib dirs, /etc with its secret files masked, /sys), the
  Python installation and its packages, the worktree, NANORESEARCH_HOME (data cache, tokenizers, eval bundle) and
  the paths the command reads (--data, --tokenizer, the eval bundle); its own /dev and /proc. Anything else (the
  user's home, the repository, the leaderboard database, the host's /tmp) is not there at all;
- write access to the directories given with --write (the run dir) only, plus a private scratch tmpfs (SCRATCH:
  TMPDIR and HOME point there) that disappears with it;
- an environment of the variables listed in KEPT_ENV only: no credentials, tokens or keys reach it;
- on GPU machines, the NVIDIA device files.
It dies with the job that started it (--die-with-parent), and a signal to the job's process group reaches it.

    python -m harness.sandbox --cwd WORKTREE [--write DIR ...] [--read PATH ...] -- COMMAND...

builds the bwrap command on the machine that runs it (a SLURM node finds its own Python) and execs it, so a job's
command line says what it runs and the executors run it as it is. Without bubblewrap (not Linux, not installed, or
user namespaces disabled), `available()` says why, and `--allow-patches` refuses to start unless `--unsafe-patches`.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

TOOL = "bwrap"
SCRATCH = "/sandbox-tmp"  # the sandboxed process's private scratch space (TMPDIR, HOME), gone when it ends
SYSTEM_DIRS = ("/usr", "/etc", "/sys", "/opt")
LIB_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Files under /etc that hold secrets of the machine: replaced by an empty file (directories by an empty tmpfs).
MASKED = ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-", "/etc/sudoers", "/etc/ssh",
          "/etc/ssl/private", "/etc/sudoers.d", "/etc/security/opasswd")
# Environment variables a sandboxed process keeps (exact names, or prefixes ending in _): what Python, torch, the
# thread pools, CUDA, torchrun and this project read. Everything else (tokens, keys, cloud credentials) is dropped.
KEPT_ENV = ("PATH", "LANG", "LANGUAGE", "TZ", "TERM", "PYTHONHASHSEED", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE",
            "LC_", "OMP_", "MKL_", "OPENBLAS_", "NANORESEARCH_", "CUDA_", "NVIDIA_", "NCCL_", "TORCH_", "TORCHINDUCTOR_",
            "PYTORCH_", "TRITON_", "CUBLAS_", "CUDNN_")


class SandboxError(RuntimeError):
    """The sandbox cannot be used here: one line saying why."""


@functools.cache
def unavailable() -> str | None:
    """Why patched processes cannot be sandboxed on this machine, or None when they can (checked once, by running
    an empty sandbox)."""
    if not sys.platform.startswith("linux"):
        return f"the sandbox needs Linux (bubblewrap); this is {sys.platform}"
    tool = shutil.which(TOOL)
    if tool is None:
        return "bubblewrap is not installed (the `bwrap` command; Debian/Ubuntu: apt-get install bubblewrap)"
    try:
        done = subprocess.run([tool, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc",
                               "--dev", "/dev", "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bubblewrap does not run here: {e}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"bubblewrap cannot create a sandbox here ({last}); user namespaces may be disabled"
    return None


def wrap(command: list[str], *, cwd: Path, write: list[Path] = (), read: list[Path] = ()) -> list[str]:
    """`command` run from `cwd` in the sandbox, as a command line (see the module docstring). What the command line
    names with --out, --data, --tokenizer and --eval-bundle is readable without being listed in `read`."""
    wrapped = [sys.executable, "-m", "harness.sandbox", "--cwd", str(cwd)]
    for path in write:
        wrapped += ["--write", str(path)]
    for path in read:
        wrapped += ["--read", str(path)]
    return [*wrapped, "--", *command]


def reads_of(command: list[str]) -> list[Path]:
    """The paths a `model.train`/`model.seal` command line reads: --out, --data (when it is a local path),
    --tokenizer and --eval-bundle, the data and eval bundle of NANORESEARCH_* variables, and NANORESEARCH_HOME."""
    flags = ("--out", "--data", "--tokenizer", "--eval-bundle")
    paths = [command[i + 1] for i, arg in enumerate(command[:-1]) if arg in flags]
    paths += [os.environ[name] for name in ("NANORESEARCH_DATA", "NANORESEARCH_EVAL_BUNDLE") if os.environ.get(name)]
    from model.home import nanoresearch_home
    return [nanoresearch_home(), *(Path(p) for p in paths if os.path.isabs(p) or os.path.exists(p))]


def python_paths() -> list[Path]:
    """Where this Python and its packages live: the venv, the base installation, and package directories on sys.path
    outside them (never the directory it was started from: that is the user's repository)."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(sys.executable),
             *(p for p in sys.path if os.path.isabs(p) and os.path.basename(p) in ("site-packages", "dist-packages"))}
    return [Path(p) for p in sorted(roots) if os.path.exists(p)]


def bwrap_command(command: list[str], cwd: Path, write: list[Path], read: list[Path]) -> list[str]:
    """The bwrap command line that runs `command` in the sandbox."""
    args = [shutil.which(TOOL) or TOOL, "--unshare-all", "--die-with-parent", "--clearenv"]
    for name, value in sorted(os.environ.items()):
        if name in KEPT_ENV or any(p.endswith("_") and name.startswith(p) for p in KEPT_ENV):
            args += ["--setenv", name, value]
    for name in ("HOME", "TMPDIR"):
        args += ["--setenv", name, SCRATCH]
    args += ["--setenv", "XDG_CACHE_HOME", f"{SCRATCH}/.cache"]
    for d in LIB_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    for d in SYSTEM_DIRS:
        args += ["--ro-bind-try", d, d]
    for path in MASKED:
        if os.path.isdir(path):
            args += ["--tmpfs", path]
        elif os.path.exists(path):
            args += ["--ro-bind", "/dev/null", path]
    # /tmp stays a read-only, empty directory (a run dir or worktree under it appears there); scratch space is a
    # private tmpfs elsewhere, named by TMPDIR and HOME, so a write to the host's /tmp fails instead of vanishing.
    args += ["--proc", "/proc", "--dev", "/dev", "--dir", "/tmp", "--tmpfs", SCRATCH]
    for device in sorted(Path("/dev").glob("nvidia*")):
        args += ["--dev-bind", str(device), str(device)]
    # Read-only views, then the writable ones on top (a run dir may lie inside NANORESEARCH_HOME).
    for path in [*python_paths(), *reads_of(command), *read, cwd]:
        path = Path(path).resolve()
        if path.exists():
            args += ["--ro-bind", str(path), str(path)]
    for path in write:
        path = Path(path).resolve()
        path.mkdir(parents=True, exist_ok=True)
        args += ["--bind", str(path), str(path)]
    # The sandbox's own root (a tmpfs holding the mount points) read-only too: nothing else is writable.
    return [*args, "--remount-ro", "/", "--chdir", str(Path(cwd).resolve()), "--", *command]


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.sandbox --cwd DIR [--write DIR] [--read PATH] -- COMMAND...`: exec COMMAND in the sandbox."""
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("error: usage: python -m harness.sandbox --cwd DIR [--write DIR] [--read PATH] -- COMMAND [ARGS...]",
              file=sys.stderr)
        return 2
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1:]
    cwd, write, read = None, [], []
    pairs = list(zip(options[::2], options[1::2]))
    if len(options) % 2 or not command:
        pairs = []
    for flag, value in pairs:
        if flag == "--cwd":
            cwd = Path(value)
        elif flag == "--write":
            write.append(Path(value))
        elif flag == "--read":
            read.append(Path(value))
        else:
            print(f"error: {flag}: expected --cwd, --write or --read", file=sys.stderr)
            return 2
    if cwd is None or not cwd.is_dir():
        print(f"error: --cwd {cwd}: expected the directory to run the command in", file=sys.stderr)
        return 2
    if why := unavailable():
        print(f"error: cannot sandbox the patched process: {why}", file=sys.stderr)
        return 2
    argv = bwrap_command(command, cwd, write, read)
    # bwrap dies at once on SIGTERM, and its sandbox with it (--die-with-parent: SIGKILL). The job stops a run with
    # SIGTERM to its process group so that the training saves a checkpoint first: so bwrap ignores it (the command
    # inside sets its own handler: model.train saves and exits, and bwrap then exits with its status), and if the job
    # itself dies, bwrap gets SIGKILL and takes the sandbox with it: nothing runs on unwatched.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.execv(argv[0], argv)
    return 1  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main())

"""
Patch mode: a proposed code change (a unified diff restricted to `model/*.py`) tried in its own git worktree.

The user's working tree is never touched. A patch is
1. checked on paper: every path it names (both sides, renames, copies, `diff --git` lines) must be
   `model/<name>.py` with git's a/ and b/ prefixes; no absolute paths, no `..`, no deletions, no binary
   patches, no modes other than a plain file;
2. applied in a fresh `git worktree` of the recorded commit (HEAD of the user's repo) under
   $NANORESEARCH_HOME/worktrees/<experiment id>, and the files git changed there checked again;
3. checked by running it: the patched `model` imports (from the worktree, not from the user's checkout), and a
   one-step training run at depth 1 with tiny settings (`python -m model.train` in the worktree) finishes ok.

Only then may the experiment's jobs run, in that worktree (see harness/jobs.py). A patch that fails any step is
refused with a one-line `PatchError` and its worktree removed. A worktree that passed is marked by a small JSON
file beside it, so a resumed search reuses it instead of checking again. `git worktree prune` in the repo forgets
worktrees whose directory was deleted.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from harness.experiment import format_set
from harness.jobs import REPO, clean_env
from model.run_dir import read_result

# A patch may touch these files only: the model package's own modules (no subpackages, no other file types).
ALLOWED_PATH = re.compile(r"model/[A-Za-z0-9_]+\.py")
# Lines that name a path in a git diff. Any line that could be one is treated as one (a removed line that starts
# with "-- " reads as a header and fails the path check: refusing a good patch is the safe mistake).
HEADER = re.compile(r"^(---|\+\+\+) (.*)$|^(rename from|rename to|copy from|copy to) (.*)$|^diff --git (.*)$")
MODE = re.compile(r"^(new file mode|deleted file mode|old mode|new mode|index [0-9a-f]+\.\.[0-9a-f]+) ?(\d*)$")
MAX_PATCH_CHARS = 200_000
# Settings of the one-step smoke run: a model small enough to build and step in seconds on any CPU.
SMOKE_SETTINGS = {"sequence_len": 64, "device_batch_size": 2, "total_batch_size": 128, "eval_tokens": 128,
                  "eval_every": 0, "log_every": 0, "compile": False}


class PatchError(ValueError):
    """A patch refused: one line saying which check failed and why."""


# -----------------------------------------------------------------------------------------------------------
# 1. On paper

def touched_paths(patch: str) -> list[str]:
    """Every path the diff names, as written after git's a/ or b/ prefix; raises PatchError for anything that is not
    a plain text change to a file inside the repository."""
    if not patch.strip():
        raise PatchError("the patch is empty: expected a unified diff (git diff format) of model/*.py")
    if len(patch) > MAX_PATCH_CHARS:
        raise PatchError(f"the patch has {len(patch)} characters: expected at most {MAX_PATCH_CHARS}")
    if "\x00" in patch or "GIT binary patch" in patch or re.search(r"^Binary files ", patch, re.M):
        raise PatchError("binary patches are not allowed: expected a text diff of model/*.py")
    paths: list[str] = []
    for line in patch.splitlines():
        mode = MODE.match(line)
        if mode and mode.group(1) == "deleted file mode":
            raise PatchError("the patch deletes a file: only changes to model/*.py (and new model/*.py files) are allowed")
        if mode and mode.group(2) and mode.group(2) != "100644":
            raise PatchError(f"file mode {mode.group(2)} in the patch: only plain files (100644) are allowed")
        header = HEADER.match(line)
        if not header:
            continue
        if header.group(1):  # --- / +++
            path = header.group(2).split("\t")[0].strip()
            if path == "/dev/null":
                if header.group(1) == "+++":
                    raise PatchError("the patch deletes a file: only changes to model/*.py are allowed")
                continue
            paths.append(_strip_prefix(path, "a/" if header.group(1) == "---" else "b/", line))
        elif header.group(3):  # rename/copy from/to: git writes these without prefixes
            paths.append(header.group(4).strip())
        else:  # diff --git a/X b/Y
            sides = re.fullmatch(r"a/(\S+) b/(\S+)", header.group(5).strip())
            if not sides:
                raise PatchError(f"unreadable header {line[:120]!r}: expected 'diff --git a/model/NAME.py b/model/NAME.py'")
            paths += [sides.group(1), sides.group(2)]
    if not paths:
        raise PatchError("no file headers (--- a/PATH, +++ b/PATH) in the patch: expected a unified diff of model/*.py")
    return paths


def _strip_prefix(path: str, prefix: str, line: str) -> str:
    if not path.startswith(prefix):
        # Without the prefix, git apply -p1 would strip the first directory instead: the file would not be the
        # one named here, so the path check would check the wrong thing.
        raise PatchError(f"header {line[:120]!r}: expected git's {prefix} prefix ({prefix}model/NAME.py)")
    return path[len(prefix):]


def check_paths(patch: str) -> list[str]:
    """The model/*.py files the patch touches; PatchError naming the first path outside them."""
    paths = touched_paths(patch)
    for path in paths:
        if path.startswith("/") or ".." in path.split("/") or "\\" in path:
            raise PatchError(f"path {path!r} in the patch: expected a relative path model/NAME.py (no absolute paths, no ..)")
        if not ALLOWED_PATH.fullmatch(path):
            raise PatchError(f"path {path!r} in the patch: only model/*.py files may be changed")
    return sorted(set(paths))


# -----------------------------------------------------------------------------------------------------------
# 2-3. In a worktree

@dataclass
class SmokeTest:
    """How to run the one-step training check: the search's data, tokenizer and the experiment's --set values
    (vocabulary size and tweaks matter; the size settings are replaced by SMOKE_SETTINGS)."""
    data: str | None = None
    tokenizer: str | None = None
    overrides: dict = field(default_factory=dict)
    timeout_s: float = 300.0


def worktrees_root() -> Path:
    from model.home import nanoresearch_home
    return nanoresearch_home() / "worktrees"


def _marker(dest: Path) -> Path:
    return dest.parent / f"{dest.name}.checked.json"


def _fingerprint(commit: str, patch: str) -> dict:
    return {"commit": commit, "patch_sha256": hashlib.sha256(patch.encode()).hexdigest()}


def _run(command: list[str], cwd: Path, timeout: float = 120.0) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=clean_env(),
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise PatchError(f"{' '.join(command[:4])} ... did not finish within {timeout:.0f}s") from None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return (lines[-1] if lines else "no output")[:300]


def _git(repo: Path, *args: str, input_text: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, input=input_text,
                          timeout=120, env=clean_env())


def remove_worktree(repo: Path, dest: Path) -> None:
    """Forget and delete a worktree (whatever state it is in); never fails."""
    _git(repo, "worktree", "remove", "--force", str(dest))
    shutil.rmtree(dest, ignore_errors=True)
    _git(repo, "worktree", "prune")
    _marker(dest).unlink(missing_ok=True)


def prepare(patch: str, commit: str, dest: Path, *, repo: Path = REPO, smoke: SmokeTest | None = None) -> Path:
    """Check `patch`, apply it to a new worktree of `commit` at `dest` and run the checks; return `dest`.

    A worktree at `dest` that already passed these checks for the same commit and patch is reused as it is.
    Raises PatchError (and leaves no worktree behind) when any check fails."""
    files = check_paths(patch)
    fingerprint = _fingerprint(commit, patch)
    marker = _marker(dest)
    if dest.is_dir() and marker.exists():
        try:
            if json.loads(marker.read_text()) == fingerprint:
                return dest
        except (OSError, json.JSONDecodeError):
            pass
    try:
        remove_worktree(repo, dest)  # a leftover from a killed attempt, or a different patch
        dest.parent.mkdir(parents=True, exist_ok=True)
        added = _git(repo, "worktree", "add", "--detach", "--quiet", str(dest), commit)
        if added.returncode != 0:
            raise PatchError(f"cannot create a worktree of commit {commit!r}: {_last_line(added.stderr)}")
        _apply(dest, patch, files)
        _check_import(dest, files)
        if smoke is not None:
            _smoke_run(dest, smoke)
        marker.write_text(json.dumps(fingerprint))
    except (PatchError, OSError, subprocess.SubprocessError) as e:
        remove_worktree(repo, dest)
        if isinstance(e, PatchError):
            raise
        raise PatchError(f"checking the patch failed: {type(e).__name__}: {_last_line(str(e))}") from None
    return dest


def _apply(dest: Path, patch: str, files: list[str]) -> None:
    text = patch if patch.endswith("\n") else patch + "\n"
    # --recount: hunk headers written by hand (or by a model) often miscount lines; the context lines decide.
    for check in (["--check"], []):
        applied = _git(dest, "apply", "--recount", "--whitespace=nowarn", *check, "-", input_text=text)
        if applied.returncode != 0:
            raise PatchError(f"the patch does not apply to the recorded commit: {_last_line(applied.stderr)}")
    # Whatever git made of the diff, only model/*.py may have changed in the worktree.
    status = _git(dest, "status", "--porcelain", "--untracked-files=all")
    changed = [line[3:].split(" -> ")[-1].strip('"') for line in status.stdout.splitlines() if line.strip()]
    outside = [p for p in changed if not ALLOWED_PATH.fullmatch(p)]
    if outside:
        raise PatchError(f"applying the patch changed {outside[0]!r}: only model/*.py files may be changed")
    if not changed:
        raise PatchError("the patch applied but changed nothing")


def _check_import(dest: Path, files: list[str]) -> None:
    modules = sorted({"model.gpt", "model.train", *(f[:-3].replace("/", ".") for f in files)})
    # The worktree's `model` must be the one imported (not the user's checkout through an editable install).
    code = (f"import importlib, pathlib, sys\nfor name in {modules!r}:\n    importlib.import_module(name)\n"
            f"import model\nhere = pathlib.Path(model.__file__).resolve().parent.parent\n"
            f"sys.exit(0 if here == pathlib.Path({str(dest.resolve())!r}) else 'imported model from ' + str(here))\n")
    done = _run([sys.executable, "-c", code], cwd=dest)
    if done.returncode != 0:
        raise PatchError(f"the patched model does not import: {_last_line(done.stderr or done.stdout)}")


def _smoke_run(dest: Path, smoke: SmokeTest) -> None:
    overrides = {**smoke.overrides, **SMOKE_SETTINGS}
    with tempfile.TemporaryDirectory(prefix="smoke-", dir=dest.parent) as out:
        command = [sys.executable, "-m", "model.train", "--depth", "1", "--tier", "cpu", "--device", "cpu",
                   "--num-iterations", "1", "--seed", "0", "--out", out]
        for key, value in sorted(overrides.items()):
            if value is not None:
                command += ["--set", format_set(key, value)]
        if smoke.data:
            command += ["--data", smoke.data]
        if smoke.tokenizer:
            command += ["--tokenizer", smoke.tokenizer]
        done = _run(command, cwd=dest, timeout=smoke.timeout_s)
        result = read_result(out)
        status = result.status if result else None
        if done.returncode != 0 or status != "ok":
            raise PatchError(f"the one-step smoke run (depth 1) of the patched model failed "
                             f"(exit {done.returncode}, status {status}): {_last_line(done.stderr or done.stdout)}")

"""
Patch mode: a proposed code change (a unified diff of the model's architecture and optimizer files) tried in its
own git worktree.

What a patch may change is an allow-list (PATCHABLE): the architecture (gpt.py, attention.py), the optimizer
(optim.py) and the schedules (schedule.py), plus new modules in model/ that they import. Everything else is what the
harness trusts to measure a change, and a patch touching it is refused: the evaluator (evaluate.py), the data and the
tokenizer behind bits per byte (data.py, sources.py, loader.py, download.py, tokenizer.py), the training script and
what it records (train.py, run_dir.py, checkpoint.py, provenance.py), the tier's settings and the depth dial (config.py:
batch, budgets, evaluation sizes), and the rest of the package. A patched run's score is then re-computed by that
trusted code from the model's logits (model/seal.py), and its jobs run in a sandbox (harness/sandbox.py).

The user's working tree is never touched. A patch is
1. checked on paper: every path it names (both sides, renames, copies, `diff --git` lines) must be a PATCHABLE file
   or a new `model/<name>.py`, with git's a/ and b/ prefixes; no absolute paths, no `..`, no deletions, no binary
   patches, no modes other than a plain file;
2. applied in a fresh `git worktree` of the recorded commit (HEAD of the user's repo) under
   $NANORESEARCH_HOME/worktrees/<experiment id>, and the files git changed there checked again;
3. checked by running it, in the sandbox: the patched `model` imports (from the worktree, not from the user's
   checkout), a one-step training run at depth 1 with tiny settings (`python -m model.train` in the worktree)
   finishes ok, and the sealed re-score of that run agrees with what it reported and finds the model causal.

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

from experiments.catalog import Rung
from harness import sandbox
from harness.jobs import REPO, Job, TrainingJob, clean_env, last_line
from harness.runs import read_outcome

# The files a patch may change; it may also add new modules directly in model/ (see the docstring for the rest).
PATCHABLE = ("model/gpt.py", "model/attention.py", "model/optim.py", "model/schedule.py")
MODULE_PATH = re.compile(r"model/[A-Za-z0-9_]+\.py")
# The model package's modules the harness trusts: every one in this checkout that is not PATCHABLE.
TRUSTED = tuple(sorted(f"model/{p.name}" for p in (REPO / "model").glob("*.py") if f"model/{p.name}" not in PATCHABLE))
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
    """The files the patch touches; PatchError naming the first one it may not change."""
    paths = touched_paths(patch)
    for path in paths:
        if path.startswith("/") or ".." in path.split("/") or "\\" in path:
            raise PatchError(f"path {path!r} in the patch: expected a relative path model/NAME.py (no absolute paths, no ..)")
        if why := refusal(path):
            raise PatchError(f"path {path!r} in the patch: {why}")
    return sorted(set(paths))


def refusal(path: str) -> str | None:
    """Why a patch may not change `path` (relative to the repository), or None when it may."""
    if path in PATCHABLE:
        return None
    if path in TRUSTED:
        return (f"{path} is trusted by the harness (it measures or records the result); a patch may change only "
                f"{', '.join(PATCHABLE)} and add new model/*.py modules")
    if not MODULE_PATH.fullmatch(path):
        return f"only {', '.join(PATCHABLE)} may be changed (and new model/*.py modules added)"
    return None


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


def _git(repo: Path, *args: str, input_text: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, input=input_text,
                          timeout=120, env=clean_env())


def remove_worktree(repo: Path, dest: Path) -> None:
    """Forget and delete a worktree (whatever state it is in); never fails."""
    _git(repo, "worktree", "remove", "--force", str(dest))
    shutil.rmtree(dest, ignore_errors=True)
    _git(repo, "worktree", "prune")
    _marker(dest).unlink(missing_ok=True)


def prepare(patch: str, commit: str, dest: Path, *, repo: Path = REPO, smoke: SmokeTest | None = None,
            sandboxed: bool = True) -> Path:
    """Check `patch`, apply it to a new worktree of `commit` at `dest` and run the checks (the patched code only ever
    runs in the sandbox, unless `sandboxed` is False: --unsafe-patches); return `dest`.

    A worktree at `dest` that already passed these checks for the same commit and patch is reused as it is, once
    it is seen to hold no change beyond what a patch may change. Raises PatchError (and leaves no worktree behind)
    when any check fails."""
    files = check_paths(patch)
    fingerprint = _fingerprint(commit, patch)
    marker = _marker(dest)
    if dest.is_dir() and marker.exists():
        try:
            if json.loads(marker.read_text()) == fingerprint and not any(refusal(p) for p in changed_paths(dest)):
                return dest
        except (OSError, json.JSONDecodeError):
            pass
    try:
        remove_worktree(repo, dest)  # a leftover from a killed attempt, a different patch, or a tampered one
        dest.parent.mkdir(parents=True, exist_ok=True)
        added = _git(repo, "worktree", "add", "--detach", "--quiet", str(dest), commit)
        if added.returncode != 0:
            raise PatchError(f"cannot create a worktree of commit {commit!r}: {last_line(added.stderr)}")
        _apply(dest, patch, files)
        _check_import(dest, files, sandboxed)
        if smoke is not None:
            _smoke_run(dest, smoke, sandboxed)
        marker.write_text(json.dumps(fingerprint))
    except (PatchError, OSError, subprocess.SubprocessError) as e:
        remove_worktree(repo, dest)
        if isinstance(e, PatchError):
            raise
        raise PatchError(f"checking the patch failed: {type(e).__name__}: {last_line(str(e))}") from None
    return dest


def _apply(dest: Path, patch: str, files: list[str]) -> None:
    text = patch if patch.endswith("\n") else patch + "\n"
    # --recount: hunk headers written by hand (or by a model) often miscount lines; the context lines decide.
    for check in (["--check"], []):
        applied = _git(dest, "apply", "--recount", "--whitespace=nowarn", *check, "-", input_text=text)
        if applied.returncode != 0:
            raise PatchError(f"the patch does not apply to the recorded commit: {last_line(applied.stderr)}")
    # Whatever git made of the diff, only what a patch may change has changed in the worktree.
    changed = changed_paths(dest)
    refused = [(p, why) for p in changed if (why := refusal(p))]
    if refused:
        raise PatchError(f"applying the patch changed {refused[0][0]!r}: {refused[0][1]}")
    if not changed:
        raise PatchError("the patch applied but changed nothing")


def changed_paths(worktree: Path) -> list[str]:
    """Every file of a worktree that differs from its commit, new files included."""
    status = _git(worktree, "status", "--porcelain", "--untracked-files=all")
    return [line[3:].split(" -> ")[-1].strip('"') for line in status.stdout.splitlines() if line.strip()]


def _check_import(dest: Path, files: list[str], sandboxed: bool) -> None:
    modules = sorted({"model.gpt", "model.train", *(f[:-3].replace("/", ".") for f in files)})
    # The worktree's `model` must be the one imported (not the user's checkout through an editable install).
    code = (f"import importlib, pathlib, sys\nfor name in {modules!r}:\n    importlib.import_module(name)\n"
            f"import model\nhere = pathlib.Path(model.__file__).resolve().parent.parent\n"
            f"sys.exit(0 if here == pathlib.Path({str(dest.resolve())!r}) else 'imported model from ' + str(here))\n")
    command = [sys.executable, "-c", code]
    done = _run(sandbox.wrap(command, cwd=dest) if sandboxed else command, cwd=dest)
    if done.returncode != 0:
        raise PatchError(f"the patched model does not import: {last_line(done.stderr or done.stdout)}")


def _smoke_run(dest: Path, smoke: SmokeTest, sandboxed: bool) -> None:
    """A one-step training run of the patched model at depth 1, as a patched job of a search runs it (sandboxed,
    then re-scored by the sealed evaluator, which must agree with it and find the model causal)."""
    overrides = {k: v for k, v in {**smoke.overrides, **SMOKE_SETTINGS}.items() if v is not None}
    with tempfile.TemporaryDirectory(prefix="smoke-", dir=dest.parent) as out:
        job = Job(experiment_id="smoke", rung=Rung(name="smoke", depth=1, seeds=1, num_iterations=1), slot=0, seed=0,
                  run_dir=Path(out), train_tier="cpu", overrides=overrides, data=smoke.data, tokenizer=smoke.tokenizer,
                  timeout_s=smoke.timeout_s, workdir=dest, sandbox=sandboxed)
        returned = TrainingJob(job.command(), out, smoke.timeout_s, seal=job.seal_command())()
        outcome = read_outcome(job, returned)
        if not outcome.ok:
            raise PatchError(f"the one-step smoke run (depth 1) of the patched model failed: {outcome.status}: "
                             f"{outcome.reason}")

"""`python -m harness.speedrun ... --export DIR`: the bundle a maintainer of a public leaderboard asks for with a
submission (nanochat's "Time-to-GPT-2" table is the model), written from the speedrun's finished seeds:

- README.md: the row for the leaderboard's table, in nanochat's format (`| # | time | val_bpb | CORE | Description |
  Date | Commit | Contributors |`, time in hours); the per-seed table with mean ± std; the significance test and
  the record verdict; the exact commands (the speedrun's, and each seed's training command); the code version and
  what the entry changes against the baseline recipe; the environment;
- changes.json (the experiment's settings against its recipe) and patch.diff (its code patch, when it has one);
- environment.json: Python, torch, CUDA, the GPUs and their driver, as this machine has them, and the hardware
  each run recorded;
- seeds/seedN/: each seed's config.json, result.json, metrics.jsonl and train.log, as its run dir holds them.

Nothing is trained or recorded: the bundle only reads the database rows and run dirs of the entry's seeds.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

LEADERBOARD_HEADER = "| # | time | val_bpb | CORE | Description | Date | Commit | Contributors |"
LEADERBOARD_RULE = "|---|-------------|---------|------|-------------|------|--------|--------------|"
RUN_FILES = ("config.json", "result.json", "metrics.jsonl", "train.log")


def cell(text: str) -> str:
    """Text safe inside one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def leaderboard_row(*, time_to_target_s: float | None, val_bpb: float | None, core: float | None, description: str,
                    date: datetime, commit: str, contributors: str) -> str:
    """One row of nanochat's leaderboard table; its rank (#) is the maintainer's to give, so it is left as '?'."""
    time = f"{time_to_target_s / 3600:.2f}" if time_to_target_s is not None else "-"
    return "| " + " | ".join([
        "?", time, f"{val_bpb:.5f}" if val_bpb is not None else "-", f"{core:.4f}" if core is not None else "-",
        cell(description), date.strftime("%b %-d %Y"), cell(commit) or "-", cell(contributors) or "-"]) + " |"


def contributor() -> str:
    """Who submits: git's user.name where one is set, else '-' (the maintainer asks)."""
    try:
        name = subprocess.run(["git", "config", "user.name"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        name = ""
    return name or "-"


def environment(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """What this machine runs (Python, torch, CUDA, GPUs and driver) and the hardware each run recorded."""
    import torch
    env: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "gpus": [], "driver": None,
                           "runs": {str(r["seed"]): r.get("hardware") for r in runs}}
    if torch.cuda.is_available():
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30).stdout.split("\n")[0].strip() or None
        except (OSError, subprocess.SubprocessError):
            pass
    return env


def write_bundle(out: Path, *, track, label: str, experiment, experiment_id: str, recipe, runs: list[dict[str, Any]],
                 summary, command: str, code_version: str, entry_id: int) -> Path:
    """Write the bundle into `out` (made when missing; files of the same names are replaced). Returns README.md."""
    out.mkdir(parents=True, exist_ok=True)
    metric = track.metric
    ok = sorted((r for r in runs if r["status"] == "ok"), key=lambda r: r["seed"])
    cores = [r["core"] for r in ok if r.get("core") is not None]
    core = sum(cores) / len(cores) if cores else None
    commit = code_version.split(",")[0].strip()[:7] if code_version else "-"
    row = leaderboard_row(time_to_target_s=summary.time_to_target_mean, val_bpb=summary.val_bpb, core=core,
                          description=label, date=datetime.now(), commit=commit, contributors=contributor())

    def pm(mean, std, digits):
        return "-" if mean is None else f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")

    seeds = ["| seed | status | time to target (s) | " + metric + " | val_bpb | training time (s) | steps | tok/s |",
             "|---|---|---|---|---|---|---|---|"]
    def num(r, key, digits):
        return f"{r[key]:.{digits}f}" if r.get(key) is not None else "-"
    for r in sorted(runs, key=lambda r: r["seed"]):
        seeds.append(f"| {r['seed']} | {r['status']} | {num(r, 'time_to_target', 1)} | {num(r, metric, 4)} "
                     f"| {num(r, 'val_bpb', 4)} | {num(r, 'total_training_time', 1)} "
                     f"| {r.get('steps') if r.get('steps') is not None else '-'} | {num(r, 'tok_per_s', 0)} |")
    test = (f"one-sided one-sample t-test of the mean {metric} against the target {track.target:g} over "
            f"{summary.metric_n} seeds: p = {summary.p_value:.3g}" if summary.p_value is not None
            else "no significance test (fewer than 2 seeds measured)")
    train_commands = [f"seed {r['seed']}: `{' '.join(map(str, cfg['command']))}`" if isinstance(cfg.get("command"), list)
                      else f"seed {r['seed']}: `{cfg.get('command')}`"
                      for r in sorted(runs, key=lambda r: r["seed"]) for cfg in [r.get("config") or {}]
                      if cfg.get("command")]
    changes = {"recipe": recipe.name, "recipe_overrides": recipe.overrides, "tweaks": experiment.tweaks,
               "experiment_id": experiment_id, "patch": bool(experiment.patch)}
    (out / "changes.json").write_text(json.dumps(changes, indent=2, sort_keys=True, default=str) + "\n")
    if experiment.patch:
        (out / "patch.diff").write_text(experiment.patch)
    env = environment(runs)
    (out / "environment.json").write_text(json.dumps(env, indent=2, sort_keys=True) + "\n")
    copied = []
    for r in runs:
        if not r.get("run_dir"):
            continue
        where = out / "seeds" / f"seed{r['seed']}"
        where.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            source = Path(r["run_dir"]) / name
            if source.is_file():
                shutil.copyfile(source, where / name)
                copied.append(f"seeds/seed{r['seed']}/{name}")

    tweaks = ", ".join(f"{k}={v}" for k, v in sorted(experiment.tweaks.items())) or "none (the recipe as it is)"
    gpus = ", ".join(env["gpus"]) or "none (CPU)"
    readme = "\n".join([
        f"# {label}: speedrun submission for track {track.name}",
        "",
        f"Target: {track.target_spec} at depth {track.depth}; entry #{entry_id} of this nanoresearch database; "
        f"verdict here: {summary.why}.",
        "",
        "## Leaderboard row",
        "",
        LEADERBOARD_HEADER, LEADERBOARD_RULE, row,
        "",
        f"time: mean time to target in hours; val_bpb and CORE: means over the {summary.ok} ok seeds; # is the "
        "maintainer's to assign.",
        "",
        "## Seeds",
        "",
        *seeds,
        "",
        f"- time to target: {pm(summary.time_to_target_mean, summary.time_to_target_std, 1)} s "
        f"({summary.reached} of {summary.seeds} seeds reached {track.target_spec})",
        f"- {metric}: {pm(summary.metric_mean, summary.metric_std, 4)} (n = {summary.metric_n}); {test}",
        "",
        "## Commands",
        "",
        f"- the speedrun: `{command}`",
        *[f"- {c}" for c in train_commands],
        "",
        "## Code",
        "",
        f"- code version: {code_version}",
        f"- recipe: {recipe.name}; changes against it: {tweaks}" + ("; a code patch: patch.diff" if experiment.patch else ""),
        "",
        "## Environment",
        "",
        f"- Python {env['python']}, torch {env['torch']}, CUDA {env['cuda'] or 'none'}, GPUs: {gpus}, driver "
        f"{env['driver'] or '-'}; {env['platform']}",
        *[f"- seed {seed} ran on: {hardware or 'not recorded'}" for seed, hardware in sorted(env["runs"].items())],
        "",
        "## Files",
        "",
        "- changes.json, environment.json" + (", patch.diff" if experiment.patch else ""),
        *[f"- {path}" for path in sorted(copied)],
        "",
    ])
    path = out / "README.md"
    path.write_text(readme)
    return path

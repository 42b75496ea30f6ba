"""
Tiers, recipes and tracks are data (TOML files in this package); this module loads and checks them.

- A *tier* is a class of machine: which `model.train --tier` defaults it uses, its baseline recipe (overrides on
  top of nanochat's defaults), the rungs of its depth ladder (depth, budget, seeds, devices, calibrated
  throughput) and the statistics the ladder uses to promote (alpha, minimum effect, power, seed cap).
  Screening rungs are budgeted in compute (FLOPs, tokens, steps or a param/data ratio): the same on a quiet
  machine and a loaded one. A wall-clock budget is allowed but turns load into noise.
- A *recipe* is a named set of overrides (the baseline is nanochat's recipe: no overrides).
- A *track* (leaderboard speedruns) fixes depth, hardware, metric, target and timing rule.
- A *benchmark* (harness/benchmark.py) is a test of the search itself: a tier, a baseline recipe with planted
  defects, and a pool of changes, each planted as good (repairs a defect), bad, or null (does nothing meaningful).

A name is looked up in experiments/<kind>s/<name>.toml; a path to a .toml file works too, so users can keep their
own tiers and tracks outside the package. Unknown keys and bad values are one-line errors naming the file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from model.config import ConfigError, split_overrides

HERE = Path(__file__).resolve().parent


class CatalogError(ValueError):
    """A missing or malformed tier/recipe/track file. One line naming the file and the problem."""


@dataclass(frozen=True)
class Rung:
    name: str
    depth: int
    seeds: int                      # seeds for the baseline and for every candidate (before adaptive extras)
    flops_budget: float | None = None    # training FLOPs (model FLOPs per token x tokens): the preferred horizon
    token_budget: int | None = None
    num_iterations: int | None = None
    param_data_ratio: float | None = None
    time_budget: float | None = None     # seconds of training: only comparable on an unloaded machine
    # Calibrated training throughput of the baseline at this rung on the tier's reference machine (one job at a
    # time): a run far below it ran on a loaded (or slower) machine and is flagged; also sizes job time limits.
    tok_per_s: float | None = None
    devices: int = 1                # processes (GPUs) per run: > 1 launches torchrun
    nodes: int = 1
    target: str | None = None       # top rung: "val_bpb<=X" / "core>=X", time-to-target is measured
    core_every: int | None = None
    timeout_s: float | None = None  # wall-clock limit for one job (default: derived from the budget)
    fp8: bool = False               # train in fp8 where the GPU can (model/fp8.py): the speedrun rung, as nanochat's record

    HORIZONS = ("flops_budget", "token_budget", "num_iterations", "param_data_ratio", "time_budget")

    def horizon(self) -> tuple[str, float]:
        """(field, value) of the one horizon this rung sets."""
        return next((h, getattr(self, h)) for h in self.HORIZONS if getattr(self, h) is not None)

    def horizon_args(self) -> list[str]:
        name, value = self.horizon()
        text = f"{value:.6g}" if name == "flops_budget" else f"{value:g}" if isinstance(value, float) else str(value)
        return ["--" + name.replace("_", "-"), text]

    def describe_horizon(self) -> str:
        name, value = self.horizon()
        return {"flops_budget": f"{value:.3g} FLOPs", "token_budget": f"{value:,} tokens",
                "num_iterations": f"{value} steps", "param_data_ratio": f"ratio {value:g}",
                "time_budget": f"{value:g} s"}[name]


@dataclass(frozen=True)
class Statistics:
    alpha: float = 0.05             # one-sided false-promotion rate per decision
    min_effect: float = 0.0         # the improvement (in val_bpb) a change must beat, not just zero
    max_seeds: int = 6              # adaptive seeds stop here
    futility: float = 0.5           # a p-value above this rejects at once (the change is not better)
    power: float = 0.8              # the power at which minimum detectable effects are stated


@dataclass(frozen=True)
class Tier:
    name: str
    description: str
    train_tier: str                 # model.train --tier
    baseline: dict = field(default_factory=dict)
    rungs: tuple[Rung, ...] = ()
    statistics: Statistics = Statistics()
    data_shards: int = 8            # train shards of the default corpus to fetch when none are downloaded
    data: str | None = None         # the tier's default corpus (a source name; None: model.sources.DEFAULT_SOURCE)
    track: str | None = None        # the leaderboard track whose speedrun the top rung feeds
    # A run whose throughput is below this fraction of its rung's calibrated tok_per_s is flagged as loaded.
    loaded_fraction: float = 0.5
    # Jobs a local search runs at once unless --parallel says otherwise. On a CPU the jobs split the cores, and the
    # thread count is part of what makes a run reproducible, so a tier calibrated with it fixes it.
    parallel: int = 1
    why: str = ""
    path: str = ""

    def rung(self, name: str) -> Rung:
        for r in self.rungs:
            if r.name == name:
                return r
        raise CatalogError(f"tier {self.name!r} has no rung {name!r}: expected one of {', '.join(r.name for r in self.rungs)}")


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    overrides: dict = field(default_factory=dict)
    path: str = ""


@dataclass(frozen=True)
class Track:
    name: str
    description: str
    tier: str                       # the tier whose train defaults the runs use
    depth: int
    metric: str                     # val_bpb | core
    target: float
    hardware: str                   # e.g. "8xH100", "cpu"
    devices: int = 1
    nodes: int = 1
    timing_rule: str = "total_training_time: synchronized step time, excluding eval, checkpoints, compile warm-up and the first 10 steps"
    time_budget: float | None = None
    num_iterations: int | None = None
    param_data_ratio: float | None = None
    core_every: int | None = None
    core_max_per_task: int | None = None
    # Calibrated training throughput of the baseline on the track's hardware, quiet: a seed far below it ran on a
    # loaded machine, and its time to target says so instead of counting as a slow recipe.
    tok_per_s: float | None = None
    loaded_fraction: float = 0.5
    # One data order for every seed (nanochat's loader has no seed), so seeds vary the initialisation only and
    # an entry measures the recipe rather than which documents came first. None: each seed its own order.
    data_seed: int | None = None
    overrides: dict = field(default_factory=dict)
    references: tuple[dict, ...] = ()  # published entries, each with its source
    path: str = ""

    @property
    def target_spec(self) -> str:
        return f"{self.metric}{'<=' if self.metric == 'val_bpb' else '>='}{self.target}"


PLANTED = ("good", "bad", "null")


@dataclass(frozen=True)
class Change:
    name: str
    tweaks: dict                    # knob -> value, relative to the benchmark's baseline (tier + recipe)
    planted: str                    # one of PLANTED: what the change was built to be (its measured effect may disagree)
    why: str = ""


@dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    tier: str                       # the tier the searches run on
    recipe: str                     # the baseline recipe, with the planted defects
    changes: tuple[Change, ...]
    path: str = ""

    def planted(self, kind: str) -> list[Change]:
        return [c for c in self.changes if c.planted == kind]


# -----------------------------------------------------------------------------------------------------------

def _read(kind: str, name_or_path: str) -> tuple[dict, Path]:
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = HERE / f"{kind}s" / f"{name_or_path}.toml"
        if not path.exists():
            raise CatalogError(f"unknown {kind} {name_or_path!r}: expected one of {', '.join(names(kind))} or a path to a .toml file")
    if not path.exists():
        raise CatalogError(f"{path}: no such {kind} file")
    try:
        return tomllib.loads(path.read_text()), path
    except tomllib.TOMLDecodeError as e:
        raise CatalogError(f"{path}: not valid TOML ({e})") from None


def names(kind: str) -> list[str]:
    return sorted(p.stem for p in (HERE / f"{kind}s").glob("*.toml"))


def _check_keys(data: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise CatalogError(f"{where}: unknown key {unknown[0]!r}: expected one of {', '.join(sorted(allowed))}")


def _check_overrides(overrides: dict, where: str) -> dict:
    try:
        split_overrides(overrides)
    except ConfigError as e:
        raise CatalogError(f"{where}: {e}") from None
    return dict(overrides)


def _fields(cls) -> set[str]:
    return set(cls.__dataclass_fields__) - {"path"}


def load_tier(name_or_path: str) -> Tier:
    data, path = _read("tier", name_or_path)
    _check_keys(data, _fields(Tier), str(path))
    rungs = []
    for i, raw in enumerate(data.get("rungs", [])):
        where = f"{path}: rungs[{i}]"
        _check_keys(raw, _fields(Rung), where)
        try:
            rung = Rung(**raw)
        except TypeError as e:
            raise CatalogError(f"{where}: {e}") from None
        horizons = [h for h in Rung.HORIZONS if getattr(rung, h) is not None]
        if len(horizons) != 1:
            raise CatalogError(f"{where}: expected exactly one of {', '.join(Rung.HORIZONS)}")
        if not getattr(rung, horizons[0]) > 0:
            raise CatalogError(f"{where}: {horizons[0]} = {getattr(rung, horizons[0])!r}: expected a positive number")
        if rung.depth < 1 or rung.seeds < 1 or rung.devices < 1:
            raise CatalogError(f"{where}: depth, seeds and devices must be positive")
        if rung.tok_per_s is not None and not rung.tok_per_s > 0:
            raise CatalogError(f"{where}: tok_per_s = {rung.tok_per_s!r}: expected a positive throughput")
        rungs.append(rung)
    if not rungs:
        raise CatalogError(f"{path}: a tier needs at least one [[rungs]] entry")
    if len({r.name for r in rungs}) != len(rungs):
        raise CatalogError(f"{path}: rung names must be unique")
    stats_raw = data.get("statistics", {})
    _check_keys(stats_raw, _fields(Statistics), f"{path}: [statistics]")
    stats = Statistics(**stats_raw)
    if not 0 < stats.alpha < 1 or stats.min_effect < 0 or stats.max_seeds < 1 or not 0 < stats.power < 1:
        raise CatalogError(f"{path}: [statistics] needs 0 < alpha < 1, min_effect >= 0, max_seeds >= 1, 0 < power < 1")
    if max(r.seeds for r in rungs) > stats.max_seeds:
        raise CatalogError(f"{path}: a rung's seeds exceed [statistics] max_seeds = {stats.max_seeds}")
    loaded_fraction = data.get("loaded_fraction", 0.5)
    if not isinstance(loaded_fraction, int | float) or not 0 < loaded_fraction <= 1:
        raise CatalogError(f"{path}: loaded_fraction = {loaded_fraction!r}: expected a fraction in (0, 1]")
    parallel = data.get("parallel", 1)
    if not isinstance(parallel, int) or isinstance(parallel, bool) or parallel < 1:
        raise CatalogError(f"{path}: parallel = {parallel!r}: expected a positive integer")
    return Tier(name=data.get("name", path.stem), description=data.get("description", ""),
                train_tier=data.get("train_tier", "cpu"),
                baseline=_check_overrides(data.get("baseline", {}), f"{path}: [baseline]"),
                rungs=tuple(rungs), statistics=stats, data_shards=int(data.get("data_shards", 8)), data=data.get("data"),
                track=data.get("track"),
                loaded_fraction=float(loaded_fraction), parallel=parallel, why=data.get("why", ""), path=str(path))


def load_recipe(name_or_path: str) -> Recipe:
    data, path = _read("recipe", name_or_path)
    _check_keys(data, _fields(Recipe), str(path))
    return Recipe(name=data.get("name", path.stem), description=data.get("description", ""),
                  overrides=_check_overrides(data.get("overrides", {}), f"{path}: [overrides]"), path=str(path))


def load_track(name_or_path: str) -> Track:
    data, path = _read("track", name_or_path)
    _check_keys(data, _fields(Track), str(path))
    data = dict(data)
    data["overrides"] = _check_overrides(data.get("overrides", {}), f"{path}: [overrides]")
    data["references"] = tuple(data.get("references", ()))
    for i, ref in enumerate(data["references"]):
        if "source" not in ref:
            raise CatalogError(f"{path}: references[{i}] needs a source (where the published number comes from)")
    try:
        track = Track(**data, path=str(path))
    except TypeError as e:
        raise CatalogError(f"{path}: {e}") from None
    if track.metric not in ("val_bpb", "core"):
        raise CatalogError(f"{path}: metric {track.metric!r}: expected val_bpb or core")
    if track.data_seed is not None and (type(track.data_seed) is not int or track.data_seed < 0):
        raise CatalogError(f"{path}: data_seed {track.data_seed!r}: expected an integer >= 0")
    return track


def load_benchmark(name_or_path: str) -> Benchmark:
    data, path = _read("benchmark", name_or_path)
    _check_keys(data, _fields(Benchmark), str(path))
    changes = []
    for i, raw in enumerate(data.get("changes", [])):
        where = f"{path}: changes[{i}]"
        _check_keys(raw, _fields(Change), where)
        if not raw.get("name") or not isinstance(raw.get("tweaks"), dict) or not raw["tweaks"]:
            raise CatalogError(f"{where}: expected a name and a non-empty tweaks table")
        if raw.get("planted") not in PLANTED:
            raise CatalogError(f"{where}: planted = {raw.get('planted')!r}: expected one of {', '.join(PLANTED)}")
        changes.append(Change(name=raw["name"], tweaks=_check_overrides(raw["tweaks"], where), planted=raw["planted"],
                              why=raw.get("why", "")))
    if len(changes) < 2 or len({c.name for c in changes}) != len(changes):
        raise CatalogError(f"{path}: a benchmark needs at least two [[changes]] with unique names")
    if not any(c.planted == "good" for c in changes):
        raise CatalogError(f"{path}: no change is planted as good: the benchmark could not measure a discovery")
    for key in ("tier", "recipe"):
        if not isinstance(data.get(key), str):
            raise CatalogError(f"{path}: {key} = {data.get(key)!r}: expected the name of a {key}")
    return Benchmark(name=data.get("name", path.stem), description=data.get("description", ""), tier=data["tier"],
                     recipe=data["recipe"], changes=tuple(changes), path=str(path))

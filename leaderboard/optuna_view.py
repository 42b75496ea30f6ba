"""A search's Optuna study, seen through Optuna's own plots: parameter importances, parallel coordinates and slices.

The study lives in the search's database (`harness.proposers.optuna_tpe`, study `nanoresearch:NAME`). The dashboard
opens that database read-only, so the study is not loaded through Optuna's storage (which connects for writing):
its finished trials are read by the store (`Store.optuna_trials`) and rebuilt into an in-memory study, which
Optuna's visualization functions then draw as they would for optuna-dashboard. Each trial's value is the
candidate's mean paired difference from the baseline at the first rung (lower is better).
"""

from __future__ import annotations

from typing import Any

import optuna

MOST_PARAMS = 6  # the parallel-coordinate and slice plots show this many of the most important knobs


def study_name(search_name: str) -> str:
    return f"nanoresearch:{search_name}"


def rebuild(trials: list[dict[str, Any]]) -> optuna.Study:
    """An in-memory study holding these finished trials (Store.optuna_trials rows)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")
    frozen = []
    for t in trials:
        distributions = {name: optuna.distributions.json_to_distribution(spec) for name, (_, spec) in t["params"].items()}
        params = {name: distributions[name].to_external_repr(value) for name, (value, _) in t["params"].items()}
        frozen.append(optuna.trial.create_trial(params=params, distributions=distributions, value=t["value"]))
    study.add_trials(frozen)
    return study


def varied(study: optuna.Study) -> list[str]:
    """The knobs that took more than one value over the study's trials: only they can explain anything."""
    values: dict[str, set] = {}
    for t in study.trials:
        for name, value in t.params.items():
            values.setdefault(name, set()).add(repr(value))
    return sorted(name for name, seen in values.items() if len(seen) > 1)


def figures(study: optuna.Study) -> dict[str, Any]:
    """Optuna's plotly figures for the study: {title: figure}. Importances need two finished trials and a knob that
    varied; the other plots show the most important knobs (MOST_PARAMS)."""
    from optuna import visualization
    knobs = varied(study)
    if len(study.trials) < 2 or not knobs:
        return {}
    importances = optuna.importance.get_param_importances(study, params=knobs)
    top = list(importances)[:MOST_PARAMS]
    return {"Parameter importances": visualization.plot_param_importances(study, params=knobs),
            "Parallel coordinates": visualization.plot_parallel_coordinate(study, params=top),
            "Slices": visualization.plot_slice(study, params=top)}

"""Runs page: filter runs, overlay their val_bpb curves (against step, tokens or training time), and diff
a run's config against its baseline.

The baseline of a run is the run of its search's baseline experiment at the same rung and seed; when
that is unknown (no search, no baseline recorded, no such run) the user picks the run to compare with.
Query parameters: ?search=NAME, ?experiment=ID (initial filters).
A page script that leaderboard/app.py runs (st.Page), not a module to import.
"""

import streamlit as st

from leaderboard import dashboard_charts as charts
from leaderboard import dashboard_db as db
from leaderboard import dashboard_format as fmt
from leaderboard import views
from leaderboard.schema import RUN_STATUSES

MAX_DEFAULT_CURVES = 5  # curves drawn before the user picks: enough to compare, few enough to read

url = db.current_url()
st.title("Runs")

searches = db.searches(url)
search_names = {s["id"]: s["name"] for s in searches}
names = db.experiment_names(url)
if not names:
    db.empty_state(url, "No runs yet: runs are recorded by `python -m harness.search` or "
                        "`python -m leaderboard ingest RUN_DIR`.")
    st.stop()

cols = st.columns(4)
search_ids = [None, *search_names]
wanted = st.query_params.get("search")
search_index = next((i for i, s in enumerate(search_ids) if s is not None and search_names[s] == wanted), 0)
search_id = cols[0].selectbox("Search", search_ids, index=search_index,
                              format_func=lambda s: "all searches" if s is None else search_names[s])
experiment_ids = [None, *(x["id"] for x in (db.experiments(url, search_id) if search_id is not None
                                              else db.experiments(url)))]
wanted = st.query_params.get("experiment")
experiment_id = cols[1].selectbox("Experiment", experiment_ids,
                                  index=experiment_ids.index(wanted) if wanted in experiment_ids else 0,
                                  format_func=lambda x: "all experiments" if x is None else f"{names.get(x, x)} ({x})")
scope = db.runs(url, search_id=search_id, experiment_id=experiment_id)
rungs = sorted({r["rung"] for r in scope}, key=fmt.rung_key)
rung = cols[2].selectbox("Rung", [None, *rungs], format_func=lambda r: "all rungs" if r is None else r)
present = [s for s in RUN_STATUSES if any(r["status"] == s for r in scope)]
statuses = cols[3].multiselect("Status", present, placeholder="any status")

runs = db.runs(url, search_id=search_id, experiment_id=experiment_id, rung=rung,
               statuses=tuple(statuses) if statuses else None)
if not runs:
    filtered = any(f is not None for f in (search_id, experiment_id, rung)) or statuses
    st.info("No runs match these filters." if filtered else "No runs recorded yet: only proposals so far.")
    st.stop()

labels = {r["id"]: fmt.run_label(r, names) for r in runs}
ids = list(labels)
picked = st.multiselect("Runs to overlay", ids, default=ids[:MAX_DEFAULT_CURVES], format_func=labels.get)
axis = st.segmented_control("x axis", list(fmt.CURVE_AXES), default="step") or "step"

if picked:
    curves = fmt.curves_frame(db.metric_points(url, tuple(picked)), labels, axis)
    if curves.empty:
        st.info("The picked runs have no val_bpb points recorded.")
    else:
        st.altair_chart(charts.curves(curves, axis))
    st.dataframe(fmt.runs_table([r for r in runs if r["id"] in picked], names), hide_index=True, placeholder=fmt.MISSING, column_config={
        "val_bpb": st.column_config.NumberColumn(format="%.4f"),
        "core": st.column_config.NumberColumn(format="%.4f"),
        "time to target (s)": st.column_config.NumberColumn(format="%.1f"),
        "training time (s)": st.column_config.NumberColumn(format="%.1f"),
        "tok/s": st.column_config.NumberColumn(format="%.0f", help=fmt.RUN_COLUMN_HELP["tok/s"]),
        "loaded": st.column_config.CheckboxColumn(help=fmt.RUN_COLUMN_HELP["loaded"]),
        "reported val_bpb": st.column_config.NumberColumn(format="%.4f", help=fmt.RUN_COLUMN_HELP["reported val_bpb"]),
    })
else:
    st.caption("Pick runs above to draw their curves.")

st.subheader("Config diff")
run_id = st.selectbox("Run", ids, index=ids.index(picked[0]) if picked else 0, format_func=labels.get)
chosen = db.run(url, run_id)
if chosen is None:
    st.warning(f"Run {run_id} is no longer in the database.")
    st.stop()

baseline_run, why = None, "this run belongs to no search"
if chosen["search_id"] is not None:
    search = next((s for s in searches if s["id"] == chosen["search_id"]), {})
    baseline_id = views.search_baseline(search, db.decisions(url, search_id=chosen["search_id"]))
    if baseline_id is None:
        why = "its search records no baseline experiment"
    elif baseline_id == chosen["experiment_id"]:
        why = "this run is of the search's baseline experiment"
    else:
        same = [r for r in db.runs(url, experiment_id=baseline_id, rung=chosen["rung"]) if r["seed"] == chosen["seed"]]
        if same:
            baseline_run = db.run(url, same[0]["id"])
        else:
            why = (f"the baseline {names.get(baseline_id, baseline_id)} has no run at rung {chosen['rung']}, "
                   f"seed {chosen['seed']}")

if baseline_run is not None:
    st.caption(f"Against the search's baseline at the same rung and seed: {fmt.run_label(baseline_run, names)}")
else:
    others = [i for i in ids if i != run_id]
    if not others:
        st.info(f"No baseline to compare with ({why}), and no other run matches the filters.")
        st.stop()
    st.caption(f"No automatic baseline ({why}): pick the run to compare with.")
    baseline_run = db.run(url, st.selectbox("Compare with", others, format_func=labels.get))
    if baseline_run is None:
        st.stop()

diff = fmt.config_diff(chosen["config"], baseline_run["config"])
if diff.empty:
    st.success("The two configs are identical.")
else:
    st.dataframe(diff, hide_index=True, placeholder=fmt.MISSING, column_config={
        "baseline": st.column_config.TextColumn(f"baseline (run #{baseline_run['id']})"),
        "run": st.column_config.TextColumn(f"this run (#{chosen['id']})"),
    })
    st.caption(f"{len(diff)} keys differ (nested config flattened with dots)")

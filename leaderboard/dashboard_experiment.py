"""Experiment page: one recipe (tweaks, rationale, falsification criterion, proposer, parent, code version,
patch, agent cost), all its runs by rung and seed, its paired comparison with its baseline (curves of both arms per
seed and as mean +- band, per-seed deltas, steps and tok/s), and the ladder decisions about it.

Query parameter: ?id=EXPERIMENT_ID (the Leaderboard, Search and parent links point here).
A page script that leaderboard/app.py runs (st.Page), not a module to import.
"""

import pandas as pd
import streamlit as st

from leaderboard import dashboard_charts as charts
from leaderboard import dashboard_db as db
from leaderboard import dashboard_format as fmt
from leaderboard import views
from leaderboard.errors import LeaderboardError

url = db.current_url()

names = db.experiment_names(url)
if not names:
    st.title("Experiment")
    db.empty_state(url, "No experiments yet: a search records each proposal as an experiment.")
    st.stop()

ids = list(reversed(names))  # newest first
wanted = st.query_params.get("id")
if wanted and wanted not in names:
    st.warning(f"No experiment with id {wanted!r} in this database: pick one below.")
experiment_id = st.selectbox("Experiment", ids, index=ids.index(wanted) if wanted in names else 0,
                             format_func=lambda x: f"{names[x]} ({x})")
st.query_params["id"] = experiment_id
experiment = db.experiment(url, experiment_id)
if experiment is None:
    st.warning(f"Experiment {experiment_id} is no longer in the database.")
    st.stop()

st.title(experiment["name"])
extra = experiment["extra"] if isinstance(experiment["extra"], dict) else {}
agent = extra.get("agent") if isinstance(extra.get("agent"), dict) else None
st.caption(" · ".join([f"id {experiment['id']}", f"proposed by {experiment['proposer']}",
                       f"created {experiment['created_at']:%Y-%m-%d %H:%M} UTC",
                       f"code version {experiment['code_version'] or fmt.MISSING}"]))

if experiment["parent_id"]:
    if experiment["parent_id"] in names:
        st.page_link("dashboard_experiment.py", label=f"parent: {names[experiment['parent_id']]} ({experiment['parent_id']})",
                     query_params={"id": experiment["parent_id"]}, icon=":material/arrow_upward:")
    else:
        st.caption(f"parent: {experiment['parent_id']} (not in this database)")

left, right = st.columns(2)
with left:
    st.subheader("Tweaks")
    tweaks = fmt.flatten(experiment["tweaks"] or {})
    if tweaks:
        st.dataframe(pd.DataFrame([{"knob": k, "value": fmt.json_text(v)} for k, v in sorted(tweaks.items())]),
                     hide_index=True, placeholder=fmt.MISSING)
    else:
        st.caption("None: this is the baseline recipe.")
with right:
    st.subheader("Rationale")
    st.markdown(experiment["rationale"] or "_No rationale recorded._")
    st.subheader("Falsification criterion")
    st.markdown(extra.get("falsification") or "_None recorded._")
    # How each search that proposed it judged the claim (the hypothesis ledger).
    for h in (h for h in db.hypotheses(url) if h["experiment_id"] == experiment_id):
        rule = (h.get("evidence") or {}).get("rule")
        st.markdown(f"**{h['status']}** in search {fmt.markdown_literal(h['search'])}"
                    + (f": {fmt.markdown_literal(rule)}" if rule else ": not decided yet"))

if agent is not None:
    st.subheader("Agent")
    cols = st.columns(4)
    cols[0].metric("model", str(agent.get("model") or fmt.MISSING))
    cols[1].metric("input tokens", f"{int(agent.get('input_tokens') or 0):,}")
    cols[2].metric("output tokens", f"{int(agent.get('output_tokens') or 0):,}")
    cols[3].metric("cost (USD)", f"${float(agent.get('cost_usd') or 0.0):.4f}")

if experiment["patch"]:
    st.subheader("Patch")
    st.code(experiment["patch"], language="diff")

st.subheader("Notes")
if experiment.get("tags"):
    st.markdown(" ".join(f":blue-badge[{fmt.markdown_literal(tag)}]" for tag in experiment["tags"]))
with st.form("notes", border=False):
    notes = st.text_area("Notes", value=experiment.get("notes") or "", placeholder="what you make of it, what to try next")
    tags = st.text_input("Tags", value=", ".join(experiment.get("tags") or []), help="comma-separated, e.g. lr, keep")
    if st.form_submit_button("Save notes"):
        try:
            db.save_notes(url, experiment_id, notes, tags.split(","))
        except LeaderboardError as e:
            st.error(f"Not saved: {e}")
        else:
            st.rerun()  # show what the database now holds
st.caption("Saved in the database with the experiment (with the Search page's insight edits, the dashboard's only writes; every other view reads only).")

st.subheader("Runs")
if experiment["runs"]:
    search_rungs: list[str] = []
    for search in db.searches(url):
        if any(r["search_id"] == search["id"] for r in experiment["runs"]) and isinstance(search["config"], dict):
            search_rungs = [str(r) for r in search["config"].get("rungs") or []]
            break
    st.dataframe(fmt.runs_table(experiment["runs"], names, search_rungs).drop(columns=["experiment"]),
                 hide_index=True, placeholder=fmt.MISSING, column_config={
                     "val_bpb": st.column_config.NumberColumn(format="%.4f"),
                     "core": st.column_config.NumberColumn(format="%.4f"),
                     "time to target (s)": st.column_config.NumberColumn(format="%.1f"),
                     "training time (s)": st.column_config.NumberColumn(format="%.1f"),
                     "tok/s": st.column_config.NumberColumn(format="%.0f", help=fmt.RUN_COLUMN_HELP["tok/s"]),
                     "loaded": st.column_config.CheckboxColumn(help=fmt.RUN_COLUMN_HELP["loaded"]),
                     "reported val_bpb": st.column_config.NumberColumn(format="%.4f",
                                                                       help=fmt.RUN_COLUMN_HELP["reported val_bpb"]),
                 })
    st.page_link("dashboard_runs.py", label="Curves and config diffs of these runs", icon=":material/show_chart:",
                 query_params={"experiment": experiment_id})
else:
    st.caption("No runs yet.")

st.subheader("Compared with the baseline")
base_id = fmt.comparison_baseline(experiment)
base = db.experiment(url, base_id) if base_id else None
shared = [r for r in dict.fromkeys(run["rung"] for run in experiment["runs"])
          if base and any(b["rung"] == r for b in base["runs"])]
if not shared:
    st.caption("Nothing to compare: " + ("this is a baseline." if not base_id else
                                        f"no rung where both it and its baseline ({names.get(base_id, base_id)}) ran."))
else:
    rung = st.selectbox("Rung", shared, index=len(shared) - 1, key="compare_rung")
    pairs = fmt.paired_runs(experiment["runs"], base["runs"], rung)
    arm_of = {r["id"]: ("candidate", r["seed"]) for r in experiment["runs"] if r["rung"] == rung}
    arm_of |= {r["id"]: ("baseline", r["seed"]) for r in base["runs"] if r["rung"] == rung and r["seed"] in set(pairs["seed"])}
    seeds, band = fmt.arm_curves(db.metric_points(url, tuple(sorted(arm_of))), arm_of)
    if seeds.empty:
        st.caption("No evaluation curves recorded for these runs (eval_every 0): their final values are below.")
    else:
        st.altair_chart(charts.paired_curves(seeds, band))
    st.dataframe(pairs, hide_index=True, placeholder=fmt.MISSING, column_config={
        "baseline val_bpb": st.column_config.NumberColumn(format="%.4f"),
        "candidate val_bpb": st.column_config.NumberColumn(format="%.4f"),
        "delta": st.column_config.NumberColumn(format="%+.4f", help="candidate - baseline on the same seed: the "
                                               "paired differences the ladder tests (negative is better)"),
        "same steps": st.column_config.CheckboxColumn(help="both runs trained the same number of steps; a run that "
                                                      "stopped early is not the same experiment"),
        "baseline tok/s": st.column_config.NumberColumn(format="%.0f", help=fmt.RUN_COLUMN_HELP["tok/s"]),
        "candidate tok/s": st.column_config.NumberColumn(format="%.0f", help=fmt.RUN_COLUMN_HELP["tok/s"])})
    st.caption(f"Against {names.get(base_id, base_id)} ({base_id}) at {rung}, seed by seed. Thin lines: each seed; "
               "thick: each arm's mean, with a band of +- one standard deviation over its seeds.")

st.subheader("Decisions")
if experiment["decisions"]:
    for d in experiment["decisions"]:
        st.markdown(f"**{d['from_rung']}: {fmt.verdict_words(d)}.** "
                    + fmt.markdown_literal(fmt.sentence(d.get("reason") or fmt.NO_REASON)))
    with st.expander("The numbers behind each decision"):
        st.dataframe(fmt.decisions_table(experiment["decisions"], names).drop(columns=["experiment", "experiment_id"]),
                     hide_index=True, placeholder=fmt.MISSING, column_config=fmt.decision_column_config(st))
    replicated = views.replications(sorted(experiment["decisions"], key=lambda d: d["id"]))
    if replicated:
        st.markdown("**Promotions and their replication**")
        st.dataframe(fmt.replications_table(replicated, names).drop(columns=["experiment", "experiment_id"]),
                     hide_index=True, placeholder=fmt.MISSING,
                     column_config={"kept": st.column_config.NumberColumn(format="%.2f", help=fmt.REPLICATION_HELP)})
        st.caption(fmt.REPLICATION_HELP)
else:
    st.caption("No ladder decisions about this experiment yet.")

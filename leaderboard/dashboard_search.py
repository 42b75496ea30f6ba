"""Search page: one search's progress (its runs by role over the baseline's band, the best decided improvement by run and by compute), its rung funnel,
the promotion decisions with their statistics, the hypothesis ledger (each proposal's claim and what its decisions
made of it), the insights of the search's tier and space (which the user may edit or retire), who proposed what, the
proposals it refused and why, and what the agent cost (refused answers included: they were paid for too).

Query parameter: ?search=NAME.
A page script that leaderboard/app.py runs (st.Page), not a module to import.
"""

from datetime import UTC, datetime

import pandas as pd
import streamlit as st

from leaderboard import dashboard_charts as charts
from leaderboard import dashboard_db as db
from leaderboard import dashboard_format as fmt
from leaderboard import optuna_view, views
from leaderboard.errors import LeaderboardError

BEST_SHOWN = 10  # rows of the best-experiments table
LIVE_REFRESH_S = 5  # the running jobs' table reruns this often

url = db.current_url()
st.title("Search")

searches = db.searches(url)
if not searches:
    db.empty_state(url, "No searches yet: `python -m harness.search` starts one.")
    st.stop()

by_name = {s["name"]: s for s in searches}
names = list(by_name)  # newest first
wanted = st.query_params.get("search")
name = st.selectbox("Search", names, index=names.index(wanted) if wanted in names else 0,
                    format_func=lambda n: f"{n} ({by_name[n]['status']}, started {fmt.date(by_name[n]['started_at'])})")
st.query_params["search"] = name
search = by_name[name]

summary = db.search_summary(url, search["id"])
if summary is None:  # deleted between the two reads
    st.warning(f"Search {name!r} is no longer in the database.")
    st.stop()
proposed = db.experiments(url, search["id"])
known = {x["id"]: x for x in db.experiments(url)}  # the baseline may come from outside the search's proposals
all_names = {k: x["name"] for k, x in known.items()}
decisions = db.decisions(url, search_id=search["id"])
store = db.open_store(url)
# A short list per search, read fresh: refusals are what a user checks while the agent is running.
rejected = store.rejected_proposals(search["id"]) if store is not None else []
usage = fmt.agent_usage([*proposed, *({"extra": r["payload"]} for r in rejected)])

st.caption(" · ".join(filter(None, [
    f"status: {search['status']}", f"tier: {search['tier']}" if search["tier"] else "",
    f"space: {search['space']}" if search["space"] else "", f"proposer: {search['proposer']}" if search["proposer"] else "",
    f"baseline: {all_names.get(b, b)}" if (b := views.search_baseline(search, decisions)) else ""])))
finished = sum(n for status, n in summary["runs_by_status"].items() if status != "running")
cols = st.columns(6)
cols[0].metric("proposed", summary["n_proposed"])
cols[1].metric("runs finished", f"{finished} / {sum(summary['runs_by_status'].values())}")
cols[2].metric("ok runs", summary["runs_by_status"].get("ok", 0))
cols[3].metric("training hours", f"{summary['training_hours']:.3f}", help="timed training steps only")
cols[4].metric("device-hours", f"{summary['device_hours']:.3f}",
               help="the search's compute: each run's wall time x its devices, as its terminal summary and --budget-hours count it")
cols[5].metric("agent cost", f"${usage['cost_usd']:.2f}" if usage["experiments"] else fmt.MISSING)
if exported := db.search_export(url, name):
    tsv, card = exported
    left, right, _ = st.columns([1, 1, 4])
    left.download_button("report.md", card, file_name=f"{name}-report.md", mime="text/markdown",
                         help="the search's report card: setup, cost, what it found, every decision in words")
    right.download_button("results.tsv", tsv, file_name=f"{name}-results.tsv", mime="text/tab-separated-values",
                          help="one row per experiment and rung: runs, mean val_bpb and the decision's statistics")



@st.fragment(run_every=LIVE_REFRESH_S)
def running_now() -> None:
    """The search's running jobs with their latest progress; this part of the page reruns on its own."""
    running = db.running_runs(url, search["id"])
    if not running:
        if search["status"] == "running":
            st.caption("No job running right now.")
        return
    st.subheader(f"Running now ({len(running)})")
    table = fmt.running_table(running, all_names, datetime.now(UTC))
    table["details"] = table.pop("experiment_id").map(fmt.experiment_link)
    st.dataframe(table, hide_index=True, placeholder=fmt.MISSING, column_config={
        "val_bpb so far": st.column_config.NumberColumn(format="%.4f", help="at the run's last evaluation"),
        "tok/s": st.column_config.NumberColumn(format="%.0f", help="since its previous progress line"),
        "details": st.column_config.LinkColumn(display_text="experiment ↗")})
    st.caption(f"Live: each job's step, val_bpb so far and tok/s, recorded by the search every few seconds from the "
               f"job's progress; this table refreshes every {LIVE_REFRESH_S} s.")


running_now()

if not summary["trials"]:
    st.info("No finished runs yet in this search.")
else:
    trials = fmt.runs_frame(summary["trials"], db.device_seconds(url, search["id"]), known)
    st.subheader("Best experiments")
    st.caption("Furthest up the ladder first, then the lowest mean paired difference from the control there "
               "(candidate - control val_bpb on the same seeds; negative is better): the ranking the search's summary "
               "and its agent use too. The baseline and the nulls are never ranked.")
    if not summary["best"]:
        st.caption("No decision with a paired result yet.")
    else:
        standing = {(d["experiment_id"], d["from_rung"]): d for d in decisions}  # the last decision at each rung
        # The verdict, not the sign of the mean: a change a little better on average but within the noise was
        # rejected, and the table must not call it a win.
        st.dataframe(pd.DataFrame([{"experiment": all_names.get(b["experiment_id"], b["experiment_id"]), "rung": b["rung"],
                                    "mean d": b["mean_delta"], "seeds": b["n"],
                                    "decision": fmt.verdict_words(d) if (d := standing.get((b["experiment_id"], b["rung"])))
                                    else fmt.MISSING,
                                    "details": fmt.experiment_link(b["experiment_id"])}
                                   for b in summary["best"][:BEST_SHOWN]]),
                     hide_index=True, placeholder=fmt.MISSING, column_config={
                         "mean d": st.column_config.NumberColumn(format="%+.4f"),
                         "details": st.column_config.LinkColumn(display_text="experiment ↗")})

    scored = trials.dropna(subset=["val_bpb"])
    if not scored.empty:  # else the caption above says why there is nothing to draw
        st.subheader("Runs over time")
        st.altair_chart(charts.runs_over_time(scored, fmt.baseline_bands(scored)))
        st.caption("Each finished run by role: the baseline (dashed line: its mean per rung; band: +- one standard "
                   "deviation over its seeds), the nulls that measure the noise, and the candidates. Rungs are "
                   "different model sizes: compare a run with its own rung's baseline.")
        st.subheader("Best so far")
        best = trials.dropna(subset=["best_decided"])
        if best.empty:
            st.caption("No change promoted yet: only a promotion (a decided improvement) counts here, never a lucky "
                       "seed of the baseline or of a candidate.")
        else:
            left, right = st.columns(2)
            left.altair_chart(charts.best_so_far(best, "run", "runs at the rung"))
            right.altair_chart(charts.best_so_far(best, "compute_hours", "compute so far (device-hours, whole search)"))
            st.caption("The mean paired difference (candidate - baseline val_bpb; lower is better) of the best change "
                       "promoted from each rung so far: it moves only when a decision promotes a change.")

st.subheader("Rung funnel")
funnel = pd.DataFrame(summary["funnel"], columns=["rung", "proposed", "run", "promoted", "rejected"])
if funnel.empty:
    st.info("No rung has been reached yet.")
else:
    left, right = st.columns([2, 3])
    left.dataframe(funnel, hide_index=True, placeholder=fmt.MISSING)
    right.altair_chart(charts.funnel(funnel))
    st.caption("proposed: proposals (first rung) or promotions into the rung · run: experiments with a finished "
               "run there, baseline included · promoted / rejected: verdicts from the rung")

st.subheader("Noise per kind of change")
spreads = db.null_spreads(url, name)
if not spreads:
    st.info("No null runs finished yet: decisions wait for them.")
else:
    st.dataframe(fmt.null_spreads_table(spreads, (search.get("config") or {}).get("rungs")), hide_index=True,
                 placeholder=fmt.MISSING, column_config={
                     "null spread": st.column_config.NumberColumn(format="%.5f", help="RMS of the paired differences "
                                                                  "between the baseline and a null of this kind"),
                     "measured": st.column_config.DatetimeColumn("measured (UTC)", format="YYYY-MM-DD HH:mm")})
    st.caption("structural: the baseline against itself with another initialisation (same data order) · parametric: "
               "the baseline against itself with a learning rate moved by 1e-3 (same seed). A decision's spread is "
               "never below its kind's.")

st.subheader("Promotion decisions")
if not decisions:
    st.info("No promotion decisions yet.")
else:
    reasons = fmt.decision_reasons(decisions, all_names)
    reasons["details"] = reasons.pop("experiment_id").map(fmt.experiment_link)
    st.dataframe(reasons, hide_index=True, placeholder=fmt.MISSING, column_config={
        "why": st.column_config.TextColumn(width="large"),
        "details": st.column_config.LinkColumn(display_text="experiment ↗")})
    with st.expander("The numbers behind each decision"):
        table = fmt.decisions_table(decisions, all_names)
        table["details"] = table.pop("experiment_id").map(fmt.experiment_link)
        st.dataframe(table, hide_index=True, placeholder=fmt.MISSING, column_config={
            **fmt.decision_column_config(st), "details": st.column_config.LinkColumn(display_text="experiment ↗")})

st.subheader("Promotions and their replication")
if not summary["replications"]:
    st.caption("No promotions yet: each one is measured again on the next rung's fresh runs.")
else:
    table = fmt.replications_table(summary["replications"], all_names)
    table["details"] = table.pop("experiment_id").map(fmt.experiment_link)
    st.dataframe(table, hide_index=True, placeholder=fmt.MISSING, column_config={
        "kept": st.column_config.NumberColumn(format="%.2f", help=fmt.REPLICATION_HELP),
        "details": st.column_config.LinkColumn(display_text="experiment ↗")})
    st.caption(fmt.REPLICATION_HELP)

st.subheader("Hypothesis ledger")
ledger = db.hypotheses(url, search_id=search["id"])
if not ledger:
    st.caption("No hypotheses yet: each proposal's claim is recorded here when it becomes an experiment, and the "
               "ledger fills as its decisions judge it.")
else:
    st.caption(fmt.hypothesis_counts(ledger))
    table = fmt.ledger_table(ledger, all_names)
    table["details"] = table.pop("experiment_id").map(fmt.experiment_link)
    st.dataframe(table, hide_index=True, placeholder=fmt.MISSING, column_config={
        **fmt.decision_column_config(st), "claim": st.column_config.TextColumn(width="medium"),
        "rule": st.column_config.TextColumn(width="medium", help="how the last decision judged the claim"),
        # The full id, as the agent's prompts and logs name the experiment.
        "details": st.column_config.LinkColumn("experiment id", display_text=r"experiment\?id=(.*)")})
    st.caption("supported: promoted · refuted: worse by at least the decision's MDE · inconclusive: rejected, but "
               "within what its seeds can see · failed: its runs failed · pending: not decided yet. # is the id "
               "insights cite.")

st.subheader("Insights")
tier, space = search["tier"], search["space"]
insights = db.insights(url, tier, space) if tier and space else []
active = [i for i in insights if i["status"] == "active"]
if not active:
    st.caption("No active insights for this search's tier and space: the agent proposer (`--proposer agent`) distils "
               "them from the judged hypotheses every `--insights-every K` decisions and at the end of a search. They "
               "are kept per tier and space, and the next search there starts from them.")
else:
    st.caption(f"What the searches on tier {tier}, space {space} have taught so far, as the next search's agent reads "
               "it. An edit makes the insight yours (later distillations keep it); a retired one is shown to no "
               "search again.")
    cited = {h["id"]: h for h in db.hypotheses(url, tier=tier, space=space)}

    def edit(insight_id: int, **change) -> None:
        try:
            db.edit_insight(url, insight_id, **change)
        except LeaderboardError as e:
            st.error(f"Not saved: {e}")
        else:
            st.rerun()  # show what the database now holds

    for number, insight in enumerate(active, 1):
        with st.form(f"insight-{insight['id']}"):
            text = st.text_area(f"Insight {number}", value=insight["text"])
            st.caption(f"{fmt.insight_citations(insight, cited, all_names)} · by {insight['author']} · updated "
                       f"{fmt.date(insight['updated_at'])}")
            save, retire, _ = st.columns([1, 1, 4])
            if save.form_submit_button("Save insight") and text.strip() != insight["text"]:
                edit(insight["id"], text=text)
            if retire.form_submit_button("Retire insight"):
                edit(insight["id"], retire=True)
if past := [i for i in insights if i["status"] != "active"]:
    with st.expander(f"Retired and superseded insights ({len(past)})"):
        st.dataframe(pd.DataFrame([{"status": i["status"], "insight": i["text"], "author": i["author"],
                                    "updated": i["updated_at"]} for i in reversed(past)]),  # newest first
                     hide_index=True, placeholder=fmt.MISSING, column_config={
                         "insight": st.column_config.TextColumn(width="large"),
                         "updated": st.column_config.DatetimeColumn("updated (UTC)", format="YYYY-MM-DD HH:mm")})

st.subheader("Runs")
if summary["trials"]:
    shown = trials.iloc[::-1].drop(columns=["experiment_id"])  # newest first
    st.dataframe(shown, hide_index=True, placeholder=fmt.MISSING, column_config={
        "finished": st.column_config.DatetimeColumn("finished (UTC)", format="YYYY-MM-DD HH:mm:ss"),
        "val_bpb": st.column_config.NumberColumn(format="%.4f"),
        "best_decided": st.column_config.NumberColumn("best promoted so far", format="%+.4f"),
        "compute_hours": st.column_config.NumberColumn("compute (h)", format="%.3f"),
    })
else:
    st.caption("No finished runs yet.")

study_trials = db.optuna_trials(url, optuna_view.study_name(name))
if study_trials:
    st.subheader("Optuna's view of the study")
    plots = optuna_view.figures(optuna_view.rebuild(study_trials))
    if not plots:
        st.caption(f"{len(study_trials)} finished Optuna trial(s): its plots need two, with a knob that varied.")
    for title, figure in plots.items():  # each figure carries Optuna's own title
        st.plotly_chart(figure, key=f"optuna-{title}")
    st.caption(f"Optuna's own plots of this search's study (`{optuna_view.study_name(name)}`, {len(study_trials)} "
               "finished trials; a trial's value is its change's mean paired difference at the first rung, lower is "
               "better), for the knobs that varied. The same study opens in optuna-dashboard: `optuna-dashboard "
               "DB_URL`.")

st.subheader("Refused proposals")
if not rejected:
    st.caption("None: every proposal of this search became an experiment.")
else:
    def _proposal(payload) -> str:
        if not isinstance(payload, dict) or "response" in payload:  # the whole answer was unusable
            return "(no usable proposal in the answer)"
        patch = payload.get("patch")
        lines = f" + patch ({str(patch).count(chr(10)) + 1} lines)" if patch else ""
        return fmt.json_text(payload.get("tweaks")) + lines
    st.dataframe(pd.DataFrame([{"refused": r["created_at"], "proposer": r["proposer"], "reason": r["reason"],
                                "proposal": _proposal(r["payload"])} for r in reversed(rejected)]),  # newest first
                 hide_index=True, placeholder=fmt.MISSING, column_config={
                     "refused": st.column_config.DatetimeColumn("refused (UTC)", format="YYYY-MM-DD HH:mm:ss")})
    st.caption("Refused before any run: outside the search space, duplicates, malformed or refused agent answers, "
               "patches that did not apply or failed their checks. Proposals are data from the proposer, shown as sent.")

st.subheader("Agent spend")
if not usage["experiments"]:
    st.caption("No agent usage recorded for this search's proposals.")
else:
    cols = st.columns(4)
    cols[0].metric("cost (USD)", f"${usage['cost_usd']:.2f}")
    cols[1].metric("input tokens", f"{usage['input_tokens']:,}")
    cols[2].metric("output tokens", f"{usage['output_tokens']:,}")
    cols[3].metric("proposals by the agent", usage["experiments"])
    st.dataframe(pd.DataFrame(usage["models"]), hide_index=True, placeholder=fmt.MISSING, column_config={
        "cost_usd": st.column_config.NumberColumn("cost (USD)", format="$%.4f")})

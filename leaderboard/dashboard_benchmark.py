"""Benchmark page: how good is the search? The reports `python -m harness.benchmark` writes (benchmark.json under
$NANORESEARCH_HOME/benchmarks/NAME): the pool's truth, every proposer and decision rule side by side, the discovery
curves, and what each rule did with each change.

Query parameter: ?report=NAME.
A page script that leaderboard/app.py runs (st.Page), not a module to import. It reads report files only.
"""

import json
from pathlib import Path

import streamlit as st

from leaderboard import dashboard_charts as charts
from leaderboard import dashboard_format as fmt
from model.home import home_path

st.title("Benchmark")
st.caption("The search itself, measured on planted good, bad and null changes: what each proposer finds per unit of "
           "compute, and how often each decision rule is fooled, on the same runs.")

where = Path(st.text_input("Reports in", value=str(home_path() / "benchmarks"),
                           help="a directory with one folder per benchmark, each holding its benchmark.json"))
reports = {p.parent.name: p for p in sorted(where.glob("*/benchmark.json"))} if where.is_dir() else {}
if not reports:
    st.info(f"No benchmark reports yet in `{where}`: `python -m harness.benchmark` writes one there "
            "(`--report-only` writes it again from the database).")
    st.stop()

names = list(reports)
wanted = st.query_params.get("report")
name = st.selectbox("Report", names, index=names.index(wanted) if wanted in names else 0)
st.query_params["report"] = name
try:
    report = json.loads(reports[name].read_text())
except (OSError, ValueError) as e:
    st.error(f"Cannot read {reports[name]}: {e}")
    st.stop()

if report.get("description"):
    st.markdown(report["description"])
st.caption(" · ".join([f"tier {report.get('tier')}", f"baseline recipe {report.get('recipe')}",
                       f"rungs {' → '.join(report.get('rungs', []))}", f"alpha {report.get('alpha')}",
                       f"{report.get('repeats', '?')} search(es) per proposer, {report.get('trials', '?')} proposals each",
                       f"database {report.get('db', fmt.MISSING)}", f"written {report.get('created_at', fmt.MISSING)}"]))

st.subheader("The pool's truth")
st.dataframe(fmt.benchmark_truth_table(report), hide_index=True, width="stretch", placeholder=fmt.MISSING)
st.caption("true effect: mean paired difference from the baseline at the first rung on the benchmark's own seeds "
           "(± standard error); good / bad: beyond max(min effect, 2 standard errors) below / above zero")

st.subheader("Proposers and decision rules")
st.dataframe(fmt.benchmark_summary_table(report), hide_index=True, width="stretch", placeholder=fmt.MISSING)
st.caption("means over each proposer's searches; true / false promotions: changes adopted at the top rung that are / "
           "are not good; false at 1st rung: not-good changes promoted at the first rung; missed wins: good changes "
           "rejected; untried: promoted to a rung the search never ran them at; first true win: median compute to "
           "it over the searches that had one; top-rung d: median of the best adopted change's mean paired "
           "difference at the top rung")

rules = sorted({s["rule"] for s in report.get("scores", [])},
               key=lambda r: ["ladder", "greedy", "halving", "fixed_t"].index(r) if r in
               ("ladder", "greedy", "halving", "fixed_t") else 9)
if rules:
    rule = st.selectbox("Rule", rules)
    st.subheader(f"Discovery: {rule}")
    st.altair_chart(charts.discovery(fmt.discovery_frame(report, rule)), width="stretch")
    with st.expander(f"What {rule} did with each change"):
        st.dataframe(fmt.benchmark_outcomes_table(report, rule), hide_index=True, width="stretch")
for png in ("discovery.png", "outcomes.png"):
    if (reports[name].parent / png).exists():
        st.image(str(reports[name].parent / png), caption=png)

"""Leaderboard page: a track's entries ranked by time-to-target, in the shape of nanochat's table.

Query parameter: ?track=NAME.
A page script that leaderboard/app.py runs (st.Page), not a module to import.
"""

import streamlit as st

from leaderboard import dashboard_db as db
from leaderboard import dashboard_format as fmt
from leaderboard import ranking, views

url = db.current_url()
st.title("Leaderboard")

tracks = db.tracks(url)
runs = db.runs(url, statuses=("ok",))
if not tracks and not runs:
    db.empty_state(url, "Nothing on the board yet: a speedrun submission (`python -m harness.speedrun`) creates a "
                        "track and its first entry; runs from `python -m harness.search` or "
                        "`python -m leaderboard ingest RUN_DIR` appear under Best experiments.")
    st.stop()


def show_track() -> dict | None:
    """The chosen track's header and entries; returns the track."""
    names = [t["name"] for t in tracks]
    wanted = st.query_params.get("track")
    name = st.selectbox("Track", names, index=names.index(wanted) if wanted in names else 0)
    st.query_params["track"] = name
    track = next(t for t in tracks if t["name"] == name)

    facts = [f"target: {fmt.metric_label(track['metric'])}"
             + (f" {'≥' if track['metric'].lower() == 'core' else '≤'} {track['target']:g}" if track["target"] is not None else "")]
    if track["depth"] is not None:
        facts.append(f"depth d{track['depth']}")
    if track["hardware"]:
        facts.append(f"hardware: {track['hardware']}")
    if track["timing_rule"]:
        facts.append(f"timing: {track['timing_rule']}")
    if track["description"]:
        st.markdown(track["description"])
    st.caption(" · ".join(facts))

    entries = db.leaderboard(url, name)
    if not entries:
        st.info(f"Track {name!r} has no entries yet.")
        return track
    table, unit = fmt.leaderboard_table(entries, track["metric"])
    if (record := ranking.current_record(entries)) is not None:
        st.markdown(f"**Record to beat:** {record['recipe']}, {fmt.duration(record['time_to_target_mean'])}"
                    + (f" ({record['source']})" if record.get("source") else ""))
    st.dataframe(
        table, hide_index=True, placeholder=fmt.MISSING, width="stretch",
        column_config={
            "#": st.column_config.NumberColumn("#", help="rank by mean time to target (entries without one last)"),
            f"time to target ({unit})": st.column_config.TextColumn(help="mean ± std over the entry's seeds"),
            "record": st.column_config.TextColumn(help="★: a new record when it was submitted"),
            "source": st.column_config.TextColumn(help="where a reference entry was published"),
            "details": st.column_config.LinkColumn("details", display_text="experiment ↗",
                                                   help="the entry's experiment: its runs, decisions and patch"),
        },
    )
    records = sum(1 for e in entries if e["is_record"])
    st.caption(f"{len(entries)} entries · {records} records · times are training time to the target "
               "(mean ± std over seeds)")
    return track


shown = show_track() if tracks else None
if not tracks:
    st.info("No leaderboard tracks yet: a speedrun submission (`python -m harness.speedrun`) creates its track "
            "and first entry.")

depth = shown["depth"] if shown else None
st.subheader(f"Best experiments at d{depth}" if depth is not None else "Best experiments by depth")
nulls = {x["id"] for x in db.experiments(url) if views.is_null(x)}
board = fmt.best_runs_table(runs, db.experiment_names(url), depth, nulls=nulls)
if not board.empty:
    st.dataframe(board, hide_index=True, placeholder=fmt.MISSING, width="stretch", column_config={
        "seeds": st.column_config.NumberColumn(help="finished ok runs (seeds) the mean is over"),
        "val_bpb": st.column_config.TextColumn(help="mean ± std over the seeds: the ranking"),
        "details": st.column_config.LinkColumn("details", display_text="experiment ↗")})
    st.caption(f"every finished run, from searches, speedruns or `model.train` by hand (`python -m leaderboard "
               f"ingest RUN_DIR`), as one row per experiment and rung (one training budget): ranked by the mean "
               f"final val_bpb over its seeds, top {fmt.BEST_PER_DEPTH}; a search's nulls (its baseline again, run "
               f"to measure the noise) are not ranked"
               + (f"; only d{depth}, the depth of track {shown['name']}" if depth is not None else ""))
else:
    st.info(f"No finished runs at d{depth} yet." if depth is not None else "No finished runs yet.")

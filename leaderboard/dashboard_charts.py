"""The dashboard's charts (altair, which ships with Streamlit), built from the frames in dashboard_format.

Why not st.line_chart: its y axis always starts at 0, and val_bpb differences that decide a promotion
(a few hundredths on values near 1-2) would be flat lines. These charts fit the axis to the data.
"""

import altair as alt
import pandas as pd

FUNNEL_STAGES = ["proposed", "run", "promoted", "rejected"]


def _y(field: str, title: str) -> alt.Y:
    return alt.Y(field=field, type="quantitative", title=title, scale=alt.Scale(zero=False))


def trials_over_time(trials: pd.DataFrame) -> alt.Chart:
    """Each finished trial's val_bpb against when it finished, one colour per rung."""
    # 24-hour labels (Vega's default is 12-hour without am/pm): seconds for a short search, the date once it
    # spans days.
    finished = pd.to_datetime(trials["finished"], utc=True)
    span = finished.max() - finished.min()
    labels = "%H:%M:%S" if span < pd.Timedelta(hours=1) else "%H:%M" if span < pd.Timedelta(days=1) else "%b %d %H:%M"
    return alt.Chart(trials).mark_circle(size=40).encode(
        x=alt.X("finished:T", title="finished at (UTC)", scale=alt.Scale(type="utc"), axis=alt.Axis(format=labels)),
        y=_y("val_bpb", "val_bpb"),
        color=alt.Color("rung:N"), tooltip=["experiment", "rung", "seed", "proposer", "val_bpb", "finished"])


def best_so_far(trials: pd.DataFrame, x: str, title: str) -> alt.Chart:
    """The best val_bpb of each rung so far, as a step line: it only moves when a trial improves it."""
    return alt.Chart(trials).mark_line(interpolate="step-after").encode(
        x=alt.X(field=x, type="quantitative", title=title), y=_y("best_val_bpb", "best val_bpb so far"), color=alt.Color("rung:N"),
        tooltip=["rung", "trial", "compute_hours", "best_val_bpb", "experiment"])


def funnel(funnel_rows: pd.DataFrame) -> alt.Chart:
    """Grouped bars per rung in ladder order: proposed, run, promoted, rejected."""
    stages = funnel_rows.melt(id_vars="rung", value_vars=FUNNEL_STAGES, var_name="stage", value_name="experiments")
    return alt.Chart(stages).mark_bar().encode(
        x=alt.X("rung:N", sort=list(funnel_rows["rung"]), title="rung"),
        xOffset=alt.XOffset("stage:N", sort=FUNNEL_STAGES),
        y=alt.Y("experiments:Q", title="experiments"),
        color=alt.Color("stage:N", sort=FUNNEL_STAGES), tooltip=["rung", "stage", "experiments"])


def curves(frame: pd.DataFrame, x: str) -> alt.Chart:
    """val_bpb curves of the picked runs against the chosen x axis, one line per run."""
    return alt.Chart(frame).mark_line(point=alt.OverlayMarkDef(size=20)).encode(
        # field= rather than "name:Q" shorthand: axis names like "training time (s)" would parse as aggregates
        x=alt.X(field=x, type="quantitative", title=x), y=_y("val_bpb", "val_bpb"),
        color=alt.Color("run:N", legend=alt.Legend(orient="bottom", columns=2, labelLimit=400)),
        tooltip=[alt.Tooltip(field="run", type="nominal"), alt.Tooltip(field=x, type="quantitative"),
                 alt.Tooltip(field="val_bpb", type="quantitative")])


def discovery(frame: pd.DataFrame) -> alt.Chart:
    """Best true improvement adopted so far against compute: a step line per search, one colour per proposer."""
    return alt.Chart(frame).mark_line(interpolate="step-after", point=alt.OverlayMarkDef(size=15)).encode(
        x=alt.X(field="compute (h)", type="quantitative", title="compute (calibrated hours)"),
        y=alt.Y(field="true improvement (bpb)", type="quantitative", title="best true improvement adopted (bpb)"),
        color=alt.Color("proposer:N"), detail="search:N",
        tooltip=["search", "proposer", "proposal", alt.Tooltip(field="compute (h)", type="quantitative"),
                 alt.Tooltip(field="true improvement (bpb)", type="quantitative")])

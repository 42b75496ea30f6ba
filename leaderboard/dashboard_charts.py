"""The dashboard's charts (altair, which ships with Streamlit), built from the frames in dashboard_format.

Why not st.line_chart: its y axis always starts at 0, and val_bpb differences that decide a promotion
(a few hundredths on values near 1-2) would be flat lines. These charts fit the axis to the data.
"""

import altair as alt
import pandas as pd

FUNNEL_STAGES = ["proposed", "run", "promoted", "rejected"]


def _y(field: str, title: str) -> alt.Y:
    return alt.Y(field=field, type="quantitative", title=title, scale=alt.Scale(zero=False))


ROLES = ["baseline", "null", "candidate"]
ROLE_COLOURS = ["#4c4c4c", "#9e9e9e", "#1f77b4"]  # the baseline dark, its nulls grey, the changes in colour


def runs_over_time(runs: pd.DataFrame, bands: pd.DataFrame) -> alt.LayerChart:
    """Each finished run's val_bpb against when it finished, coloured by role (baseline, null, candidate), one
    shape per rung, over the baseline's mean (line) and spread over seeds (band) per rung."""
    # 24-hour labels (Vega's default is 12-hour without am/pm): seconds for a short search, the date once it
    # spans days.
    finished = pd.to_datetime(runs["finished"], utc=True)
    span = finished.max() - finished.min()
    labels = "%H:%M:%S" if span < pd.Timedelta(hours=1) else "%H:%M" if span < pd.Timedelta(days=1) else "%b %d %H:%M"
    points = alt.Chart(runs).mark_point(size=50, filled=True).encode(
        x=alt.X("finished:T", title="finished at (UTC)", scale=alt.Scale(type="utc"), axis=alt.Axis(format=labels)),
        y=_y("val_bpb", "val_bpb"),
        color=alt.Color("role:N", scale=alt.Scale(domain=ROLES, range=ROLE_COLOURS)),
        shape=alt.Shape("rung:N"), tooltip=["experiment", "role", "rung", "seed", "proposer", "val_bpb", "finished"])
    band = alt.Chart(bands).mark_rect(opacity=0.12, color=ROLE_COLOURS[0]).encode(
        y=alt.Y(field="low", type="quantitative"), y2=alt.Y2(field="high"), tooltip=["rung", "baseline", "seeds"])
    line = alt.Chart(bands).mark_rule(strokeDash=[4, 3], color=ROLE_COLOURS[0]).encode(
        y=alt.Y(field="baseline", type="quantitative"), tooltip=["rung", "baseline", "seeds"])
    return alt.layer(band, line, points)


def best_so_far(runs: pd.DataFrame, x: str, title: str) -> alt.Chart:
    """The best decided improvement of each rung so far (the mean paired difference of the best change promoted
    from it), as a step line: only a promotion moves it, never a lucky seed."""
    return alt.Chart(runs).mark_line(interpolate="step-after", point=True).encode(
        x=alt.X(field=x, type="quantitative", title=title),
        y=_y("best_decided", "best promoted change so far (mean d, bpb)"), color=alt.Color("rung:N"),
        tooltip=["rung", "run", "compute_hours", "best_decided", "experiment"])


ARMS = ["baseline", "candidate"]
ARM_COLOURS = [ROLE_COLOURS[0], ROLE_COLOURS[2]]


def paired_curves(seeds: pd.DataFrame, band: pd.DataFrame) -> alt.LayerChart:
    """Candidate and baseline val_bpb against step: each seed a thin line, each arm's mean a thick one over a band
    of +- one standard deviation across its seeds."""
    colour = alt.Color("arm:N", scale=alt.Scale(domain=ARMS, range=ARM_COLOURS))
    x = alt.X(field="step", type="quantitative", title="step")
    area = alt.Chart(band).mark_area(opacity=0.15).encode(x=x, y=alt.Y(field="low", type="quantitative"),
                                                          y2=alt.Y2(field="high"), color=colour)
    mean = alt.Chart(band).mark_line(strokeWidth=3).encode(x=x, y=_y("mean", "val_bpb"), color=colour,
                                                            tooltip=["arm", "step", "mean", "seeds"])
    lines = alt.Chart(seeds).mark_line(strokeWidth=1, opacity=0.5).encode(
        x=x, y=_y("val_bpb", "val_bpb"), color=colour, detail="line:N", tooltip=["line", "step", "val_bpb"])
    return alt.layer(area, lines, mean)


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

"""Rooftop solar report: a table, its totals, a histogram of building areas.

:func:`write_report` writes into a folder:

``buildings.csv``   one row per building (the table)
``areas.png``       histogram of footprint areas (matplotlib, Agg, no GUI)
``summary.html``    totals, parameters, the histogram (embedded) and the table

Values are rounded once, in :func:`build_table`; totals are sums of the rounded
table values, so the totals always equal the sums of the CSV columns.

Matplotlib is used through ``Figure`` + the Agg canvas only, never ``pyplot``,
so the report can be drawn inside QGIS without touching its Qt backend.
No ``qgis`` import here.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io
import os
import threading
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from .errors import OutputError
from .precision import DECIMALS
from .temp_files import remove_stale, temp_path

#: Table columns, their decimals (0 = integer; None = as given) and headings. The decimals are the
#: written attributes' (:mod:`.precision`), so the CSV holds the values the GeoPackage holds.
COLUMNS = (
    ("id", None, "id"),
    ("area_m2", DECIMALS["area_m2"], "Footprint area (m²)"),
    ("usable_area_m2", DECIMALS["usable_area_m2"], "Usable area (m²)"),
    ("panels", 0, "Panels"),
    ("kwp", DECIMALS["kwp"], "Power (kWp)"),
    ("specific_yield", DECIMALS["specific_yield"], "Specific yield (kWh/kWp/yr)"),
    ("annual_kwh", DECIMALS["annual_kwh"], "Energy (kWh/yr)"),
    ("orientation_deg", DECIMALS["orientation_deg"], "Orientation (° from N)"),
)
#: How the report names the sizing parameters (internal keys -> labels with units).
PARAM_LABELS = {
    "setback_m": "Setback from the roof edge (m)",
    "usable_fraction": "Usable fraction of the roof",
    "panel_area_m2": "Panel area (m²)",
    "panel_wp": "Panel power (Wp)",
    "specific_yield_kwh_per_kwp": "Specific yield (kWh/kWp/yr)",
    "regularize": "Outlines squared",
}
#: Totals: table column -> decimals.
TOTAL_COLUMNS = tuple(
    (key, decimals)
    for key, decimals, _ in COLUMNS
    if key in ("area_m2", "usable_area_m2", "panels", "kwp", "annual_kwh")
)


def _round(value: Any, decimals: Optional[int]) -> Any:
    if decimals is None or value is None:
        return value
    if decimals == 0:
        return int(round(float(value)))
    return round(float(value), decimals)


def build_table(rows: Iterable[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """The report table: one dict per building with :data:`COLUMNS`, rounded.

    ``rows`` are the dicts of :func:`roof_detector.core.solar.rooftop_attributes`,
    optionally with an ``id``; rows without one are numbered from 1.
    """
    table = []
    for i, row in enumerate(rows, start=1):
        out = {}
        for key, decimals, _ in COLUMNS:
            value = row.get(key, i if key == "id" else None)
            out[key] = _round(value, decimals)
        table.append(out)
    return table


def totals(table: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Totals of a :func:`build_table` table: ``buildings`` and the sum of each total column."""
    out: Dict[str, Any] = {"buildings": len(table)}
    for key, decimals in TOTAL_COLUMNS:
        s = sum(float(r[key]) for r in table if r.get(key) is not None)
        out[key] = int(round(s)) if decimals == 0 else round(s, decimals)
    return out


def histogram_png(areas: Sequence[float], title: str = "Building footprint areas") -> bytes:
    """PNG bytes of a histogram of building areas (m²)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    values = [float(a) for a in areas if a is not None]
    if values:
        ax.hist(values, bins=min(40, max(5, int(len(values) ** 0.5) * 2)), color="#b3412e", edgecolor="white")
    else:
        ax.text(0.5, 0.5, "no buildings", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("Footprint area (m²)")
    ax.set_ylabel("Buildings")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _fmt(value: Any, decimals: Optional[int]) -> str:
    if value is None:
        return ""
    if decimals is None:
        return str(value)
    if decimals == 0:
        return f"{int(value):,}"
    return f"{float(value):,.{decimals}f}"


def render_html(
    table: Sequence[Mapping[str, Any]],
    total: Mapping[str, Any],
    png: bytes,
    title: str = "Rooftop solar report",
    params: Optional[Mapping[str, Any]] = None,
    source: Optional[str] = None,
) -> str:
    """A self-contained HTML page: totals, parameters, histogram (embedded PNG), table."""
    esc = html.escape
    decimals = {k: d for k, d, _ in COLUMNS}
    lines = [
        "<!DOCTYPE html>",
        "<html><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "th{background:#eee;white-space:nowrap}</style>",
        "</head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    if source:
        lines.append(f"<p>Source: {esc(source)}</p>")
    lines.append(f"<p>Generated {esc(_dt.datetime.now().isoformat(timespec='seconds'))}</p>")
    lines.append("<h2>Totals</h2><table id='totals'>")
    lines.append(f"<tr><th>Buildings</th><td>{total['buildings']:,}</td></tr>")
    for key, dec, heading in COLUMNS:
        if key in total:
            lines.append(f"<tr><th>{esc(heading)}</th><td>{_fmt(total[key], dec)}</td></tr>")
    lines.append("</table>")
    if params:
        lines.append("<h2>Parameters</h2><table id='params'>")
        for k, v in params.items():
            shown = "estimated from latitude" if v is None else v
            lines.append(f"<tr><th>{esc(PARAM_LABELS.get(str(k), str(k)))}</th><td>{esc(str(shown))}</td></tr>")
        lines.append("</table>")
    b64 = base64.b64encode(png).decode("ascii")
    # the image in its own paragraph: Qt's rich text (QTextBrowser, QTextDocument -> PDF) otherwise
    # gives the heading before it the image's height
    lines.append("<h2>Building areas</h2>")
    lines.append(f"<p><img alt='histogram of building areas' src='data:image/png;base64,{b64}'></p>")
    lines.append("<h2>Buildings</h2><table id='buildings'><tr>")
    # Column headings break only before their unit, never inside a word ("Orientati/on").
    lines.extend(f"<th>{esc(h).replace(' (', '<br>(')}</th>" for _, _, h in COLUMNS)
    lines.append("</tr>")
    for row in table:
        cells = "".join(f"<td>{esc(_fmt(row.get(k), decimals[k]))}</td>" for k, _, _ in COLUMNS)
        lines.append(f"<tr>{cells}</tr>")
    lines.append("</table></body></html>")
    return "\n".join(lines)


def write_csv(table: Sequence[Mapping[str, Any]], path: str) -> None:
    """The table as CSV (comma-separated, dot decimals, header = column keys)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        _write_csv_to(table, fh)


def _write_csv_to(table: Sequence[Mapping[str, Any]], fh) -> None:
    writer = csv.writer(fh)
    writer.writerow([k for k, _, _ in COLUMNS])
    for row in table:
        writer.writerow(["" if row.get(k) is None else row.get(k) for k, _, _ in COLUMNS])


def write_report(
    rows: Iterable[Mapping[str, Any]],
    out_dir: str,
    title: str = "Rooftop solar report",
    params: Optional[Mapping[str, Any]] = None,
    source: Optional[str] = None,
) -> Dict[str, Any]:
    """Write ``buildings.csv``, ``areas.png`` and ``summary.html`` into ``out_dir``.

    Returns ``{"totals": {...}, "csv": path, "png": path, "html": path}``.
    """
    check_report_dir(out_dir)
    table = build_table(rows)
    total = totals(table)
    png = histogram_png([r["area_m2"] for r in table])
    paths = {
        "csv": os.path.join(out_dir, "buildings.csv"),
        "png": os.path.join(out_dir, "areas.png"),
        "html": os.path.join(out_dir, "summary.html"),
    }
    csv_text = io.StringIO(newline="")
    _write_csv_to(table, csv_text)
    contents = {
        "csv": csv_text.getvalue().encode("utf-8"),
        "png": png,
        "html": render_html(table, total, png, title, params, source).encode("utf-8"),
    }
    # The report is whole or absent: every file is written under a temporary name first and the
    # three are renamed only when all are complete (a full disk left a truncated summary.html in
    # 0.2.0; a Ctrl-C between files left a new buildings.csv beside an older run's summary).
    # Named by temp_files so that those a killed run (kill -9) left are removed here; one name per
    # process, so two runs of one process (two Processing runs in QGIS) take turns, whole set by set.
    with _WRITING:
        for path in paths.values():
            remove_stale(path, "")
        _write_whole(paths, contents)
    return {"totals": total, **paths}


#: Held while a report's files are written and renamed (see :func:`write_report`).
_WRITING = threading.Lock()


def _write_whole(paths: Dict[str, str], contents: Dict[str, bytes]) -> None:
    """Write every file under its temporary name, then rename them all; remove the temporaries."""
    tmps = {key: temp_path(paths[key], "", one_per_process=True) for key in contents}
    try:
        for key, data in contents.items():
            try:
                with open(tmps[key], "wb") as fh:
                    fh.write(data)
            except OSError as exc:
                full = "no space" in str(exc).lower()
                raise OutputError(
                    f"Cannot write the report file {paths[key]} ({exc.strerror or exc})"
                    + ("; the disk is full" if full else "")
                    + ". The buildings themselves were "
                    "written; free space or choose another report folder"
                ) from None
        for key in contents:
            os.replace(tmps[key], paths[key])
    finally:
        for tmp in tmps.values():
            if os.path.lexists(tmp):
                os.unlink(tmp)


def check_report_dir(out_dir: str) -> None:
    """Fail early (before the work) when ``out_dir`` cannot receive the report files."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise OutputError(f"The report folder {out_dir} is a file; choose a folder for the report")
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = temp_path(os.path.join(out_dir, "probe"), "")  # unique: runs of one process may probe at once
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(
            f"Cannot write the report in {out_dir} ({exc.strerror or exc}); choose another report folder"
        ) from None

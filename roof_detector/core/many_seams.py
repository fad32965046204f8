"""Buildings on the seams between ``detect-many`` jobs, settled once for the whole mosaic.

A job keeps the buildings whose representative point it owns (:func:`.mosaic_plan.owns`).
A building across a seam is traced by the jobs on both sides, and their outlines differ a
little (the model's tiles fall elsewhere; each job regularises with the neighbours it sees),
so their representative points can land on opposite sides of the seam: each job then leaves
the building to the other (it is lost), or both keep it (twice). A QA pass saw both with the
bundled model (a 256 m² roof lost from a raster split by ``--block-px``).

So a job does not decide alone for a building within :data:`SEAM_BAND_M` of a seam
(:func:`split_at_seams`): it hands every such building, owned or not, to the merge, and
:func:`settle` chooses one job's outlines for each group of candidates that overlap across
jobs: those of the job owning the representative point of the group's union, one point for
all jobs. A candidate no other job's candidate overlaps is kept where its own job owns it,
as before. No ``qgis`` import here.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import shapely

from .building import Building
from .mosaic_plan import Job, owns

#: Buildings within this distance of a seam (ground metres) are settled by :func:`settle`:
#: the representative points of two jobs' outlines of one building were seen up to 0.9 m apart.
SEAM_BAND_M = 3.0
#: Two jobs' candidates are one building when they share this much of the smaller one's area.
SAME_BUILDING_SHARE = 0.25


def seam_lines(job: Job):
    """The edges of the ground ``job`` owns that it shares with other jobs (not the mosaic's edge)."""
    x0, y0, x1, y1 = job.footprint
    sides = [((x0, y0), (x0, y1)), ((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x0, y1), (x1, y1))]
    # the footprint's sides inside the mosaic: with blocks smaller than the margin, a window reaches
    # the mosaic's edge past a seam (its side is not "inner"), and the seam must still be one
    lines = [shapely.LineString(s) for s, seam in zip(sides, job.seam_edges) if seam]
    box = shapely.box(*job.footprint)
    lines += [shapely.intersection(shapely.box(*e).boundary, box) for e in job.earlier]
    return shapely.union_all(lines) if lines else shapely.GeometryCollection()


def split_at_seams(job: Job, buildings: List[Building], band_crs: float) -> Tuple[List[Building], List[Building]]:
    """``(off_seam, at_seam)``: the buildings farther than ``band_crs`` (CRS units) from every seam of
    ``job``, and the others, owned or not, in their order."""
    lines = seam_lines(job)
    if lines.is_empty or not buildings:
        return list(buildings), []
    band = shapely.buffer(lines, band_crs)
    shapely.prepare(band)
    near = shapely.intersects(band, np.asarray([b.geometry for b in buildings], dtype=object))
    return [b for b, n in zip(buildings, near) if not n], [b for b, n in zip(buildings, near) if n]


def settle(candidates: Sequence[Tuple[int, Building]], jobs: Sequence[Job]) -> List[Building]:
    """One job's outlines for each building on a seam (module docstring); ``candidates`` are
    ``(job index, building)`` from every job, in job order. Returns the buildings kept, in that order."""
    if not candidates:
        return []
    by_index = {j.index: j for j in jobs}
    geoms = np.asarray([b.geometry for _, b in candidates], dtype=object)
    owner = np.asarray([i for i, _ in candidates])
    group = _groups(geoms, owner)
    keep = np.zeros(len(candidates), dtype=bool)
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        if len(set(owner[members].tolist())) == 1:
            # no other job traced it: its own job's ownership, as for any building
            for m in members.tolist():
                p = shapely.point_on_surface(geoms[m])
                keep[m] = owns(by_index[int(owner[m])], p.x, p.y)
            continue
        p = shapely.point_on_surface(shapely.union_all(geoms[members]))
        chosen = [i for i in sorted(set(owner[members].tolist())) if owns(by_index[i], p.x, p.y)]
        if not chosen:  # the point's owner traced nothing here: the job whose outlines cover most
            areas: Dict[int, float] = {}
            for m in members.tolist():
                areas[int(owner[m])] = areas.get(int(owner[m]), 0.0) + geoms[m].area
            chosen = [max(sorted(areas), key=lambda i: areas[i])]
        keep[members[owner[members] == chosen[0]]] = True
    return [b for (_, b), k in zip(candidates, keep) if k]


def _groups(geoms: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """A group label per candidate: candidates of different jobs sharing at least
    :data:`SAME_BUILDING_SHARE` of the smaller one's area are linked, and groups are what links join."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(geoms)
    a, b = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    pick = (a < b) & (owner[a] != owner[b])
    a, b = a[pick], b[pick]
    if len(a):
        shared = shapely.area(shapely.intersection(geoms[a], geoms[b]))
        smaller = np.minimum(shapely.area(geoms[a]), shapely.area(geoms[b]))
        same = shared >= SAME_BUILDING_SHARE * smaller
        a, b = a[same], b[same]
    _, label = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
    return label


__all__ = ["SEAM_BAND_M", "seam_lines", "split_at_seams", "settle"]

"""Building axes for a whole batch of outlines at once (vectorised over the batch).

A building's axes (degrees in [0, 90) from +x) are found in two steps, the
same for every outline in the batch:

1. **Wall histogram** (:func:`wall_directions`): the outline is simplified by half
   the tolerance (Douglas-Peucker, so pixel staircases do not vote for the raster
   axes); its edge directions modulo 90° fill a length-weighted histogram of 1°
   bins, smoothed over ±3° (kernel 1 2 3 4 3 2 1, circular); the direction is the
   weighted circular mean (modulo 90°) of the edges within
   :data:`ALIGN_TOLERANCE_DEG` of the histogram's peak.
2. **Refinement** (:func:`batch_axes`): staircases still pull that direction a degree
   or three towards the raster's axes or diagonals; within ±:data:`AXES_SEARCH_DEG`
   of it (0.25° steps), the direction whose bounding rectangle is smallest (walls,
   not stairs, touch the rectangle) is the building's.

Every step is one numpy call over all outlines of the batch (a strip of a
detection holds hundreds): per outline, the Python version cost about
0.15 ms, most of it call overhead. No ``qgis`` import here.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import shapely
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from .snapping import _clean_ring

#: Edges within this many degrees of the histogram's peak refine it (circular mean).
ALIGN_TOLERANCE_DEG = 10.0
#: How far (degrees) the smallest bounding rectangle may turn a building's axes from its walls' histogram.
AXES_SEARCH_DEG = 5.0
AXES_OFFSETS = np.arange(-AXES_SEARCH_DEG, AXES_SEARCH_DEG + 1e-9, 0.25)
#: Vertices that move the outline by less than this x tolerance are dropped before fitting.
PRESIMPLIFY = 0.1
#: Neighbours within this distance (metres, edge to edge) share their axes when those are close.
NEIGHBOUR_RADIUS_M = 10.0
NEIGHBOUR_MAX_DIFF_DEG = 3.0
_KERNEL = np.array([1, 2, 3, 4, 3, 2, 1], dtype=float)


def _ring_lines(rings: Sequence[np.ndarray]) -> np.ndarray:
    """The closed rings as an array of LineStrings (one shapely call)."""
    counts = [len(r) for r in rings]
    return shapely.linestrings(np.concatenate(rings), indices=np.repeat(np.arange(len(rings)), counts))


def wall_directions(rings: Sequence[np.ndarray], tolerance_m: float, lines: Optional[np.ndarray] = None) -> np.ndarray:
    """Dominant edge direction (degrees in [0, 90)) of each closed ring (step 1 of the module docstring).

    ``rings``: closed coordinate arrays (first == last) in metres (``lines``: the
    same as LineStrings, when the caller has them). A ring whose edges have no
    length gets 0.
    """
    n = len(rings)
    if n == 0:
        return np.zeros(0)
    lines = _ring_lines(rings) if lines is None else lines
    if tolerance_m > 0:
        lines = shapely.simplify(lines, tolerance_m / 2.0, preserve_topology=False)
    pts, owner = shapely.get_coordinates(lines, return_index=True)
    # edges: consecutive points of the same ring
    same = owner[1:] == owner[:-1]
    d = (pts[1:] - pts[:-1])[same]
    ring = owner[1:][same]
    length = np.hypot(d[:, 0], d[:, 1])
    mod = (np.degrees(np.arctan2(d[:, 1], d[:, 0])) % 180.0) % 90.0
    hist = np.bincount(ring * 90 + np.minimum(mod.astype(np.int64), 89), weights=length, minlength=n * 90)
    hist = hist.reshape(n, 90)
    # circular smoothing: smooth[i] = sum_j hist[(i - 3 + j) mod 90] * kernel[j]
    smooth = sum(k * np.roll(hist, 3 - j, axis=1) for j, k in enumerate(_KERNEL))
    peak = (smooth.argmax(axis=1) + 0.5) % 90.0
    near = np.abs((mod - peak[ring] + 45.0) % 90.0 - 45.0) <= ALIGN_TOLERANCE_DEG
    ang4 = np.radians(mod * 4.0)
    s = np.bincount(ring[near], weights=(length * np.sin(ang4))[near], minlength=n)
    c = np.bincount(ring[near], weights=(length * np.cos(ang4))[near], minlength=n)
    any_near = np.bincount(ring[near], minlength=n) > 0
    mean = (np.degrees(np.arctan2(s, c)) / 4.0) % 90.0
    out = np.where(any_near, mean, peak)
    total = np.bincount(ring, weights=length, minlength=n)
    return np.where(total > 0, out, 0.0)


def batch_axes(rings: Sequence[Optional[np.ndarray]], tolerance_m: float = 1.0) -> np.ndarray:
    """Axes (degrees in [0, 90)) of each closed ring in metres (both steps of the module docstring);
    NaN where the ring is None."""
    out = np.full(len(rings), np.nan)
    idx = [i for i, r in enumerate(rings) if r is not None]
    if not idx:
        return out
    valid = [rings[i] for i in idx]
    lines = _ring_lines(valid)
    theta = wall_directions(valid, tolerance_m, lines)
    # A bounding rectangle touches only convex-hull vertices: projecting those alone gives
    # the same extents at a fraction of the cost (a traced ring has a vertex every pixel or
    # two). The hulls, padded with their first vertex to one length, form one array.
    hull_xy, owner = shapely.get_coordinates(shapely.convex_hull(lines), return_index=True)
    n = len(valid)
    counts = np.bincount(owner, minlength=n)
    starts = np.searchsorted(owner, np.arange(n))
    slot = np.arange(len(owner)) - starts[owner]
    padded = np.repeat(hull_xy[starts][:, None, :], counts.max(), axis=1)
    padded[owner, slot] = hull_xy
    padded -= padded.mean(axis=1, keepdims=True)  # centred: the extents do not move, rounding shrinks
    a = np.radians(theta[:, None] + AXES_OFFSETS[None, :])  # n x offsets
    c, s = np.cos(a)[:, None, :], np.sin(a)[:, None, :]
    x, y = padded[:, :, 0:1], padded[:, :, 1:2]
    u = x * c + y * s  # n x vertices x offsets
    v = y * c - x * s
    area = (u.max(axis=1) - u.min(axis=1)) * (v.max(axis=1) - v.min(axis=1))
    # ties (a rotation-symmetric outline) keep the histogram's direction
    best = np.argmin(area * (1.0 + 1e-9 * np.abs(AXES_OFFSETS))[None, :], axis=1)
    out[idx] = (theta + AXES_OFFSETS[best]) % 90.0
    return out


def working_rings(
    metric: Sequence[BaseGeometry], tolerance_m: float = 1.0
) -> List[Tuple[Optional[Polygon], Optional[np.ndarray]]]:
    """Per polygon (metres), the outline fitting works on and its clean exterior ring; ``(None, None)``
    for anything else. Computed once per batch and shared by :func:`own_axes` and :func:`fit_polygon`.

    A traced outline has a vertex every pixel or two; fitting needs only its shape, and
    every later step costs in proportion to its vertices: vertices that move it by less than
    :data:`PRESIMPLIFY` x tolerance are dropped (one vectorised simplification for the batch).
    """
    geoms = np.asarray(metric, dtype=object)
    out: List[Tuple[Optional[Polygon], Optional[np.ndarray]]] = [(None, None)] * len(geoms)
    if not len(geoms):
        return out
    kinds = shapely.get_type_id(geoms)
    area = shapely.area(geoms)
    ok = (kinds == 3) & (area > 0)
    work = geoms.copy()
    # plain Douglas-Peucker (GEOS's topology-preserving variant costs ten times more) for outlines
    # with many vertices or holes; the rare result that is no longer a valid polygon falls back
    # to the outline itself
    big = ok & ((shapely.get_num_coordinates(geoms) > 16) | (shapely.get_num_interior_rings(geoms) > 0))
    if big.any():
        simple = shapely.simplify(geoms[big], PRESIMPLIFY * tolerance_m, preserve_topology=False)
        good = (shapely.get_type_id(simple) == 3) & (shapely.area(simple) > 0) & shapely.is_valid(simple)
        idx = np.flatnonzero(big)
        work[idx[good]] = simple[good]
    coords, owner = shapely.get_coordinates(shapely.get_exterior_ring(np.where(ok, work, None)), return_index=True)
    bounds = np.searchsorted(owner, np.arange(len(geoms) + 1))
    for i in np.flatnonzero(ok).tolist():
        out[i] = (work[i], _clean_ring(coords[bounds[i] : bounds[i + 1]]))
    return out


def own_axes(
    metric: Sequence[BaseGeometry],
    tolerance_m: float = 1.0,
    prepared: Optional[List[Tuple[Optional[Polygon], Optional[np.ndarray]]]] = None,
) -> np.ndarray:
    """:func:`building_axes` of each polygon (metres), as :func:`fit_polygon` computes them; NaN if none.

    ``prepared``: the polygons' :func:`working_rings`, when the caller has them.
    """
    prepared = working_rings(metric, tolerance_m) if prepared is None else prepared
    return batch_axes([ring for _work, ring in prepared], tolerance_m)


def aligned_clusters(
    metric: Sequence[BaseGeometry],
    groups: Sequence[int],
    own: np.ndarray,
    radius_m: float = NEIGHBOUR_RADIUS_M,
    max_diff_deg: float = NEIGHBOUR_MAX_DIFF_DEG,
) -> Tuple[int, np.ndarray]:
    """Clusters of aligned neighbours: ``(count, label per polygon)``.

    Two polygons of one metric frame (``groups``) are linked when they lie within
    ``radius_m`` of each other and their own axes (``own``, NaN: none) differ by at
    most ``max_diff_deg``; a cluster is a connected set of links (a polygon without
    links is a cluster of its own). :func:`consensus_orientations` gives each cluster
    one axis, so a cluster decided in one batch is decided as in any other.
    """
    geoms = np.asarray(metric, dtype=object)
    n = len(geoms)
    own = np.asarray(own, dtype=float)
    idx = np.flatnonzero(np.isfinite(own))
    groups = np.asarray(groups)
    pairs_a, pairs_b = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for g in np.unique(groups[idx]):
        members = idx[groups[idx] == g]
        if len(members) < 2:
            continue
        a, b = shapely.STRtree(geoms[members]).query(geoms[members], predicate="dwithin", distance=radius_m)
        a, b = members[a], members[b]
        close = np.abs((own[a] - own[b] + 45.0) % 90.0 - 45.0) <= max_diff_deg
        pairs_a.append(a[close])
        pairs_b.append(b[close])
    a, b = np.concatenate(pairs_a), np.concatenate(pairs_b)
    return connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)


def consensus_orientations(
    metric: Sequence[BaseGeometry],
    groups: Sequence[int],
    tolerance_m: float = 1.0,
    radius_m: float = NEIGHBOUR_RADIUS_M,
    max_diff_deg: float = NEIGHBOUR_MAX_DIFF_DEG,
    own: Optional[np.ndarray] = None,
    clusters: Optional[Tuple[int, np.ndarray]] = None,
) -> np.ndarray:
    """Axes (degrees in [0, 90)) per polygon, shared with aligned neighbours.

    ``metric``: polygons in metres; ``groups``: the metric frame of each (only
    polygons of one frame are compared); ``own``: their own axes
    (:func:`own_axes`, computed when not given). Polygons within ``radius_m`` of
    each other whose axes differ by at most ``max_diff_deg`` are linked; each
    cluster of linked polygons (a row, a block) takes the perimeter-weighted
    circular mean (modulo 90°) of its members' axes, except members farther than
    ``max_diff_deg`` from it. NaN where a polygon has no axes (empty, degenerate).
    ``clusters``: :func:`aligned_clusters` of these polygons, when the caller has them.
    """
    geoms = np.asarray(metric, dtype=object)
    n = len(geoms)
    own = own_axes(geoms, tolerance_m) if own is None else np.asarray(own, dtype=float)
    out = own.copy()
    ok = np.isfinite(own)
    if ok.sum() < 2:
        return out
    idx = np.flatnonzero(ok)
    w = np.zeros(n)
    w[idx] = shapely.length(geoms[idx])
    vec = np.exp(1j * np.radians(4.0 * np.nan_to_num(own)))
    # a row or block of aligned neighbours is one cluster with one axis (a link may join
    # buildings up to max_diff apart, so a member far from the cluster's axis keeps its own)
    n_clusters, label = (
        clusters if clusters is not None else aligned_clusters(geoms, groups, own, radius_m, max_diff_deg)
    )
    total = np.zeros(n_clusters, dtype=complex)
    np.add.at(total, label[idx], w[idx] * vec[idx])
    mean = (np.degrees(np.angle(total[label[idx]])) / 4.0) % 90.0
    near = np.abs((mean - own[idx] + 45.0) % 90.0 - 45.0) <= max_diff_deg
    # a building without aligned neighbours keeps its own axes exactly (no round trip through the mean)
    near &= np.bincount(label, minlength=n_clusters)[label[idx]] >= 2
    out[idx[near]] = mean[near]
    return out

"""Edge snapping: square an outline edge by edge, to right angles and 45° diagonals.

This is the second of the two fitters of :mod:`.regularize` (the first,
:mod:`.rectilinear`, fits right-angled polygons by rectangle decomposition);
it serves outlines with diagonal walls. Like the "regularize building
footprint" tools of other GIS, it squares an outline:

1. Find the building's dominant orientation: the peak of an edge-length-weighted
   histogram of edge directions modulo 90°, refined by a weighted circular mean
   of the edges near the peak.
2. Simplify the ring by the tolerance (Douglas-Peucker, anchored at a corner).
3. Snap each simplified edge to the dominant axis or its perpendicular, or to
   ±45° when the edge is closer to a diagonal and long enough to matter. Each
   snapped line passes through the length-weighted mean position of the raw
   boundary it replaces. Short edges (< tolerance) are dropped. Consecutive
   parallel lines are merged when their offset differs by less than the
   tolerance, otherwise joined by a perpendicular step.
4. Intersect consecutive lines to get the corners.

A shape stays as it is when it is not rectilinear: round (area > 92 % of its
minimum bounding circle) or less than 75 % of its simplified boundary length
within 10° of the snapped directions (round tanks, curved roofs). So does any
result that is invalid, whose area moves by more than ``max_area_change`` (10 %),
or whose boundary departs from the raw one by more than twice the tolerance.

Work happens in metres (:func:`snap_polygon` takes a polygon already in a
local metric frame). No ``qgis`` import here.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np
import shapely
from shapely.geometry import Polygon


#: Edges within this many degrees of a snapped direction count as aligned.
ALIGN_TOLERANCE_DEG = 10.0
#: Minimum share of the simplified boundary length that must be aligned.
MIN_ALIGNED_FRACTION = 0.75
#: A shape whose area exceeds this share of its minimum bounding circle is round.
ROUND_SHAPE_RATIO = 0.92
#: Largest relative area change a regularised outline may make.
MAX_AREA_CHANGE = 0.10


UNCHANGED_M = 1e-3  # a regularised outline closer than 1 mm to the raw one counts as unchanged


# --------------------------------------------------------------------------- polygons
#
# This runs once per detected building (~10^4 per run) on rings of some tens to
# hundreds of vertices, so per-call overhead matters more than asymptotics: short
# loops use plain Python floats, and numpy is kept only for long arrays. Where a
# value feeds a threshold (distances, angles, line offsets) it is computed with the
# very same floating-point operations as a plain numpy formulation would (same
# ufuncs, same summation order), so results do not depend on this tuning.


def snap_polygon(
    poly: Polygon, tol: float, diagonals: bool = True, max_change: float = MAX_AREA_CHANGE, known_valid: bool = False
) -> Optional[Polygon]:
    """The squared polygon, or None to keep ``poly`` as it is (the checks of the module docstring)."""
    if not known_valid and not poly.is_valid:
        return None
    area = poly.area
    if area <= 0:
        return None
    ext = _clean_ring(shapely.get_coordinates(poly.exterior))
    if ext is None or _is_round(poly, area, ext):
        return None
    theta = dominant_orientation(ext, tol)
    new_ext = _regularize_ring(ext, theta, tol, diagonals)
    if new_ext is None:
        return None
    holes = []
    for interior in poly.interiors:
        ring = _clean_ring(np.asarray(interior.coords))
        if ring is None:
            continue
        new_hole = _regularize_ring(ring, theta, tol, diagonals)
        holes.append(new_hole if new_hole is not None else ring)
    try:
        if holes:
            out = Polygon(new_ext, holes)
        else:  # the same as Polygon(new_ext), minus its Python-level argument handling
            out = shapely.polygons(shapely.linearrings(np.array(new_ext)))
    except (ValueError, shapely.errors.GEOSException):
        return None
    if not out.is_valid or out.is_empty:
        return None
    if not _area_ok(area, out.area, max_change):
        return None
    moved = poly.boundary.hausdorff_distance(out.boundary)
    if moved > 2.0 * tol + 1e-9 or moved < UNCHANGED_M:  # too far, or already regular
        return None
    return out


def _area_ok(raw: float, new: float, max_change: float) -> bool:
    return raw > 0 and abs(new - raw) <= max_change * raw


#: Projections onto 0°, 90°, 45° and 135°: widths along them bound the diameter from below.
_WIDTH_DIRS = np.array([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, -1.0]])
_WIDTH_SCALE = np.array([1.0, 1.0, math.sqrt(0.5), math.sqrt(0.5)])


def is_round(poly: Polygon) -> bool:
    """True when ``poly`` fills most of its minimum bounding circle (tanks, silos, domes)."""
    return _is_round(poly, poly.area, shapely.get_coordinates(poly))


def _is_round(poly: Polygon, area: float, coords: np.ndarray) -> bool:
    # The minimum bounding circle (GEOS) costs more than all the rest of the work on
    # a typical outline, so it is bracketed first. Its radius r is at least half the
    # shape's width in any direction: when even that lower bound leaves the shape
    # clearly short of filling the circle (every rectangle-like building: ≤ 0.75 of
    # it) the shape is not round. And r is at most the largest distance from any
    # centre (here the bounding box's) to a vertex: when even that upper bound has the
    # shape fill it, the shape is round. The 1e-6 margins leave borderline shapes,
    # and rounding, to the exact computation.
    if len(coords):
        proj = coords @ _WIDTH_DIRS
        hi, lo = proj.max(axis=0), proj.min(axis=0)
        r_low = 0.5 * float(((hi - lo) * _WIDTH_SCALE).max())
        if r_low > 1e-3:
            if area <= ROUND_SHAPE_RATIO * (1.0 - 1e-6) * math.pi * r_low * r_low:
                return False
            off = coords - (hi[:2] + lo[:2]) / 2.0
            r_high_sq = float((off * off).sum(axis=1).max())
            if area > ROUND_SHAPE_RATIO * (1.0 + 1e-6) * math.pi * r_high_sq:
                return True
    r = shapely.minimum_bounding_radius(poly)
    return r > 0 and area / (math.pi * r * r) > ROUND_SHAPE_RATIO


def _clean_ring(coords: np.ndarray) -> Optional[np.ndarray]:
    """Closed ring (first == last) without repeated points, or None when degenerate."""
    pts = np.asarray(coords, dtype=float)[:, :2]
    if len(pts) < 4:
        return None
    keep = np.empty(len(pts), dtype=bool)
    keep[0] = True
    np.any(np.abs(pts[1:] - pts[:-1]) > 1e-12, axis=1, out=keep[1:])
    if not np.logical_and.reduce(keep):
        pts = pts[keep]
    (x0, y0), (x1, y1) = pts[0].tolist(), pts[-1].tolist()
    # np.allclose(first, last) with its default rtol=1e-5, atol=1e-8, without its overhead
    if not (abs(x0 - x1) <= 1e-8 + 1e-5 * abs(x1) and abs(y0 - y1) <= 1e-8 + 1e-5 * abs(y1)):
        pts = np.vstack([pts, pts[:1]])
    if len(pts) < 4:
        return None
    return pts


# --------------------------------------------------------------------------- orientation


def _edge_angles(pts: np.ndarray) -> Tuple[List[float], List[float]]:
    """Directions (degrees in [0, 180)) and lengths of the edges of a vertex chain."""
    d = pts[1:] - pts[:-1]
    dx, dy = d[:, 0], d[:, 1]
    # numpy's arctan2 and hypot may differ from libm's in the last bit, so they stay numpy;
    # math.degrees and % are the same operations as their numpy forms.
    angles = [math.degrees(a) % 180.0 for a in np.arctan2(dy, dx).tolist()]
    return angles, np.hypot(dx, dy).tolist()


_KERNEL = np.array([1, 2, 3, 4, 3, 2, 1], dtype=float)
#: ``np.add.reduce`` is what ``ndarray.sum``/``np.sum`` run, minus their Python wrappers.
_add = np.add.reduce


def dominant_orientation(ring: np.ndarray, tolerance_m: float = 0.0) -> float:
    """Dominant edge direction of a closed ring, degrees in [0, 90) from the +x axis.

    Peak of an edge-length-weighted histogram of directions modulo 90° (1° bins,
    smoothed over ±3°), refined by the weighted circular mean of edges within
    10° of the peak. With ``tolerance_m`` the ring is first simplified by half
    the tolerance so that pixel staircases do not vote for the raster axes.
    """
    pts = np.asarray(ring, dtype=float)
    if tolerance_m > 0:
        pts = pts[_simplify_indices(pts, tolerance_m / 2.0)]
    angles, lengths = _edge_angles(pts)
    if _np_sum(lengths) <= 0:
        return 0.0
    # A handful of edges: plain Python, accumulating in np.bincount's order.
    mod = [a % 90.0 for a in angles]
    hist = [0.0] * 90
    for m, w in zip(mod, lengths):
        hist[int(m)] += w  # m is in [0, 90): truncation is its floor
    # Circular smoothing: smooth[i] = sum_j hist[(i - 3 + j) mod 90] * kernel[j].
    smooth = np.correlate(np.array(hist[-3:] + hist + hist[:3]), _KERNEL, mode="valid")
    peak = (int(smooth.argmax()) + 0.5) % 90.0
    sin_terms, cos_terms = [], []
    for m, w in zip(mod, lengths):
        if abs((m - peak + 45.0) % 90.0 - 45.0) <= ALIGN_TOLERANCE_DEG:
            ang4 = math.radians(m * 4.0)
            sin_terms.append(w * math.sin(ang4))
            cos_terms.append(w * math.cos(ang4))
    if not sin_terms:
        return float(peak)
    mean = math.degrees(math.atan2(_np_sum(sin_terms), _np_sum(cos_terms))) / 4.0
    return float(mean % 90.0)


# --------------------------------------------------------------------------- simplification

#: Douglas-Peucker spans longer than this go through numpy; shorter ones are cheaper in Python.
_NUMPY_SPAN = 64


def _simplify_indices(
    ring: np.ndarray, tol: float, xs: Optional[List[float]] = None, ys: Optional[List[float]] = None
) -> List[int]:
    """Sorted indices kept by Douglas-Peucker on a closed ring, anchored at its first point.

    ``xs``, ``ys``: the ring's coordinates as lists, when the caller has them already.
    """
    n = len(ring) - 1
    xcol, ycol = ring[:, 0], ring[:, 1]
    if xs is None or ys is None:
        xs, ys = xcol.tolist(), ycol.tolist()
    keep = [0, n] if n > 0 else [0]
    stack = [(0, n)] if n > 1 else []
    while stack:
        s, e = stack.pop()  # a span with at least one point between its ends
        ax, ay = xs[s], ys[s]
        sx, sy = xs[e] - ax, ys[e] - ay
        norm = math.hypot(sx, sy)
        # All branches compute |seg × (p - a)| / |seg| (or |p - a|) with the same
        # operations in the same order, so a point is kept or dropped alike whichever
        # branch ran; ties go to the first point, as np.argmax does.
        if norm < 1e-12:  # closed span (first == last): distance to the anchor point
            dist = np.hypot(xcol[s + 1 : e] - ax, ycol[s + 1 : e] - ay)
            i = int(dist.argmax())
            far = float(dist[i])
        elif e - s > _NUMPY_SPAN:
            dist = np.abs(sx * (ycol[s + 1 : e] - ay) - sy * (xcol[s + 1 : e] - ax)) / norm
            i = int(dist.argmax())
            far = float(dist[i])
        else:
            dl = [abs(sx * (y - ay) - sy * (x - ax)) / norm for x, y in zip(xs[s + 1 : e], ys[s + 1 : e])]
            far = max(dl)
            if far <= tol:
                continue
            i = dl.index(far)
        if far > tol:
            k = s + 1 + i
            keep.append(k)
            if k > s + 1:
                stack.append((s, k))
            if e > k + 1:
                stack.append((k, e))
    keep.sort()
    return keep


def _np_sum(values: List[float]) -> float:
    """``np.sum`` of a float list, bit for bit: numpy's pairwise summation order."""
    n = len(values)
    if n < 8:
        total = 0.0
        for v in values:
            total += v
        return total
    if n <= 128:
        r0, r1, r2, r3, r4, r5, r6, r7 = values[:8]
        i = 8
        stop = n - n % 8
        while i < stop:
            r0 += values[i]
            r1 += values[i + 1]
            r2 += values[i + 2]
            r3 += values[i + 3]
            r4 += values[i + 4]
            r5 += values[i + 5]
            r6 += values[i + 6]
            r7 += values[i + 7]
            i += 8
        total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        for v in values[stop:]:
            total += v
        return total
    half = n // 2
    half -= half % 8
    return _np_sum(values[:half]) + _np_sum(values[half:])


# --------------------------------------------------------------------------- snapping


class _Line:
    """A snapped line n·x = c with direction ``dir_deg`` (relative to the frame's +x)."""

    __slots__ = ("dir_deg", "c", "weight", "start", "end", "nx", "ny")

    def __init__(self, dir_deg: float, c: float, weight: float, start: Tuple[float, float], end: Tuple[float, float]):
        self.dir_deg = dir_deg
        self.c = c
        self.weight = weight
        self.start = start  # the raw vertices where this line's edge starts and ends (for steps)
        self.end = end
        a = math.radians(dir_deg)
        self.nx, self.ny = -math.sin(a), math.cos(a)  # unit normal


def _regularize_ring(
    ring: np.ndarray, theta: float, tol: float, diagonals: bool
) -> Optional[List[Tuple[float, float]]]:
    """The squared ring (closed list of (x, y)), or None when the ring is not rectilinear or collapses."""
    ring = _from_a_corner(ring)
    xs, ys = ring[:, 0].tolist(), ring[:, 1].tolist()
    idx = _simplify_indices(ring, tol, xs, ys)
    if len(idx) < 4:
        return None
    angles, lengths = _edge_angles(ring[idx])
    perimeter = _np_sum(lengths)
    if perimeter <= 0:
        return None
    nearest = _nearest_directions(angles, lengths, theta, diagonals, perimeter)
    if nearest is None:
        return None
    lines = _merge_parallel(_edge_lines(ring, idx, xs, ys, lengths, nearest, theta, tol), tol)
    if lines is None or len(lines) < 3:
        return None
    return _corners(lines)


def _from_a_corner(ring: np.ndarray) -> np.ndarray:
    """The closed ring restarted at the vertex farthest from the centroid (a corner), to anchor the simplification."""
    body = ring[:-1]
    centred = body - _add(body, axis=0) / len(body)  # body - body.mean(axis=0), bit for bit
    start = int(np.argmax(np.hypot(centred[:, 0], centred[:, 1])))
    return np.concatenate([body[start:], body[:start], body[start : start + 1]])


def _nearest_directions(angles, lengths, theta: float, diagonals: bool, perimeter: float) -> Optional[List[float]]:
    """Each simplified edge's nearest allowed direction relative to ``theta``; None when too little
    of the perimeter lies within :data:`ALIGN_TOLERANCE_DEG` of one (not a rectilinear outline)."""
    dirs = (0.0, 90.0, 180.0, 45.0, 135.0) if diagonals else (0.0, 90.0, 180.0)
    nearest = []
    aligned = []
    for angle, length in zip(angles, lengths):
        rel = (angle - theta) % 180.0
        dev = [abs(rel - d) for d in dirs]
        best = min(dev)
        nearest.append(dirs[dev.index(best)] % 180.0)  # first minimum, as np.argmin
        if best <= ALIGN_TOLERANCE_DEG:
            aligned.append(length)
    if _np_sum(aligned) < MIN_ALIGNED_FRACTION * perimeter:
        return None
    return nearest


def _edge_lines(ring, idx, xs, ys, lengths, nearest, theta: float, tol: float) -> List[_Line]:
    """One snapped line per simplified edge long enough to carry a direction, through the raw boundary."""
    # Raw segment lengths and midpoints, sliced per snapped edge below: elementwise,
    # so identical to computing them on each edge's own stretch of the ring.
    step = ring[1:] - ring[:-1]
    seg_len = np.hypot(step[:, 0], step[:, 1])
    mids = (ring[:-1] + ring[1:]) / 2.0
    normals = {}  # direction -> normal as an array, for the matrix products
    lines: List[_Line] = []
    for j in range(len(idx) - 1):
        length = lengths[j]
        near_dir = nearest[j]
        if length < tol or (near_dir in (45.0, 135.0) and length < 2.0 * tol):
            continue  # too short to carry a direction: its neighbours' intersection replaces it
        i0, i1 = idx[j], idx[j + 1]
        line = _Line((theta + near_dir) % 180.0, 0.0, length, (xs[i0], ys[i0]), (xs[i1], ys[i1]))
        # The length-weighted mean offset of the raw boundary. (The matrix-vector product
        # stays numpy, on just this slice: BLAS may fuse multiply-adds, so a hand-written
        # or whole-ring product can differ in the last bit. ``.dot`` runs the same BLAS
        # call as ``@`` with less overhead.)
        w = seg_len[i0:i1]
        total = _add(w)
        if total > 0:
            normal = normals.get(line.dir_deg)
            if normal is None:
                normal = normals[line.dir_deg] = np.array([line.nx, line.ny])
            line.c = float(_add(w * mids[i0:i1].dot(normal)) / total)
        else:
            line.c = line.nx * xs[i0] + line.ny * ys[i0]
        lines.append(line)
    return lines


def _corners(lines: List[_Line]) -> Optional[List[Tuple[float, float]]]:
    """The closed ring of consecutive lines' intersections; None when two neighbours do not meet."""
    corners = []
    for i in range(len(lines)):
        p = _intersect(lines[i], lines[(i + 1) % len(lines)])
        if p is None:
            return None
        corners.append(p)
    corners.append(corners[0])
    return corners


def _same_dir(a: float, b: float) -> bool:
    return abs(((a - b) + 90.0) % 180.0 - 90.0) < 1e-6


def _merge_parallel(lines: List[_Line], tol: float) -> Optional[List[_Line]]:
    """Merge consecutive parallel lines closer than ``tol``; join farther ones by a step."""
    guard = 0
    changed = True
    while changed and len(lines) >= 2:
        guard += 1
        if guard > 10000:
            return None
        changed = False
        n = len(lines)
        for i in range(n):
            a, b = lines[i], lines[(i + 1) % n]
            if a is b or not _same_dir(a.dir_deg, b.dir_deg):
                continue
            # Lines of opposite travel share the normal only up to sign.
            cb = b.c if a.nx * b.nx + a.ny * b.ny > 0 else -b.c
            if abs(a.c - cb) <= tol:
                w = a.weight + b.weight
                lines[i] = _Line(a.dir_deg, (a.c * a.weight + cb * b.weight) / w, w, a.start, b.end)
                del lines[(i + 1) % n]
            else:
                # the step sits midway along the dropped boundary
                at = ((a.end[0] + b.start[0]) / 2.0, (a.end[1] + b.start[1]) / 2.0)
                step = _Line((a.dir_deg + 90.0) % 180.0, 0.0, 0.0, at, at)
                step.c = step.nx * at[0] + step.ny * at[1]
                lines.insert(i + 1, step)
            changed = True
            break
    return lines


def _intersect(a: _Line, b: _Line) -> Optional[Tuple[float, float]]:
    """Corner where two lines meet, or None when they are (nearly) parallel.

    Solves the 2x2 system by partial-pivoting LU written out in the order LAPACK's
    dgesv (behind ``np.linalg.solve``) does it, which reproduces its results bit for
    bit at a fraction of the cost. That matters beyond 1e-15 m: outlines that touch
    exactly (parts of a MultiPolygon on a pixel grid) stay valid or invalid alike.
    """
    a11, a12, b1 = a.nx, a.ny, a.c
    a21, a22, b2 = b.nx, b.ny, b.c
    if abs(a11 * a22 - a12 * a21) < 1e-9:  # the lines meet at 45° or 90°, or not at all
        return None
    if abs(a21) > abs(a11):
        a11, a12, b1, a21, a22, b2 = a21, a22, b2, a11, a12, b1
    low = a21 * (1.0 / a11)
    x2 = (b2 - low * b1) / (a22 - low * a12)
    return ((b1 - a12 * x2) / a11, x2)

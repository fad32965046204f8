"""The record every front end receives for one detected building."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict

from shapely.geometry.base import BaseGeometry


@dataclass
class Building:
    """One building footprint.

    ``geometry`` is a shapely polygon in the source raster's CRS;
    ``area_m2`` and ``perimeter_m`` are true ground measures whatever that
    CRS (taken in a local azimuthal-equidistant frame, within 0.001 % of
    geodesic values, see :mod:`roof_detector.core.metric_frame`); ``confidence`` is the
    mean model probability over the building's pixels. Post-processing
    steps (solar sizing, regularisation, evaluation) add their own values
    to ``attributes`` (float, int or str), which the GeoPackage writer turns
    into fields.
    """

    geometry: BaseGeometry
    area_m2: float
    perimeter_m: float
    confidence: float
    attributes: Dict[str, Any] = field(default_factory=dict)

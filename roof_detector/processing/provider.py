"""The "Roof Detector" Processing provider (id ``roofdetector``)."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .common import icon, tr
from .detect import DetectBuildingsAlgorithm
from .detect_many import DetectBuildingsManyAlgorithm
from .evaluate import EvaluateDetectionAlgorithm
from .finetune import FinetuneModelAlgorithm
from .solar import RooftopSolarAlgorithm

PROVIDER_ID = "roofdetector"
ALGORITHMS = (
    DetectBuildingsAlgorithm,
    FinetuneModelAlgorithm,
    RooftopSolarAlgorithm,
    EvaluateDetectionAlgorithm,
    DetectBuildingsManyAlgorithm,
)


class RoofDetectorProvider(QgsProcessingProvider):
    """Detect buildings, fine-tune a model, rooftop solar potential, evaluate a detection."""

    def loadAlgorithms(self) -> None:  # noqa: N802 - QGIS API
        for algorithm in ALGORITHMS:
            self.addAlgorithm(algorithm())

    def id(self) -> str:
        return PROVIDER_ID

    def name(self) -> str:
        return tr("Roof Detector")

    def longName(self) -> str:  # noqa: N802
        from .. import __version__

        return tr("Roof Detector {version}").format(version=__version__)

    def icon(self) -> QIcon:
        return icon()

"""The plugin's Processing provider "Roof Detector" (id ``roofdetector``).

Algorithms (one module each): ``detectbuildings`` (:mod:`.detect`),
``finetunemodel`` (:mod:`.finetune`), ``rooftopsolar`` (:mod:`.solar`) and
``evaluatedetection`` (:mod:`.evaluate`). They are thin front ends over
:mod:`roof_detector.core`, like the toolbar dialog and the CLI: they turn
layers into what the engine takes, call it, and turn its results into
Processing outputs. The engine (and torch) is imported only when an
algorithm runs, so the provider loads in a QGIS without torch.
"""

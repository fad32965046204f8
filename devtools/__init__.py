"""Developer tools of Roof Detector, kept out of the plugin zip: ``python -m devtools COMMAND``.

* ``bench`` (:mod:`.bench`, :mod:`.bench_cli`): speed and memory figures (``make bench``);
* ``score`` (:mod:`.heldout`, :mod:`.score_cli`): held-out figures on ``../shared/data`` (``make score``);
* ``train`` (:mod:`.recipe`, :mod:`.train_cli`): the bundled model's training run (``make train``);
* ``onnx-twin`` (:mod:`.onnx_twin`, :mod:`.onnx_twin_cli`): the bundled model's int8 ONNX twin, a release step (``make onnx-twin``);
* :mod:`.int8_distill`: an int8 twin simulator and quantisation-aware distillation (rule 12; not a release step);
* :mod:`.synthetic` and :mod:`.test_model`: generated rasters and a one-layer model for tests and the bench.

Everything here uses the plugin's engine (:mod:`roof_detector.core`); nothing
in the plugin imports this package.
"""

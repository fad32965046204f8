"""``python -m devtools COMMAND``: the developer commands, with the plugin CLI's error handling."""

from roof_detector.cli import leave_after_interrupt, main

COMMANDS = {
    "bench": "devtools.bench_cli",
    "bench-many": "devtools.bench_many_cli",
    "score": "devtools.score_cli",
    "train": "devtools.train_cli",
    "onnx-twin": "devtools.onnx_twin_cli",
}

if __name__ == "__main__":
    leave_after_interrupt(main(prog="python -m devtools", commands=COMMANDS))

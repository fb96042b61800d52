"""`dreamtalk eval`: lip-sync, expressiveness, diversity, realism, smoothness and speed of every
motion generator (LSTM baseline, EmoDiff's full sampler, distilled students) on a corpus split.

- `engine.evaluation.metrics`: the metrics, plain functions over raw motion arrays;
- `engine.evaluation.features`: motion-window features and the space realism is measured in;
- `engine.evaluation.emotion_classifier`: the emotion classifier trained on training targets;
- `engine.evaluation.evaluate`: the runner (`EvalConfig`, `run_eval`, `format_table`).

docs/eval.md defines every metric and holds the measured table.
"""

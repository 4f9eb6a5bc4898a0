"""The benchmarks: `python -m bench.perf [--quick] [--only NAME ...] [--out FILE.json]` (`command`),
each a ratio measured side by side, and the checks of one step's or one GPU's cost.

These machines vary by +-30 % in absolute speed, so every benchmark is a ratio: a baseline and a
contender measured side by side in one run, alternately, `repeat` times. Each row (printed, and
one JSON object per row with `--out`) is

    {name, ratio, baseline, contender, unit, median, min, max, settings}

`ratio` is the median over the repeats of contender / baseline in `unit` (a speed-up when the
unit is a rate); `median`, `min` and `max` are the contender's own measurements in `unit`;
`settings` holds the work measured, the baseline's median and the ratio's min and max.
Speed is measured here, never asserted in tests.

  harness.py    Row, the work sizes (FULL, QUICK), `paired` and `rate`
  gemm.py       gemm_peak: fp32 against bf16 matrix products, and the fp32 rate others report against
  training.py   teacher_pool_training, meta_train_step, kd_student, training_step
  loader.py     loader: FFCV against torchvision on one JPEG folder
  records.py    tiny_main_table, time_to_student: from a tiny main_table run's records
  command.py    the command: BENCHMARKS by name, the table, the JSON rows (`__main__.py` runs it)
  meta_step.py  `python -m bench.perf.meta_step`: what one WeightFormer meta-training step costs
  gpu_check.py  `python -m bench.perf.gpu_check` (make gpu-check): the paper-shape costs on one GPU
"""

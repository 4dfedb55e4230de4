"""Studies: the research harness on top of training and evaluation.

One module per idea, each importable on its own (nothing is imported here, so `tcae --help` stays fast):

- ``stages``: the stages a run goes through as plain functions (train a tokenizer, evaluate it, cache its
  latents, train a DiT, sample, judge the samples), shared by everything below;
- ``paper``: the paper's tables and notes, the experiments' cells, the scales (what a grid trains);
- ``cells``: one (cell, seed): its key, its lock, running it; ``score_tokenizer`` (one tokenizer's generation
  proxy, also `tcae score`'s);
- ``experiments``: `tcae repro EXPERIMENT`: every (cell, seed) of an experiment, then its report;
- ``report``: the report of an experiment (seeds aggregated, the paper beside the measurement, verdicts);
- ``curves``: `tcae repro curves`: both training phases' learning curves on val, which choose their steps;
- ``score``: `tcae score`;
- ``demo``: `tcae demo`.
"""

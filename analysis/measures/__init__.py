"""Measures on a model: what a checkpoint or a training run shows, one forward (or one backward) at a time.

`metrics` the per-head scores (previous-token, induction, duplicate, attention by offset), pure functions
of attention patterns; `probes` the hooks on the one model definition (attention patterns, residuals, the
smear's λ and gate); `recorder` the training-time callback that records them every N steps; `lambda_grad`
λ's gradient every step; `canon` what a canon layer mixes in per offset; `inspect` attention and smear
coefficients on a given text. May import the trainer and `analysis.schema`/`tables`/`loading`; never the
mechanism, the statistics or the write-up.
"""

"""smearlens analysis: measures, mechanism, statistics and write-up over the trainer's checkpoints.

The packages follow the order in which the data flows, and each imports only those below it (a contract
that `lint-imports` checks):

- `writeup`    reports, figures (`plots`) and the inspect page, from tables and statistics;
- `stats`      statistics over the tables (claims, verdicts, dose-response), which never touch a model;
- `analyze`    runs the measures and the mechanism over a run's checkpoints and writes the tables;
- `mechanism`  the causal mechanism: path attribution, read-out, knock-outs, composition;
- `measures`   measures on a model: head scores, hooks, the training-time recorder;
- `tables`, `schema`, `loading`: the tables' columns, reading and validating them, loading a checkpoint
  as a model, where every layer above can reach them.
"""

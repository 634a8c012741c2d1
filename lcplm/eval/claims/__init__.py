"""Published claims as experiments with statistics: ``lcplm reproduce`` and ``runs/claims/REPORT.md``.

- :mod:`~lcplm.eval.claims.spec`: the claim YAML schema (``experiments/claims/*.yaml``): the paper's
  statement, the hypothesis as tested, the statistical test, and per tier (cpu, gpu; smoke is the cpu
  tier with ``experiments/claims/tiers/smoke.yaml`` on top) the arms, evaluations and budget.
- :mod:`~lcplm.eval.claims.runner`: plans every arm of a tier as a sweep (``lcplm.train.sweep``: one
  run per seed, resumable, local or SLURM), evaluates finished runs (eval-lm, eval-downstream; each
  result cached in a file), applies the tests and writes the report.
- :mod:`~lcplm.eval.claims.verdicts`: the tests (:mod:`lcplm.eval.stats`) and the verdict rule:
  *reproduced* only when the test rejects at the stated alpha in the claimed direction,
  *contradicted* when it rejects in the opposite direction, else *not reproduced at this scale*;
  *not tested* when the runs or evaluations it needs are missing or broke the budget.
- :mod:`~lcplm.eval.claims.report`: REPORT.md and one figure per claim.
"""

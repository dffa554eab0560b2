"""The evaluation harness behind `bld eval`: the paper's protocol (PAPER.md section 5) and its claims,
measured on the synthetic world against baselines run in the same process.

- `suite`: the fixed, seeded task suites (main: rectangular masks; thin: strokes a few pixels wide).
- `methods`: BLD variants, background reconstructions and baselines as named callables.
- `scoring`: judging (the world classifier), metrics per method, bootstrap intervals, the claims.
- `report`: report.md tables, plots and example grids.
- `runner.run_eval`: runs it all and writes the report folder.
"""

from .runner import EvalConfig, run_eval

__all__ = ["EvalConfig", "run_eval"]

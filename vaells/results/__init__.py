"""Results as code: ``python -m vaells.results run SUITE`` trains and evaluates a suite's jobs through Hydra's
launchers into ``results/<job>.json``, and ``python -m vaells.results render`` writes ``docs/results.md``, its
figures and the front page's generated blocks from those files alone (docs/running.md, "Results").

- ``suites``: the suites (``conf/suite/``), their jobs, and which have results;
- ``writer``: the Hydra callback that writes a job's result, with its provenance;
- ``tables``: what the page shows for each experiment, and the paper's claims;
- ``render``: the page, the figures, the front page's blocks, and the check CI runs.
"""

"""TokenDrift: drifting objectives for refining discrete diffusion language models.

The folders are the layers (tests/test_layers.py checks them from the import statements):

- ``core/``: the library (model, diffusion processes, objective, data, checkpoints, configs, the
  Hub); it imports nothing of the package outside ``core/``.
- ``jobs/``: one module per job of the pipeline (pretrain, train with its training state, sample,
  score, probe, prepare, fetch, evaluator); they import the library, never the grid or the
  reporting layer.
- ``schemas/``: the jobs' options (JSON schema as YAML; every default documented once there).
- ``report/``: reading result files, the tables, the baseline gate, rendering, the figures, MLflow,
  the run's status and its cost; never a job module.
- ``grid/``: a workflow config's grid in three parts: the sheet (what is evaluated), the layout
  (where each file lives; what reporting reads) and the rule adapter (rule inputs, arguments and
  environments; workflow/rules/*.smk alone import it); never a job module.
- ``cli.py``: the ``tokendrift`` command line; ``warm.py``: the warm-start server of local jobs.

Only the code in ``core/``, ``jobs/`` and ``schemas/`` makes results: editing anything else leaves
trained models and their scores valid (``tokendrift.core.utils.code_digest``).
"""

__version__ = "0.1.0"

"""The commands: one module per `gemini-ray` subcommand, each reading as setup → fit → validate/export.

A command imports the library (every other module of gemini_ray) and never another command; what two
commands share lives in the library (session setup in `cluster.session`, a distillation run in
`jobs.distill_run`, Ray Train in `training.trainer`, cache making in `jobs.labelling`, search spaces in
`jobs.search`). `gemini_ray.cli` builds the config and dispatches here. tests/test_layout.py holds the line.
"""

"""The accuracy studies behind the pipeline's defaults, run by hand from the repository root:
``python -m experiments.NAME --help`` (tricks, defaults, shift, ensembles). What they share is in
:mod:`experiments.common`; each study's dated record is a Markdown file beside them (README.md lists them)."""

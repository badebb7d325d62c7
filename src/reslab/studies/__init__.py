"""Studies: experiments that make the claims about residual networks visible, one module each.

Each study module exposes `HELP` (one line), `add_arguments(parser)` and `main(opts)`; the CLI
adds one subcommand per entry of `STUDIES`.
"""

STUDIES = {  # CLI command -> module
    "degradation": "reslab.studies.degradation",
    "depth": "reslab.studies.depth",
    "gradients": "reslab.studies.gradients",
    "identity": "reslab.studies.identity",
    "lesion": "reslab.studies.lesion",
    "shortcuts": "reslab.studies.shortcuts",
}

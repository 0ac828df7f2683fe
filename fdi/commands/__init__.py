"""One module per ``python -m fdi`` command; each defines ``add_parser(subparsers)``."""

"""The ``valleys`` command line: one module per command, each its parser and its printing.

:mod:`valleys.commands.main` builds the top-level parser from them and dispatches.
"""

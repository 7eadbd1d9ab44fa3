"""The `glmbot` command line: one Typer sub-app per command group, wired in main.py."""

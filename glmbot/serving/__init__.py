"""Serving: routing, prefix cache and the engine. Kept import-light: import submodules directly."""

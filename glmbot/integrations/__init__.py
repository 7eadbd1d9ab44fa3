"""Bridges from the registry and engine to other ecosystems: the Hugging Face Hub (hub.py) and LangChain.

HTTP has a package of its own, glmbot.http.
"""

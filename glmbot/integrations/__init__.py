"""Bridges from the registry and engine to the outside: the Hugging Face Hub (hub.py), LangChain, HTTP."""

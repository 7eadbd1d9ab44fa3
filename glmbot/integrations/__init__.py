"""Bridges from the registry and engine to other ecosystems: the Hugging Face Hub (hub.py), LangChain
(langchain.py) and Ray Serve (ray_serve/: `glmbot serve --ray`, replicas on a cluster).

HTTP has a package of its own, glmbot.http.
"""

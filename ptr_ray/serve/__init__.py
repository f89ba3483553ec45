"""Refinement serving: a FastAPI ingress and a vLLM engine deployment on Ray Serve.

``app.py`` holds the Serve deployments, the app builder for serve config files and
``run_serve`` (``ptr-ray serve``); ``api.py`` the FastAPI routes, which also run without Ray
behind any object that speaks :class:`ptr_ray.serve.api.EngineBackend`.
"""

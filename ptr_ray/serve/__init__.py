"""Refinement serving: a FastAPI ingress and a vLLM engine deployment on Ray Serve.

- ``app.py``: the Serve deployments (the engine replica runs every round of a request it
  takes), the app builder for serve config files, ``run_serve`` (``ptr-ray serve``);
- ``api.py``: the FastAPI routes, which also run without Ray behind any object that speaks
  :class:`ptr_ray.serve.session.EngineBackend`;
- ``deps.py``: what a route needs first (auth, body parsing and validation, limits);
  ``auth.py``, ``body.py``: the decisions behind them;
- ``session.py``: one request's rounds against the engine, as events;
- ``timeouts.py``: the first-token, stall and whole-request time limits of a request;
- ``chunks.py``: those events on the wire (SSE, OpenAI chunks, JSON bodies);
- ``schemas.py``, ``errors.py``, ``metrics.py``, ``client.py`` (``ptr-ray refine``).
"""

"""The jobs dashboard (``pollen dashboard``, ``pip install 'pollen-jobs[dashboard]'``).

Server-rendered pages beside Flower: the jobs with filters and live counts, one job's
timeline, results, errors, audit trail and callback deliveries (with cancel and replay), and
an overview of the fleet. A Starlette app on :class:`pollen.AsyncPollen`; ``import pollen``
never loads it.

- ``app.py`` builds the app (routes, templates, the client's lifespan);
- ``views.py`` the handlers: read through the client and the store's operations, render;
- ``present.py`` pure helpers that turn jobs into what the templates show;
- ``charts.py`` the overview's charts, drawn as inline SVG;
- ``security.py`` basic auth, CSRF tokens for the actions, security headers;
- ``server.py`` running it: in the foreground (the CLI) or in a thread (the demo, the tests).
"""

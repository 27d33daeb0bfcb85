"""Provider push as a wake-up: ``pollen ingress`` takes the providers' pushes and makes pollen
poll the pushed job at once, through the normal fenced poll. A push is never the result.

:mod:`pollen.ingress.tokens` (per-job push URLs) is light and used by the providers and the
worker; :mod:`pollen.ingress.app` (the ASGI app, Starlette) is imported only by the ingress.
"""

"""Provider push as a wake-up: ``pollen ingress`` takes the providers' pushes and makes pollen
poll the pushed job at once, through the normal fenced poll. A push is never the result.

:mod:`pollen.ingress.pushes` is what one push does (no I/O); :mod:`pollen.ingress.app` is the
ASGI app (Starlette). The per-job push URLs are :mod:`pollen.providers.push`.
"""

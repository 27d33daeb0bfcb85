"""Callbacks: the events a job sends (:mod:`.events`), Standard Webhooks signing
(:mod:`.webhooks`), one HTTP delivery attempt (:mod:`.delivery`) and the address policy that
keeps callbacks off private networks (:mod:`.addresses`). Their state lives in the store's
outbox (:mod:`pollen.store.outbox`).
"""

"""Callbacks: the events a job sends and their bodies (:mod:`.events`), Standard Webhooks
signing (:mod:`.webhooks`) and one HTTP POST to a receiver, classified (:mod:`.delivery`).
Their state lives in the store's outbox (:mod:`pollen.store.outbox`); the worker makes the
delivery attempts (:mod:`pollen.worker.deliveries`); the address policy that keeps them off
private networks is :mod:`pollen.addresses`.
"""

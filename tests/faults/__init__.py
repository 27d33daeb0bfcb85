"""The fault-injection suite: ``pytest -m faults`` (see ``tasks/reliability``)."""

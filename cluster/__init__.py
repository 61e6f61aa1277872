"""Shared infrastructure for every stage: object-storage URIs, typed config <-> CLI, progress logging,
and (under ``cluster/local`` and ``cluster/*.yaml``) what a Ray cluster or a local test head needs."""

"""Shared infrastructure for every stage: ``storage`` (URIs), ``config`` (typed config = CLI, pinned beside
the outputs), ``stage`` (markers, Parquet writes, manifests), ``cli`` (one error rule for every
``__main__``), ``progress`` (one line per interval) and ``rayutil`` (Ray init, quiet logs, progress
polling); under ``cluster/local``, ``cluster/jobs`` and ``cluster/*.yaml``, what a Ray cluster or a local
test head needs."""

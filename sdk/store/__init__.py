"""The store: every run, step, mask, judge call and eval in DuckDB. Never imports torch.

``schema`` (migrations, ``python -m engrain.store --schema-doc``), ``rows`` (each row's
shape, built and checked), ``db`` (``Store``: the connection, writers, readers), ``views``
(what `cl runs`, `cl show` and the report show), ``report`` (the HTML report).
"""

from engrain.store.db import Store, StoreBusyError, StoreError, StoreNotFoundError, UnknownRunError
from engrain.store.rows import RUN_STATUSES, SUBJECTS, VERDICTS
from engrain.store.schema import LATEST_VERSION, MIGRATIONS, schema_doc
from engrain.store.views import RunVerdict, latest_scores, run_verdict, summaries

__all__ = ["LATEST_VERSION", "MIGRATIONS", "RUN_STATUSES", "SUBJECTS", "VERDICTS", "RunVerdict", "Store",
           "StoreBusyError", "StoreError", "StoreNotFoundError", "UnknownRunError", "latest_scores", "run_verdict",
           "schema_doc", "summaries"]

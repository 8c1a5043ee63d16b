"""The `index` section: which index backend the node uses (SQLite embedded, or a shared PostgreSQL)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, model_validator

from node.config.types import _Section


class IndexSection(_Section):
    """The index (studies, job queue, outbox): `sqlite`, embedded under storage.root for one node, or
    `postgresql`, one server shared by several nodes (docs/scale.md). The PostgreSQL DSN comes from
    exactly one of `dsn`, `dsn_env` (the name of an environment variable holding it) or `dsn_file` (a
    file holding it, e.g. a container secret); it is never logged or printed with its password."""

    backend: Literal["sqlite", "postgresql"] = "sqlite"
    dsn: SecretStr | None = None
    dsn_env: str | None = None
    dsn_file: Path | None = None
    # Owner name of this node's job and delivery leases; unique per node of a shared index and stable
    # across its restarts. Default: host name and DICOM port.
    node_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    # A claimed job or delivery stays this node's this long without a heartbeat (renewed every third).
    lease_s: Annotated[float, Field(ge=5, le=3600)] = 60.0

    @model_validator(mode="after")
    def _one_dsn_source(self) -> IndexSection:
        given = [k for k in ("dsn", "dsn_env", "dsn_file") if getattr(self, k) is not None]
        if self.backend == "postgresql" and len(given) != 1:
            raise ValueError("backend postgresql needs exactly one of dsn, dsn_env, dsn_file"
                             + (f" (given: {', '.join(given)})" if given else ""))
        if self.backend == "sqlite" and given:
            raise ValueError(f"backend sqlite takes no {', '.join(given)} (the index is storage.root/index.sqlite3)")
        return self

    def resolve_dsn(self) -> str:
        """The DSN, read from the environment or the file now (a rotated secret is picked up at the
        next start). ValueError names where it was looked for, never the value."""
        if self.dsn is not None:
            return self.dsn.get_secret_value()
        if self.dsn_env is not None:
            value = os.environ.get(self.dsn_env, "").strip()
            if not value:
                raise ValueError(f"index.dsn_env: environment variable {self.dsn_env} is not set or empty")
            return value
        if self.dsn_file is not None:
            try:
                value = self.dsn_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"index.dsn_file: cannot read {self.dsn_file}: {exc.strerror}") from None
            if not value:
                raise ValueError(f"index.dsn_file: {self.dsn_file} is empty")
            return value
        raise ValueError("index: backend sqlite has no DSN")

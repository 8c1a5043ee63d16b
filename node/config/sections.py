"""The node's own sections of the configuration: identity and network, storage, ingest, processing,
export and destinations, the status endpoint and logging."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from node.config.types import AETitle, ExistingFile, Port, PositiveFloat, PositiveSeconds, _Section


class TLSSection(_Section):
    """DICOM TLS (PS3.15 B.9, BCP 195 profile: TLS 1.2 or newer)."""

    cert: ExistingFile
    key: ExistingFile
    ca: ExistingFile | None = None
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _client_cert_needs_ca(self) -> TLSSection:
        if self.require_client_cert and self.ca is None:
            raise ValueError("require_client_cert needs ca (the authority that signs client certificates)")
        return self


class NetworkLimitsSection(_Section):
    """What the DICOM listener tolerates from a peer before it has proven to be a DICOM sender
    (docs/security.md): timeouts and size caps checked before anything is allocated."""

    # A connection must complete its TLS handshake and deliver its whole A-ASSOCIATE-RQ within
    # this time (the ARTIM timer of PS3.8 9.1.5); until then it does not count against max_associations.
    artim_timeout_s: Annotated[float, Field(gt=0, le=600)] = 20.0
    # Every read on an associated connection: a PDU started but not finished within this time ends it;
    # an association silent this long is aborted.
    network_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 120.0
    # Open connections (associated or not) from one IP address; more are closed at once.
    max_connections_per_host: Annotated[int, Field(ge=1, le=1024)] = 16
    # Connections not yet associated, from all hosts; beyond it the oldest is dropped.
    max_pending_connections: Annotated[int, Field(ge=1, le=4096)] = 64
    # Largest A-ASSOCIATE-RQ (and any other non-data PDU) accepted, KiB.
    max_associate_rq_kb: Annotated[int, Field(ge=4, le=1024)] = 64
    # Maximum Length Received the node announces (PS3.8 D.1); longer P-DATA PDUs abort the association.
    max_pdu_kb: Annotated[int, Field(ge=4, le=65536)] = 1024


class NodeSection(_Section):
    """The node's own DICOM identity and where it listens."""

    ae_title: AETitle = "IODINE_NODE"
    bind: str = "0.0.0.0"
    port: Port = 11112
    tls: TLSSection | None = None
    max_associations: Annotated[int, Field(ge=1, le=256)] = 32
    # DICOM listener processes sharing the port (SO_REUSEPORT), each with its own pynetdicom and
    # guard limits; null = one per CPU core; 1 = one listener inside the service process.
    listener_processes: Annotated[int, Field(ge=1, le=64)] | None = None
    limits: NetworkLimitsSection = NetworkLimitsSection()


class RetentionSection(_Section):
    """How long inputs and results are kept (days); null = forever. Never deleted while work is pending."""

    inputs_days: Annotated[float, Field(gt=0)] | None = None
    results_days: Annotated[float, Field(gt=0)] | None = None


class StorageSection(_Section):
    """Where the spool, the index and results live (relative paths: from the working directory)."""

    root: Path = Path("var/")
    # Below this much free space new instances are refused with 0xA700 instead of filling the disk.
    min_free_gb: Annotated[float, Field(ge=0)] = 1.0
    retention: RetentionSection = RetentionSection()


class AllowedCaller(_Section):
    """A sender allowed to associate: its AE title, and optionally the host it must come from."""

    ae_title: AETitle
    host: str | None = None


class IngestSection(_Section):
    """What is accepted, and how incoming studies are judged complete."""

    stable_after_s: PositiveSeconds = 30.0
    force_after_s: PositiveSeconds = 3600.0
    allowed_callers: list[AllowedCaller] = Field(default_factory=list)
    max_instance_mb: Annotated[float, Field(gt=0)] = 2048.0
    watch_dir: Path | None = None
    watch_settle_s: PositiveSeconds = 2.0
    poll_s: PositiveSeconds = 1.0

    @model_validator(mode="after")
    def _force_after_stable(self) -> IngestSection:
        if self.force_after_s <= self.stable_after_s:
            raise ValueError(f"force_after_s ({self.force_after_s:g}) must be greater than "
                             f"stable_after_s ({self.stable_after_s:g})")
        return self


class HttpSection(_Section):
    """The read-only status endpoint: /healthz, /metrics (Prometheus), /jobs."""

    enabled: bool = True
    bind: str = "127.0.0.1"
    port: Port = 8080
    # A request must arrive whole and be answered within this time, else the connection is closed.
    request_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    # Requests served at once; as many more may wait, beyond that the server answers 503 at once.
    workers: Annotated[int, Field(ge=1, le=64)] = 4


class LoggingSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    # Append-only JSON-lines audit trail (relative: under storage.root), rotated by size.
    audit_file: Path = Path("audit.jsonl")
    audit_max_mb: PositiveFloat = 50.0
    audit_keep: Annotated[int, Field(ge=1, le=1000)] = 10


class ProcessingSection(_Section):
    """The worker processes that run jobs, apart from the listener."""

    workers: Annotated[int, Field(ge=1, le=64)] = 1
    max_memory_mb: Annotated[int, Field(ge=256)] | None = None


RESULT_KINDS = ("seg", "sr", "sc")


class _Destination(_Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    # Which result objects go there (routing); default: all.
    send: list[Literal["seg", "sr", "sc"]] = Field(default_factory=lambda: list(RESULT_KINDS))


class DestinationTLS(_Section):
    """DICOM TLS to a peer: verify it with `ca`; present `cert`/`key` if it wants a client certificate."""

    ca: ExistingFile | None = None
    cert: ExistingFile | None = None
    key: ExistingFile | None = None


class DicomDestination(_Destination):
    """A DICOM C-STORE peer (a PACS)."""

    kind: Literal["dicom"] = "dicom"
    ae_title: AETitle
    host: str = Field(min_length=1)
    port: Port
    calling_ae_title: AETitle | None = None  # default: node.ae_title
    tls: DestinationTLS | None = None
    # Associations a large batch is spread over at once (C-STORE is one operation at a time per
    # association); batches under 16 objects use one. Two: 1.3x storescu's time for 807 instances
    # to Orthanc, against 1.8x over one (docs/performance.md).
    associations: Annotated[int, Field(ge=1, le=8)] = 2


class StowDestination(_Destination):
    """A DICOMweb STOW-RS endpoint (base URL of the DICOMweb service, e.g. .../dicom-web)."""

    kind: Literal["stowrs"]
    url: str = Field(pattern=r"^https?://")
    headers: dict[str, str] = Field(default_factory=dict)
    username: str | None = None
    password: str | None = None
    verify_tls: bool = True


class FolderDestination(_Destination):
    """A local or mounted folder (files as <StudyUID>/<SOPInstanceUID>.dcm)."""

    kind: Literal["folder"]
    path: Path


Destination = Annotated[DicomDestination | StowDestination | FolderDestination, Field(discriminator="kind")]


class RetrySection(_Section):
    """Delivery retries: exponential backoff with jitter, from first_s up to max_s, then dead letter."""

    first_s: PositiveSeconds = 5.0
    max_s: PositiveSeconds = 600.0
    give_up_after_h: Annotated[float, Field(gt=0)] = 24.0


class ExportSection(_Section):
    retry: RetrySection = RetrySection()
    poll_s: PositiveSeconds = 1.0
    batch_size: Annotated[int, Field(ge=1, le=10000)] = 500

"""Every configuration type of the node, in one place.

One YAML file is loaded into frozen pydantic models. Unknown keys are rejected: a typo in a
hospital's config must fail loudly at start, not silently fall back to a default.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from node.quant.detect import DetectionSettings, SegmentationSettings
from node.quant.measure import AvidSettings
from node.quant.study import DEFAULT_EXCLUDE

ENV_CONFIG = "IODINE_NODE_CONFIG"


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError("must be 1..65535")
    return value


def _ae_title(value: str) -> str:
    # PS3.5 6.2 (VR AE): at most 16 characters of the default repertoire, no backslash or control
    # characters; leading/trailing spaces are not significant, an all-space value is not allowed.
    stripped = value.strip(" ")
    if not stripped:
        raise ValueError("must be 1..16 characters, not blank")
    if len(value) > 16:
        raise ValueError("must be at most 16 characters (PS3.5 6.2, VR AE)")
    if any(c == "\\" or ord(c) < 0x20 or ord(c) > 0x7E for c in value):
        raise ValueError("must be printable ASCII without backslash (PS3.5 6.2, VR AE)")
    return stripped


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def _existing_file(value: Path) -> Path:
    if not value.is_file():
        raise ValueError("file not found")
    return value


Port = Annotated[int, AfterValidator(_port)]
PositiveFloat = Annotated[float, Field(gt=0)]
ExistingFile = Annotated[Path, AfterValidator(_existing_file)]
AETitle = Annotated[str, AfterValidator(_ae_title)]
PositiveSeconds = Annotated[float, AfterValidator(_positive)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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


class AllowedCaller(_Section):
    """A sender allowed to associate: its AE title, and optionally the host it must come from."""

    ae_title: AETitle
    host: str | None = None


class IngestSection(_Section):
    """What is accepted, and how incoming studies are judged complete."""

    stable_after_s: PositiveSeconds = 30.0
    force_after_s: PositiveSeconds = 3600.0
    allowed_callers: list[AllowedCaller] = []
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
    send: list[Literal["seg", "sr", "sc"]] = list(RESULT_KINDS)


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
    # association); batches under 16 objects use one.
    associations: Annotated[int, Field(ge=1, le=8)] = 1


class StowDestination(_Destination):
    """A DICOMweb STOW-RS endpoint (base URL of the DICOMweb service, e.g. .../dicom-web)."""

    kind: Literal["stowrs"]
    url: str = Field(pattern=r"^https?://")
    headers: dict[str, str] = {}
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


_DET = DetectionSettings()
_SEG = SegmentationSettings()
_AVID = AvidSettings()
Percent = Annotated[float, Field(gt=0, lt=100)]


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression ({exc})") from None
    return value


Regex = Annotated[str, AfterValidator(_regex)]


class SuvSection(_Section):
    """How SUV is derived where headers leave a choice (QIBA SUV pseudo-code; docs/science.md)."""

    time_only_administration_days_before: Annotated[int, Field(ge=0, le=30)] | None = None
    report_type: Literal["bw", "lbm-james", "sul-janmahasatian", "bsa", "ibw"] = "bw"


class DetectionSection(_Section):
    """Which local maxima become foci."""

    min_peak_suv: PositiveFloat = _DET.min_peak_suv
    min_contrast: PositiveFloat = _DET.min_contrast
    min_delta_suv: PositiveFloat = _DET.min_delta_suv
    min_reference_ratio: PositiveFloat = _DET.min_reference_ratio
    background_shell_mm: tuple[PositiveFloat, PositiveFloat] = _DET.background_shell_mm
    min_volume_ml: PositiveFloat = _DET.min_volume_ml
    max_volume_ml: PositiveFloat = _DET.max_volume_ml
    max_lesions: Annotated[int, Field(ge=1, le=5000)] = _DET.max_lesions
    split_touching: bool = _DET.split_touching
    false_foci_per_scan: Annotated[float, Field(ge=0, le=10)] = _DET.false_foci_per_scan


class SegmentationSection(_Section):
    """How each focus is delineated."""

    method: Literal["adaptive", "percent_max", "fixed_suv", "jentzen"] = "adaptive"
    percent: Percent = _SEG.percent
    fixed_suv: PositiveFloat = _SEG.fixed_suv
    jentzen_a_ml_percent: float = _SEG.jentzen_a_ml_percent
    jentzen_b_percent: float = _SEG.jentzen_b_percent
    jentzen_c_percent: float = _SEG.jentzen_c_percent
    max_radius_mm: PositiveFloat = _SEG.max_radius_mm


class AvidSection(_Section):
    """When a lesion is called iodine-avid."""

    lbr_threshold: PositiveFloat = _AVID.lbr_threshold
    reference_factor: PositiveFloat = _AVID.reference_factor


class RecoveryPoint(_Section):
    """One sphere of the site's recovery-coefficient measurement."""

    volume_ml: PositiveFloat
    rc: Annotated[float, Field(gt=0, le=1.5)]


class SeriesSection(_Section):
    """Which PET series are quantified (regular expressions on SeriesDescription)."""

    include_description: list[Regex] = []
    exclude_description: list[Regex] = list(DEFAULT_EXCLUDE)


class CtNodulesSection(_Section):
    """Solid lung nodules found on CT without a PET focus (non-avid lesions)."""

    enabled: bool = True
    min_diameter_mm: Annotated[float, Field(ge=3, le=30)] = 5.0


class RecoveryCurvePoint(_Section):
    """One sphere of a recovery measurement: diameter and recovery coefficient (measured / true)."""

    diameter_mm: PositiveFloat
    rc: Annotated[float, Field(gt=0, le=1.5)]


class RecoverySection(_Section):
    """Partial-volume recovery by the best size estimate (CT diameter, else sphere fit), beside the values."""

    enabled: bool = True
    curve: Annotated[list[RecoveryCurvePoint], Field(min_length=1)] = [
        RecoveryCurvePoint(diameter_mm=d, rc=rc) for d, rc in ((8.5, 0.43), (19.4, 0.72))]


class QuantificationSection(_Section):
    suv: SuvSection = SuvSection()
    detection: DetectionSection = DetectionSection()
    segmentation: SegmentationSection = SegmentationSection()
    avid: AvidSection = AvidSection()
    partial_volume: list[RecoveryPoint] | None = None
    activity_margin_mm: PositiveFloat = 10.0
    series: SeriesSection = SeriesSection()
    ct_nodules: CtNodulesSection = CtNodulesSection()
    recovery: RecoverySection = RecoverySection()


class TshSection(_Section):
    """Where TSH is written: an attribute of the PET header and a regular expression with one group."""

    tag: str = "AdditionalPatientHistory"
    pattern: Regex = r"TSH\s*=\s*([0-9.]+)"
    sidecar_dir: Path | None = None  # CSV/JSON files keyed by AccessionNumber; read before the attribute


class SValuePoint(_Section):
    """One sphere of a 131I S-value table: mass (g) -> absorbed dose per decay integral (Gy per MBq h)."""

    mass_g: PositiveFloat
    gy_per_mbq_h: PositiveFloat


class PriorQuerySection(_Section):
    """A PACS asked for earlier studies of the patient (C-FIND), which then sends them here
    (C-MOVE to this node's AE title, which the PACS must know) or hands them over (C-GET)."""

    ae_title: AETitle
    host: str = Field(min_length=1)
    port: Port
    calling_ae_title: AETitle | None = None  # default: node.ae_title
    retrieve: Literal["move", "get"] = "move"
    move_destination: AETitle | None = None  # default: node.ae_title
    timeout_s: PositiveFloat = 120.0


class PriorsSection(_Section):
    query: PriorQuerySection | None = None


class ChangeLimitsSection(_Section):
    """Which SUVmax change counts as gained / reduced (docs/comparison.md#change-limits)."""

    method: Literal["repeatability", "fixed"] = "repeatability"  # fixed: `gained` / `reduced` for every lesion
    biological_wcv: Annotated[float, Field(ge=0, le=1)] = 0.105  # non-statistical test-retest CoV per scan
    confidence_z: PositiveFloat = 1.959964
    fallback_noise_cov: PositiveFloat = 0.20  # soft-tissue CoV assumed when a scan's image is not at hand
    uptake_time_tolerance: Annotated[float, Field(ge=0)] = 0.10  # warn when uptake times differ by more
    min_biological_half_life_h: PositiveFloat = 48.0  # washout allowance for unmatched uptake times


class AvidityRuleSection(_Section):
    """One rule for "iodine-avid" applied to both scans of a comparison."""

    lbr_min: PositiveFloat = 3.0
    soft_tissue_factor: PositiveFloat = 2.0
    suv_max_min: PositiveFloat | None = None


class DoseUncertaintySection(_Section):
    """Type-B relative standard uncertainties of the dosimetry chain (EANM 2018), a site's own values."""

    calibration: Annotated[float, Field(ge=0, le=1)] = 0.05
    recovery_resolved: Annotated[float, Field(ge=0, le=1)] = 0.05
    recovery_unresolved: Annotated[float, Field(ge=0, le=2)] = 0.20


class ComparisonSection(_Section):
    """Comparison with an earlier scan of the same patient, and 131I lesion dosimetry."""

    prior_window_days: PositiveFloat = 90.0
    tsh: TshSection = TshSection()
    gained: PositiveFloat = 0.25
    reduced: Annotated[float, Field(lt=0)] = -0.25
    match_gate_mm: PositiveFloat = 15.0
    registration: Literal["rigid", "affine"] = "rigid"
    dose_activities_gbq: list[PositiveFloat] = Field(default=[3.7, 7.4], min_length=1)
    treat_threshold_gy: PositiveFloat = 20.0
    nodal_response_gy: PositiveFloat = 80.0
    s_values: list[SValuePoint] | None = Field(default=None, min_length=1)
    priors: PriorsSection = PriorsSection()
    change_limits: ChangeLimitsSection = ChangeLimitsSection()
    avidity: AvidityRuleSection = AvidityRuleSection()
    dose_uncertainty: DoseUncertaintySection = DoseUncertaintySection()


class NodeConfig(_Section):
    """The whole configuration file."""

    node: NodeSection = NodeSection()
    storage: StorageSection = StorageSection()
    index: IndexSection = IndexSection()
    ingest: IngestSection = IngestSection()
    processing: ProcessingSection = ProcessingSection()
    quantification: QuantificationSection = QuantificationSection()
    comparison: ComparisonSection = ComparisonSection()
    export: ExportSection = ExportSection()
    http: HttpSection = HttpSection()
    logging: LoggingSection = LoggingSection()
    destinations: list[Destination] = []

    @model_validator(mode="before")
    @classmethod
    def _default_destination_kind(cls, data: Any) -> Any:
        # Destinations without `kind` are DICOM peers (the common case, and the original form).
        if isinstance(data, dict) and isinstance(data.get("destinations"), list):
            data = {**data, "destinations": [({"kind": "dicom", **d} if isinstance(d, dict) and "kind" not in d
                                              else d) for d in data["destinations"]]}
        return data

    @model_validator(mode="after")
    def _unique_destination_names(self) -> NodeConfig:
        names = [d.name for d in self.destinations]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"destination names must be unique, repeated: {', '.join(dup)}")
        return self


class ConfigError(Exception):
    """A configuration file that cannot be used; `problems` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


_UNION_TAGS = {"dicom": DicomDestination, "stowrs": StowDestination, "folder": FolderDestination}


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for i, part in enumerate(loc):
        if i > 0 and isinstance(loc[i - 1], int) and part in _UNION_TAGS:
            continue  # pydantic's tag of the union member, not a key of the file
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path or "(top level)"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that owns the key at `loc` (for listing the allowed keys)."""
    model: Any = NodeConfig
    for i, part in enumerate(loc[:-1]):
        if isinstance(part, int):
            continue
        if i > 0 and isinstance(loc[i - 1], int) and part in _UNION_TAGS:
            model = _UNION_TAGS[part]
            continue
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return None
        annotation = fields[part].annotation
        args = getattr(annotation, "__args__", None)
        model = args[0] if args else annotation  # list[X] and X | None -> X; unions resolved by tag
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _describe(error: Any) -> str:
    loc = tuple(error["loc"])
    path = _loc_to_path(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        owner = _model_at(loc)
        allowed = ", ".join(owner.model_fields) if owner else "?"
        return f"{path}: unknown key; expected one of: {allowed}"
    if kind == "missing":
        return f"{path}: required key is missing"
    message = str(error["msg"])
    # Our validators' messages are complete phrases; pydantic's own get a lower-case start.
    message = message.removeprefix("Value error, ") if kind == "value_error" else message[0].lower() + message[1:]
    given = error.get("input")
    if isinstance(given, dict):  # a rule about a whole section: its message says what is wrong
        return f"{path}: {message}"
    return f"{path}: {message}, got {given!r}"


def parse_config(data: Any, source: str = "<config>") -> NodeConfig:
    """Validate already-parsed YAML; raises ConfigError listing every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"(top level): must be a mapping of sections, got {type(data).__name__}"])
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_describe(e) for e in exc.errors()]) from None


def load_config(path: str | os.PathLike[str] | None = None) -> NodeConfig:
    """Load the YAML file at `path`, else $IODINE_NODE_CONFIG, else the built-in defaults."""
    if path is None:
        path = os.environ.get(ENV_CONFIG) or None
    if path is None:
        return NodeConfig()
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [f"cannot read the file: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(source, [f"{where}not valid YAML ({getattr(exc, 'problem', exc)})"]) from None
    return parse_config(data, source)


def dump_config(config: NodeConfig) -> str:
    """The effective configuration as YAML (defaults filled in)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)

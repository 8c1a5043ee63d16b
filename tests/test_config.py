from __future__ import annotations

from pathlib import Path

import pytest

from node.cli import main
from node.config import (
    ENV_CONFIG,
    ConfigError,
    DicomDestination,
    FolderDestination,
    NodeConfig,
    StowDestination,
    dump_config,
    load_config,
)

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value.problems


def test_shipped_files_are_valid() -> None:
    for name in ("node.yaml", "node.example.yaml"):
        config = load_config(ROOT / "config" / name)
        assert isinstance(config, NodeConfig)
    example = load_config(ROOT / "config" / "node.example.yaml")
    assert example.destinations[0].name == "pacs"
    assert example.destinations[0].port == 104
    assert example.ingest.stable_after_s == 30


def test_example_documents_every_key() -> None:
    text = (ROOT / "config" / "node.example.yaml").read_text()

    def keys(model: type, prefix: str = "") -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            out.append(name)
            ann = field.annotation
            inner = getattr(ann, "__args__", (ann,))[0]
            if isinstance(inner, type) and hasattr(inner, "model_fields"):
                out += keys(inner)
        return out

    every = keys(NodeConfig) + keys(DicomDestination) + keys(StowDestination) + keys(FolderDestination)
    for key in every:
        assert f"{key}:" in text, f"config/node.example.yaml does not document {key!r}"


def test_defaults_when_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_CONFIG, raising=False)
    config = load_config(None)
    assert config.node.ae_title == "IODINE_NODE"
    assert config.node.port == 11112
    assert config.destinations == []


def test_env_variable_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "node: {ae_title: FROM_ENV, port: 4000}\n")
    monkeypatch.setenv(ENV_CONFIG, str(path))
    config = load_config(None)
    assert (config.node.ae_title, config.node.port) == ("FROM_ENV", 4000)


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "node: {port: 4000}\n"))
    with pytest.raises(Exception, match="frozen"):
        config.node.port = 5  # type: ignore[misc]


def test_port_out_of_range(tmp_path: Path) -> None:
    text = "destinations: [{name: pacs, ae_title: PACS, host: 10.0.0.5, port: 70000}]\n"
    assert problems(tmp_path, text) == ["destinations[0].port: must be 1..65535, got 70000"]


def test_unknown_key_names_the_allowed_ones(tmp_path: Path) -> None:
    assert problems(tmp_path, "node: {ae_titel: X}\n") == [
        "node.ae_titel: unknown key; expected one of: ae_title, bind, port, tls, max_associations, "
        "listener_processes, limits"
    ]
    assert problems(tmp_path, "nodes: {}\n") == [
        "nodes: unknown key; expected one of: node, storage, index, ingest, processing, quantification, comparison, "
        "export, http, logging, destinations"
    ]


def test_every_problem_is_listed(tmp_path: Path) -> None:
    text = (
        "node: {ae_title: 'WAY_TOO_LONG_AE_TITLE', port: 0}\n"
        "ingest: {stable_after_s: -1}\n"
        "destinations: [{name: pacs, host: h, port: 104}]\n"
    )
    assert problems(tmp_path, text) == [
        "node.ae_title: must be at most 16 characters (PS3.5 6.2, VR AE), got 'WAY_TOO_LONG_AE_TITLE'",
        "node.port: must be 1..65535, got 0",
        "ingest.stable_after_s: must be > 0, got -1",
        "destinations[0].ae_title: required key is missing",
    ]


def test_wrong_types_and_bad_ae_characters(tmp_path: Path) -> None:
    assert problems(tmp_path, "node: {port: eleven}\n") == [
        "node.port: input should be a valid integer, unable to parse string as an integer, got 'eleven'"
    ]
    assert problems(tmp_path, "node: {ae_title: 'A\\B'}\n") == [
        "node.ae_title: must be printable ASCII without backslash (PS3.5 6.2, VR AE), got 'A\\\\B'"
    ]
    assert problems(tmp_path, "- just\n- a list\n") == ["(top level): must be a mapping of sections, got list"]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    found = problems(tmp_path, "node:\n  port: [1, 2\n")
    assert len(found) == 1 and found[0].startswith("line 3, column 1: not valid YAML")


def test_missing_file(tmp_path: Path) -> None:
    assert problems_for_missing(tmp_path) == ["cannot read the file: No such file or directory"]


def problems_for_missing(tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml")
    return info.value.problems


def test_cli_check_config_good(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "node: {port: 4000}\n")
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "port: 4000" in out and "ae_title: IODINE_NODE" in out and "stable_after_s: 30.0" in out


def test_cli_check_config_bad_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "destinations: [{name: pacs, ae_title: PACS, host: 10.0.0.5, port: 70000}]\n")
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: invalid configuration" in err
    assert "destinations[0].port: must be 1..65535, got 70000" in err


def test_cli_uses_config_option_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "node: {port: 4321}\n")
    assert main(["--config", str(path), "check-config"]) == 0
    assert "port: 4321" in capsys.readouterr().out
    monkeypatch.setenv(ENV_CONFIG, str(path))
    assert main(["check-config"]) == 0
    assert "port: 4321" in capsys.readouterr().out


def test_index_section_takes_one_dsn_source_and_never_prints_the_password(tmp_path, monkeypatch) -> None:
    from node.config import dump_config, parse_config

    assert parse_config({}).index.backend == "sqlite"
    config = parse_config({"index": {"backend": "postgresql", "dsn": "postgresql://iodine:s3cret-pw@db/iodine"}})
    assert config.index.resolve_dsn() == "postgresql://iodine:s3cret-pw@db/iodine"
    assert "s3cret-pw" not in dump_config(config) and "s3cret-pw" not in repr(config)
    monkeypatch.setenv("IODINE_TEST_DSN", "postgresql://iodine:env-pw@db/iodine")
    assert parse_config({"index": {"backend": "postgresql", "dsn_env": "IODINE_TEST_DSN"}}).index.resolve_dsn() \
        == "postgresql://iodine:env-pw@db/iodine"
    secret = tmp_path / "dsn"
    secret.write_text("postgresql://iodine:file-pw@db/iodine\n")
    assert parse_config({"index": {"backend": "postgresql", "dsn_file": str(secret)}}).index.resolve_dsn() \
        == "postgresql://iodine:file-pw@db/iodine"
    missing = parse_config({"index": {"backend": "postgresql", "dsn_env": "IODINE_TEST_UNSET_DSN"}})
    with pytest.raises(ValueError, match="IODINE_TEST_UNSET_DSN is not set"):
        missing.index.resolve_dsn()
    for bad, expected in (({"backend": "postgresql"}, "needs exactly one of dsn, dsn_env, dsn_file"),
                          ({"backend": "postgresql", "dsn": "postgresql://u:pw-in-error@h/d", "dsn_env": "X"},
                           "(given: dsn, dsn_env)"),
                          ({"dsn": "postgresql://u:pw@h/d"}, "backend sqlite takes no dsn")):
        with pytest.raises(ConfigError) as info:
            parse_config({"index": bad})
        assert len(info.value.problems) == 1 and expected in info.value.problems[0]
        assert "pw-in-error" not in info.value.problems[0]


def test_settings_sections_are_the_pure_packages_dataclasses(tmp_path: Path) -> None:
    """One set of defaults: the file's quantification and comparison sections validate into the settings
    dataclasses of node.quant / node.compare themselves, and an empty file gives exactly their defaults."""
    from node.compare.settings import ComparisonSettings, PriorQuery
    from node.quant.detect import DetectionSettings
    from node.quant.study import QuantSettings

    empty = load_config(write(tmp_path, "{}\n"))
    assert empty.quantification.settings == QuantSettings()
    assert empty.comparison == ComparisonSettings()
    text = ("quantification: {detection: {min_peak_suv: 2.5, background_shell_mm: [10, 20]}}\n"
            "comparison: {gained: 0.3, change_limits: {method: fixed},"
            " priors: {query: {ae_title: ' PACS ', host: pacs.local, port: 104, retrieve: get}}}\n")
    config = load_config(write(tmp_path, text))
    detection = config.quantification.settings.detection
    assert type(detection) is DetectionSettings and detection == DetectionSettings(
        min_peak_suv=2.5, background_shell_mm=(10.0, 20.0))
    assert config.comparison.limits.method == "fixed" and config.comparison.limits.gained == 0.3
    assert config.comparison.thresholds.gained == 0.3
    query = config.comparison.priors.query
    assert query == PriorQuery("PACS", "pacs.local", 104, retrieve="get")  # AE title stripped (PS3.5 6.2)
    assert query.for_node("IODINE_NODE").move_destination == "IODINE_NODE"
    dumped = load_config(write(tmp_path, dump_config(config)))  # check-config's output reads back the same
    assert dumped == config


def test_typo_and_bad_value_inside_a_settings_dataclass_are_named(tmp_path: Path) -> None:
    assert problems(tmp_path, "quantification: {detection: {min_peak_suvv: 2}}\n") == [
        "quantification.detection.min_peak_suvv: unknown key; expected one of: min_peak_suv, min_contrast, "
        "min_delta_suv, min_reference_ratio, background_shell_mm, min_volume_ml, max_volume_ml, max_lesions, "
        "split_touching, false_foci_per_scan"
    ]
    assert problems(tmp_path, "comparison: {change_limits: {biological_wcv: 2}, reduced: 0.1}\n") == [
        "comparison.reduced: input should be less than 0, got 0.1",
        "comparison.change_limits.biological_wcv: input should be less than or equal to 1, got 2",
    ]
    assert problems(tmp_path, "comparison: {priors: {query: {ae_title: WAY_TOO_LONG_AE_TITLE, host: h}}}\n") == [
        "comparison.priors.query.ae_title: must be at most 16 characters (PS3.5 6.2, VR AE), "
        "got 'WAY_TOO_LONG_AE_TITLE'",
        "comparison.priors.query.port: required key is missing",
    ]
    assert problems(tmp_path, "quantification: {segmentation: {method: otsu}}\n") == [
        "quantification.segmentation.method: input should be 'adaptive', 'percent_max', 'fixed_suv' or 'jentzen', "
        "got 'otsu'"
    ]
    assert problems(tmp_path, "comparison: {tsh: {pattern: 'TSH=(['}}\n")[0].startswith(
        "comparison.tsh.pattern: not a valid regular expression")

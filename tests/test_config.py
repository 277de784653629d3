"""The configuration file: the contract keys load into typed settings; every problem is reported
at once with its key path."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from coldvault.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigFileError,
    default_config_path,
    load_config,
    parse_config,
    render_config,
)
from coldvault.errors import ConfigError


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("state", "scans", "exports"):
        out[name] = tmp_path / name
        out[name].mkdir()
    return out


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "coldvault.toml"
    p.write_text(text, encoding="utf-8")
    return p


def problems(exc: pytest.ExceptionInfo[ConfigFileError]) -> dict[str, str]:
    return {p.key: p.message for p in exc.value.problems}


def test_contract_example_loads_into_typed_settings(tmp_path: Path, folders: dict[str, Path]):
    p = write(
        tmp_path,
        f"""
[vault]
state_dir = "{folders["state"]}"
copies = 2
drive_overdue_days = 7

[retention]
profile = "cnil-2020"
kinds = {{ accounting = "10y" }}

[[source]]
name = "scanner"
path = "{folders["scans"]}"
pattern = '^(?P<patient>[0-9]+)_(?P<date>[0-9]{{8}})'
on_archived = "delete"
kind = "scan"
ignore = ["*.bak", "~$*"]
date_format = "%Y%m%d"

[[source]]
name = "exports"
path = "{folders["exports"]}/"
per_patient_folders = true
quiet_seconds = 20
""",
    )
    cfg = load_config(p)
    assert isinstance(cfg, Config)
    assert cfg.path == p
    assert cfg.vault.state_dir == folders["state"]
    assert (cfg.vault.copies, cfg.vault.drive_overdue_days) == (2, 7)
    assert cfg.vault.rescan_interval == 600.0 and cfg.vault.quiet_seconds == 5.0
    assert cfg.vault.workers == (os.cpu_count() or 1)
    assert cfg.retention is not None and cfg.retention.profile == "cnil-2020"
    assert dict(cfg.retention.kinds) == {"accounting": "10y"}
    scan, exp = cfg.sources
    assert scan.name == "scanner" and scan.path == folders["scans"]
    assert scan.pattern is not None and scan.pattern.search("123_20240102.pdf")
    assert scan.on_archived == "delete" and scan.kind == "scan"
    assert scan.ignore == ("*.bak", "~$*") and scan.date_format == "%Y%m%d"
    assert exp.per_patient_folders and exp.pattern is None and exp.on_archived == "keep"
    assert exp.path == folders["exports"]  # normalised, trailing slash gone
    assert cfg.quiet_seconds_for(exp) == 20.0 and cfg.quiet_seconds_for(scan) == 5.0
    assert cfg.source("exports") is exp
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.vault.copies = 3  # type: ignore[misc]


def test_minimal_config_has_defaults(tmp_path: Path):
    cfg = parse_config('[vault]\nstate_dir = "/var/lib/coldvault"\n', path="x.toml")
    assert cfg.sources == () and cfg.retention is None and cfg.vault.copies == 2


def test_all_problems_listed_with_key_paths(tmp_path: Path, folders: dict[str, Path]):
    p = write(
        tmp_path,
        f"""
colour = "blue"
[vault]
state_dir = "relative/state"
copies = 0
drive_overdue_days = "7"
rescan_interval = true
workers = 1.5

[retention]
profile = 3
kinds = {{ accounting = 10 }}

[[source]]
name = "scanner"
path = "{folders["scans"]}"
pattern = '^(?P<patient>[0-9]+'

[[source]]
name = "scanner"
path = "{tmp_path}/nope"
pattern = '^([0-9]+)_'
on_archived = "shred"
extra = 1

[[source]]
name = "bad/name"
path = "scans"
per_patient_folders = "yes"
ignore = ["ok", "a/b", 3]
date_format = "%Y%m"
""",
    )
    with pytest.raises(ConfigFileError) as ei:
        load_config(p)
    msg = str(ei.value)
    lines = msg.splitlines()
    assert lines[0] == f"{p}: {len(ei.value.problems)} problems in the configuration"
    got = problems(ei)
    assert "unknown key" in got["colour"]
    assert "absolute path" in got["vault.state_dir"]
    assert "at least 1" in got["vault.copies"]
    assert "integer" in got["vault.drive_overdue_days"]
    assert "number" in got["vault.rescan_interval"]  # a boolean is not a number
    assert "integer" in got["vault.workers"]
    assert "string" in got["retention.profile"]
    assert "string" in got["retention.kinds.accounting"]
    assert "not a valid regular expression" in got["source[1].pattern"]
    assert "missing )" in got["source[1].pattern"]  # the regex error itself is shown
    assert "duplicate source name 'scanner'" in got["source[2].name"]
    assert "does not exist" in got["source[2].path"]
    assert "named group `patient`" in got["source[2].pattern"]
    assert "delete" in got["source[2].on_archived"]
    assert "unknown key" in got["source[2].extra"]
    assert "not a valid source name" in got["source[3].name"]
    assert "absolute" in got["source[3].path"]
    assert "true or false" in got["source[3].per_patient_folders"]
    assert "cannot contain '/'" in got["source[3].ignore[2]"]
    assert "string" in got["source[3].ignore[3]"]
    assert "full date" in got["source[3].date_format"]
    # every problem has its own line, indented, after the header
    assert len(lines) == 1 + len(ei.value.problems)
    assert all(line.startswith("  ") for line in lines[1:])
    assert isinstance(ei.value, ConfigError) and ei.value.exit_code == 2
    assert ei.value.hint and str(p) in ei.value.hint


def test_one_problem_is_singular(tmp_path: Path):
    with pytest.raises(ConfigFileError) as ei:
        parse_config('[vault]\nstate_dir = "/s"\ncopies = 0\n', path="c.toml")
    assert str(ei.value).splitlines()[0] == "c.toml: 1 problem in the configuration"


def test_missing_vault_table_and_source_keys(tmp_path: Path):
    with pytest.raises(ConfigFileError) as ei:
        parse_config("[[source]]\npattern = '(?P<patient>x)'\n", check_paths=False)
    got = problems(ei)
    assert "missing" in got["vault"]
    assert got["source[1].name"] == "missing" and got["source[1].path"] == "missing"


def test_pattern_and_per_patient_folders_are_exclusive():
    with pytest.raises(ConfigFileError) as ei:
        parse_config(
            '[vault]\nstate_dir = "/s"\n[[source]]\nname = "a"\npath = "/a"\n'
            "pattern = '(?P<patient>x)'\nper_patient_folders = true\n",
            check_paths=False,
        )
    assert "cannot be combined" in problems(ei)["source[1].per_patient_folders"]


def test_overlapping_sources_and_state_dir_are_refused(tmp_path: Path):
    text = """
[vault]
state_dir = "/srv/data/state"
[[source]]
name = "a"
path = "/srv/data"
[[source]]
name = "b"
path = "/srv/data/inner"
[[source]]
name = "c"
path = "/srv/other"
[[source]]
name = "d"
path = "/srv/other/"
"""
    with pytest.raises(ConfigFileError) as ei:
        parse_config(text, check_paths=False)
    got = problems(ei)
    assert "overlaps source[1].path" in got["source[2].path"]
    assert "same folder as source[3].path" in got["source[4].path"]
    assert "vault.state_dir" in got["source[1].path"]
    assert "source[3].path" not in got


def test_overlap_detected_through_symlinks(tmp_path: Path, folders: dict[str, Path]):
    link = tmp_path / "link"
    link.symlink_to(folders["scans"])
    text = f"""
[vault]
state_dir = "{folders["state"]}"
[[source]]
name = "a"
path = "{folders["scans"]}"
[[source]]
name = "b"
path = "{link}"
"""
    with pytest.raises(ConfigFileError) as ei:
        parse_config(text)
    assert "same folder" in problems(ei)["source[2].path"]


def test_source_path_must_be_a_folder(tmp_path: Path, folders: dict[str, Path]):
    f = tmp_path / "file.txt"
    f.write_text("x")
    text = f'[vault]\nstate_dir = "{folders["state"]}"\n[[source]]\nname = "a"\npath = "{f}"\n'
    with pytest.raises(ConfigFileError) as ei:
        parse_config(text)
    assert "is not a folder" in problems(ei)["source[1].path"]
    # check_paths=False (coldvault init) accepts folders that do not exist yet
    assert parse_config(text, check_paths=False).sources[0].path == f


def test_toml_syntax_error_names_the_file_and_line(tmp_path: Path):
    p = write(tmp_path, '[vault]\nstate_dir = "/x\n')
    with pytest.raises(ConfigFileError) as ei:
        load_config(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}: 1 problem in the configuration")
    assert "not valid TOML" in msg and "line 2" in msg


def test_source_must_be_array_of_tables():
    with pytest.raises(ConfigFileError) as ei:
        parse_config('[vault]\nstate_dir = "/s"\n[source]\nname = "a"\n')
    assert "[[source]]" in problems(ei)["source"]


def test_missing_unreadable_and_non_utf8_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist") as ei:
        load_config(tmp_path / "absent.toml")
    assert ei.value.hint and "coldvault init" in ei.value.hint
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[vault]\nstate_dir = "/caf\xe9"\n')
    with pytest.raises(ConfigFileError, match="not valid UTF-8"):
        load_config(bad)


def test_date_format_must_round_trip():
    base = '[vault]\nstate_dir = "/s"\n[[source]]\nname = "a"\npath = "/a"\n'
    ok = parse_config(base + 'date_format = "%d.%m.%Y"\n', check_paths=False)
    assert ok.sources[0].date_format == "%d.%m.%Y"
    for fmt in ("YYYYMMDD", "%Y-%m"):
        with pytest.raises(ConfigFileError) as ei:
            parse_config(base + f'date_format = "{fmt}"\n', check_paths=False)
        assert "source[1].date_format" in problems(ei)


def test_quiet_and_rescan_have_lower_bounds():
    with pytest.raises(ConfigFileError) as ei:
        parse_config(
            '[vault]\nstate_dir = "/s"\nrescan_interval = 0\nquiet_seconds = nan\n',
        )
    got = problems(ei)
    assert "at least" in got["vault.rescan_interval"] and "at least" in got["vault.quiet_seconds"]


def test_default_config_path(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("COLDVAULT_CONFIG", raising=False)
    assert default_config_path() == DEFAULT_CONFIG_PATH == Path("/etc/coldvault/coldvault.toml")
    monkeypatch.setenv("COLDVAULT_CONFIG", "")
    assert default_config_path() == DEFAULT_CONFIG_PATH
    monkeypatch.setenv("COLDVAULT_CONFIG", "/tmp/x.toml")
    assert default_config_path() == Path("/tmp/x.toml")


def test_load_config_uses_default_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    p = write(tmp_path, '[vault]\nstate_dir = "/s"\n')
    monkeypatch.setenv("COLDVAULT_CONFIG", str(p))
    assert load_config(check_paths=False).path == p


def test_rendered_config_loads_back(tmp_path: Path):
    state = tmp_path / 'odd "dir" \\ é'
    text = render_config(state, copies=3, drive_overdue_days=14)
    p = write(tmp_path, text)
    cfg = load_config(p, check_paths=False)
    assert cfg.vault.state_dir == state
    assert (cfg.vault.copies, cfg.vault.drive_overdue_days) == (3, 14)
    assert cfg.sources == () and cfg.retention is None
    # the commented examples become a valid config once uncommented (only the folders are fake)
    uncommented = "\n".join(
        re.sub(r"^# ?", "", line)
        if line.startswith("# ") and ("=" in line or line.startswith("# ["))
        else line
        for line in text.splitlines()
    )
    cfg2 = parse_config(uncommented, check_paths=False)
    assert [s.name for s in cfg2.sources] == ["scanner", "exports"]
    assert cfg2.retention is not None and cfg2.retention.profile == "cnil-2020"
    assert cfg2.vault.rescan_interval == 600 and cfg2.vault.workers == 2


def test_rendered_config_with_timing(tmp_path: Path):
    text = render_config("/var/lib/coldvault", rescan_interval=30, quiet_seconds=0.5)
    cfg = parse_config(text, check_paths=False)
    assert cfg.vault.rescan_interval == 30.0 and cfg.vault.quiet_seconds == 0.5

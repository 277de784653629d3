"""Notifications: always a log line; notify-send only in a graphical session; never a failure.

A stand-in ``notify-send`` script on PATH records its arguments, so the real subprocess path runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from coldvault.drives import notify


def fake_notify_send(tmp_path: Path, exit_code: int = 0, sleep: float = 0) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "calls.txt"
    script = bindir / "notify-send"
    script.write_text(
        "#!/bin/sh\n"
        f"sleep {sleep}\n"
        f'for a in "$@"; do printf "%s\\n" "$a"; done >> "{record}"\n'
        f"exit {exit_code}\n"
    )
    script.chmod(0o755)
    return bindir


def session_env(bindir: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    env.update(extra)
    return env


def test_desktop_notification_is_sent_in_a_graphical_session(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bindir = fake_notify_send(tmp_path)
    with caplog.at_level(logging.INFO, logger="coldvault.drives.notify"):
        sent = notify.drive_can_be_removed(
            "COLDVAULT01", env=session_env(bindir, tmp_path, DISPLAY=":0")
        )
    assert sent is True
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert calls == [
        "--app-name=coldvault",
        "--urgency=normal",
        "--",
        "You can remove drive COLDVAULT01.",
        "The copy is finished and verified.",
    ]
    assert "You can remove drive COLDVAULT01." in caplog.text


def test_overdue_is_critical_and_logged_as_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bindir = fake_notify_send(tmp_path)
    env = session_env(bindir, tmp_path, WAYLAND_DISPLAY="wayland-0")
    assert notify.drive_overdue("COLDVAULT02", 9, env=env)
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert "--urgency=critical" in calls
    assert "Drive COLDVAULT02 has not been plugged in for 9 days." in calls
    assert any(r.levelno == logging.WARNING and "9 days" in r.getMessage() for r in caplog.records)


def test_no_graphical_session_means_log_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bindir = fake_notify_send(tmp_path)
    with caplog.at_level(logging.INFO, logger="coldvault.drives.notify"):
        assert notify.drive_can_be_removed(None, env=session_env(bindir, tmp_path)) is False
    assert not (tmp_path / "calls.txt").exists()
    assert "You can remove the backup drive." in caplog.text


def test_a_user_session_bus_counts_as_a_session(tmp_path: Path) -> None:
    bindir = fake_notify_send(tmp_path)
    env = session_env(bindir, tmp_path)
    assert not notify.graphical_session(env)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "bus").write_text("")
    assert notify.graphical_session(env)
    assert notify.notify("Test", env=env)


def test_missing_or_failing_notifier_never_raises(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert notify.notify("x", env={"PATH": str(empty), "DISPLAY": ":0"}) is False
    failing = fake_notify_send(tmp_path, exit_code=1)
    assert (
        notify.drive_sync_failed(
            "CV", "disk full", env=session_env(failing, tmp_path, DISPLAY=":0")
        )
        is False
    )


def test_a_hanging_notifier_is_given_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notify, "NOTIFY_TIMEOUT_S", 0.2)
    slow = fake_notify_send(tmp_path, sleep=5)
    assert notify.notify("x", env=session_env(slow, tmp_path, DISPLAY=":0")) is False

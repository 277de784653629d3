"""The destruction record: canonical JSON twin that reads back, escaped printable HTML."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime, timedelta, timezone
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coldvault.errors import IntegrityError
from coldvault.retention.record import (
    FORMAT,
    FORMAT_VERSION,
    DestroyedPatient,
    DestructionRecord,
    RecordFormatError,
    json_sha256,
    load_json,
    render_html,
    render_json,
)

HOSTILE = '<script>alert("x")</script>&amp;\'"><img src=x onerror=alert(1)>'


def h(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def sample(**overrides: object) -> DestructionRecord:
    values: dict[str, object] = {
        "vault_id": "v-2f1c",
        "created": datetime(2026, 11, 24, 18, 30, 5, tzinfo=UTC),
        "operator": "Dr Anne Lefèvre",
        "profile": "cnil-2020",
        "as_of": date(2026, 11, 24),
        "patients": (
            DestroyedPatient(
                "pt-b7",
                2,
                (h(2), h(1)),
                drives_confirmed=("usb-B", "usb-A"),
                drives_pending=("usb-C",),
                rule="cnil-2020: 20 years after the last visit",
                kept_until=date(2020, 3, 10),
            ),
            DestroyedPatient(
                "pt-a3",
                1,
                (h(3),),
                drives_confirmed=("usb-A", "usb-B", "usb-C"),
                scope="documents",
                rule="kind claims: 90d after the document date",
            ),
        ),
    }
    values.update(overrides)
    return DestructionRecord(**values)  # type: ignore[arg-type]


def test_json_twin_is_canonical_and_round_trips() -> None:
    record = sample()
    text = render_json(record)
    obj = json.loads(text)
    assert obj["format"] == FORMAT and obj["version"] == FORMAT_VERSION
    assert obj["totals"] == {"patients": 2, "documents": 3, "objects": 3}
    # canonical: sorted keys, entries sorted by reference, lists sorted
    assert text == json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    assert [p["ref"] for p in obj["patients"]] == ["pt-a3", "pt-b7"]
    assert obj["patients"][1]["object_hashes"] == sorted([h(1), h(2)])
    assert obj["patients"][1]["drives_confirmed"] == ["usb-A", "usb-B"]
    assert obj["patients"][1]["kept_until"] == "2020-03-10"
    assert "Lefèvre" in text  # UTF-8, not \\u escapes
    assert load_json(text) == record
    assert load_json(text.encode("utf-8")) == record
    # input order does not change the bytes
    shuffled = sample(patients=tuple(reversed(record.patients)))
    assert render_json(shuffled) == text
    assert json_sha256(record) == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert record.drives_pending == ("usb-C",)


texts = st.text(max_size=30)
hashes = st.lists(st.binary(min_size=1, max_size=8).map(lambda b: hashlib.sha256(b).hexdigest()))
entries = st.builds(
    DestroyedPatient,
    ref=st.text(min_size=1, max_size=20),
    document_count=st.integers(0, 10**6),
    object_hashes=hashes.map(tuple),
    drives_confirmed=st.lists(texts).map(tuple),
    drives_pending=st.lists(texts).map(tuple),
    scope=st.sampled_from(["patient", "documents"]),
    rule=texts,
    kept_until=st.none() | st.dates(),
)
offsets = st.none() | st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
records = st.builds(
    DestructionRecord,
    vault_id=texts,
    created=st.datetimes(timezones=offsets),
    operator=texts,
    profile=texts,
    as_of=st.dates(),
    patients=st.lists(entries, max_size=5, unique_by=lambda p: (p.ref, p.scope)).map(tuple),
)


@settings(deadline=None)
@given(records)
def test_any_record_round_trips_and_renders(record: DestructionRecord) -> None:
    text = render_json(record)
    back = load_json(text)
    assert back == record
    assert render_json(back) == text
    page = render_html(record)
    for p in record.patients:
        for digest in p.object_hashes:
            assert digest in page


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> _Collector:
    c = _Collector()
    c.feed(page)
    c.close()
    return c


def test_html_is_printable_and_lists_every_hash_and_drive() -> None:
    record = sample()
    page = render_html(record)
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>Registre de destruction / Destruction record" in page
    assert "@media print" in page and "@page" in page
    text = " ".join(parse(page).text)
    assert "Nom, date, signature du médecin" in text
    assert "Name, date, signature of the physician" in text
    for p in record.patients:
        for digest in p.object_hashes:
            assert digest in text
        assert p.ref in text
    for drive in ("usb-A", "usb-B", "usb-C"):
        assert drive in text
    assert "Erasure not yet confirmed on: usb-C" in text
    assert json_sha256(record) in text
    assert "cnil-2020" in text and "2026-11-24" in text and "Dr Anne Lefèvre" in text


def test_html_loads_nothing_from_outside_and_runs_nothing() -> None:
    c = parse(render_html(sample()))
    assert "script" not in c.tags and "img" not in c.tags and "link" not in c.tags
    assert not any(name in ("src", "href") or name.startswith("on") for name, _ in c.attrs)


def test_hostile_strings_are_escaped_everywhere() -> None:
    record = sample(
        vault_id=HOSTILE,
        operator=HOSTILE,
        profile=HOSTILE,
        patients=(
            DestroyedPatient(
                HOSTILE,
                1,
                (h(1),),
                drives_confirmed=(HOSTILE,),
                drives_pending=(HOSTILE + "2",),
                rule=HOSTILE,
            ),
        ),
    )
    page = render_html(record)
    assert "<script" not in page and "<img" not in page
    c = parse(page)
    assert "script" not in c.tags and "img" not in c.tags
    assert not any(name.startswith("on") for name, _ in c.attrs)
    # the text a reader sees is the string itself, every time it was given
    text = "\n".join(c.text)
    assert text.count(HOSTILE) >= 7
    assert load_json(render_json(record)) == record


def test_empty_record_says_nothing_was_destroyed() -> None:
    record = sample(patients=())
    assert "Nothing was destroyed." in render_html(record)
    assert load_json(render_json(record)) == record


def _edited(change: str) -> str:
    obj = json.loads(render_json(sample()))
    exec(change, {"obj": obj})
    return json.dumps(obj)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("obj['format'] = 'something-else'", "not a coldvault destruction record"),
        ("obj['version'] = 2", "newer than this coldvault"),
        ("obj['version'] = '1'", "invalid format version"),
        ("obj['patients'][0]['object_hashes'][0] = 'ABC'", "64 lowercase hex"),
        ("obj['patients'][0]['document_count'] = 5", "totals do not match"),
        ("obj['patients'].pop()", "totals do not match"),
        ("obj['surprise'] = 1", "unexpected surprise"),
        ("del obj['operator']", "missing operator"),
        ("obj['patients'][0]['colour'] = 'red'", "unexpected colour"),
        ("obj['as_of'] = '24/11/2026'", "invalid date"),
        ("obj['created'] = 'yesterday'", "invalid creation time"),
        ("obj['patients'][0]['scope'] = 'everything'", "Unknown destruction scope"),
        ("obj['patients'][0]['drives_pending'] = 'usb-C'", "malformed"),
        ("obj['patients'][0]['drives_pending'] = [1]", "must be texts"),
        ("obj['patients'].append(dict(obj['patients'][0]))", "appears twice"),
    ],
)
def test_load_json_rejects_malformed_or_edited_records(change: str, message: str) -> None:
    with pytest.raises(RecordFormatError, match=message) as info:
        load_json(_edited(change))
    assert isinstance(info.value, IntegrityError)


def test_load_json_rejects_non_json() -> None:
    with pytest.raises(RecordFormatError, match="not valid JSON"):
        load_json(b"\xff\xfe not json")
    with pytest.raises(RecordFormatError, match="not a coldvault"):
        load_json("[1, 2]")


def test_bad_entries_are_refused_at_construction() -> None:
    with pytest.raises(RecordFormatError):
        DestroyedPatient("p", -1, ())
    with pytest.raises(RecordFormatError):
        DestroyedPatient("p", 1, (h(1).upper(),))
    with pytest.raises(RecordFormatError):
        DestroyedPatient("", 1, ())

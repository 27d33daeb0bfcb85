"""The published job-request JSON Schema: checked in, up to date, and meaning what it says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs in the dev extras
import pytest

import pollen
from pollen import schema
from pollen.payloads import parse_job_request


def checked_in() -> dict[str, Any]:
    value = json.loads(schema.PACKAGED_PATH.read_text(encoding="utf-8"))
    assert isinstance(value, dict)
    return value


def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(checked_in())


def good_payload() -> dict[str, Any]:
    return {
        "provider": "runware",
        "request": {
            "taskType": "videoInference",
            "model": "klingai:5@3",
            "positivePrompt": "a fox running through snow",
            "numberResults": 2,
            "duration": 5,
        },
        "job_id": "job-1",
        "callback_url": "https://example.test/cb",
        "poll": {"initial_delay": 10, "interval": 2},
        "deadline": 900,
        "metadata": {"user": "42"},
    }


def test_checked_in_schema_is_up_to_date() -> None:
    copies = schema.copies()
    assert copies[0].parent == Path(pollen.__file__).resolve().parent, "packaged copy first"
    assert len(copies) == 2, "a source checkout also keeps schema/job-request.schema.json"
    for path in copies:
        assert path.is_file(), f"{path} is missing: run `pollen schema`"
        assert path.read_text(encoding="utf-8") == schema.render(), (
            f"{path} is out of date with the job models: run `pollen schema` and commit it"
        )
    assert schema.stale() == []


def test_schema_check_names_each_stale_copy_and_schema_writes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pollen schema --check`` in a checkout compares both copies; an installed package (no
    pyproject.toml beside it) compares only the one it ships."""
    package = tmp_path / "pollen"
    package.mkdir()
    monkeypatch.setattr(schema, "PACKAGED_PATH", package / schema.FILENAME)
    assert schema.copies() == [package / schema.FILENAME]  # installed: no checkout around it
    assert schema.stale() == [package / schema.FILENAME]
    (tmp_path / "pyproject.toml").write_text("")
    repository = tmp_path / "schema" / schema.FILENAME
    assert schema.stale() == [package / schema.FILENAME, repository]
    assert schema.write() == [package / schema.FILENAME, repository]
    assert schema.stale() == []
    repository.write_text(repository.read_text() + " ")
    assert schema.stale() == [repository]


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    document = checked_in()
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(document)
    # One variant per provider, told apart by ``provider``; each refuses unknown fields.
    variants = [document["$defs"][ref["$ref"].rsplit("/", 1)[1]] for ref in document["oneOf"]]
    assert document["discriminator"]["propertyName"] == "provider"
    runware = [v for v in variants if v["properties"]["provider"].get("const") == "runware"]
    assert len(runware) == 1
    for variant in variants:
        assert variant["additionalProperties"] is False
        assert {"provider", "request"} <= set(variant["required"])


def test_schema_accepts_a_good_payload() -> None:
    payload = good_payload()
    validator().validate(payload)
    validator().validate(
        {"provider": "runware", "request": {"taskType": "imageInference", "model": "runware:101@1"}}
    )
    # ... which pollen accepts too.
    assert parse_job_request(payload, max_request_bytes=65536).expected_results == 2


def without(payload: dict[str, Any], *path: str) -> dict[str, Any]:
    copy = json.loads(json.dumps(payload))
    target = copy
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    assert isinstance(copy, dict)
    return copy


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        pytest.param(
            good_payload() | {"provider": "midjourney"}, "provider", id="unknown-provider"
        ),
        pytest.param(without(good_payload(), "request", "taskType"), "taskType", id="no-taskType"),
        pytest.param(good_payload() | {"priority": "high"}, "priority", id="extra-top-level"),
        pytest.param(without(good_payload(), "provider"), "provider", id="no-provider"),
        pytest.param(
            good_payload() | {"request": good_payload()["request"] | {"numberResults": 0}},
            "numberResults",
            id="numberResults-0",
        ),
        pytest.param(good_payload() | {"job_id": "has space"}, "job_id", id="job_id-pattern"),
        pytest.param(good_payload() | {"poll": {"speed": 1}}, "speed", id="poll-extra"),
        pytest.param(good_payload() | {"metadata": {"n": 1}}, "metadata", id="metadata-int"),
    ],
)
def test_schema_rejects_bad_payloads(payload: dict[str, Any], where: str) -> None:
    errors = list(validator().iter_errors(payload))
    assert errors, "the schema accepted a payload pollen refuses"
    # A failed oneOf says only "not valid under any of the given schemas": look inside.
    pending = list(errors)
    while pending:
        error = pending.pop()
        errors.extend(error.context or [])
        pending.extend(error.context or [])
    described = " ".join(f"{'/'.join(str(p) for p in e.absolute_path)} {e.message}" for e in errors)
    assert where in described

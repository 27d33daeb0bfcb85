"""Standard Webhooks signing (:mod:`pollen.callbacks.webhooks`), proved against the spec authors'
``standardwebhooks`` package: pollen's headers must verify there, and the package's must here.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as PackageVerificationError

from pollen.callbacks import webhooks
from pollen.callbacks.webhooks import WebhookVerificationError
from pollen.errors import PollenError
from pollen.webhook_keys import secret_key

# The known-answer vector of the Standard Webhooks spec and its reference libraries.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
EXPECTED = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def package_sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    return Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, tz=UTC), body.decode())


# --------------------------------------------------------------------------- signing


def test_known_answer_vector_matches_spec_and_package() -> None:
    assert package_sign(SECRET, MSG_ID, TIMESTAMP, BODY) == EXPECTED
    assert webhooks.sign(SECRET, MSG_ID, TIMESTAMP, BODY) == EXPECTED


def test_prefix_is_optional_on_input() -> None:
    bare = SECRET.removeprefix("whsec_")
    assert webhooks.sign(bare, MSG_ID, TIMESTAMP, BODY) == EXPECTED


@settings(max_examples=50)
@given(
    msg_id=st.text(alphabet=st.characters(codec="ascii", categories=["L", "N"]), min_size=1),
    timestamp=st.integers(min_value=0, max_value=4_102_444_800),
    body=st.text().map(str.encode),
    key=st.binary(min_size=24, max_size=64),
)
def test_sign_agrees_with_package(msg_id: str, timestamp: int, body: bytes, key: bytes) -> None:
    secret = "whsec_" + base64.b64encode(key).decode()
    assert webhooks.sign(secret, msg_id, timestamp, body) == package_sign(
        secret, msg_id, timestamp, body
    )


def test_new_secret_is_valid_unique_and_accepted_by_package() -> None:
    first, second = webhooks.new_secret(), webhooks.new_secret()
    assert first != second
    assert first.startswith("whsec_")
    assert 24 <= len(secret_key(first)) <= 64
    assert webhooks.sign(first, MSG_ID, TIMESTAMP, BODY) == package_sign(
        first, MSG_ID, TIMESTAMP, BODY
    )


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("whsec_" + base64.b64encode(b"x" * 23).decode(), "23 bytes"),
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "65 bytes"),
        ("whsec_not*base64!", "not base64"),
        ("whsec_", "0 bytes"),
        ("", "0 bytes"),
    ],
)
def test_bad_secrets_raise_value_error(secret: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        webhooks.sign(secret, MSG_ID, TIMESTAMP, BODY)
    with pytest.raises(ValueError, match=message):
        webhooks.verify(secret, BODY, {}, now=TIMESTAMP)


def test_unpadded_secret_is_accepted() -> None:
    key = b"k" * 25  # base64 of 25 bytes ends in '=='
    padded = base64.b64encode(key).decode()
    assert padded.endswith("==")
    assert webhooks.sign(padded.rstrip("="), MSG_ID, TIMESTAMP, BODY) == webhooks.sign(
        padded, MSG_ID, TIMESTAMP, BODY
    )


def test_non_utf8_body_is_refused() -> None:
    with pytest.raises(ValueError, match="UTF-8"):
        webhooks.sign(SECRET, MSG_ID, TIMESTAMP, b"\xff\xfe")


# --------------------------------------------------------------------------- headers


def test_headers_shape() -> None:
    sent = webhooks.headers([SECRET], MSG_ID, TIMESTAMP, BODY)
    assert sent == {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(TIMESTAMP),
        "webhook-signature": EXPECTED,
        "content-type": "application/json",
    }


def test_headers_verify_with_the_package() -> None:
    secret = webhooks.new_secret()
    body = b'{"event": "job.completed", "job_id": "j1", "text": "caf\xc3\xa9"}'
    sent = webhooks.headers([secret], "msg_1", int(time.time()), body)
    assert Webhook(secret).verify(body, sent) == {
        "event": "job.completed",
        "job_id": "j1",
        "text": "café",
    }


def test_rotation_signs_with_every_secret_and_each_verifies() -> None:
    old, new = webhooks.new_secret(), webhooks.new_secret()
    now = int(time.time())
    sent = webhooks.headers([old, new], "msg_rot", now, BODY)
    signatures = sent["webhook-signature"].split(" ")
    assert signatures == [
        webhooks.sign(old, "msg_rot", now, BODY),
        webhooks.sign(new, "msg_rot", now, BODY),
    ]
    assert signatures[0] != signatures[1]
    for secret in (old, new):
        Webhook(secret).verify(BODY, sent)
        webhooks.verify(secret, BODY, sent, now=now)
    stranger = webhooks.new_secret()
    with pytest.raises(PackageVerificationError):
        Webhook(stranger).verify(BODY, sent)
    with pytest.raises(WebhookVerificationError, match="no matching"):
        webhooks.verify(stranger, BODY, sent, now=now)


@pytest.mark.parametrize("secrets", [[], "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])
def test_headers_need_a_sequence_of_secrets(secrets: list[str]) -> None:
    with pytest.raises(ValueError, match="non-empty sequence"):
        webhooks.headers(secrets, MSG_ID, TIMESTAMP, BODY)


# --------------------------------------------------------------------------- verify


def test_verify_accepts_the_vector_and_package_signed_headers() -> None:
    sent = {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(TIMESTAMP),
        "webhook-signature": EXPECTED,
    }
    webhooks.verify(SECRET, BODY, sent, now=TIMESTAMP)
    capitalised = {name.title(): value for name, value in sent.items()}
    webhooks.verify(SECRET, BODY, capitalised, now=TIMESTAMP + 299)


def test_verification_error_is_a_pollen_error() -> None:
    assert issubclass(WebhookVerificationError, PollenError)


Tamper = Callable[[bytes, dict[str, str]], tuple[bytes, dict[str, str]]]
TAMPERS: dict[str, Tamper] = {
    "body": lambda body, sent: (body.replace(b"2432232314", b"2432232315"), sent),
    "body-whitespace": lambda body, sent: (body + b" ", sent),
    "id": lambda body, sent: (body, sent | {"webhook-id": sent["webhook-id"] + "x"}),
    "timestamp": lambda body, sent: (
        body,
        sent | {"webhook-timestamp": str(int(sent["webhook-timestamp"]) - 1)},
    ),
}


@pytest.mark.parametrize("tamper", TAMPERS)
def test_tampering_fails_here_and_in_the_package(tamper: str) -> None:
    now = int(time.time())
    sent = webhooks.headers([SECRET], MSG_ID, now, BODY)
    webhooks.verify(SECRET, BODY, sent, now=now)
    Webhook(SECRET).verify(BODY, sent)
    body, tampered = TAMPERS[tamper](BODY, sent)
    assert (body, tampered) != (BODY, sent)
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        webhooks.verify(SECRET, body, tampered, now=now)
    with pytest.raises(PackageVerificationError, match="No matching signature"):
        Webhook(SECRET).verify(body, tampered)


def test_timestamp_tolerance_boundaries() -> None:
    sent = webhooks.headers([SECRET], MSG_ID, TIMESTAMP, BODY)
    webhooks.verify(SECRET, BODY, sent, now=TIMESTAMP + 300)
    webhooks.verify(SECRET, BODY, sent, now=TIMESTAMP - 300)
    with pytest.raises(WebhookVerificationError, match="too old"):
        webhooks.verify(SECRET, BODY, sent, now=TIMESTAMP + 301)
    with pytest.raises(WebhookVerificationError, match="too new"):
        webhooks.verify(SECRET, BODY, sent, now=TIMESTAMP - 301)
    webhooks.verify(SECRET, BODY, sent, now=TIMESTAMP + 301, tolerance=301)


def test_default_clock_is_the_wall_clock() -> None:
    sent = webhooks.headers([SECRET], MSG_ID, int(time.time()), BODY)
    webhooks.verify(SECRET, BODY, sent)
    with pytest.raises(WebhookVerificationError, match="too old"):
        webhooks.verify(SECRET, BODY, webhooks.headers([SECRET], MSG_ID, TIMESTAMP, BODY))


def test_stale_headers_fail_with_the_package_too() -> None:
    sent = webhooks.headers([SECRET], MSG_ID, int(time.time()) - 600, BODY)
    with pytest.raises(PackageVerificationError, match="too old"):
        Webhook(SECRET).verify(BODY, sent)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"webhook-id": ""}, "missing"),
        ({"webhook-signature": ""}, "missing"),
        ({"webhook-timestamp": ""}, "missing"),
        ({"webhook-timestamp": "1614265330.5"}, "not integer"),
        ({"webhook-timestamp": "-1614265330"}, "not integer"),
        ({"webhook-timestamp": "soon"}, "not integer"),
        ({"webhook-signature": "v2," + EXPECTED[3:]}, "no matching"),
        ({"webhook-signature": "v1"}, "no matching"),
        ({"webhook-signature": "v1,***"}, "no matching"),
        ({"webhook-signature": EXPECTED[:-8] + "AAAAAAA="}, "no matching"),
    ],
)
def test_bad_headers_fail(change: dict[str, str], message: str) -> None:
    sent = webhooks.headers([SECRET], MSG_ID, TIMESTAMP, BODY) | change
    with pytest.raises(WebhookVerificationError, match=message):
        webhooks.verify(SECRET, BODY, sent, now=TIMESTAMP)


def test_garbage_entries_do_not_hide_a_good_signature() -> None:
    sent = webhooks.headers([SECRET], MSG_ID, TIMESTAMP, BODY)
    sent["webhook-signature"] = f"v1 v1,*** v2,abc {EXPECTED}"
    webhooks.verify(SECRET, BODY, sent, now=TIMESTAMP)


def test_non_utf8_body_fails_verification() -> None:
    sent = webhooks.headers([SECRET], MSG_ID, TIMESTAMP, BODY)
    with pytest.raises(WebhookVerificationError, match="UTF-8"):
        webhooks.verify(SECRET, b"\xff", sent, now=TIMESTAMP)

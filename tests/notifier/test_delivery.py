"""Delivery decisions without Redis: status classes, Retry-After, backoff, signatures, the job view."""

from __future__ import annotations

import email.utils
import random
import time

import orjson
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from jobqueue.notifications import DeliveryRecord
from jobqueue.protocol import RECORD_FIELDS, parse_record
from notifier.delivery import (
    BACKOFF_BASE_S,
    BACKOFF_CAP_S,
    RETRY_AFTER_CAP_S,
    backoff_delay_s,
    classify,
    parse_retry_after,
    signed_headers,
)
from tests.notifier.helpers import new_secret


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, (True, False)),
        (204, (True, False)),
        (301, (False, True)),  # redirects are not followed
        (400, (False, True)),
        (401, (False, True)),
        (404, (False, True)),
        (410, (False, True)),
        (408, (False, False)),
        (409, (False, False)),
        (425, (False, False)),
        (429, (False, False)),
        (500, (False, False)),
        (503, (False, False)),
    ],
)
def test_classify(status: int, expected: tuple[bool, bool]):
    assert classify(status) == expected


def test_retry_after_seconds_date_and_cap():
    now = time.time()
    assert parse_retry_after("1") == 1
    assert parse_retry_after(" 0 ") == 0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == pytest.approx(30, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0  # in the past: now
    assert parse_retry_after("999999") == RETRY_AFTER_CAP_S
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None and parse_retry_after("-5") is None


def test_backoff_is_full_jitter_under_a_doubling_capped_ceiling():
    rng = random.Random(7)
    for attempt in range(1, 20):
        ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
        delays = [backoff_delay_s(attempt, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8 and min(delays) < ceiling * 0.2  # spread over the whole range
    assert max(backoff_delay_s(30, rng) for _ in range(200)) <= BACKOFF_CAP_S


def test_signed_headers_verify_with_standardwebhooks():
    secret = new_secret()
    body = '{"job_id": "j1"}'
    headers = signed_headers(secret, "msg_j1_1", body)
    assert headers["webhook-id"] == "msg_j1_1" and headers["content-type"] == "application/json"
    assert Webhook(secret).verify(body, headers) == {"job_id": "j1"}
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace("j1", "j2"), headers)


def test_webhook_body_is_the_api_job_view():
    fields = {
        "status": "completed",
        "model": "iris",
        "model_version": "3",
        "owner": "alice",
        "result": '{"label": "setosa"}',
        "attempts": "2",
        "created_at": "1764590400000",
        "started_at": "1764590400500",
        "finished_at": "1764590401007",
        "callback_url": "https://hooks.example.com/x",
        "notify_state": "failed",
        "notify_attempts": "8",
        "notify_last_error": "timed out",
    }
    record = parse_record("j1", RECORD_FIELDS, [fields.get(name) for name in RECORD_FIELDS])
    assert record is not None
    delivery = DeliveryRecord.of(record)
    assert delivery.callback_url == "https://hooks.example.com/x" and delivery.message_id == "msg_j1_1764590401007"
    assert orjson.loads(orjson.dumps(delivery.view)) == {  # what goes on the wire
        "job_id": "j1",
        "status": "completed",
        "model": "iris",
        "model_version": "3",
        "priority": "normal",
        "result": {"label": "setosa"},
        "error": None,
        "attempts": 2,
        "created_at": "2025-12-01T12:00:00.000Z",
        "started_at": "2025-12-01T12:00:00.500Z",
        "finished_at": "2025-12-01T12:00:01.007Z",
        "notification": {"state": "failed", "attempts": 8, "last_status": None, "last_error": "timed out"},
    }
    assert "owner" not in delivery.view and "callback_url" not in delivery.view  # never sent out


def test_message_id_is_per_outcome():
    first = DeliveryRecord("j1", "https://h.example/x", 1000, {})
    again = DeliveryRecord("j1", "https://h.example/x", 1000, {})
    rerun = DeliveryRecord("j1", "https://h.example/x", 5000, {})
    assert first.message_id == again.message_id == "msg_j1_1000"
    assert rerun.message_id != first.message_id

"""Request signing: the runner's stdlib signer and the collector's check agree; tampering, staleness and
bad headers are refused; the shared token is created once, private, and overridable from the environment."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat

import pytest
from edgekit_runner import upload
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekit.results import ResultsError, signing
from edgekit.results.signing import SignatureError, verify

TOKEN = "0123456789abcdef" * 4
NOW = 1_767_225_600


@settings(max_examples=200, deadline=None)
@given(token=st.text(min_size=16, max_size=80), timestamp=st.integers(0, 10**11), body=st.binary(max_size=2048))
def test_runner_signature_verifies_on_the_host(token, timestamp, body):
    signature = upload.sign(token, timestamp, body)
    assert signature == signing.sign(token, timestamp, body)
    verify(token, str(timestamp), signature, body, now=timestamp)


def test_the_signed_message_is_timestamp_dot_body():
    body = b'{"run_id": "x"}'
    expected = hmac.new(TOKEN.encode(), b"1767225600." + body, hashlib.sha256).hexdigest()
    assert upload.sign(TOKEN, NOW, body) == "sha256=" + expected
    assert upload.TIMESTAMP_HEADER == signing.TIMESTAMP_HEADER and upload.SIGNATURE_HEADER == signing.SIGNATURE_HEADER


def test_tampered_body_timestamp_or_token_is_refused():
    body = b'{"status": "OK"}'
    good = upload.sign(TOKEN, NOW, body)
    with pytest.raises(SignatureError, match="does not match"):
        verify(TOKEN, str(NOW), good, b'{"status": "OK "}', now=NOW)
    with pytest.raises(SignatureError, match="does not match"):
        verify(TOKEN, str(NOW + 1), good, body, now=NOW)
    with pytest.raises(SignatureError, match="does not match"):
        verify("another-token-of-length", str(NOW), good, body, now=NOW)


def test_stale_and_future_timestamps_are_refused_at_the_limit():
    body = b"{}"
    sig = upload.sign(TOKEN, NOW, body)
    verify(TOKEN, str(NOW), sig, body, now=NOW + 300)
    verify(TOKEN, str(NOW), sig, body, now=NOW - 300)
    with pytest.raises(SignatureError, match="301 s behind"):
        verify(TOKEN, str(NOW), sig, body, now=NOW + 301)
    with pytest.raises(SignatureError, match="ahead of"):
        verify(TOKEN, str(NOW), sig, body, now=NOW - 301)
    with pytest.raises(SignatureError, match="limit 10 s"):
        verify(TOKEN, str(NOW), sig, body, now=NOW + 11, max_skew_s=10)


@pytest.mark.parametrize("timestamp, signature, message", [
    (None, "sha256=" + "0" * 64, "missing"),
    (str(NOW), "", "missing"),
    ("1.5e9", "sha256=" + "0" * 64, "Unix seconds"),
    ("-5", "sha256=" + "0" * 64, "Unix seconds"),
    (str(NOW), "0" * 64, "64 lowercase hex"),
    (str(NOW), "sha256=" + "A" * 64, "64 lowercase hex"),
    (str(NOW), "sha256=" + "é" * 64, "64 lowercase hex"),
])
def test_malformed_headers_are_refused(timestamp, signature, message):
    with pytest.raises(SignatureError, match=message):
        verify(TOKEN, timestamp, signature, b"{}", now=NOW)


def test_token_file_is_created_once_private(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EDGEKIT_TOKEN", raising=False)
    with pytest.raises(ResultsError, match="no token"):
        signing.load_token()
    token, source = signing.ensure_token()
    path = tmp_path / "home" / "token"
    assert source == str(path) and len(token) == 64 and int(token, 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert signing.ensure_token() == (token, source)
    assert os.listdir(path.parent) == ["token"]  # no temporary file left


def test_environment_token_wins_and_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path))
    monkeypatch.setenv("EDGEKIT_TOKEN", TOKEN)
    assert signing.ensure_token() == (TOKEN, "$EDGEKIT_TOKEN")
    assert not (tmp_path / "token").exists()
    monkeypatch.setenv("EDGEKIT_TOKEN", "short")
    with pytest.raises(ResultsError, match="5 characters; use at least 16"):
        signing.load_token()


def test_a_token_file_others_can_read_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path))
    monkeypatch.delenv("EDGEKIT_TOKEN", raising=False)
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o644)
    with pytest.raises(ResultsError, match="chmod 600"):
        signing.load_token()
    path.chmod(0o600)
    assert signing.load_token() == (TOKEN, str(path))

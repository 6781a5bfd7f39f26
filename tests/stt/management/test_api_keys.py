"""create_api_key, list_api_keys and revoke_api_key: API keys for operators without the
admin (containers, CI), against the real database (issue 26 #6)."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from stt.auth import key_for
from stt.models import ApiKey

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_a_created_key_is_printed_alone_once_and_authenticates():
    out, err = run("create_api_key", "voice backend", "--max-concurrent-sessions", "3",
                   "--max-messages-per-second", "80")
    key = out.strip()
    assert out == key + "\n" and key.startswith("ftk_"), "alone on stdout: KEY=$(manage.py create_api_key ...)"
    record = key_for(key)
    assert (record.name, record.max_concurrent_sessions, record.max_messages_per_second) == ("voice backend", 3, 80)
    assert key not in err and record.prefix in err and "only time" in err
    assert not ApiKey.objects.filter(key_hash=key).exists(), "only its hash is kept"


def test_limits_out_of_the_admins_ranges_and_an_empty_name_are_refused():
    with pytest.raises(CommandError, match="max_concurrent_sessions"):
        run("create_api_key", "backend", "--max-concurrent-sessions", "0")
    with pytest.raises(CommandError, match="name"):
        run("create_api_key", "  ")
    assert not ApiKey.objects.exists()


def test_the_list_names_keys_without_showing_them_and_hides_revoked_ones_unless_asked():
    kept = run("create_api_key", "kept")[0].strip()
    gone = run("create_api_key", "gone")[0].strip()
    run("revoke_api_key", str(key_for(gone).pk))
    listing = run("list_api_keys")[0]
    assert "kept" in listing and key_for(kept).prefix in listing and kept not in listing
    assert "gone" not in listing
    assert "gone" in run("list_api_keys", "--all")[0]


@pytest.mark.parametrize("naming", ["id", "prefix", "key"])
def test_a_revoked_key_no_longer_authenticates(naming):
    key = run("create_api_key", "backend")[0].strip()
    record = key_for(key)
    reference = {"id": str(record.pk), "prefix": record.prefix, "key": key}[naming]
    out = run("revoke_api_key", reference)[0]
    assert out.startswith(f"Revoked API key {record.pk} (backend)")
    assert key_for(key) is None
    assert "already revoked" in run("revoke_api_key", str(record.pk))[0]


def test_revoking_a_key_that_is_not_there_says_so():
    with pytest.raises(CommandError, match="no API key matches"):
        run("revoke_api_key", "ftk_nothere")
    with pytest.raises(CommandError, match="no API key matches"):
        run("revoke_api_key", "12345")

"""API keys for operators without the admin (the management commands create_api_key,
list_api_keys and revoke_api_key): what the admin does with keys, as plain functions."""

from __future__ import annotations

from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.utils import timezone

from stt.auth import KEY_PREFIX, generate_key, hash_key
from stt.models import ApiKey


PREFIX_LENGTH = len(generate_key()[1])  # what ApiKey.prefix keeps of a key


@dataclass(frozen=True)
class CreatedKey:
    key: str  # the key itself: shown once, only its hash is kept
    record: ApiKey


def create_key(name: str, max_concurrent_sessions: int | None = None,
               max_messages_per_second: int | None = None) -> CreatedKey:
    """A new key with its limits (None: the server's defaults); ValidationError when a
    value is out of the admin's ranges."""
    raw, prefix, digest = generate_key()
    record = ApiKey(name=name.strip(), prefix=prefix, key_hash=digest, max_concurrent_sessions=max_concurrent_sessions,
                    max_messages_per_second=max_messages_per_second)
    record.full_clean()
    record.save()
    return CreatedKey(raw, record)


def find_key(reference: str) -> ApiKey:
    """The key an operator names: its id, its prefix (ftk_ and the characters after it,
    as `list_api_keys` shows it) or the key itself. ValidationError when none or several
    match."""
    reference = reference.strip()
    if reference.isdigit():
        matches = list(ApiKey.objects.filter(pk=int(reference)))
    elif reference.startswith(KEY_PREFIX) and len(reference) > PREFIX_LENGTH:  # the key itself
        matches = list(ApiKey.objects.filter(key_hash=hash_key(reference)))
    elif reference.startswith(KEY_PREFIX):
        matches = list(ApiKey.objects.filter(prefix=reference))
    else:
        matches = []
    if len(matches) != 1:
        raise ValidationError(f"{'no' if not matches else 'more than one'} API key matches {reference!r}: "
                              f"name it by its id (list_api_keys)")
    return matches[0]


def revoke_key(key: ApiKey) -> bool:
    """Revoke it (its sessions are refused from then on); False if it already was."""
    return ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now()) == 1

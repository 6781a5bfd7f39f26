"""Runtime profiles reach new sessions: at once when announced, within the refresh bound otherwise."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async

from stt.errors import SttError
from stt.models import RuntimeProfile
from stt.runtime_config import CONFIG_CHANGED, CONFIG_GROUP, RuntimeValues, store

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_runtime_store")]


async def test_without_profiles_the_server_settings_apply(settings):
    settings.VAD_THRESHOLD = 0.42
    values = await store.values()
    assert values.profile == "" and values.vad_threshold == 0.42
    assert values == RuntimeValues.from_settings()


async def test_the_default_profile_and_a_named_one_overlay_the_settings():
    await sync_to_async(RuntimeProfile.objects.create)(name="office", is_default=True, vad_threshold=0.7)
    await sync_to_async(RuntimeProfile.objects.create)(name="street", vad_threshold=0.8, final_beam_size=3)
    default = await store.values()
    assert (default.profile, default.vad_threshold) == ("office", 0.7)
    street = await store.values("street")
    assert (street.vad_threshold, street.final_beam_size) == (0.8, 3)
    assert street.partial_beam_size == RuntimeValues.from_settings().partial_beam_size


async def test_naming_an_unknown_profile_is_a_config_error():
    with pytest.raises(SttError) as caught:
        await store.values("nope")
    assert (caught.value.code, caught.value.field) == ("invalid_config", "profile")


async def test_a_change_nobody_announced_still_arrives_within_the_refresh_bound(settings):
    settings.RUNTIME_CONFIG_REFRESH_SECONDS = 0.5
    await sync_to_async(RuntimeProfile.objects.create)(name="office", is_default=True, vad_threshold=0.7)
    assert (await store.values()).vad_threshold == 0.7
    # queryset.update() sends no signal: no announcement, only the re-read can see it.
    await sync_to_async(RuntimeProfile.objects.filter(name="office").update)(vad_threshold=0.3)
    assert (await store.values()).vad_threshold == 0.7, "cached until the bound"
    await asyncio.sleep(0.6)
    assert (await store.values()).vad_threshold == 0.3


async def test_an_announcement_over_redis_applies_a_change_at_once(settings, redis_channel_layer):
    settings.RUNTIME_CONFIG_REFRESH_SECONDS = 60
    await sync_to_async(RuntimeProfile.objects.create)(name="office", is_default=True, vad_threshold=0.7)
    assert (await store.values()).vad_threshold == 0.7  # also starts this process's listener
    await asyncio.sleep(0.2)
    await sync_to_async(RuntimeProfile.objects.filter(name="office").update)(vad_threshold=0.25)
    # As another server process's admin save would announce it:
    await redis_channel_layer.group_send(CONFIG_GROUP, {"type": CONFIG_CHANGED})
    for _ in range(50):
        if (await store.values()).vad_threshold == 0.25:
            break
        await asyncio.sleep(0.05)
    assert (await store.values()).vad_threshold == 0.25


async def test_saving_a_profile_announces_it():
    await store.values()
    reloads = store.reloads
    await sync_to_async(RuntimeProfile.objects.create)(name="office", is_default=True, final_beam_size=2)
    assert (await store.values()).final_beam_size == 2
    assert store.reloads == reloads + 1


async def test_the_endpointing_eagerness_comes_from_the_profile_else_the_setting(settings):
    settings.ENDPOINTING_EAGERNESS = "low"
    assert (await store.values()).endpointing_eagerness == "low"
    await sync_to_async(RuntimeProfile.objects.create)(name="office", is_default=True, vad_threshold=0.7)
    await sync_to_async(RuntimeProfile.objects.create)(name="street", endpointing_eagerness="high")
    office, street = await store.values(), await store.values("street")
    assert office.endpointing_eagerness == "low", "left blank: the setting"
    assert street.endpointing_eagerness == "high"
    assert street.session_defaults()["endpointing"] == "high", "the default of session_config.endpointing"
    assert street.as_dict()["endpointing_eagerness"] == "high", "as session_started's data.runtime shows it"

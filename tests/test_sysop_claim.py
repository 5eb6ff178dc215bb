"""A fresh deployment's first sysop by a one-time claim token (README, "The first sysop"):
the operator prints a token, the first socket to present it becomes sysop, and a used,
expired or unknown token is refused."""
import asyncio
import io
import re
import subprocess
import threading
import uuid

import orjson
import pytest
import websockets
from asgiref.sync import sync_to_async
from django.core.management import call_command

from accounts.models import User
from tests.test_live_broker import read_until, start_broker

pytestmark = pytest.mark.django_db(transaction=True)


def issue_token() -> str:
    out = io.StringIO()
    call_command("sysop_claim_token", stdout=out, stderr=io.StringIO())
    return out.getvalue().strip()


async def claim(client, token: str) -> dict:
    await client.send({"type": "claim_sysop", "token": token})
    return await client.receive()


def is_sysop(user) -> bool:
    return User.objects.get(pk=user.guid).is_sysop


async def test_the_first_socket_to_present_a_token_becomes_sysop(alice, connect):
    token = await sync_to_async(issue_token)()
    client = await connect(alice.guid)

    info = await claim(client, token)

    assert (info["type"], info["data"]["guid"], info["data"]["is_sysop"]) == ("user_info", alice.guid, True)
    assert await sync_to_async(is_sysop)(alice)


async def test_a_used_token_is_refused_and_makes_nobody_else_sysop(alice, bob, connect):
    token = await sync_to_async(issue_token)()
    await claim(await connect(alice.guid), token)

    refusal = await claim(await connect(bob.guid), token)

    assert (refusal["type"], refusal["code"]) == ("error", "claim_token_used")
    assert "already been used" in refusal["message"]
    assert not await sync_to_async(is_sysop)(bob)


async def test_an_expired_token_is_refused(alice, connect, settings):
    settings.RENTAHAL_SYSOP_CLAIM_TTL = 0
    token = await sync_to_async(issue_token)()

    refusal = await claim(await connect(alice.guid), token)

    assert (refusal["type"], refusal["code"]) == ("error", "claim_token_expired")
    assert "sysop_claim_token" in refusal["message"]
    assert not await sync_to_async(is_sysop)(alice)


async def test_a_token_nobody_issued_is_refused(alice, connect):
    refusal = await claim(await connect(alice.guid), uuid.uuid4().hex)

    assert (refusal["type"], refusal["code"]) == ("error", "claim_token_unknown")
    assert not await sync_to_async(is_sysop)(alice)


async def test_run_broker_without_first_visitor_sysop_prints_a_claim_link_that_makes_its_opener_sysop(default_realms):
    process, port = await asyncio.to_thread(
        start_broker, "--no-local-model", env={"FIRST_VISITOR_IS_SYSOP": "false"}, stdout=subprocess.PIPE
    )
    lines: list[str] = []

    def read_output():
        for line in process.stdout:
            lines.append(line)

    threading.Thread(target=read_output, daemon=True).start()
    try:
        link = None
        for _ in range(300):
            link = next((match for line in lines if (match := re.search(r"http://\S+/\?claim=(\S+)", line))), None)
            if link:
                break
            await asyncio.sleep(0.1)
        assert link, f"no claim link in {lines}"
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await read_until(ws, "huggingface_update")
            await ws.send(orjson.dumps({"type": "claim_sysop", "token": link.group(1)}).decode())
            info = await read_until(ws, "user_info")
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 60)

    assert info["data"]["is_sysop"] is True

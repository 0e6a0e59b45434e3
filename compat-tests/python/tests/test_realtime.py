"""Realtime with supabase-py's async client: a postgres_changes subscription on messages
receives the caller's own insert, and not another user's."""

import asyncio

from conftest import ANON_KEY, OPTS_ASYNC, sign_up
from supabase import acreate_client


async def test_postgres_changes_insert_reaches_the_async_client(server):
    u = sign_up(server, "rt")
    stranger = sign_up(server, "rt-other")
    sb = await acreate_client(server, ANON_KEY, OPTS_ASYNC)
    await sb.auth.sign_in_with_password({"email": u.email, "password": u.password})

    got: asyncio.Queue = asyncio.Queue()
    subscribed = asyncio.Event()

    def on_status(status, err):
        if str(status).endswith("SUBSCRIBED"):
            subscribed.set()

    channel = sb.channel("py-messages")
    channel.on_postgres_changes("INSERT", schema="public", table="messages", callback=lambda p: got.put_nowait(p))
    await channel.subscribe(on_status)
    await asyncio.wait_for(subscribed.wait(), 20)

    # another user's insert into their own conversation: RLS keeps it from us
    theirs = stranger.client.table("conversations").insert({"title": "theirs"}).execute().data[0]
    stranger.client.table("messages").insert({"conversation_id": theirs["id"], "role": "user", "content": "secret"}).execute()

    conv = (await sb.table("conversations").insert({"title": "rt"}).execute()).data[0]
    await sb.table("messages").insert({"conversation_id": conv["id"], "role": "user", "content": "over the wire"}).execute()

    payload = await asyncio.wait_for(got.get(), 20)
    data = payload["data"]
    assert data["type"] == "INSERT"
    assert data["table"] == "messages"
    assert data["record"]["content"] == "over the wire"
    assert data["record"]["user_id"] == u.id
    await asyncio.sleep(0.5)
    assert got.empty(), "another user's row must not be delivered"
    await sb.remove_channel(channel)
    await sb.realtime.close()

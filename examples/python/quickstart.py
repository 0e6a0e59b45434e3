"""oxibase with the `supabase` Python client, the way you would use Supabase: sign up, write
and read rows under RLS, upload a file, subscribe to changes, call a function.

    oxibase &                                  # in another terminal
    pip install -r requirements.txt && python quickstart.py

SUPABASE_URL / SUPABASE_ANON_KEY default to the local ones (`oxibase keys` prints them).
"""

import asyncio
import json
import os
import sys
import time

from supabase import AsyncClientOptions, acreate_client

URL = os.environ.get("SUPABASE_URL", "http://127.0.0.1:54321")
ANON_KEY = os.environ.get(
    "SUPABASE_ANON_KEY",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0",
)
OPTIONS = AsyncClientOptions(persist_session=False, auto_refresh_token=False)


def step(what: str, detail: str = "") -> None:
    print(f"ok  {what}{': ' + detail if detail else ''}", flush=True)


def check(ok: bool, what: str, detail: object = "") -> None:
    if not ok:
        print(f"FAIL {what}: {detail}", file=sys.stderr)
        sys.exit(1)


async def main() -> None:
    supabase = await acreate_client(URL, ANON_KEY, OPTIONS)

    # 1. Sign up (confirmed at once locally, as with `supabase start`).
    email = f"quickstart-py-{int(time.time() * 1000)}@example.com"
    auth = await supabase.auth.sign_up({"email": email, "password": "quickstart-pw-1"})
    check(auth.session is not None, "sign up", "no session")
    user_id = auth.user.id
    step("signed up", email)

    # 2. Insert and read a conversation: RLS lets its owner see it, nobody else.
    conv = (await supabase.table("conversations").insert({"title": "Hello from Python"}).execute()).data[0]
    mine = (await supabase.table("conversations").select("id, title").execute()).data
    check(any(c["id"] == conv["id"] for c in mine), "read", "own conversation missing")
    stranger = await acreate_client(URL, ANON_KEY, OPTIONS)
    theirs = (await stranger.table("conversations").select("id").eq("id", conv["id"]).execute()).data
    check(theirs == [], "RLS", "a signed-out client read the row")
    step("inserted and read a conversation", f"{len(mine)} visible to its owner, 0 to anyone else")

    # 3. Subscribe to new messages of that conversation, then write one.
    got: asyncio.Queue = asyncio.Queue()
    subscribed = asyncio.Event()
    channel = supabase.channel("quickstart")
    channel.on_postgres_changes(
        "INSERT",
        schema="public",
        table="messages",
        filter=f"conversation_id=eq.{conv['id']}",
        callback=lambda payload: got.put_nowait(payload),
    )
    await channel.subscribe(lambda status, err: str(status).endswith("SUBSCRIBED") and subscribed.set())
    await asyncio.wait_for(subscribed.wait(), 20)
    await supabase.table("messages").insert(
        {"conversation_id": conv["id"], "role": "user", "content": "Hi there!"}
    ).execute()
    payload = await asyncio.wait_for(got.get(), 20)
    record = payload["data"]["record"]
    check(record["content"] == "Hi there!", "realtime", payload)
    await supabase.remove_channel(channel)
    step("realtime delivered the new message", repr(record["content"]))

    # 4. Upload into your own folder of the private chat-files bucket and read it back.
    path = f"{user_id}/hello.txt"
    await supabase.storage.from_("chat-files").upload(path, b"Hello, storage!", {"content-type": "text/plain"})
    text = (await supabase.storage.from_("chat-files").download(path)).decode()
    check(text == "Hello, storage!", "download", text)
    step("uploaded and read back", path)

    # 5. Call a function: code-execution runs Python in oxibase's sandbox.
    run = await supabase.functions.invoke(
        "code-execution", {"body": {"language": "python", "code": "print(sum(range(10)))"}}
    )
    result = json.loads(run)
    check(result["stdout"].strip() == "45", "function", result)
    step("code-execution ran Python", f"stdout {result['stdout'].strip()} in {result['duration_ms']} ms")

    await supabase.realtime.close()
    await supabase.auth.sign_out()
    print("All done.")


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(), 60))

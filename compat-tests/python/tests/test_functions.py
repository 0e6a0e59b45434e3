"""The four built-in functions through supabase-py's functions client (and a WebSocket for
websocket-handler): chat-completion against the fake OpenAI provider, code-execution,
websocket-handler, file-upload. Errors come back as FunctionsHttpError with the spec's body."""

import json
import uuid

import httpx
import pytest
import websockets
from conftest import ANON_KEY, FakeOpenAI, PROVIDER_KEY, new_client
from supabase_functions.errors import FunctionsHttpError


def invoke_json(u, name, body=None, method="POST", headers=None):
    opts = {"method": method, "responseType": "json", "headers": headers or {}}
    if body is not None:
        opts["body"] = body
    return u.client.functions.invoke(name, opts)


def test_chat_completion_stores_the_answer_as_the_caller(server, user, other):
    out = invoke_json(
        user,
        "chat-completion",
        {"provider": "openai", "model": "gpt-4o-mini", "system": "Be brief.", "messages": [{"role": "user", "content": "Hello from Python"}]},
    )
    assert set(out) == {"conversation_id", "message", "usage"}
    assert out["message"]["role"] == "assistant"
    assert out["message"]["content"] == "Hello from the fake."
    assert out["usage"]["total_tokens"] == 15
    sent = FakeOpenAI.seen[-1]
    assert sent["auth"] == f"Bearer {PROVIDER_KEY}"
    assert sent["body"]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["body"]["messages"][-1] == {"role": "user", "content": "Hello from Python"}

    stored = user.client.table("messages").select("role, content").eq("conversation_id", out["conversation_id"]).order("created_at").execute().data
    assert [m["role"] for m in stored] == ["user", "assistant"]
    usage = user.client.table("api_usage").select("provider, model, total_tokens").execute().data
    assert {"provider": "openai", "model": "gpt-4o-mini", "total_tokens": 15} in usage
    assert other.client.table("messages").select("id").eq("conversation_id", out["conversation_id"]).execute().data == []

    with pytest.raises(FunctionsHttpError) as e:
        invoke_json(user, "chat-completion", {"provider": "nope", "model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert e.value.status == 400
    with pytest.raises(FunctionsHttpError) as e:
        new_client(server).functions.invoke("chat-completion", {"body": {}})
    assert e.value.status == 401


def test_code_execution_runs_python_and_records_it(user):
    out = invoke_json(user, "code-execution", {"language": "python", "code": "import sys\nprint(sum(range(10)))\nprint('err', file=sys.stderr)"})
    assert out["status"] == "success", out
    assert out["stdout"] == "45\n"
    assert "err" in out["stderr"]
    failed = invoke_json(user, "code-execution", {"language": "javascript", "code": "throw new Error('boom')"})
    assert failed["status"] == "error" and "boom" in failed["stderr"]
    rows = user.client.table("code_executions").select("id, language, status").execute().data
    assert {(r["id"], r["language"], r["status"]) for r in rows} >= {(out["id"], "python", "success"), (failed["id"], "javascript", "error")}
    with pytest.raises(FunctionsHttpError) as e:
        invoke_json(user, "code-execution", {"language": "cobol", "code": "x"})
    assert e.value.status == 400


def multipart(fields, name, ctype, content):
    boundary = f"pyb{uuid.uuid4().hex}"
    parts = [f'--{boundary}\r\ncontent-disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\ncontent-disposition: form-data; name="file"; filename="{name}"\r\ncontent-type: {ctype}\r\n\r\n'.encode() + content + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_file_upload_stores_lists_and_deletes(user, other):
    conv = user.client.table("conversations").insert({"title": "files"}).execute().data[0]
    text = "# Hello\n\nfrom supabase-py \u00e9\n".encode()
    body, ctype = multipart({"conversation_id": conv["id"]}, "hello world.md", "text/markdown", text)
    up = invoke_json(user, "file-upload", body, headers={"content-type": ctype})
    assert up["bucket"] == "chat-files" and up["name"] == "hello world.md"
    assert up["size_bytes"] == len(text) and up["conversation_id"] == conv["id"]
    assert up["path"].startswith(f"{user.id}/")
    assert httpx.get(up["signed_url"]).content == text
    assert user.client.storage.from_("chat-files").download(up["path"]) == text

    listed = invoke_json(user, f"file-upload?conversation_id={conv['id']}", method="GET")
    assert [f["id"] for f in (listed if isinstance(listed, list) else listed.get("files", listed))] == [up["id"]] or up["id"] in json.dumps(listed)
    with pytest.raises(FunctionsHttpError) as e:
        invoke_json(other, f"file-upload?id={up['id']}", method="DELETE")
    assert e.value.status == 404
    invoke_json(user, f"file-upload?id={up['id']}", method="DELETE")
    assert user.client.table("file_uploads").select("id").eq("id", up["id"]).execute().data == []

    bad, bad_type = multipart({}, "photo.png", "image/png", b"not an image")
    with pytest.raises(FunctionsHttpError) as e:
        invoke_json(user, "file-upload", bad, headers={"content-type": bad_type})
    assert e.value.status in (400, 415)


async def test_websocket_handler_joins_and_relays_messages(server, user):
    conv = user.client.table("conversations").insert({"title": "ws"}).execute().data[0]
    url = server.replace("http", "ws", 1) + f"/functions/v1/websocket-handler?token={user.token}&apikey={ANON_KEY}"
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await ws.recv())["type"] == "pong"
        await ws.send(json.dumps({"type": "join", "conversation_id": conv["id"]}))
        joined = await next_of(ws, "joined")
        assert joined["conversation_id"] == conv["id"]
        await ws.send(json.dumps({"type": "message", "conversation_id": conv["id"], "content": "via socket"}))
        relayed = await next_of(ws, "message")
        assert relayed["message"]["content"] == "via socket"
        assert relayed["message"]["user_id"] == user.id
    stored = user.client.table("messages").select("content").eq("conversation_id", conv["id"]).execute().data
    assert [m["content"] for m in stored] == ["via socket"]

    # a plain invoke (no upgrade) is told to upgrade
    with pytest.raises(FunctionsHttpError) as e:
        user.client.functions.invoke("websocket-handler", {"method": "GET"})
    assert e.value.status == 426


async def next_of(ws, kind, limit=20):
    for _ in range(limit):
        msg = json.loads(await ws.recv())
        if msg["type"] == kind:
            return msg
    raise AssertionError(f"no {kind} frame")

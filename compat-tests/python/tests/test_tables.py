"""The eight seed tables under RLS through supabase-py's PostgREST client: each user reaches
only their own rows, cannot attach rows to another's conversation, and cannot write what
only the server writes."""

import uuid

import pytest
from postgrest.exceptions import APIError


def conversation(u, title="py"):
    return u.client.table("conversations").insert({"title": title, "provider": "openai", "model": "gpt-4o-mini"}).execute().data[0]


def test_conversations_and_messages_are_private(user, other):
    conv = conversation(user)
    assert conv["user_id"] == user.id
    msg = user.client.table("messages").insert({"conversation_id": conv["id"], "role": "user", "content": "hi"}).execute().data[0]
    assert msg["user_id"] == user.id

    assert other.client.table("conversations").select("*").eq("id", conv["id"]).execute().data == []
    assert other.client.table("messages").select("*").eq("conversation_id", conv["id"]).execute().data == []
    # a message into someone else's conversation is refused by the policy
    with pytest.raises(APIError) as e:
        other.client.table("messages").insert({"conversation_id": conv["id"], "role": "user", "content": "x"}).execute()
    assert e.value.code == "42501"
    # updates and deletes of another's rows touch nothing
    assert other.client.table("conversations").update({"title": "mine now"}).eq("id", conv["id"]).execute().data == []
    assert other.client.table("conversations").delete().eq("id", conv["id"]).execute().data == []
    assert user.client.table("conversations").select("title").eq("id", conv["id"]).single().execute().data["title"] == "py"

    # the owner's ordered read, with an embedded resource and an exact count
    user.client.table("messages").insert({"conversation_id": conv["id"], "role": "assistant", "content": "hello"}).execute()
    res = (
        user.client.table("conversations")
        .select("id, messages!messages_conversation_id_fkey(role, content)", count="exact")
        .eq("id", conv["id"])
        .order("created_at", desc=True, foreign_table="messages")
        .execute()
    )
    assert res.count == 1
    assert sorted(m["role"] for m in res.data[0]["messages"]) == ["assistant", "user"]


def test_code_executions_file_uploads_and_visualizations(user, other):
    conv = conversation(user)
    ce = user.client.table("code_executions").insert(
        {"conversation_id": conv["id"], "language": "python", "code": "print(1)", "stdout": "1\n", "status": "success", "exit_code": 0}
    ).execute().data[0]
    fu = user.client.table("file_uploads").insert(
        {"conversation_id": conv["id"], "bucket": "chat-files", "path": f"{user.id}/a.txt", "name": "a.txt", "mime_type": "text/plain", "size_bytes": 1}
    ).execute().data[0]
    vis = user.client.table("visualizations").insert(
        {"conversation_id": conv["id"], "title": "chart", "chart_type": "bar", "config": {"x": "a"}, "data": [1, 2]}
    ).execute().data[0]
    user.client.table("visualizations").update({"title": "chart 2"}).eq("id", vis["id"]).execute()

    for table, row in (("code_executions", ce), ("file_uploads", fu), ("visualizations", vis)):
        assert [r["id"] for r in user.client.table(table).select("id").eq("id", row["id"]).execute().data] == [row["id"]]
        assert other.client.table(table).select("id").eq("id", row["id"]).execute().data == []

    # a file row outside the caller's folder, or pointing at another's conversation: refused
    with pytest.raises(APIError):
        user.client.table("file_uploads").insert(
            {"bucket": "chat-files", "path": f"{other.id}/x.txt", "name": "x.txt", "mime_type": "text/plain", "size_bytes": 1}
        ).execute()
    with pytest.raises(APIError):
        other.client.table("visualizations").insert(
            {"conversation_id": conv["id"], "title": "t", "chart_type": "bar", "config": {}}
        ).execute()


def test_server_written_tables_are_read_only(user):
    assert user.client.table("user_sessions").select("*").execute().data == []
    assert user.client.table("api_usage").select("*").execute().data == []
    with pytest.raises(APIError):
        user.client.table("api_usage").insert({"user_id": user.id, "endpoint": "x", "provider": "openai", "model": "m"}).execute()
    with pytest.raises(APIError):
        user.client.table("user_sessions").insert({"user_id": user.id, "status": "online"}).execute()


def test_rpc_less_filters_and_upsert(user):
    conv = conversation(user, "filters")
    ids = [str(uuid.uuid4()) for _ in range(3)]
    rows = [{"id": i, "conversation_id": conv["id"], "role": "user", "content": f"m{n}"} for n, i in enumerate(ids)]
    user.client.table("messages").insert(rows).execute()
    got = user.client.table("messages").select("content").in_("id", ids[:2]).order("content").execute().data
    assert [r["content"] for r in got] == ["m0", "m1"]
    user.client.table("messages").upsert({"id": ids[2], "conversation_id": conv["id"], "role": "user", "content": "changed"}).execute()
    assert user.client.table("messages").select("content").eq("id", ids[2]).single().execute().data["content"] == "changed"
    assert user.client.table("messages").select("id").ilike("content", "M%").execute().data != []


def test_json_values_are_coerced_by_postgres_as_postgrest_does(user):
    # PostgREST hands the body to json_to_recordset: PostgreSQL casts "12" to int and "true"
    # to boolean, and refuses what it cannot cast (22P02, a 400).
    conv = user.client.table("conversations").insert({"title": "coerce", "archived": "true"}).execute().data[0]
    assert conv["archived"] is True
    row = user.client.table("messages").insert(
        {"conversation_id": conv["id"], "role": "user", "content": "n", "tokens_used": "12"}
    ).execute().data[0]
    assert row["tokens_used"] == 12
    with pytest.raises(APIError) as e:
        user.client.table("messages").insert(
            {"conversation_id": conv["id"], "role": "user", "content": "n", "tokens_used": "twelve"}
        ).execute()
    assert e.value.code == "22P02"
    # query values are text to PostgreSQL too: eq.12 on an int column, is.true on a boolean
    got = user.client.table("messages").select("tokens_used").eq("tokens_used", "12").execute().data
    assert got == [{"tokens_used": 12}]
    assert len(user.client.table("conversations").select("id").is_("archived", "true").execute().data) == 1

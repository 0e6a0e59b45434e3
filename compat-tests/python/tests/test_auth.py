"""Auth through supabase-py's sync client: sign-up (autoconfirm), sign-in with a password, the
user, metadata updates, a refreshed session, a wrong password, sign-out, and the admin API."""

import pytest
from conftest import SERVICE_KEY, new_client, sign_up
from supabase_auth.errors import AuthApiError


def test_sign_up_sign_in_update_refresh_sign_out(server):
    u = sign_up(server, "auth")
    sb = new_client(server)
    res = sb.auth.sign_in_with_password({"email": u.email, "password": u.password})
    assert res.user.id == u.id
    assert res.session.token_type == "bearer"
    assert sb.auth.get_user().user.email == u.email

    updated = sb.auth.update_user({"data": {"full_name": "Py Thon"}})
    assert updated.user.user_metadata["full_name"] == "Py Thon"

    refreshed = sb.auth.refresh_session()
    assert refreshed.session.access_token
    assert refreshed.session.refresh_token != res.session.refresh_token

    sb.auth.sign_out()
    with pytest.raises(AuthApiError) as e:
        new_client(server).auth.sign_in_with_password({"email": u.email, "password": "wrong-password"})
    assert e.value.status == 400
    assert e.value.code == "invalid_credentials"


def test_the_profile_row_is_created_on_sign_up_and_owned(server, user, other):
    mine = user.client.table("profiles").select("*").execute().data
    assert [p["id"] for p in mine] == [user.id]
    user.client.table("profiles").update({"full_name": "Me"}).eq("id", user.id).execute()
    # another user's profile cannot be changed: RLS filters the row out
    other.client.table("profiles").update({"full_name": "Hijack"}).eq("id", user.id).execute()
    again = user.client.table("profiles").select("full_name").eq("id", user.id).single().execute()
    assert again.data["full_name"] == "Me"


def test_admin_api_with_the_service_key(server, user):
    admin = new_client(server, SERVICE_KEY).auth.admin
    got = admin.get_user_by_id(user.id)
    assert got.user.email == user.email
    created = admin.create_user({"email": f"admin-made-{user.id[:8]}@example.com", "password": "hunter22-py", "email_confirm": True})
    assert created.user.email_confirmed_at is not None
    admin.delete_user(created.user.id)
    with pytest.raises(AuthApiError) as e:
        admin.get_user_by_id(created.user.id)
    assert e.value.status == 404

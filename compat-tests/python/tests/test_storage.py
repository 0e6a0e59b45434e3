"""Storage through storage3 (supabase-py): the private chat-files bucket with its per-user
folders and signed URLs (storage3 sends expiresIn as a string), and the public avatars bucket
(images only, public URLs)."""

import httpx
import pytest
from storage3.exceptions import StorageApiError

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f01f00050001ff89993d1d0000000049454e44ae426082"
)


def test_chat_files_are_private_to_their_folder(user, other):
    files = user.client.storage.from_("chat-files")
    key = f"{user.id}/notes/hello.txt"
    files.upload(key, b"hello from python", {"content-type": "text/plain"})
    assert files.download(key) == b"hello from python"
    listed = files.list(f"{user.id}/notes")
    assert [o["name"] for o in listed] == ["hello.txt"]

    signed = files.create_signed_url(key, 60)
    got = httpx.get(signed["signedURL"])
    assert got.status_code == 200 and got.content == b"hello from python"
    many = files.create_signed_urls([key], 60)
    assert httpx.get(many[0]["signedURL"]).content == b"hello from python"
    named = files.create_signed_url(key, 60, {"download": "my notes.txt"})
    got = httpx.get(named["signedURL"])
    assert got.headers["content-disposition"] == "attachment; filename=my%20notes.txt; filename*=UTF-8''my%20notes.txt"

    theirs = other.client.storage.from_("chat-files")
    with pytest.raises(StorageApiError):
        theirs.download(key)
    with pytest.raises(StorageApiError):
        theirs.create_signed_url(key, 60)
    with pytest.raises(StorageApiError):
        theirs.upload(f"{user.id}/intruder.txt", b"x", {"content-type": "text/plain"})
    assert theirs.list(f"{user.id}/notes") == []

    files.update(key, b"second version", {"content-type": "text/plain"})
    assert files.download(key) == b"second version"
    files.move(key, f"{user.id}/moved.txt")
    assert files.download(f"{user.id}/moved.txt") == b"second version"
    files.remove([f"{user.id}/moved.txt"])
    with pytest.raises(StorageApiError):
        files.download(f"{user.id}/moved.txt")


def test_avatars_are_public_images(user, other):
    avatars = user.client.storage.from_("avatars")
    key = f"{user.id}/avatar.png"
    avatars.upload(key, PNG, {"content-type": "image/png", "upsert": "true"})
    url = avatars.get_public_url(key)
    got = httpx.get(url)
    assert got.status_code == 200 and got.content == PNG
    assert got.headers["content-type"] == "image/png"

    with pytest.raises(StorageApiError) as e:
        avatars.upload(f"{user.id}/bio.txt", b"not an image", {"content-type": "text/plain"})
    assert e.value.status in (400, 415, "415", "400")
    with pytest.raises(StorageApiError):
        other.client.storage.from_("avatars").upload(key, PNG, {"content-type": "image/png", "upsert": "true"})


def test_the_seed_buckets_and_their_rules(service):
    buckets = {b.name: b for b in service.storage.list_buckets()}
    assert buckets["chat-files"].public is False
    assert buckets["chat-files"].file_size_limit == 10 * 1024 * 1024
    assert buckets["avatars"].public is True
    assert buckets["avatars"].file_size_limit == 2 * 1024 * 1024

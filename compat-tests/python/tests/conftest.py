"""The harness: one oxibase (the built binary, free ports, a temp data dir, its OpenAI base URL
pointing at the fake provider below) for the whole session, and signed-in supabase-py
clients. Nothing is mocked between the client and the server."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from supabase import AsyncClientOptions, Client, ClientOptions, create_client

# The Supabase CLI's well-known demo keys (oxibase's defaults).
ANON_KEY = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9"
    ".CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0"
)
SERVICE_KEY = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6InNlcnZpY2Vfcm9sZSIsImV4cCI6MTk4MzgxMjk5Nn0"
    ".EGIM96RAZx35lJzdJsyH-qQwv8Hdp7fsn3W0YpN81IU"
)
PROVIDER_KEY = "sk-py-compat-server-key-0123456789"
ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeOpenAI(BaseHTTPRequestHandler):
    """OpenAI's chat-completions wire format, whole answers only; records each request."""

    seen: list = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"null")
        FakeOpenAI.seen.append({"path": self.path, "auth": self.headers.get("authorization"), "body": body})
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        out = json.dumps(
            {
                "id": "chatcmpl-py",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "Hello from the fake."}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def binary() -> str:
    if os.environ.get("OXIBASE_BIN"):
        return os.environ["OXIBASE_BIN"]
    for profile in ("debug", "release"):
        p = ROOT / "target" / profile / "oxibase"
        if p.exists():
            return str(p)
    raise RuntimeError("oxibase binary not found: run `cargo build` first or set OXIBASE_BIN")


@pytest.fixture(scope="session")
def fake_openai():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


@pytest.fixture(scope="session")
def server(fake_openai):
    data = tempfile.mkdtemp(prefix="oxibase-py-compat-")
    os.chmod(data, 0o755)  # the embedded PostgreSQL runs as `postgres` when we are root
    port, db_port = free_port(), free_port()
    cfg = Path(data) / "test.toml"
    cfg.write_text(
        'db_fsync = false\nlog = "info"\n[auth.rate_limit]\nsign_in_sign_ups = 100000\n'
        "token_verifications = 100000\ntoken_refresh = 100000\nanonymous_users = 100000\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OXIBASE_")}
    env.update(
        OXIBASE_PORT=str(port),
        OXIBASE_DB_PORT=str(db_port),
        OXIBASE_DATA_DIR=data,
        OPENAI_BASE_URL=f"http://127.0.0.1:{fake_openai}/v1",
        OPENAI_API_KEY=PROVIDER_KEY,
        ANTHROPIC_API_KEY="",
        MISTRAL_API_KEY="",
    )
    log = open(Path(data) / "server.log", "wb")
    proc = subprocess.Popen([binary(), "serve", "--config", str(cfg)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"oxibase exited early:\n{Path(data, 'server.log').read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            proc.kill()
            raise RuntimeError("oxibase not healthy after 90 s")
        time.sleep(0.1)
    yield url
    proc.terminate()
    try:
        code = proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    log.close()
    shutil.rmtree(data, ignore_errors=True)
    assert code == 0, f"oxibase exited with {code} on SIGTERM"


OPTS = ClientOptions(auto_refresh_token=False, persist_session=False)


def new_client(url: str, key: str = ANON_KEY) -> Client:
    return create_client(url, key, OPTS)


class User:
    def __init__(self, client: Client, uid: str, email: str, password: str, token: str):
        self.client, self.id, self.email, self.password, self.token = client, uid, email, password, token


def sign_up(url: str, prefix: str = "py") -> User:
    sb = new_client(url)
    email = f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"
    password = "hunter22-py"
    res = sb.auth.sign_up({"email": email, "password": password})
    assert res.user is not None and res.session is not None
    return User(sb, res.user.id, email, password, res.session.access_token)


@pytest.fixture
def user(server) -> User:
    return sign_up(server)


@pytest.fixture
def other(server) -> User:
    return sign_up(server, "other")


@pytest.fixture
def service(server) -> Client:
    return new_client(server, SERVICE_KEY)


OPTS_ASYNC = AsyncClientOptions(auto_refresh_token=False, persist_session=False)

"""A small path-rewriting HTTP proxy for the official supabase-py suites.

Some suites talk to a standalone service at the root path on its own port (GoTrue at
http://localhost:9999/signup, PostgREST at http://127.0.0.1:3000/countries). oxibase serves
those under /auth/v1 and /rest/v1 on one port, so this proxy listens on the suite's port and
forwards every request to oxibase with a path prefix added. It handles one request per
client connection (it asks for `Connection: close` upstream), keeps WebSocket upgrades, and
can add a default header when the client sent none (PostgREST's `PGRST_DB_ANON_ROLE`).

    python proxy.py LISTEN_PORT UPSTREAM_PORT PREFIX [HEADER:VALUE-if-absent ...]

Standard library only.
"""

import asyncio
import sys

HEAD_LIMIT = 64 * 1024


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, RuntimeError):
            pass


def rewrite_head(head: bytes, prefix: str, defaults: list) -> bytes:
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    if target.startswith("/"):
        target = prefix.rstrip("/") + target
    out = [f"{method} {target} {version}"]
    present = set()
    upgrade = False
    for line in lines[1:]:
        if not line:
            continue
        name = line.split(":", 1)[0].strip().lower()
        present.add(name)
        if name == "upgrade":
            upgrade = True
        out.append(line)
    if not upgrade:
        out = [l for l in out if not l.lower().startswith(("connection:", "keep-alive:"))]
        out.append("Connection: close")
    for name, value in defaults:
        if name.lower() not in present:
            out.append(f"{name}: {value}")
    return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")


async def handle(reader, writer, upstream_port: int, prefix: str, defaults: list) -> None:
    up_writer = None
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > HEAD_LIMIT:
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        up_writer.write(rewrite_head(head[:-4], prefix, defaults))
        await up_writer.drain()
        upload = asyncio.ensure_future(pipe(reader, up_writer))
        await pipe(up_reader, writer)  # the response ends when oxibase closes
        upload.cancel()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError, ValueError):
        pass
    finally:
        for w in (writer, up_writer):
            if w is not None:
                w.close()


async def main() -> None:
    listen_port, upstream_port, prefix = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    defaults = [tuple(s.split(":", 1)) for s in sys.argv[4:]]

    async def on_client(r, w):
        await handle(r, w, upstream_port, prefix, defaults)

    servers = []
    for host in ("127.0.0.1", "::1"):
        try:
            servers.append(await asyncio.start_server(on_client, host, listen_port))
        except OSError as e:
            if host == "127.0.0.1":
                raise
            print(f"proxy: no {host}:{listen_port} ({e})", file=sys.stderr)
    print(f"proxy :{listen_port} -> 127.0.0.1:{upstream_port}{prefix}", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main())

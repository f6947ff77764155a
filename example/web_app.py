"""Cloud Run Sandbox: serve a small web app from a sandbox, and open it through its link.

    pip install clients/python/
    python example/web_app.py [url] [--keep]

The url defaults to $SANDBOX_URL, then ws://127.0.0.1:8080. The sandbox has no network: the
server relays the link to 127.0.0.1:8000 inside it (docs/protocol.md, "Ports"). The app is a
page plus a JSON endpoint and a server-sent-events stream, written with the standard library
only. With --keep the sandbox stays until Enter is pressed, so the link can be opened in a
browser.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.request

from codesandbox import Sandbox

APP = r'''
import http.server, json, time

PAGE = b"""<!doctype html><title>From a sandbox</title>
<h1>Hello from a sandbox</h1><p id=count>...</p>
<script>
// Relative URLs: they work under the path form's prefix (/ports/<capability>/) and the host form.
fetch("api/hello").then(r => r.json()).then(j => document.body.append(j.message));
const events = new EventSource("events");
events.onmessage = (e) => { document.getElementById("count").textContent = e.data; };
</script>"""

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/api/hello":
            body = json.dumps({"message": "served from 127.0.0.1:8000 inside the sandbox",
                               "prefix": self.headers.get("X-Forwarded-Prefix")}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/events":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            for n in range(1, 6):
                self.wfile.write(f"data: tick {n}\n\n".encode())
                self.wfile.flush()
                time.sleep(1)
            self.close_connection = True
        else:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(PAGE)))
            self.end_headers()
            self.wfile.write(PAGE)

http.server.ThreadingHTTPServer(("127.0.0.1", 8000), Handler).serve_forever()
'''

# Start the app in the background and wait until it listens (read from the TCP table: a
# probe connection would linger in TIME_WAIT, which runsc cannot checkpoint).
START = f"""
cat > /root/app.py <<'PYEOF'
{APP}
PYEOF
nohup python3 /root/app.py >/tmp/app.log 2>&1 &
for i in $(seq 200); do grep -q ':1F40 00000000:0000 0A' /proc/net/tcp && exit 0; sleep 0.1; done
cat /tmp/app.log; exit 1
"""


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        body: bytes = response.read()
        return body


async def main(url: str, keep: bool) -> None:
    sandbox = await Sandbox.create(url)
    try:
        started = await sandbox.run(START, "bash")
        if started.exit_code != 0:
            raise SystemExit(f"the app did not start: {started.stdout}{started.stderr}")
        link = await sandbox.expose(8000)
        print(f"the app is at {link}")
        hello = json.loads(await asyncio.to_thread(get, link + "api/hello"))
        print(f"api/hello says: {hello['message']} (prefix {hello['prefix']})")
        page = await asyncio.to_thread(get, link)
        print(f"the page is {len(page)} bytes; sandbox.ports = {sandbox.ports}")
        if keep:
            await asyncio.to_thread(input, "open the link in a browser; press Enter to end ")
        await sandbox.unexpose(8000)
    finally:
        await sandbox.terminate()


if __name__ == "__main__":
    args = [arg for arg in sys.argv[1:] if arg != "--keep"]
    target = args[0] if args else os.environ.get("SANDBOX_URL", "ws://127.0.0.1:8080")
    asyncio.run(main(target, "--keep" in sys.argv[1:]))

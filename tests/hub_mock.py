"""A local stand-in for the Hugging Face hub API: enough of it for HfApi.create_repo + upload_folder (small files
go inline in the commit). Records every request and the files of every commit."""
import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HubMock:
    def __init__(self):
        self.requests, self.repos, self.files = [], [], {}
        mock = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                mock.requests.append(("GET", self.path))
                self._send(200, {})

            def do_HEAD(self):
                mock.requests.append(("HEAD", self.path))
                self.send_response(200)
                self.end_headers()

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                mock.requests.append(("POST", self.path))
                if self.path == "/api/repos/create":
                    body = json.loads(raw)
                    name = f"{body.get('organization') or 'user'}/{body['name']}"
                    mock.repos.append((body.get("type", "model"), name))
                    return self._send(200, {"url": f"{mock.url}/{name}", "name": name})
                if self.path == "/api/validate-yaml":
                    return self._send(200, {"errors": [], "warnings": []})
                if "/preupload/" in self.path:
                    files = json.loads(raw)["files"]
                    return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False} for f in files]})
                if "/commit/" in self.path:
                    repo = self.path.split("/api/")[1].split("/commit/")[0].split("/", 1)[1]
                    for line in raw.decode().splitlines():
                        op = json.loads(line)
                        if op.get("key") == "file":
                            v = op["value"]
                            mock.files.setdefault(repo, {})[v["path"]] = base64.b64decode(v["content"])
                    return self._send(200, {"commitUrl": f"{mock.url}/{repo}/commit/abc", "commitOid": "a" * 40,
                                            "pullRequestUrl": None})
                self._send(404, {"error": f"mock: no route {self.path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()

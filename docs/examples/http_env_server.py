"""A toy environment server for task.env.kind = "http" (protocol: tasks/http_env.py): guess the number.

Usage: python docs/examples/http_env_server.py 8000   # then [task.env] kind = "http", call_end = "=",
       http_url = "http://127.0.0.1:8000"; each turn is a guess like `42=`, answered `+` (higher) or `-` (lower).
"""

import json
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

episodes, lock = {}, threading.Lock()  # episode_id -> secret number


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(min(int(self.headers.get("Content-Length", 0)), 1 << 20)))
        with lock:
            if self.path == "/reset":
                answer = {"episode_id": uuid.uuid4().hex, "observation": "0-99"}
                episodes[answer["episode_id"]] = body["problem_id"] * 37 % 100
            elif self.path == "/step" and body["episode_id"] in episodes:
                digits = "".join(c for c in body["action"] if c.isdigit())[:9]
                guess, secret = int(digits or -1), episodes[body["episode_id"]]
                hint = "=" if guess == secret else "+" if guess < secret else "-"
                answer = {"observation": hint, "reward": float(guess == secret), "done": guess == secret}
            elif self.path == "/close":
                episodes.pop(body.get("episode_id"), None)
                answer = {}
            else:
                return self.send_error(404)
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 8000), Handler).serve_forever()

"""Serve a built guide on 127.0.0.1 for the browser check (checks/test_guide.py).

    python scripts/docs/probe_server.py SITE_DIR [--probe]

Prints "PORT <n>" once it listens (it picks a free port itself), then one
line per request: "<status> <path>". With --probe, every HTML page gets a
small script first in <head> that reports what a headless browser cannot
otherwise show in its DOM dump: mkdocs-material draws each mermaid diagram
inside a *closed* shadow root, so the script wraps attachShadow to keep a
handle on those roots, counts the SVGs drawn in them, collects JavaScript
errors, and writes the result as JSON into <html data-guide-probe="...">.
"""

from __future__ import annotations

import functools
import http.server
import io
import sys

PROBE = b"""<script>(function () {
  var roots = [], errors = [];
  var attach = Element.prototype.attachShadow;
  Element.prototype.attachShadow = function (init) {
    var root = attach.call(this, init);
    roots.push([this, root]);
    return root;
  };
  window.addEventListener("error", function (e) { errors.push(String(e.message)); });
  window.addEventListener("unhandledrejection", function (e) { errors.push("unhandled: " + String(e.reason)); });
  function report() {
    var drawn = 0, broken = 0;
    roots.forEach(function (pair) {
      if (!pair[0].classList.contains("mermaid")) return;
      var svg = pair[1].querySelector("svg");
      var text = pair[1].textContent || "";
      if (svg && svg.querySelector("g") && !/Syntax error|Parse error/i.test(text)) drawn++;
      else broken++;
    });
    document.documentElement.setAttribute("data-guide-probe", JSON.stringify({
      drawn: drawn, broken: broken, undrawn: document.querySelectorAll("pre.mermaid").length,
      errors: errors, title: document.title
    }));
  }
  setInterval(report, 100);
  window.addEventListener("load", report);
})();</script>"""


class Handler(http.server.SimpleHTTPRequestHandler):
    probe = False

    def send_head(self):
        path = self.translate_path(self.path)
        if self.probe and (path.endswith(".html") or path.endswith("/")):
            try:
                target = path if path.endswith(".html") else path + "index.html"
                with open(target, "rb") as f:
                    body = f.read().replace(b"<head>", b"<head>" + PROBE, 1)
            except OSError:
                return super().send_head()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return io.BytesIO(body)
        return super().send_head()

    def log_request(self, code="-", size="-"):
        code = int(code) if str(code).isdigit() or hasattr(code, "value") else code
        print(f"{code} {self.path}", flush=True)

    def log_message(self, format, *args):
        pass  # only the one line per request above


def main(argv: list[str]) -> int:
    site = argv[0]
    Handler.probe = "--probe" in argv
    handler = functools.partial(Handler, directory=site)
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        print(f"PORT {server.server_address[1]}", flush=True)
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

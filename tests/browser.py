"""Headless Chromium for tests: open a local HTML file with the network off, take a screenshot,
dump the DOM after the page's scripts ran.

"Network off" is a recording proxy: Chromium sends every http(s) request (and every https
CONNECT) to a tiny HTTP server on 127.0.0.1 that notes it and answers 502, so a test can assert
that a page asked for nothing. `--proxy-bypass-list=<-loopback>` sends even localhost requests
there. file:// loads never touch a proxy, so the page itself loads normally."""
from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import subprocess
import tempfile
import threading
from typing import Iterator, List, Optional, Sequence

CANDIDATES = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome",
              "headless_shell")
WINDOW = (1280, 2000)
TIMEOUT_S = 90


def find_chromium() -> Optional[str]:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class RecordingProxy:
    """A proxy that forwards nothing: `requests` lists "METHOD target" of all it received."""

    def __init__(self):
        self.requests: List[str] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self):
                proxy.requests.append(f"{self.command} {self.path}")
                self.send_error(502, "network is off in this test")

            do_GET = do_POST = do_HEAD = do_PUT = do_OPTIONS = do_CONNECT = _record

            def log_message(self, *args):   # quiet test output
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "RecordingProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def _profile() -> Iterator[str]:
    """A fresh user-data dir: tests running in parallel must not share a Chromium profile."""
    folder = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_chromium(binary: str, html_path: str, proxy: RecordingProxy, flags: Sequence[str],
                 virtual_time_ms: int = 3000) -> subprocess.CompletedProcess:
    """One headless load of `html_path` (file://) through `proxy`; `flags`: --screenshot=...
    or --dump-dom. The virtual time budget lets the page's scripts run before either."""
    with _profile() as profile:
        command = [binary, "--no-sandbox", "--disable-gpu", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update",
                   f"--user-data-dir={profile}",
                   f"--proxy-server=http://127.0.0.1:{proxy.port}",
                   "--proxy-bypass-list=<-loopback>",
                   f"--window-size={WINDOW[0]},{WINDOW[1]}",
                   f"--virtual-time-budget={virtual_time_ms}", *flags,
                   "file://" + os.path.abspath(html_path)]
        if "headless" not in os.path.basename(binary):
            command.insert(1, "--headless")   # full Chromium needs it; the shell always is
        return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S,
                              check=True)


def screenshot(binary: str, html_path: str, png_path: str, proxy: RecordingProxy) -> str:
    run_chromium(binary, html_path, proxy, [f"--screenshot={png_path}"])
    return png_path


def dump_dom(binary: str, html_path: str, proxy: RecordingProxy) -> str:
    """The DOM as serialized after the scripts ran (stdout of --dump-dom)."""
    return run_chromium(binary, html_path, proxy, ["--dump-dom"]).stdout

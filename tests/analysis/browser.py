"""A headless Chromium driven over the DevTools protocol on a pipe (tests only).

Debian's ``chromium`` (``.ci/run`` installs it when missing) is started with
``--remote-debugging-pipe``: it reads protocol commands from fd 3 and writes
replies and events to fd 4, each message JSON followed by a NUL byte. No
package, no browser download, no port: the standard library is the client.
Every network request the page makes is recorded (``Network`` events), and
every uncaught script error (``Runtime.exceptionThrown``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def find() -> str | None:
  """The path of a Chromium binary, or None."""
  for name in CANDIDATES:
    path = shutil.which(name)
    if path:
      return path
  return None


def _above(fd: int, low: int) -> int:
  """``fd`` moved to a number >= ``low`` (the old number is closed)."""
  import fcntl
  moved = fcntl.fcntl(fd, fcntl.F_DUPFD, low)
  os.close(fd)
  return moved


class Browser:
  """One headless browser with one page; ``with Browser() as b: b.open(url)``."""

  def __init__(self, binary: str | None = None, timeout: float = 60.0):
    self.binary = binary or find()
    if self.binary is None:
      raise FileNotFoundError("no chromium binary (apt-get install chromium)")
    self.timeout = timeout
    self.profile = tempfile.mkdtemp(prefix="dmfjax-chromium-")
    to_child_r, self._to_child = os.pipe()
    self._from_child, from_child_w = os.pipe()
    # Above fd 4, so that placing one end on fd 3 cannot overwrite the other.
    to_child_r, from_child_w = (_above(to_child_r, 10), _above(from_child_w, 10))

    # A small Python shim puts the pipe's ends on fds 3 and 4 and executes the
    # browser (subprocess closes fds dup'ed in a preexec_fn that are not in
    # pass_fds, and dash takes single-digit fds only).
    shim = ("import os, sys; r, w = int(sys.argv[1]), int(sys.argv[2]); "
            "os.dup2(r, 3); os.dup2(w, 4); os.execv(sys.argv[3], sys.argv[3:])")
    self.proc = subprocess.Popen(
        [sys.executable, "-c", shim, str(to_child_r), str(from_child_w), self.binary,
         "--headless", "--remote-debugging-pipe", "--no-sandbox",
         "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--hide-scrollbars", f"--user-data-dir={self.profile}",
         "about:blank"],
        pass_fds=(to_child_r, from_child_w),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(to_child_r)
    os.close(from_child_w)
    self._buffer = b""
    self._id = 0
    self.events: list[dict] = []
    self.session = None

  # -- protocol

  def _read_message(self, deadline: float) -> dict:
    import select
    while b"\0" not in self._buffer:
      left = deadline - time.monotonic()
      if left <= 0:
        raise TimeoutError("chromium did not answer")
      ready, _, _ = select.select([self._from_child], [], [], left)
      if ready:
        chunk = os.read(self._from_child, 1 << 20)
        if not chunk:
          raise ConnectionError("chromium closed the pipe")
        self._buffer += chunk
    message, self._buffer = self._buffer.split(b"\0", 1)
    return json.loads(message)

  def send(self, method: str, session: bool = True, **params) -> dict:
    self._id += 1
    message = {"id": self._id, "method": method, "params": params}
    if session and self.session:
      message["sessionId"] = self.session
    os.write(self._to_child, json.dumps(message).encode() + b"\0")
    deadline = time.monotonic() + self.timeout
    while True:
      reply = self._read_message(deadline)
      if reply.get("id") == self._id:
        if "error" in reply:
          raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})
      self.events.append(reply)

  def wait_event(self, method: str) -> dict:
    deadline = time.monotonic() + self.timeout
    seen = 0
    while True:
      for event in self.events[seen:]:
        if event.get("method") == method:
          self.events.remove(event)
          return event
      seen = len(self.events)
      self.events.append(self._read_message(deadline))

  # -- the page

  def open(self, url: str, width: int = 1400, height: int = 900) -> None:
    """Opens ``url`` in a new page of ``width`` CSS pixels and waits for its load."""
    target = self.send("Target.createTarget", session=False, url="about:blank")["targetId"]
    self.session = self.send("Target.attachToTarget", session=False, targetId=target,
                             flatten=True)["sessionId"]
    for domain in ("Page", "Network", "Runtime"):
      self.send(f"{domain}.enable")
    self.resize(width, height)
    self.send("Page.navigate", url=url)
    self.wait_event("Page.loadEventFired")

  def resize(self, width: int, height: int = 900) -> None:
    self.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
              deviceScaleFactor=1, mobile=False)

  def eval(self, expression: str):
    """The value of a JavaScript expression in the page (JSON-able)."""
    result = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                       awaitPromise=True)
    if "exceptionDetails" in result:
      raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
    return result["result"].get("value")

  def requests(self) -> list[str]:
    """The URL of every request the page made so far."""
    return [e["params"]["request"]["url"] for e in self.events
            if e.get("method") == "Network.requestWillBeSent"]

  def errors(self) -> list[dict]:
    return [e["params"] for e in self.events if e.get("method") == "Runtime.exceptionThrown"]

  def close(self) -> None:
    try:
      self.send("Browser.close", session=False)
    except (OSError, RuntimeError, TimeoutError, ConnectionError):
      pass
    try:
      self.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
    for fd in (self._to_child, self._from_child):
      try:
        os.close(fd)
      except OSError:
        pass
    shutil.rmtree(self.profile, ignore_errors=True)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

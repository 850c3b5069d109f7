#!/usr/bin/env python3
"""The gateway-overhead table, from one command: `scripts/bench-peers.sh TARGET...`.

The same load for every gateway, the way issue #16's table was measured: the gateway under
test pinned to core 0; on core 1 the load generator (`oha`) and a stub upstream (nginx with
a Lua handler answering llama-server's recorded chat body, or a stream of 20 chunks, usage
and `[DONE]`). Direct runs (load straight to the stub) and each gateway's runs are
interleaved over ROUNDS rounds; each figure is the median of the rounds with its spread.

TARGET is one of
  tollgate[=BINARY]   tollgate (this checkout's target/release/tollgate, or BINARY) with
                      accounting, the SQLite ledger, the monitors and a key with every limit
                      and budget on (none binding); `tollgate-off[=BINARY]` with them off
  litellm             the LiteLLM proxy (PyPI, no database), one worker
  portkey             the Portkey gateway (npm), one Node process
  URL                 any OpenAI-compatible gateway already running and pointed at the stub
                      (its chat completions URL; the stub's address is printed first)

Columns: added p50 / p99 at c=1, requests/s at c=64, the gateway's CPU time per request
(from /proc, its whole process tree), added p50 / p99 at a fixed 1,000 requests/s (or "cannot
hold" when it answers under 95% of that), added time to the first SSE event at c=1, and
resident memory after the runs. ROUNDS (5), SECS (5), and CORES ("0,1": gateway, load) are
read from the environment.
"""

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = int(os.environ.get("ROUNDS", "5"))
SECS = float(os.environ.get("SECS", "5"))
GW_CORE, LOAD_CORE = os.environ.get("CORES", "0,1").split(",")
KEY = "sk-bench-0123456789"
CHAT_BODY = os.path.join(ROOT, "tests/fixtures/llama-server/chat.body")
REQUEST = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 16})
STREAM_REQUEST = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 16, "stream": True})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, headers=None, timeout=120, proc=None):
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the process serving {url} exited ({proc.returncode}) before it answered")
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status < 500:
                    return
        except urllib.error.HTTPError as e:
            if e.code < 500:
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not come up in {timeout} s")


def tree(pid):
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def cpu_seconds(pid):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def rss_mib(pid):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


ANSWER_LUA = r"""
ngx.req.read_body()
local b = ngx.req.get_body_data() or ""
if string.find(b, '"stream"%s*:%s*true') then
  ngx.header["Content-Type"] = "text/event-stream"
  for _, ev in ipairs(EVENTS) do
    ngx.print(ev)
    ngx.flush(true)
  end
  ngx.print(USAGE)
  ngx.print("data: [DONE]\n\n")
else
  ngx.header["Content-Type"] = "application/json"
  ngx.print(CHAT)
end
"""


def stub():
    """The nginx + Lua stub on the load's core; returns (process, base URL)."""
    port = free_port()
    d = tempfile.mkdtemp(prefix="tollgate-stub-")
    os.chmod(d, 0o755)  # nginx's workers (another user, under root) read the Lua files
    chunk = lambda i: json.dumps({"choices": [{"finish_reason": None, "index": 0, "delta": {"content": f"w{i} "}}], "created": 1795983444, "id": "chatcmpl-stub", "model": "m", "object": "chat.completion.chunk"})
    usage = json.dumps({"choices": [], "created": 1795983444, "id": "chatcmpl-stub", "model": "m", "object": "chat.completion.chunk", "usage": {"completion_tokens": 20, "prompt_tokens": 29, "total_tokens": 49}})
    modules = "/usr/lib/nginx/modules"
    chat_path, usage_lua = json.dumps(CHAT_BODY), json.dumps("data: " + usage + "\n\n")
    conf = f"""
load_module {modules}/ndk_http_module.so;
load_module {modules}/ngx_http_lua_module.so;
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_buffer_size 64k;
  init_by_lua_file {d}/init.lua;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location ~ /models$ {{
      default_type application/json;
      return 200 '{{"object":"list","data":[{{"id":"m","object":"model","owned_by":"stub"}}]}}';
    }}
    location / {{
      content_by_lua_file {d}/answer.lua;
    }}
  }}
}}
"""
    with open(f"{d}/nginx.conf", "w") as f:
        f.write(conf)
    with open(f"{d}/init.lua", "w") as f:
        f.write(f"local f = assert(io.open({chat_path}, 'rb'))\nCHAT = f:read('*a')\nf:close()\nEVENTS = {{}}\n")
        for i in range(20):
            f.write(f"EVENTS[{i + 1}] = {json.dumps('data: ' + chunk(i) + chr(10) + chr(10))}\n")
        f.write(f"USAGE = {usage_lua}\n")
    with open(f"{d}/answer.lua", "w") as f:
        f.write(ANSWER_LUA)
    p = subprocess.Popen(["taskset", "-c", LOAD_CORE, "nginx", "-p", d, "-c", f"{d}/nginx.conf"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1"
    wait_http(f"{base}/models")
    return p, base


class Gateway:
    """A gateway under test: its process, its chat URL, the headers a request carries."""

    def __init__(self, name, proc, url, headers, workdir=None):
        self.name, self.proc, self.url, self.headers, self.workdir = name, proc, url, headers, workdir

    def stop(self):
        if self.proc is None:
            return
        for p in reversed(tree(self.proc.pid)):
            try:
                os.kill(p, signal.SIGTERM)
            except OSError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def pinned(cmd, **kw):
    return subprocess.Popen(["taskset", "-c", GW_CORE] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def tollgate(binary, upstream, all_on, name):
    d = tempfile.mkdtemp(prefix="tollgate-bench-")
    port = free_port()
    if all_on:
        import hashlib
        sha = hashlib.sha256(KEY.encode()).hexdigest()
        auth = (f"[auth]\n[[auth.keys]]\nname = \"bench\"\nsha256 = \"{sha}\"\naliases = [\"*\"]\nrequests_per_minute = 10000000\n"
                "tokens_per_minute = 100000000000\nmax_concurrent = 4096\nbudget_usd_per_day = 1000000\nbudget_usd_per_month = 1000000\n")
        price = "price = { input = 0.15, cached_input = 0.075, output = 0.6 }\n"
    else:
        auth, price = "[auth]\nopen = true\n[ledger]\nenabled = false\n[monitor]\nenabled = false\n", ""
    with open(f"{d}/tollgate.toml", "w") as f:
        f.write(f"[log]\nformat = \"text\"\n{auth}")
    os.mkdir(f"{d}/routes")
    with open(f"{d}/routes/r.toml", "w") as f:
        f.write(f"[[alias]]\nname = \"chat\"\n[[alias.deployment]]\nname = \"stub\"\nkind = \"openai\"\nbase_url = \"{upstream}\"\nmodel = \"m\"\nmax_concurrency = 4096\n{price}")
    env = dict(os.environ, RUST_LOG="warn", TOKIO_WORKER_THREADS="1")
    p = pinned([binary, "serve", "--config", f"{d}/tollgate.toml", "--listen", f"127.0.0.1:{port}"], cwd=d, env=env)
    wait_http(f"http://127.0.0.1:{port}/health", proc=p)
    headers = {"authorization": f"Bearer {KEY}"} if all_on else {}
    return Gateway(name, p, f"http://127.0.0.1:{port}/v1/chat/completions", headers, d)


def venv_bin(name, package):
    """A tool from PyPI in its own virtual environment under target/bench-peers."""
    v = os.path.join(ROOT, "target/bench-peers", name)
    exe = os.path.join(v, "bin", name)
    if not os.path.exists(exe):
        subprocess.check_call([sys.executable, "-m", "venv", v])
        subprocess.check_call([f"{v}/bin/pip", "install", "-q", package])
    return exe


def litellm(upstream):
    exe = venv_bin("litellm", "litellm[proxy]==1.108.7")
    d = tempfile.mkdtemp(prefix="litellm-bench-")
    port = free_port()
    with open(f"{d}/config.yaml", "w") as f:
        f.write(f"model_list:\n  - model_name: chat\n    litellm_params:\n      model: openai/m\n      api_base: {upstream}\n      api_key: sk-stub\n"
                f"litellm_settings:\n  telemetry: false\ngeneral_settings:\n  master_key: {KEY}\n")
    env = dict(os.environ, LITELLM_LOG="ERROR", LITELLM_TELEMETRY="False")
    p = pinned([exe, "--config", f"{d}/config.yaml", "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"], cwd=d, env=env)
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout=300, proc=p)
    return Gateway("LiteLLM 1.108.7", p, f"http://127.0.0.1:{port}/v1/chat/completions", {"authorization": f"Bearer {KEY}"}, d)


def portkey(upstream):
    d = os.path.join(ROOT, "target/bench-peers/portkey")
    main = os.path.join(d, "node_modules/@portkey-ai/gateway/build/start-server.js")
    if not os.path.exists(main):
        os.makedirs(d, exist_ok=True)
        subprocess.check_call(["npm", "install", "--silent", "--prefix", d, "@portkey-ai/gateway@1.15.2"])
    port = free_port()
    env = dict(os.environ, PORT=str(port), NODE_ENV="production")
    p = pinned(["node", main, f"--port={port}", "--headless"], cwd=d, env=env)
    wait_http(f"http://127.0.0.1:{port}/", timeout=120, proc=p)
    headers = {"x-portkey-provider": "openai", "x-portkey-custom-host": upstream, "authorization": "Bearer sk-stub"}
    return Gateway("Portkey 1.15.2", p, f"http://127.0.0.1:{port}/v1/chat/completions", headers, d)


def oha(url, headers, body, args, secs):
    cmd = ["taskset", "-c", LOAD_CORE, "oha", "--no-tui", "--output-format", "json", "-z", f"{secs}s", "-m", "POST", "-T", "application/json", "-d", body]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run(cmd + args + [url], check=True, capture_output=True, text=True).stdout
    r = json.loads(out)
    s = r["summary"]
    lat = r.get("latencyPercentiles", {})
    codes = r.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    total = sum(codes.values()) or 1
    return {"rps": s["requestsPerSec"] * ok / total, "p50": lat.get("p50", 0) * 1e3, "p99": lat.get("p99", 0) * 1e3, "ok": ok / total}


def first_event_ms(url, headers, n=200):
    """Median time to the first `data:` line of a stream, c=1, over kept-alive connections."""
    import http.client
    from urllib.parse import urlparse
    u = urlparse(url)
    times = []
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("POST", u.path, body=STREAM_REQUEST, headers=dict(headers, **{"content-type": "application/json"}))
        r = conn.getresponse()
        line = r.readline()
        while line and not line.startswith(b"data:"):
            line = r.readline()
        times.append((time.perf_counter() - t0) * 1e3)
        r.read()
    conn.close()
    return statistics.median(times)


def med(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2], xs[0], xs[-1]


def main():
    targets = sys.argv[1:] or ["tollgate"]
    for tool in ("oha", "nginx", "taskset"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run scripts/bench-peers.sh, which installs it")
    stub_proc, upstream = stub()
    print(f"stub upstream (nginx + Lua) at {upstream}; gateway on core {GW_CORE}, load and stub on core {LOAD_CORE}; {ROUNDS} interleaved rounds of {SECS:g} s", flush=True)
    gateways = []
    try:
        for t in targets:
            kind, _, arg = t.partition("=")
            if kind in ("tollgate", "tollgate-off"):
                binary = arg or os.path.join(ROOT, "target/release/tollgate")
                label = "tollgate" + (f" ({arg})" if arg else "") + (" all off" if kind == "tollgate-off" else "")
                gateways.append(tollgate(binary, upstream, kind == "tollgate", label))
            elif kind == "litellm":
                gateways.append(litellm(upstream))
            elif kind == "portkey":
                gateways.append(portkey(upstream))
            elif t.startswith("http"):
                gateways.append(Gateway(t, None, t, {}))
            else:
                raise SystemExit(f"unknown target {t!r}")
        direct = Gateway("direct", None, f"{upstream}/chat/completions", {})
        every = [direct] + gateways
        for g in every:  # warm every path
            oha(g.url, g.headers, REQUEST, ["-c", "4"], 1)
        res = {g.name: {"c1": [], "c64": [], "cpu": [], "r1k": [], "sse": []} for g in every}
        for rnd in range(ROUNDS):
            for g in every:
                r = res[g.name]
                r["c1"].append(oha(g.url, g.headers, REQUEST, ["-c", "1"], SECS))
                t0 = cpu_seconds(g.proc.pid) if g.proc else 0
                c64 = oha(g.url, g.headers, REQUEST, ["-c", "64"], SECS)
                if g.proc:
                    r["cpu"].append((cpu_seconds(g.proc.pid) - t0) * 1e6 / max(1, c64["rps"] * SECS))
                r["c64"].append(c64)
                r["r1k"].append(oha(g.url, g.headers, REQUEST, ["-c", "64", "-q", "1000"], SECS))
                r["sse"].append(first_event_ms(g.url, g.headers, 100))
            print(f"round {rnd + 1}/{ROUNDS} done", flush=True)
        d = res["direct"]
        print()
        print("| | added p50 / p99, c=1 | req/s at c=64 (one core) | CPU per request | added p50 / p99 at 1,000 req/s | added SSE first event, c=1 | RSS |")
        print("|---|---|---|---|---|---|---|")
        dc1 = [(x["p50"], x["p99"]) for x in d["c1"]]
        print(f"| direct (stub) | p50 {med([a for a, _ in dc1])[0]:.3f} / p99 {med([b for _, b in dc1])[0]:.3f} ms | {med([x['rps'] for x in d['c64']])[0]:,.0f} | | p50 {med([x['p50'] for x in d['r1k']])[0]:.3f} / p99 {med([x['p99'] for x in d['r1k']])[0]:.3f} ms | {med(d['sse'])[0]:.3f} ms | |")
        for g in gateways:
            r = res[g.name]
            a50 = med([x["p50"] - y["p50"] for x, y in zip(r["c1"], d["c1"])])
            a99 = med([x["p99"] - y["p99"] for x, y in zip(r["c1"], d["c1"])])
            rps = med([x["rps"] for x in r["c64"]])
            cpu = med(r["cpu"]) if r["cpu"] else (0, 0, 0)
            held = min(x["rps"] for x in r["r1k"]) >= 950
            if held:
                k50 = med([x["p50"] - y["p50"] for x, y in zip(r["r1k"], d["r1k"])])
                k99 = med([x["p99"] - y["p99"] for x, y in zip(r["r1k"], d["r1k"])])
                fixed = f"{k50[0]:.2f} ({k50[1]:.2f}..{k50[2]:.2f}) / {k99[0]:.2f} ({k99[1]:.2f}..{k99[2]:.2f}) ms"
            else:
                fixed = f"cannot hold 1,000 req/s ({med([x['rps'] for x in r['r1k']])[0]:,.0f})"
            sse = med([x - y for x, y in zip(r["sse"], d["sse"])])
            rss = f"{rss_mib(g.proc.pid):.0f} MiB" if g.proc else ""
            print(f"| {g.name} | {a50[0]:.3f} ({a50[1]:.3f}..{a50[2]:.3f}) / {a99[0]:.3f} ({a99[1]:.3f}..{a99[2]:.3f}) ms | {rps[0]:,.0f} ({rps[1]:,.0f}..{rps[2]:,.0f}) | {cpu[0]:,.0f} µs | {fixed} | {sse[0]:.3f} ({sse[1]:.3f}..{sse[2]:.3f}) ms | {rss} |")
    finally:
        for g in gateways:
            g.stop()
        stub_proc.send_signal(signal.SIGTERM)
        stub_proc.wait(10)


if __name__ == "__main__":
    main()

//! What the gateway adds in front of a fast upstream: latency (p50, p99) and throughput,
//! gateway against direct, interleaved runs, the gateway pinned to one core.
//!
//! `cargo bench --bench overhead` (builds `target/release/tollgate` first). Core 0: the
//! gateway. Core 1: this load generator and the stub upstream (a hyper server answering
//! with llama-server's recorded bodies, and a 20-chunk SSE stream). Scenarios: closed loop at
//! concurrency 1, 16 and 64; a fixed 1,000 requests/s (open loop); streaming at concurrency 1
//! (time to the first `data:` event and to the end of the stream). Each scenario runs
//! `ROUNDS` times (default 5), alternating direct and gateway; the report is the median of
//! the rounds with the spread (min..max). Also: the gateway's resident memory and its CPU
//! time per request (from /proc).
//!
//! `cargo bench --bench overhead -- accounting` compares two gateways instead: one with
//! accounting, ledger, limits and monitoring all on (a key with rate, token, concurrency and
//! budget limits; a priced deployment; the SQLite ledger; the monitors), against one with all
//! of them off, in the same interleaved rounds (c=1, c=64, and a fixed 1,000 requests/s).
//!
//! `cargo bench --bench overhead -- guardrails` compares a gateway with `[guardrails] default =
//! "redact"` against one without, both sent a 2 KB chat request of prose, code and JSON
//! (nothing in it to find: the cost of reading every request and answer).
//!
//! `cargo bench --bench overhead -- otel` compares a gateway exporting OpenTelemetry traces
//! (`[otel]`, to an OTLP/HTTP sink on core 1 that reads and discards each batch) against one
//! without.
//!
//! `cargo bench --bench overhead -- cluster` compares two all-on gateways (as `accounting`):
//! one with `[cluster]` (its limits and budgets in a real Redis on core 1, its ledger shipped
//! to a real PostgreSQL) against one without: what the shared state adds to a request.
//!
//! `cargo bench --bench overhead -- against BINARY` compares this build with another gateway
//! binary (e.g. an earlier commit's `target/release/tollgate`, copied aside) in the same way:
//! a refactor's before and after, measured in one run.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report

mod support;
#[path = "../tests/common/servers.rs"]
#[allow(dead_code)]
mod servers;

use support::free_port;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response};

const CHAT: &[u8] = include_bytes!("../tests/fixtures/llama-server/chat.body");

fn pin_to(core: usize) {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The stub upstream: a non-streamed chat body, or 20 chunks + usage + [DONE].
async fn stub(listener: tokio::net::TcpListener) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        let _ = sock.set_nodelay(true);
        tokio::spawn(async move {
            let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                let stream = memchr::memmem::find(&body, b"\"stream\":true").is_some();
                if !stream {
                    let r = Response::builder()
                        .header("content-type", "application/json")
                        .body(http_body_util::Either::Left(Full::new(Bytes::from_static(CHAT))))
                        .unwrap();
                    return Ok::<_, Infallible>(r);
                }
                let mut events: Vec<Result<Frame<Bytes>, Infallible>> = (0..20)
                    .map(|i| {
                        Ok(Frame::data(Bytes::from(format!(
                            "data: {{\"choices\":[{{\"finish_reason\":null,\"index\":0,\"delta\":{{\"content\":\" w{i}\"}}}}],\"created\":1,\"id\":\"c\",\"model\":\"m\",\"object\":\"chat.completion.chunk\"}}\n\n"
                        ))))
                    })
                    .collect();
                events.push(Ok(Frame::data(Bytes::from_static(b"data: {\"choices\":[],\"created\":1,\"id\":\"c\",\"model\":\"m\",\"object\":\"chat.completion.chunk\",\"usage\":{\"completion_tokens\":20,\"prompt_tokens\":9,\"total_tokens\":29}}\n\n"))));
                events.push(Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))));
                let r = Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(http_body_util::Either::Right(StreamBody::new(futures::stream::iter(events))))
                    .unwrap();
                Ok(r)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                .await;
        });
    }
}

#[derive(Clone, Copy)]
enum Load {
    Closed(usize),
    Rate(u32),
    Stream,
}

struct Sample {
    p50_ms: f64,
    p99_ms: f64,
    rps: f64,
    ttfb_p50_ms: f64,
    ttfb_p99_ms: f64,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn run(client: &reqwest::Client, url: &str, load: Load, dur: Duration) -> Sample {
    run_as(client, url, None, load, dur).await
}

/// The non-streamed request body, when a comparison sends another than the default.
static CHAT_BODY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

async fn run_as(client: &reqwest::Client, url: &str, key: Option<&'static str>, load: Load, dur: Duration) -> Sample {
    let chat: &'static [u8] = CHAT_BODY.get().map_or(
        br#"{"model":"chat","messages":[{"role":"user","content":"Say hello in five words."}],"max_tokens":16}"#,
        Vec::as_slice,
    );
    let streamed =
        br#"{"model":"chat","messages":[{"role":"user","content":"Say hello."}],"max_tokens":20,"stream":true}"#;
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut lat = Vec::new();
    let mut ttfb = Vec::new();
    match load {
        Load::Closed(_) | Load::Stream => {
            let (c, body): (usize, &'static [u8]) = match load {
                Load::Closed(c) => (c, chat),
                _ => (1, streamed),
            };
            let tasks: Vec<_> = (0..c)
                .map(|_| {
                    let (stop, client, url) = (stop.clone(), client.clone(), url.to_owned());
                    tokio::spawn(async move {
                        let mut v = Vec::new();
                        while !stop.load(Ordering::Relaxed) {
                            v.push(one(client.clone(), url.clone(), key, body).await);
                        }
                        v
                    })
                })
                .collect();
            tokio::time::sleep(dur).await;
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                for (l, f) in t.await.unwrap() {
                    lat.push(l.as_secs_f64() * 1e3);
                    ttfb.push(f.as_secs_f64() * 1e3);
                }
            }
        }
        Load::Rate(rps) => {
            let n = (rps as f64 * dur.as_secs_f64()) as u32;
            let mut tasks = Vec::with_capacity(n as usize);
            for i in 0..n {
                let due = start + Duration::from_secs_f64(i as f64 / rps as f64);
                tokio::time::sleep_until(due.into()).await;
                tasks.push(tokio::spawn(one(client.clone(), url.to_owned(), key, chat)));
            }
            for t in tasks {
                let (l, f) = t.await.unwrap();
                lat.push(l.as_secs_f64() * 1e3);
                ttfb.push(f.as_secs_f64() * 1e3);
            }
        }
    }
    let n = lat.len() as f64;
    Sample {
        rps: n / start.elapsed().as_secs_f64(),
        p50_ms: pct(&mut lat.clone(), 0.5),
        p99_ms: pct(&mut lat, 0.99),
        ttfb_p50_ms: pct(&mut ttfb.clone(), 0.5),
        ttfb_p99_ms: pct(&mut ttfb, 0.99),
    }
}

/// One request; the time to its end and to its first `data:` event.
async fn one(client: reqwest::Client, url: String, key: Option<&str>, body: &'static [u8]) -> (Duration, Duration) {
    let t0 = Instant::now();
    let mut req = client.post(&url).header("content-type", "application/json").body(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let mut r = req.send().await.expect("request");
    assert!(r.status().is_success(), "{}", r.status());
    let mut first = None;
    while let Some(c) = r.chunk().await.expect("body") {
        if first.is_none() && memchr::memmem::find(&c, b"data:").is_some() {
            first = Some(t0.elapsed());
        }
    }
    (t0.elapsed(), first.unwrap_or_default())
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = s.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
}

/// The key the all-on gateway accepts.
const KEY: &str = "bench-key";

/// Everything on: a key with every limit (none of which binds), a priced deployment, the
/// ledger and the monitors (the defaults).
fn all_on() -> (String, &'static str) {
    let sha: String = tollgate::config::sha256(KEY.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    (
        format!("[[auth.keys]]\nname = \"bench\"\nsha256 = \"{sha}\"\naliases = [\"*\"]\nrequests_per_minute = 10000000\ntokens_per_minute = 100000000000\nmax_concurrent = 4096\nbudget_usd_per_day = 1000000\nbudget_usd_per_month = 1000000\n"),
        "price = { input = 0.15, cached_input = 0.075, output = 0.6 }\n",
    )
}

/// Everything off: open auth, no price, no ledger, no monitors.
const ALL_OFF: &str = "open = true\n[ledger]\nenabled = false\n[monitor]\nenabled = false\n";

fn start_gateway(upstream: SocketAddr) -> (Child, SocketAddr, tempfile::TempDir) {
    start_gateway_with(&this_build(), upstream, "open = true\n", "")
}

/// The gateway this checkout built.
fn this_build() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/tollgate")
}

/// `auth` continues the `[auth]` table (and may add tables after it); `deployment` adds lines
/// to the deployment.
fn start_gateway_with(
    bin: &std::path::Path,
    upstream: SocketAddr,
    auth: &str,
    deployment: &str,
) -> (Child, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tollgate.toml"), format!("[log]\nformat = \"text\"\n[auth]\n{auth}")).unwrap();
    std::fs::create_dir(dir.path().join("routes")).unwrap();
    std::fs::write(
        dir.path().join("routes/r.toml"),
        format!("[[alias]]\nname = \"chat\"\n[[alias.deployment]]\nname = \"stub\"\nkind = \"openai\"\nbase_url = \"http://{upstream}/v1\"\nmodel = \"m\"\nmax_concurrency = 4096\n{deployment}"),
    )
    .unwrap();
    let port = support::free_port();
    assert!(bin.exists(), "{}: build it first (cargo build --release)", bin.display());
    let child = Command::new("taskset")
        .args(["-c", "0"])
        .arg(bin)
        .args(["serve", "--config"])
        .arg(dir.path().join("tollgate.toml"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .env("TOKIO_WORKER_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("taskset (util-linux) and the gateway binary");
    (child, SocketAddr::from(([127, 0, 0, 1], port)), dir)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    pin_to(1);
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let secs: f64 = std::env::var("SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(4.0);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "accounting") {
        return rt.block_on(accounting(rounds, secs));
    }
    if args.iter().any(|a| a == "otel") {
        return rt.block_on(otel(rounds, secs));
    }
    if args.iter().any(|a| a == "cluster") {
        return rt.block_on(cluster(rounds, secs));
    }
    if args.iter().any(|a| a == "guardrails") {
        return rt.block_on(guardrails(rounds, secs));
    }
    if let Some(i) = args.iter().position(|a| a == "against") {
        let old = args.get(i + 1).expect("against BINARY: the gateway binary to compare this build with");
        return rt.block_on(against(std::path::Path::new(old), rounds, secs));
    }
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = l.local_addr().unwrap();
        tokio::spawn(stub(l));
        let (mut gw, gw_addr, _dir) = start_gateway(up);
        let client = reqwest::Client::builder().tcp_nodelay(true).pool_max_idle_per_host(1024).build().unwrap();
        let health = format!("http://{gw_addr}/health");
        for _ in 0..200 {
            if client.get(&health).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let direct = format!("http://{up}/v1/chat/completions");
        let via = format!("http://{gw_addr}/v1/chat/completions");
        let dur = Duration::from_secs_f64(secs);
        let scenarios = [("closed c=1", Load::Closed(1)), ("closed c=16", Load::Closed(16)), ("closed c=64", Load::Closed(64)), ("fixed 1000 rps", Load::Rate(1000)), ("stream c=1", Load::Stream)];
        println!("tollgate overhead: {rounds} interleaved rounds of {secs} s per scenario; gateway on core 0, load + stub on core 1");
        for (name, load) in scenarios {
            // Warm both paths' connection pools.
            run(&client, &direct, load, Duration::from_millis(300)).await;
            run(&client, &via, load, Duration::from_millis(300)).await;
            let (mut d, mut g, mut cpu_us) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..rounds {
                d.push(run(&client, &direct, load, dur).await);
                let t0 = cpu_ticks(gw.id());
                let s = run(&client, &via, load, dur).await;
                let ticks = cpu_ticks(gw.id()) - t0;
                let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
                cpu_us.push(ticks as f64 / hz * 1e6 / (s.rps * dur.as_secs_f64()));
                g.push(s);
            }
            let med = |v: &mut Vec<f64>| {
                v.sort_by(|a, b| a.partial_cmp(b).unwrap());
                (v[v.len() / 2], v[0], v[v.len() - 1])
            };
            let col = |f: fn(&Sample) -> f64, v: &[Sample]| v.iter().map(f).collect::<Vec<_>>();
            let (dp50, gp50) = (med(&mut col(|s| s.p50_ms, &d)), med(&mut col(|s| s.p50_ms, &g)));
            let (dp99, gp99) = (med(&mut col(|s| s.p99_ms, &d)), med(&mut col(|s| s.p99_ms, &g)));
            let (drps, grps) = (med(&mut col(|s| s.rps, &d)), med(&mut col(|s| s.rps, &g)));
            let mut added50: Vec<f64> = d.iter().zip(&g).map(|(a, b)| b.p50_ms - a.p50_ms).collect();
            let mut added99: Vec<f64> = d.iter().zip(&g).map(|(a, b)| b.p99_ms - a.p99_ms).collect();
            let (a50, a99) = (med(&mut added50), med(&mut added99));
            println!("\n[{name}]");
            println!("  direct : p50 {:.3} ms ({:.3}..{:.3})  p99 {:.3} ms ({:.3}..{:.3})  {:.0} req/s ({:.0}..{:.0})", dp50.0, dp50.1, dp50.2, dp99.0, dp99.1, dp99.2, drps.0, drps.1, drps.2);
            println!("  gateway: p50 {:.3} ms ({:.3}..{:.3})  p99 {:.3} ms ({:.3}..{:.3})  {:.0} req/s ({:.0}..{:.0})", gp50.0, gp50.1, gp50.2, gp99.0, gp99.1, gp99.2, grps.0, grps.1, grps.2);
            println!("  added  : p50 {:.3} ms ({:.3}..{:.3})  p99 {:.3} ms ({:.3}..{:.3})  gateway CPU {:.0} us/request", a50.0, a50.1, a50.2, a99.0, a99.1, a99.2, med(&mut cpu_us).0);
            if matches!(load, Load::Stream) {
                let (dt, gt) = (med(&mut col(|s| s.ttfb_p50_ms, &d)), med(&mut col(|s| s.ttfb_p50_ms, &g)));
                let mut at: Vec<f64> = d.iter().zip(&g).map(|(a, b)| b.ttfb_p50_ms - a.ttfb_p50_ms).collect();
                let a = med(&mut at);
                let (dt99, gt99) = (med(&mut col(|s| s.ttfb_p99_ms, &d)), med(&mut col(|s| s.ttfb_p99_ms, &g)));
                println!("  first data event: direct p50 {:.3} ms p99 {:.3}; gateway p50 {:.3} ms p99 {:.3}; added p50 {:.3} ms ({:.3}..{:.3})", dt.0, dt99.0, gt.0, gt99.0, a.0, a.1, a.2);
            }
        }
        println!("\ngateway resident memory after the runs: {:.1} MB", support::rss_mb(gw.id()));
        let _ = gw.kill();
    });
}

async fn wait_up(client: &reqwest::Client, addr: SocketAddr) {
    for _ in 0..200 {
        if client.get(format!("http://{addr}/health")).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One gateway of a comparison: what it is called, how it was started, and its key.
struct Side {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    key: Option<&'static str>,
    _dir: tempfile::TempDir,
}

/// All of accounting, ledger, limits and monitoring on, against all off.
async fn accounting(rounds: usize, secs: f64) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(stub(l));
    let (keys, price) = all_on();
    let (child, addr, _dir) = start_gateway_with(&this_build(), up, ALL_OFF, "");
    let off = Side { name: "all off", child, addr, key: None, _dir };
    let (child, addr, _dir) = start_gateway_with(&this_build(), up, &keys, price);
    let on = Side { name: "all on", child, addr, key: Some(KEY), _dir };
    println!("tollgate accounting overhead: all on against all off, {rounds} interleaved rounds of {secs} s; gateways on core 0, load + stub on core 1");
    compare(off, on, rounds, secs).await;
}

/// All on with the limits and budgets shared through Redis (and the ledger shipped to
/// PostgreSQL), against all on in-process.
async fn cluster(rounds: usize, secs: f64) {
    // Redis and PostgreSQL share core 1 with the load generator.
    let (redis, pg) = (servers::Redis::start(), servers::Postgres::start());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(stub(l));
    let (keys, price) = all_on();
    let (child, addr, _dir) = start_gateway_with(&this_build(), up, &keys, price);
    let off = Side { name: "alone", child, addr, key: Some(KEY), _dir };
    let shared = format!(
        "{keys}[cluster]\nredis_url = \"{}\"\nreplicas = 2\n[ledger]\npostgres_url = \"{}\"\n",
        redis.url(),
        pg.url()
    );
    let (child, addr, _dir) = start_gateway_with(&this_build(), up, &shared, price);
    let on = Side { name: "cluster", child, addr, key: Some(KEY), _dir };
    println!("tollgate cluster overhead: all on with limits and budgets in Redis (ledger to PostgreSQL) against all on in-process, {rounds} interleaved rounds of {secs} s; gateways on core 0, load + stub + Redis + PostgreSQL on core 1");
    compare(off, on, rounds, secs).await;
}

/// Traces exported (to a sink that reads each batch) against none.
async fn otel(rounds: usize, secs: f64) {
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let spans = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let bytes_seen = spans.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = sink.accept().await else { continue };
            let seen = bytes_seen.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                        seen.fetch_add(body.len() as u64, Ordering::Relaxed);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(stub(l));
    let (child, addr, _dir) = start_gateway_with(&this_build(), up, "open = true\n", "");
    let off = Side { name: "off", child, addr, key: None, _dir };
    let on_toml = format!("open = true\n[otel]\nendpoint = \"http://{sink_addr}\"\nbatch_delay_ms = 1000\n");
    let (child, addr, _dir) = start_gateway_with(&this_build(), up, &on_toml, "");
    let on = Side { name: "on", child, addr, key: None, _dir };
    println!("tollgate OpenTelemetry overhead: traces exported against none, {rounds} interleaved rounds of {secs} s; gateways on core 0, load, stub and OTLP sink on core 1");
    compare(off, on, rounds, secs).await;
    println!("\nOTLP bytes received by the sink: {}", spans.load(Ordering::Relaxed));
}

/// Guardrails on (every detector redacting) against off, a 2 KB request.
async fn guardrails(rounds: usize, secs: f64) {
    let text = include_str!("../tests/data/guardrails/prompt_2k.txt");
    let body = serde_json::json!({"model": "chat", "messages": [{"role": "user", "content": text}], "max_tokens": 16});
    CHAT_BODY.set(serde_json::to_vec(&body).unwrap()).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(stub(l));
    let (child, addr, _dir) = start_gateway_with(&this_build(), up, "open = true\n", "");
    let off = Side { name: "off", child, addr, key: None, _dir };
    let on_toml = "open = true\n[guardrails]\ndefault = \"redact\"\n";
    let (child, addr, _dir) = start_gateway_with(&this_build(), up, on_toml, "");
    let on = Side { name: "on", child, addr, key: None, _dir };
    println!("tollgate guardrails overhead: redact-all against off, a {} byte request, {rounds} interleaved rounds of {secs} s; gateways on core 0, load + stub on core 1", CHAT_BODY.get().unwrap().len());
    compare(off, on, rounds, secs).await;
}

/// This build against another gateway binary (an earlier commit's), same configuration.
async fn against(old: &std::path::Path, rounds: usize, secs: f64) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(stub(l));
    let (child, addr, _dir) = start_gateway_with(old, up, "open = true\n", "");
    let before = Side { name: "before", child, addr, key: None, _dir };
    let (child, addr, _dir) = start_gateway_with(&this_build(), up, "open = true\n", "");
    let after = Side { name: "after", child, addr, key: None, _dir };
    println!("tollgate overhead: this build (after) against {} (before), {rounds} interleaved rounds of {secs} s; gateways on core 0, load + stub on core 1", old.display());
    compare(before, after, rounds, secs).await;
}

/// Interleaved rounds of `a` and `b` at c=1, a fixed 1,000 requests/s and c=64.
async fn compare(mut a: Side, mut b: Side, rounds: usize, secs: f64) {
    let client = reqwest::Client::builder().tcp_nodelay(true).pool_max_idle_per_host(1024).build().unwrap();
    wait_up(&client, a.addr).await;
    wait_up(&client, b.addr).await;
    let a_url = format!("http://{}/v1/chat/completions", a.addr);
    let b_url = format!("http://{}/v1/chat/completions", b.addr);
    let dur = Duration::from_secs_f64(secs);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    for (name, load) in
        [("closed c=1", Load::Closed(1)), ("fixed 1000 rps", Load::Rate(1000)), ("closed c=64", Load::Closed(64))]
    {
        run_as(&client, &a_url, a.key, load, Duration::from_millis(300)).await;
        run_as(&client, &b_url, b.key, load, Duration::from_millis(300)).await;
        let (mut sa, mut sb, mut cpu_a, mut cpu_b) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            for (side, url, samples, cpu) in [(&a, &a_url, &mut sa, &mut cpu_a), (&b, &b_url, &mut sb, &mut cpu_b)] {
                let t0 = cpu_ticks(side.child.id());
                let s = run_as(&client, url, side.key, load, dur).await;
                cpu.push((cpu_ticks(side.child.id()) - t0) as f64 / hz * 1e6 / (s.rps * dur.as_secs_f64()));
                samples.push(s);
            }
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            (v[v.len() / 2], v[0], v[v.len() - 1])
        };
        let col = |f: fn(&Sample) -> f64, v: &[Sample]| v.iter().map(f).collect::<Vec<_>>();
        let mut d50: Vec<f64> = sa.iter().zip(&sb).map(|(x, y)| y.p50_ms - x.p50_ms).collect();
        let mut d99: Vec<f64> = sa.iter().zip(&sb).map(|(x, y)| y.p99_ms - x.p99_ms).collect();
        let (o50, n50) = (med(&mut col(|s| s.p50_ms, &sa)), med(&mut col(|s| s.p50_ms, &sb)));
        let (o99, n99) = (med(&mut col(|s| s.p99_ms, &sa)), med(&mut col(|s| s.p99_ms, &sb)));
        let (orps, nrps) = (med(&mut col(|s| s.rps, &sa)), med(&mut col(|s| s.rps, &sb)));
        let (x50, x99) = (med(&mut d50), med(&mut d99));
        println!("\n[{name}]");
        for (side, p50, p99, rps, cpu) in [(&a, o50, o99, orps, &mut cpu_a), (&b, n50, n99, nrps, &mut cpu_b)] {
            println!("  {:<7}: p50 {:.3} ms ({:.3}..{:.3})  p99 {:.3} ms ({:.3}..{:.3})  {:.0} req/s ({:.0}..{:.0})  CPU {:.0} us/request", side.name, p50.0, p50.1, p50.2, p99.0, p99.1, p99.2, rps.0, rps.1, rps.2, med(cpu).0);
        }
        println!(
            "  added  : p50 {:.3} ms ({:.3}..{:.3})  p99 {:.3} ms ({:.3}..{:.3})  req/s {:+.1}%",
            x50.0,
            x50.1,
            x50.2,
            x99.0,
            x99.1,
            x99.2,
            (nrps.0 / orps.0 - 1.0) * 100.0
        );
    }
    let _ = a.child.kill();
    let _ = b.child.kill();
}

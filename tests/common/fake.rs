//! A scripted upstream on `127.0.0.1:0` for faults a real server will not produce on
//! demand. It writes raw HTTP/1.1 bytes, so what the gateway reads is exactly what
//! llama-server (or Ollama) would send: fixture bodies replayed with their recorded headers,
//! SSE as one chunk per event, and the faults: a status with a body, a stall after N events,
//! a connection cut mid-stream. Every request it receives is captured for assertions.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

#[derive(Clone, Debug)]
pub struct Captured {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Captured {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Clone)]
pub enum Reply {
    /// A recorded llama-server exchange from tests/fixtures/llama-server.
    Fixture(&'static str),
    /// A status line, extra headers and a JSON body (Content-Length framed).
    Status(u16, Vec<(&'static str, String)>, String),
    /// An SSE stream: these `data:` payloads, then the ending.
    Sse(Vec<String>, End),
    /// NDJSON lines (Ollama), chunked, then the ending.
    Ndjson(Vec<String>, End),
    /// Nothing until `release` is notified, then the reply (an upstream that is slow to answer).
    Hold(Arc<Notify>, Box<Reply>),
}

#[derive(Clone)]
pub enum End {
    /// A proper end (`data: [DONE]` for SSE) and the terminating chunk.
    Done,
    /// Silence until the client goes away, or until `release` is notified (then a proper end).
    Stall(Arc<Notify>),
    /// The connection is closed without the terminating chunk.
    Cut,
}

/// How the gateway reaches a fake: plain HTTP/1.1, or through an HTTPS front ([`super::tls`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    Http1,
    Tls(super::tls::Alpn),
}

pub struct Fake {
    pub addr: SocketAddr,
    /// The HTTPS front the gateway is pointed at, when there is one.
    pub front: Option<SocketAddr>,
    /// Notified each time a stalled stream ends because the gateway closed the connection.
    pub peer_closed: Arc<Notify>,
    pub captured: Arc<Mutex<Vec<Captured>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
    default: Arc<Mutex<Option<Reply>>>,
}

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama-server")
}

impl Fake {
    pub async fn start(script: Vec<Reply>) -> Fake {
        Self::start_on(script, Wire::Http1).await
    }

    /// A fake reached over `wire`.
    pub async fn start_on(script: Vec<Reply>, wire: Wire) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let front = match wire {
            Wire::Http1 => None,
            Wire::Tls(alpn) => Some(super::tls::front(addr, alpn).await),
        };
        let fake = Fake {
            addr,
            front,
            peer_closed: Arc::new(Notify::new()),
            captured: Arc::default(),
            script: Arc::new(Mutex::new(script.into())),
            default: Arc::default(),
        };
        let (cap, script, default) = (fake.captured.clone(), fake.script.clone(), fake.default.clone());
        let closed = fake.peer_closed.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (cap, script, default, closed) = (cap.clone(), script.clone(), default.clone(), closed.clone());
                tokio::spawn(async move { serve_conn(sock, cap, script, default, closed).await });
            }
        });
        fake
    }

    /// The reply to every request once the script is used up.
    pub fn set_default(&self, r: Reply) {
        *self.default.lock().unwrap() = Some(r);
    }

    pub fn push(&self, r: Reply) {
        self.script.lock().unwrap().push_back(r);
    }

    pub fn base(&self) -> String {
        format!("{}/v1", self.root())
    }

    pub fn root(&self) -> String {
        match self.front {
            Some(a) => format!("https://{a}"),
            None => format!("http://{}", self.addr),
        }
    }

    pub fn requests(&self) -> Vec<Captured> {
        self.captured.lock().unwrap().clone()
    }

    /// Inference requests only (not health checks).
    pub fn posts(&self) -> Vec<Captured> {
        self.requests().into_iter().filter(|c| c.method == "POST").collect()
    }
}

async fn read_request(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Captured> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let mut first = lines.next()?.split(' ');
            let method = first.next()?.to_owned();
            let path = first.next()?.to_owned();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())))
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 8192];
                let n = sock.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return Some(Captured { method, path, headers, body });
        }
        let mut chunk = [0u8; 8192];
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn serve_conn(
    mut sock: TcpStream,
    cap: Arc<Mutex<Vec<Captured>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
    default: Arc<Mutex<Option<Reply>>>,
    closed: Arc<Notify>,
) {
    let _ = sock.set_nodelay(true);
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut sock, &mut buf).await {
        let is_get = req.method == "GET";
        cap.lock().unwrap().push(req);
        let reply = if is_get {
            Reply::Fixture("models")
        } else {
            let next = script.lock().unwrap().pop_front();
            match next.or_else(|| default.lock().unwrap().clone()) {
                Some(r) => r,
                None => Reply::Status(
                    500,
                    vec![],
                    r#"{"error":{"message":"no scripted reply","type":"server_error"}}"#.into(),
                ),
            }
        };
        if !write_reply(&mut sock, reply, &closed).await {
            return;
        }
    }
}

/// Writes one reply; false when the connection must not be reused.
async fn write_reply(sock: &mut TcpStream, reply: Reply, closed: &Notify) -> bool {
    let reply = match reply {
        Reply::Hold(release, inner) => {
            release.notified().await;
            *inner
        }
        r => r,
    };
    match reply {
        Reply::Hold(..) => unreachable!("a held reply is unwrapped above"),
        Reply::Fixture(name) => {
            let dir = fixture_dir();
            let head = std::fs::read_to_string(dir.join(format!("{name}.headers"))).unwrap();
            let body = std::fs::read(dir.join(format!("{name}.body"))).unwrap();
            let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
            let close = head.to_ascii_lowercase().contains("connection: close");
            let head = head.replace("\r\n", "\n").trim_end().replace('\n', "\r\n") + "\r\n\r\n";
            if sock.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            if chunked {
                // llama-server sends one chunk per SSE event.
                let text = String::from_utf8(body).unwrap();
                for ev in text.split_inclusive("\n\n") {
                    if write_chunk(sock, ev.as_bytes()).await.is_err() {
                        return false;
                    }
                }
                sock.write_all(b"0\r\n\r\n").await.is_ok() && !close
            } else {
                sock.write_all(&body).await.is_ok() && !close
            }
        }
        Reply::Status(code, headers, body) => {
            let mut head = format!(
                "HTTP/1.1 {code} {}\r\nServer: llama.cpp\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n",
                reason(code),
                body.len()
            );
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            sock.write_all(head.as_bytes()).await.is_ok() && sock.write_all(body.as_bytes()).await.is_ok()
        }
        Reply::Sse(events, end) => {
            let head = "HTTP/1.1 200 OK\r\nServer: llama.cpp\r\nX-Accel-Buffering: no\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
            if sock.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            for e in events {
                if write_chunk(sock, format!("data: {e}\n\n").as_bytes()).await.is_err() {
                    return false;
                }
            }
            finish(sock, end, Some(b"data: [DONE]\n\n"), closed).await
        }
        Reply::Ndjson(lines, end) => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n";
            if sock.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            for l in lines {
                if write_chunk(sock, format!("{l}\n").as_bytes()).await.is_err() {
                    return false;
                }
            }
            finish(sock, end, None, closed).await
        }
    }
}

async fn finish(sock: &mut TcpStream, end: End, done: Option<&[u8]>, closed: &Notify) -> bool {
    match end {
        End::Done => {
            if let Some(d) = done {
                if write_chunk(sock, d).await.is_err() {
                    return false;
                }
            }
            sock.write_all(b"0\r\n\r\n").await.is_ok()
        }
        End::Stall(release) => {
            // Silence until released (then a proper end) or until the peer closes.
            let mut b = [0u8; 1];
            tokio::select! {
                _ = release.notified() => {
                    if let Some(d) = done {
                        if write_chunk(sock, d).await.is_err() {
                            return false;
                        }
                    }
                    sock.write_all(b"0\r\n\r\n").await.is_ok()
                }
                _ = sock.read(&mut b) => {
                    closed.notify_one();
                    false
                }
            }
        }
        End::Cut => {
            let _ = sock.shutdown().await;
            false
        }
    }
}

async fn write_chunk(sock: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    sock.write_all(format!("{:x}\r\n", data.len()).as_bytes()).await?;
    sock.write_all(data).await?;
    sock.write_all(b"\r\n").await?;
    sock.flush().await
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// A llama-server-style chat chunk carrying `content`.
pub fn chunk(content: &str) -> String {
    serde_json::json!({
        "choices": [{"finish_reason": null, "index": 0, "delta": {"content": content}}],
        "created": 1795983444, "id": "chatcmpl-fake", "model": "up", "system_fingerprint": "b1-0c1e570",
        "object": "chat.completion.chunk"
    })
    .to_string()
}

//! The exact response cache (moka) and the coalescing of identical requests in flight.
//!
//! Only deterministic requests are cached: temperature 0 or a fixed seed, one choice (and
//! embeddings). The key is the SHA-256 of the scope (the API key's name, unless the cache
//! is global), the endpoint, the alias with the identity of its deployments (kind, upstream
//! model or the local model's SHA-256), and the request body normalised (keys sorted;
//! `stream`, `stream_options` and `user` left out, since they change only how or for whom
//! the answer is delivered). A value is the whole response as a non-streamed body; a streamed
//! request is answered from it as SSE. Clients' `cache-control: no-cache` skips the lookup,
//! `no-store` skips lookup and store.
//!
//! Coalescing: the first request for a key leads; identical requests that arrive while it
//! runs wait for it (up to [`FOLLOW_TIMEOUT`]) and are answered from the cache, so the
//! upstream sees one call. If the leader fails, a waiting request leads in turn.
//!
//! With `[cluster]` a second tier is shared by every replica ([`crate::cluster::cache`]): a
//! local miss looks in Redis, and a miss there takes the key's short lock, so that identical
//! requests on two replicas also make one upstream call (the other replica waits for the
//! stored answer). Answers are stored in both tiers; Redis down, the local tier serves alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::cluster::cache::Shared;
use crate::cluster::Cluster;
use crate::config::CacheConfig;
use crate::protocol::chunk::Head;
use crate::protocol::{Endpoint, Usage, ValidRequest};
use crate::router::{Alias, Deployment};

pub const FOLLOW_TIMEOUT: Duration = Duration::from_secs(300);

pub type Key = [u8; 32];

/// A cached answer: the non-streamed body (its `model` is the alias), and who made it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Cached {
    pub body: Map<String, Value>,
    pub usage: Option<Usage>,
    pub deployment: String,
}

pub struct ResponseCache {
    entries: moka::future::Cache<Key, Arc<Cached>>,
    inflight: Mutex<HashMap<Key, tokio::sync::watch::Receiver<()>>>,
    global: bool,
    /// The shared tier (`[cluster]`), with the bounds its entries keep.
    shared: Option<Arc<Cluster>>,
    ttl: Duration,
    max_entries: u64,
    max_entry_bytes: usize,
}

/// What a lookup found.
pub enum Lookup {
    Hit(Arc<Cached>),
    /// No entry: this request computes it; dropping the guard releases the followers.
    Lead(Leader),
}

pub struct Leader {
    cache: Arc<ResponseCache>,
    key: Key,
    /// Registered in the in-flight map (a real leader), so its end releases followers.
    registered: bool,
    /// Holds the key's lock in the shared tier (released when it ends).
    shared_lock: bool,
    _done: tokio::sync::watch::Sender<()>,
}

impl Leader {
    pub fn key(&self) -> Key {
        self.key
    }
    pub fn cache(&self) -> &Arc<ResponseCache> {
        &self.cache
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if self.registered {
            self.cache.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
        }
        if let (true, Some(c)) = (self.shared_lock, &self.cache.shared) {
            c.cache_unlock(&hex::encode(self.key));
        }
    }
}

/// What the client's `cache-control` allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientPolicy {
    pub lookup: bool,
    pub store: bool,
}

impl ClientPolicy {
    pub fn from_headers(h: &http::HeaderMap) -> Self {
        let v = h.get(http::header::CACHE_CONTROL).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
        let has = |d: &str| v.split(',').any(|p| p.trim() == d);
        ClientPolicy { lookup: !has("no-cache") && !has("no-store"), store: !has("no-store") }
    }
}

impl ResponseCache {
    pub fn new(cfg: &CacheConfig, shared: Option<Arc<Cluster>>) -> Option<Arc<Self>> {
        cfg.enabled.then(|| {
            Arc::new(ResponseCache {
                entries: moka::future::Cache::builder().max_capacity(cfg.max_entries).time_to_live(cfg.ttl).build(),
                inflight: Mutex::new(HashMap::new()),
                global: cfg.global,
                shared,
                ttl: cfg.ttl,
                max_entries: cfg.max_entries,
                max_entry_bytes: cfg.max_entry_bytes,
            })
        })
    }

    /// The key of a cacheable request; `None` for one that is not deterministic.
    /// `canary`: the canary version this request was assigned to (its answers are its own).
    pub fn key(
        &self,
        caller: Option<&str>,
        alias: &Alias,
        canary: Option<&Deployment>,
        req: &ValidRequest,
    ) -> Option<Key> {
        let deterministic = req.endpoint == Endpoint::Embeddings
            || (req.sampling.n == 1 && (req.sampling.temperature == Some(0.0) || req.sampling.seed.is_some()));
        if !deterministic {
            return None;
        }
        let mut h = Sha256::new();
        h.update(if self.global { "*" } else { caller.unwrap_or("") }.as_bytes());
        h.update([0]);
        h.update(req.endpoint.as_str().as_bytes());
        h.update([0]);
        h.update(alias.name.as_bytes());
        for d in alias.deployments.iter().map(|d| &**d).chain(canary) {
            h.update([0]);
            h.update(d.name().as_bytes());
            h.update(d.cfg.kind.name().as_bytes());
            match &d.cfg.kind {
                crate::config::DeploymentKind::OpenAi(r) | crate::config::DeploymentKind::Ollama(r) => {
                    h.update(r.base_url.as_bytes());
                    h.update(r.model.as_bytes());
                }
                crate::config::DeploymentKind::Local(_) => h.update(d.model_sha256().unwrap_or_default().as_bytes()),
            }
        }
        h.update([0]);
        let mut canon = Vec::with_capacity(256);
        write_canonical(&mut canon, &Value::Object(req.body.clone()), true);
        h.update(&canon);
        Some(h.finalize().into())
    }

    pub async fn lookup(self: &Arc<Self>, key: Key) -> Lookup {
        let deadline = tokio::time::Instant::now() + FOLLOW_TIMEOUT;
        loop {
            if let Some(v) = self.entries.get(&key).await {
                return Lookup::Hit(v);
            }
            let found = {
                let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
                match inflight.get(&key) {
                    Some(rx) => Ok(rx.clone()),
                    None => {
                        let (tx, rx) = tokio::sync::watch::channel(());
                        inflight.insert(key, rx);
                        Err(Leader { cache: self.clone(), key, registered: true, shared_lock: false, _done: tx })
                    }
                }
            };
            let mut wait = match found {
                Ok(rx) => rx,
                Err(leader) => return self.lead_shared(leader).await,
            };
            // The leader's sender is dropped when it ends, successful or not.
            if tokio::time::timeout_at(deadline, wait.changed()).await.is_err() {
                return Lookup::Lead(self.follower_guard(key));
            }
        }
    }

    /// This replica leads the key: unless the shared tier has the answer (or another
    /// replica is computing it and stores it in time), this request computes it.
    async fn lead_shared(self: &Arc<Self>, mut leader: Leader) -> Lookup {
        let Some(c) = &self.shared else { return Lookup::Lead(leader) };
        match c.cache_lookup(&hex::encode(leader.key), Duration::from_millis(crate::cluster::cache::LOCK_MS)).await {
            Shared::Hit(bytes) => match serde_json::from_slice::<Cached>(&bytes) {
                Ok(v) => {
                    let v = Arc::new(v);
                    self.entries.insert(leader.key, v.clone()).await;
                    // Dropping the guard releases this replica's followers to the local entry.
                    Lookup::Hit(v)
                }
                Err(_) => Lookup::Lead(leader),
            },
            Shared::Lead => {
                leader.shared_lock = true;
                Lookup::Lead(leader)
            }
            Shared::Alone => Lookup::Lead(leader),
        }
    }

    /// A guard that stores under `key` without leading (the client skipped the lookup).
    pub fn follower_guard(self: &Arc<Self>, key: Key) -> Leader {
        let (tx, _rx) = tokio::sync::watch::channel(());
        Leader { cache: self.clone(), key, registered: false, shared_lock: false, _done: tx }
    }

    pub async fn insert(&self, key: Key, value: Cached) {
        if let Some(c) = &self.shared {
            match serde_json::to_vec(&value) {
                Ok(bytes) if bytes.len() <= self.max_entry_bytes => {
                    c.cache_put(&hex::encode(key), bytes, self.ttl, self.max_entries).await
                }
                _ => {}
            }
        }
        self.entries.insert(key, Arc::new(value)).await;
    }
}

/// JSON with object keys sorted, so equal requests hash equally whatever their key order.
fn write_canonical(out: &mut Vec<u8>, v: &Value, top: bool) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            let mut first = true;
            for k in keys {
                if top && matches!(k.as_str(), "stream" | "stream_options" | "user") {
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                let _ = serde_json::to_writer(&mut *out, k);
                out.push(b':');
                write_canonical(out, &m[k], false);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(out, x, false);
            }
            out.push(b']');
        }
        other => {
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

/// A cached body replayed as the chunks of a stream (chat or completions): what a live stream
/// of the same answer sends, with the body's own `id`, `created` and `system_fingerprint`:
/// the reasoning, the content (with its `logprobs`), then the tool calls whole, one delta.
pub fn as_chunks(body: &Map<String, Value>, include_usage: bool) -> Vec<Map<String, Value>> {
    let head = Head::of_body(body);
    let choice = body.get("choices").and_then(|c| c.get(0));
    let field = |v: Option<&Value>| v.cloned().unwrap_or(Value::Null);
    let finish = field(choice.and_then(|c| c.get("finish_reason")));
    let logprobs = field(choice.and_then(|c| c.get("logprobs")));
    let mut out = Vec::with_capacity(4);
    if head.is_chat() {
        let msg = choice.and_then(|c| c.get("message"));
        out.push(head.role_chunk());
        if let Some(r) = msg.and_then(|m| m.get("reasoning_content")).filter(|r| !r.is_null()) {
            out.push(head.reasoning_chunk(r.clone()));
        }
        let content = field(msg.and_then(|m| m.get("content")));
        let calls = msg.and_then(|m| m.get("tool_calls")).and_then(Value::as_array);
        if !content.is_null() || calls.is_none() {
            let delta = crate::protocol::chunk::fields([("content", content)]);
            out.push(head.choice_chunk(0, delta, logprobs, Value::Null));
        }
        if let Some(calls) = calls {
            let indexed: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let mut c = c.as_object().cloned().unwrap_or_default();
                    c.shift_insert(0, "index".into(), i.into());
                    Value::Object(c)
                })
                .collect();
            let delta = crate::protocol::chunk::fields([("tool_calls", Value::Array(indexed))]);
            out.push(head.choice_chunk(0, delta, Value::Null, Value::Null));
        }
    } else {
        let delta = crate::protocol::chunk::fields([("content", field(choice.and_then(|c| c.get("text"))))]);
        out.push(head.choice_chunk(0, delta, logprobs, Value::Null));
    }
    out.push(head.finish_chunk(finish));
    if let Some(u) = body.get("usage").filter(|_| include_usage) {
        out.push(head.usage_chunk(u.clone()));
    }
    out
}

/// The body a finished stream amounts to, for storing it (chat or completions).
pub fn body_from_stream(
    endpoint: Endpoint,
    alias: &str,
    text: String,
    finish: Option<String>,
    usage: Option<Usage>,
) -> Map<String, Value> {
    let id = format!("cached-{}", uuid::Uuid::new_v4().simple());
    Head::new(endpoint, id, crate::clock::now_s(), alias.to_owned(), None).body(text, None, finish, usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_ignores_key_order_and_delivery_fields() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":2,"x":[1,{"q":1,"p":2}]},"stream":true}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":[1,{"p":2,"q":1}],"y":2},"b":1,"user":"u"}"#).unwrap();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        write_canonical(&mut x, &a, true);
        write_canonical(&mut y, &b, true);
        assert_eq!(x, y);
    }

    #[test]
    fn client_cache_control() {
        let mut h = http::HeaderMap::new();
        assert_eq!(ClientPolicy::from_headers(&h), ClientPolicy { lookup: true, store: true });
        h.insert(http::header::CACHE_CONTROL, "No-Cache".parse().unwrap());
        assert_eq!(ClientPolicy::from_headers(&h), ClientPolicy { lookup: false, store: true });
        h.insert(http::header::CACHE_CONTROL, "max-age=0, no-store".parse().unwrap());
        assert_eq!(ClientPolicy::from_headers(&h), ClientPolicy { lookup: false, store: false });
    }

    fn strings(chunks: &[Map<String, Value>]) -> Vec<String> {
        chunks.iter().map(|c| serde_json::to_string(c).unwrap()).collect()
    }

    #[test]
    fn a_replay_reads_like_the_live_stream_byte_for_byte() {
        let usage = Usage { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3, cached_tokens: None };
        for endpoint in [Endpoint::Chat, Endpoint::Completions] {
            let live = Head::new(endpoint, "id-1".into(), 5, "m".into(), Some("fp".into()));
            let body = live.body("Hi \u{e9}", None, "stop", Some(usage));
            let mut want = if endpoint == Endpoint::Chat { vec![live.role_chunk()] } else { vec![] };
            want.extend([live.text_chunk("Hi \u{e9}"), live.finish_chunk("stop")]);
            assert_eq!(strings(&as_chunks(&body, false)), strings(&want), "{endpoint:?}");
            want.push(live.usage_chunk(usage.to_json()));
            assert_eq!(strings(&as_chunks(&body, true)), strings(&want), "{endpoint:?}");
        }
        let chat = strings(&as_chunks(&body_from_stream(Endpoint::Chat, "a", "Hi".into(), None, None), true));
        assert_eq!(chat.len(), 3, "no usage, no usage chunk");
        assert!(
            chat[1].ends_with(
                r#","model":"a","choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}]}"#
            ),
            "{}",
            chat[1]
        );
        assert!(chat[1].starts_with(r#"{"id":"cached-"#), "{}", chat[1]);
    }

    #[test]
    fn a_stream_is_stored_as_its_body() {
        let usage = Usage { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3, cached_tokens: Some(1) };
        let mut b = body_from_stream(Endpoint::Completions, "alias", "txt".into(), Some("length".into()), Some(usage));
        assert!(b["id"].as_str().unwrap().starts_with("cached-"));
        b.insert("id".into(), "ID".into());
        b.insert("created".into(), 7.into());
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"id":"ID","object":"text_completion","created":7,"model":"alias","choices":[{"text":"txt","index":0,"logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"prompt_tokens_details":{"cached_tokens":1}}}"#
        );
    }
}

//! One inference request, from validated bytes to an [`Answer`], in named steps. The HTTP
//! layer (`api/inference.rs`) extracts the caller and the body, calls [`serve`], and renders
//! what it returns; a batch line comes through the same path (`Origin::batch_id`).
//!
//! The steps, in order:
//! 1. [`protocol::validate`] the body and apply its named prompt; open the record
//!    ([`record_for`]).
//! 2. Resolve the alias the caller may use ([`resolve_alias`]); feed field health.
//! 3. An `auto` alias chooses its small or large alias ([`auto::choose`]: the rules, then
//!    the optional classifier).
//! 4. The key's limits and budgets ([`admit`]): a refusal is recorded like any answer.
//! 5. The canary's sticky assignment and the engine's seed ([`engine_seed`]).
//! 6. The response cache: a hit is answered at once ([`answer_hit`]); a miss may lead the
//!    identical requests that follow.
//! 7. Dispatch through the router, escalating to the large alias when the small one failed
//!    or was cut at `max_tokens` ([`dispatch`]).
//! 8. A whole body is tapped, priced, cached and recorded here ([`answer_full`]); a stream
//!    is handed on with its permit, record and tap ([`Streaming`]), and the SSE body
//!    finishes the record when it ends.
//!
//! A request whose client leaves while it is being routed is recorded as a 499
//! ([`Abandoned`]): upstream work may have been spent on it.

pub mod auto;
mod guard;

pub use guard::{guard_body, policy};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};
use tokio::sync::OwnedSemaphorePermit;

use crate::accounting::{Accounting, RequestRecord, Tap, VersionOutcome};
use crate::backend::{BackendRequest, Chunk, EventStream, Priority};
use crate::cache::{Cached, ClientPolicy, Leader, Lookup, ResponseCache};
use crate::clock::ms;
use crate::config::{ApiKeyConfig, AuthConfig, Config, DeploymentKind};
use crate::guardrails;
use crate::pricing::Cost;
use crate::protocol::error::ApiError;
use crate::protocol::{self, Dialect, Endpoint, Prompt, ValidRequest};
use crate::router::{self, Alias, Committed, Deployment, Routes};

/// The alias name every unknown model is recorded under: clients must not grow the metrics.
const UNKNOWN_ALIAS: &str = "_unknown";

/// What a reload replaces.
pub struct Live {
    pub routes: Routes,
    pub auth: AuthConfig,
    /// Named system prompts (`prompts/`), referred to by `system_prompt`.
    pub prompts: BTreeMap<String, String>,
    /// The configuration these came from (a promotion loads versions with its settings).
    pub config: Arc<Config>,
}

/// What one request uses of the gateway's state.
pub struct Context<'a> {
    pub live: &'a Live,
    pub accounting: &'a Arc<Accounting>,
    pub cache: Option<&'a Arc<ResponseCache>>,
    /// Keep prompt and completion text in the record (`log.content`).
    pub log_content: bool,
}

/// Who is calling.
#[derive(Clone, Debug)]
pub enum Caller {
    /// Open mode, no key presented.
    Anonymous,
    Key(ApiKeyConfig),
}

impl Caller {
    pub fn name(&self) -> Option<&str> {
        match self {
            Caller::Anonymous => None,
            Caller::Key(k) => Some(&k.name),
        }
    }
    pub fn allows(&self, alias: &str) -> bool {
        match self {
            Caller::Anonymous => true,
            Caller::Key(k) => k.allows(alias),
        }
    }
}

/// Who sent a request and how: a client over HTTP, or a batch line.
pub struct Origin<'a> {
    pub caller: Caller,
    /// `x-session-id`: the engine's session and the canary's sticky identity.
    pub session: Option<&'a str>,
    pub traceparent: Option<&'a str>,
    /// The client's `cache-control` for the response cache.
    pub cache: ClientPolicy,
    /// The batch this request is a line of (batch priority, no rate limits).
    pub batch_id: Option<String>,
    /// The API the client spoke (a Responses or Messages request comes as chat).
    pub dialect: Dialect,
    /// A Responses request as the client wrote it, for the deployments that pass it through.
    pub native: Option<Arc<crate::backend::NativeResponses>>,
    /// The guardrails' verdict on the client's body, when its handler scanned it before
    /// translating it ([`guard_body`]); `None`: [`serve`] scans the body it is given.
    pub guarded: Option<guardrails::Verdict>,
}

/// A refused or failed request: the error the client gets, and its record when one was
/// opened (a body that did not validate has none).
/// Both boxed: the error path is the cold one, and keeps every `Result` small.
pub struct Refused {
    pub error: Box<ApiError>,
    pub record: Option<Box<RequestRecord>>,
}

impl Refused {
    pub fn bare(error: ApiError) -> Self {
        Refused { error: Box::new(error), record: None }
    }
    fn with(error: ApiError, rec: RequestRecord) -> Self {
        Refused { error: Box::new(error), record: Some(Box::new(rec)) }
    }

    /// Records the refusal (if a record was opened) and gives back the error to render.
    pub fn finish(self, accounting: &Accounting, start: Instant) -> ApiError {
        self.finish_as(accounting, start, |e| e.status)
    }

    /// As [`Refused::finish`], for a dialect that answers the error with another status
    /// (`status`: what the client will get), so that the record says what was sent.
    pub fn finish_as(
        self,
        accounting: &Accounting,
        start: Instant,
        status: impl Fn(&ApiError) -> http::StatusCode,
    ) -> ApiError {
        if let Some(mut rec) = self.record.map(|r| *r) {
            rec.status = status(&self.error).as_u16();
            rec.error = Some(self.error.kind());
            rec.total_ms = ms(start.elapsed());
            accounting.finish(rec);
        }
        *self.error
    }
}

/// The response cache's part in an answer (`x-tollgate-cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
}

/// What the response headers say about an answer, whichever way it is sent.
pub struct Meta {
    /// The deployment that answered.
    pub deployment: String,
    /// The registry version that answered, `NAME@X.Y.Z`.
    pub version: Option<String>,
    /// `None` when the request was not cacheable.
    pub cache: Option<CacheStatus>,
    /// What it cost and saved (a whole body or a hit; a stream's cost is known at its end).
    pub cost: Option<Cost>,
    /// The key's rate-limit state (`x-ratelimit-*`).
    pub limits: Vec<(HeaderName, HeaderValue)>,
    /// The small-model router's decision.
    pub route: Option<String>,
}

/// What [`serve`] answers.
pub enum Answer {
    /// A whole JSON body (`timings`, when the backend sent them, are its own), and the
    /// upstream's bytes of it while nothing but `model` differs from them.
    Full { body: Map<String, Value>, meta: Meta, raw: Option<bytes::Bytes> },
    /// A cache hit for a streaming request: the stored answer as chunks, usage priced.
    Replay { chunks: Vec<Chunk>, meta: Meta },
    /// A live stream, with everything its body must release or finish when it ends.
    Stream { stream: Box<Streaming>, meta: Meta },
}

impl Answer {
    pub fn meta(&self) -> &Meta {
        match self {
            Answer::Full { meta, .. } | Answer::Replay { meta, .. } | Answer::Stream { meta, .. } => meta,
        }
    }

    /// Whether the answer is in the Responses API's own shape (its deployment passed the
    /// request through), not a chat completion.
    pub fn is_native_response(&self) -> bool {
        match self {
            Answer::Full { body, .. } => crate::backend::NativeResponses::is_native(body),
            Answer::Stream { stream, .. } => crate::backend::NativeResponses::is_native(&stream.first),
            Answer::Replay { .. } => false,
        }
    }
}

/// A committed stream and what goes with it to the client's body.
pub struct Streaming {
    pub first: Box<Chunk>,
    pub rest: EventStream,
    /// The alias the client asked for, written into every chunk's `model`.
    pub alias: String,
    pub include_usage: bool,
    pub stall: Duration,
    pub deployment: Arc<Deployment>,
    pub permit: OwnedSemaphorePermit,
    pub record: RequestRecord,
    pub tap: Tap,
    /// Store the finished stream in the response cache (the leader guard releases the
    /// requests waiting for it when the stream ends).
    pub store: Option<(Leader, Endpoint)>,
}

/// Serves one request (see the module header for the steps).
pub async fn serve(
    ctx: &Context<'_>,
    endpoint: Endpoint,
    mut origin: Origin<'_>,
    bytes: &[u8],
    rid: &str,
    start: Instant,
) -> Result<Answer, Refused> {
    let mut req = protocol::validate(endpoint, bytes).map_err(Refused::bare)?;
    let policy = policy(ctx, &origin.caller, &req.model);
    let verdict = match (origin.guarded.take(), &policy) {
        (Some(v), _) => Some(v),
        (None, Some(p)) => Some(guard::guard_request(p, &mut req)?),
        (None, None) => None,
    };
    protocol::apply_named_prompt(&mut req, &ctx.live.prompts).map_err(Refused::bare)?;
    let mut rec = record_for(&req, rid, &origin)?;
    if ctx.accounting.telemetry.is_some() {
        rec.trace = Some(Box::new(crate::accounting::telemetry::Trace::start(origin.traceparent)));
    }
    let blocked = verdict.and_then(|v| {
        rec.guardrails = (!v.hits.is_empty()).then(|| Arc::new(std::sync::Mutex::new(v.hits)));
        v.blocked
    });
    let asked = resolve_alias(ctx, &req, &origin.caller, &mut rec)?;
    if let Some(e) = blocked {
        return Err(Refused { error: e, record: Some(Box::new(rec)) });
    }
    ctx.accounting.monitor.observe_fields(&asked.name, &req.body);
    let (alias, escalation) = auto::choose(ctx, asked, &req, &origin.caller, rid, &mut rec).await?;
    let limits = admit(ctx, &origin, &req, &mut rec).await?;
    let identity = identity(origin.session, req.user.as_deref(), &origin.caller).to_owned();
    let canary = alias.picks_canary(&identity).cloned();
    let seed = engine_seed(req.sampling.seed);
    rec.sampler = Some(req.sampling.clone());

    // A passed-through Responses request is answered by its upstream's own state: not cached.
    let cache_key = ctx
        .cache
        .filter(|_| origin.native.is_none())
        .and_then(|c| c.key(origin.caller.name(), &alias, canary.as_deref(), &req).map(|k| (c.clone(), k)));
    let mut leader: Option<Leader> = None;
    if let (Some((cache, key)), true) = (&cache_key, origin.cache.lookup) {
        match cache.lookup(*key).await {
            Lookup::Hit(hit) => return Ok(answer_hit(ctx, hit, rec, &alias, &req, start, limits)),
            Lookup::Lead(l) => leader = Some(l),
        }
    }
    let cacheable = cache_key.is_some();
    let store = if origin.cache.store { cache_key } else { None };

    let traceparent = match &rec.trace {
        Some(t) => Some(t.upstream_traceparent()),
        None => origin.traceparent.map(str::to_owned),
    };
    let prompt_text = prompt_text(&req.prompt);
    let (include_usage, client_seed, req_endpoint) = (req.include_usage, req.sampling.seed, req.endpoint);
    let fingerprint = crate::policy::affinity::fingerprint(origin.session, &req);
    let br = BackendRequest {
        req: Arc::new(req),
        request_id: rid.to_owned(),
        traceparent,
        priority: if origin.batch_id.is_some() { Priority::Batch } else { Priority::Interactive },
        fingerprint,
        session: session_key(origin.session, &origin.caller),
        seed,
        native: origin.native.clone(),
    };
    rec.dispatched_ms = Some(ms(start.elapsed()));
    let mut abandoned = Abandoned { rec: Some(rec.clone()), accounting: ctx.accounting.clone(), start };
    let first_try = canary.is_some();
    let dispatched = dispatch(ctx, alias, escalation, &br, &identity, first_try, &mut rec, start).await;
    abandoned.rec = None;
    let d = match dispatched {
        Ok(d) => d,
        Err(f) => {
            rec.deployment = f.deployment;
            rec.attempts = f.attempts;
            return Err(Refused::with(f.error, rec));
        }
    };
    served_by(&mut rec, &d.deployment);
    rec.attempts = d.attempts;
    let local = matches!(d.deployment.cfg.kind, DeploymentKind::Local(_));
    // The engine drew with `seed`; a remote upstream got the client's own value, if any.
    rec.seed = if local { Some(i64::from(seed)) } else { client_seed };
    let meta = Meta {
        deployment: d.deployment.name().to_owned(),
        version: rec.model_version.clone(),
        cache: cacheable.then_some(CacheStatus::Miss),
        cost: None,
        limits,
        route: rec.route.clone(),
    };
    let mut tap = Tap::with_content(start, prompt_text, ctx.log_content);
    match d.reply {
        Committed::Full { mut body, usage, mut raw } => {
            if let Some(p) = &policy {
                let mut hits = guardrails::Hits::default();
                let withheld = guardrails::scan_response(p, &mut body, &mut hits);
                if !hits.is_empty() {
                    // A redaction changed the body: it is written from the parse.
                    raw = None;
                    let all = rec.guardrails.get_or_insert_with(Default::default);
                    all.lock().expect("the hits lock is never poisoned").merge(&hits);
                }
                if let Some(detector) = withheld {
                    // The answer was paid for: its usage is recorded with the refusal.
                    tap_body(Tap::new(start, None), &body, usage, &mut rec);
                    return Err(Refused::with(guardrails::withheld(detector), rec));
                }
            }
            let full = Full { body, usage, raw, alias: &br.req.model, deployment: &d.deployment, permit: d.permit };
            Ok(answer_full(ctx, full, rec, tap, store, leader, meta).await)
        }
        Committed::Stream { mut first, mut rest } => {
            if let Some(p) = policy {
                let hits = rec.guardrails.get_or_insert_with(Default::default).clone();
                let guard = guardrails::stream::Guard::new(p, hits);
                rest = match guardrails::stream::guard(guard, &mut first, rest, crate::backend::BackendError::Rejected)
                {
                    Ok(s) => s,
                    Err(detector) => return Err(Refused::with(guardrails::withheld(detector), rec)),
                };
            }
            let store = store.map(|(cache, key)| {
                tap.keep_text();
                // The leader guard (if this request leads) goes with the stream, so
                // identical requests wait for it to finish and then hit.
                (leader.take().unwrap_or_else(|| cache.follower_guard(key)), req_endpoint)
            });
            let stream = Streaming {
                first,
                rest,
                alias: br.req.model.clone(),
                include_usage,
                stall: d.deployment.cfg.stall_timeout,
                deployment: d.deployment.clone(),
                permit: d.permit,
                record: rec,
                tap,
                store,
            };
            Ok(Answer::Stream { stream: Box::new(stream), meta })
        }
    }
}

/// The prompt tokens of a chat request, counted by the first deployment of its alias that
/// can count them itself (the engine); `None` when none can. The caller must be allowed the
/// alias, as for a completion.
pub fn count_tokens(ctx: &Context<'_>, caller: &Caller, bytes: &[u8]) -> Result<Option<u64>, ApiError> {
    let mut req = protocol::validate(Endpoint::Chat, bytes)?;
    protocol::apply_named_prompt(&mut req, &ctx.live.prompts)?;
    let alias = match ctx.live.routes.get(&req.model) {
        Some(a) if caller.allows(&a.name) => a.clone(),
        _ => return Err(ApiError::model_not_found(&req.model)),
    };
    for d in alias.all() {
        if let Some(n) = d.backend.count_tokens(&req) {
            return n.map(Some);
        }
    }
    Ok(None)
}

/// Opens the request's record: who, what, and its attribution tags.
pub fn record_for(req: &ValidRequest, rid: &str, origin: &Origin<'_>) -> Result<RequestRecord, Refused> {
    let mut rec = RequestRecord::new(rid.to_owned(), req.endpoint, req.model.clone(), req.stream);
    rec.key = origin.caller.name().map(str::to_owned);
    rec.user = req.user.clone();
    rec.batch_id = origin.batch_id.clone();
    if let Some(name) = origin.dialect.endpoint_name() {
        rec.endpoint = name;
    }
    match req.body.get("metadata") {
        None | Some(Value::Null) => Ok(rec),
        Some(m @ Value::Object(_)) => {
            rec.tags = Some(m.clone());
            Ok(rec)
        }
        Some(_) => {
            let e = ApiError::invalid_request("'metadata' must be an object of string tags.", Some("metadata"));
            Err(Refused::with(e, rec))
        }
    }
}

/// The alias the request names, if it exists and the caller may use it. An unknown name is
/// recorded under one series ([`UNKNOWN_ALIAS`]).
pub fn resolve_alias(
    ctx: &Context<'_>,
    req: &ValidRequest,
    caller: &Caller,
    rec: &mut RequestRecord,
) -> Result<Arc<Alias>, Refused> {
    match ctx.live.routes.get(&req.model) {
        Some(a) if caller.allows(&a.name) => Ok(a.clone()),
        _ => {
            rec.alias = UNKNOWN_ALIAS.to_owned();
            Err(Refused::with(ApiError::model_not_found(&req.model), rec.clone()))
        }
    }
}

/// The key's limits and budgets: the `x-ratelimit-*` headers for the answer, and the hold
/// on the record (settled when it is finished). Batch lines run below interactive traffic
/// and are paced by the batch runner instead.
pub async fn admit(
    ctx: &Context<'_>,
    origin: &Origin<'_>,
    req: &ValidRequest,
    rec: &mut RequestRecord,
) -> Result<Vec<(HeaderName, HeaderValue)>, Refused> {
    let (Caller::Key(k), None) = (&origin.caller, &origin.batch_id) else {
        return Ok(Vec::new());
    };
    let ask = crate::accounting::limits::Ask {
        key: k,
        prompt_bytes: prompt_bytes(&req.prompt),
        max_tokens: req.sampling.max_tokens.map(u64::from),
        now_ms: rec.started_at_ms,
    };
    match ctx.accounting.limits.admit(&ask).await {
        Ok(Some(mut a)) => {
            let headers = std::mem::take(&mut a.headers);
            rec.admission = Some(Arc::new(a));
            Ok(headers)
        }
        Ok(None) => Ok(Vec::new()),
        Err(e) => Err(Refused::with(e, rec.clone())),
    }
}

/// The seed an engine draws with (recorded, so that the answer can be reproduced): the
/// client's, folded into the engine's range, or a fresh one.
pub fn engine_seed(client: Option<i64>) -> u32 {
    match client {
        Some(v) => (v as u64 & 0xFFFF_FFFF).min(0xFFFF_FFFE) as u32,
        None => rand::random::<u32>() & 0x7FFF_FFFF,
    }
}

/// Dispatches to the alias; when the small alias of an `auto` router failed (or, with
/// `escalate_on_length`, was cut at `max_tokens`), the small answer is accounted on its own
/// and the large alias is asked.
#[allow(clippy::too_many_arguments)]
async fn dispatch(
    ctx: &Context<'_>,
    alias: Arc<Alias>,
    escalation: Option<auto::Escalation>,
    br: &BackendRequest,
    identity: &str,
    canary: bool,
    rec: &mut RequestRecord,
    start: Instant,
) -> Result<router::Dispatched, router::Failed> {
    let dispatched = router::dispatch(&alias, order(&alias, br, canary), br).await;
    let Some(esc) = escalation else {
        return dispatched;
    };
    let escalate = match &dispatched {
        Err(_) => true,
        Ok(d) => esc.on_length && matches!(&d.reply, Committed::Full { body, .. } if finish_of(body) == Some("length")),
    };
    if !escalate {
        return dispatched;
    }
    if let Ok(d) = dispatched {
        // The small model's answer was paid for: it is accounted on its own.
        let mut small = rec.clone();
        small.id = uuid::Uuid::new_v4().simple().to_string();
        small.admission = None;
        small.error = Some("escalated");
        small.deployment = Some(d.deployment.name().to_owned());
        small.backend_kind = Some(d.deployment.cfg.kind.name());
        small.price = d.deployment.cfg.price.clone();
        small.downgrade_price = None;
        if let Committed::Full { body, usage, .. } = &d.reply {
            tap_body(Tap::new(start, None), body, *usage, &mut small);
        }
        ctx.accounting.finish(small);
    }
    rec.route = rec.route.take().map(|r| format!("{r}; escalated={}", esc.large.name));
    rec.downgrade_price = None;
    let large = esc.large;
    let canary = large.picks_canary(identity).is_some();
    router::dispatch(&large, order(&large, br, canary), br).await
}

/// The deployments to try, in order; the one holding a passed-through conversation's state
/// comes first.
fn order(alias: &Alias, br: &BackendRequest, canary: bool) -> Vec<Arc<Deployment>> {
    let mut v = alias.order_for(br.fingerprint, canary);
    if let Some(pinned) = br.native.as_ref().and_then(|n| n.pinned.as_deref()) {
        if let Some(i) = v.iter().position(|d| d.name() == pinned) {
            let d = v.remove(i);
            v.insert(0, d);
        }
    }
    v
}

/// A whole body as the router committed it.
struct Full<'a> {
    body: Map<String, Value>,
    usage: Option<protocol::Usage>,
    raw: Option<bytes::Bytes>,
    alias: &'a str,
    deployment: &'a Deployment,
    permit: OwnedSemaphorePermit,
}

/// A whole body: tapped, priced, stored in the cache, recorded; its `model` is the alias.
async fn answer_full(
    ctx: &Context<'_>,
    full: Full<'_>,
    mut rec: RequestRecord,
    tap: Tap,
    store: Option<(Arc<ResponseCache>, crate::cache::Key)>,
    leader: Option<Leader>,
    mut meta: Meta,
) -> Answer {
    let Full { mut body, usage, raw, alias, deployment, permit } = full;
    if let Some(m) = body.get_mut("model") {
        *m = Value::String(alias.to_owned());
    }
    tap_body(tap, &body, usage, &mut rec);
    rec.price_it();
    meta.cost = rec.cost;
    drop(permit);
    if let Some((cache, key)) = store {
        let cached = Cached { body: body.clone(), usage, deployment: deployment.name().to_owned() };
        cache.insert(key, cached).await;
    }
    drop(leader);
    ctx.accounting.finish(rec);
    Answer::Full { body, meta, raw }
}

/// Answers from the response cache: the stored body, or its chunks for a stream. The
/// record carries the original usage and marks the hit.
fn answer_hit(
    ctx: &Context<'_>,
    hit: Arc<Cached>,
    mut rec: RequestRecord,
    alias: &Alias,
    req: &ValidRequest,
    start: Instant,
    limits: Vec<(HeaderName, HeaderValue)>,
) -> Answer {
    let dep = alias.all().find(|d| d.name() == hit.deployment);
    rec.deployment = Some(hit.deployment.clone());
    rec.cache_hit = true;
    rec.price = dep.and_then(|d| d.cfg.price.clone());
    if let Some(d) = dep {
        trace_version(&mut rec, d);
        // A hit is no evidence about the version: it is not compared.
        rec.release = None;
    }
    let mut body = hit.body.clone();
    if let Some(m) = body.get_mut("model") {
        *m = Value::String(req.model.clone());
    }
    let mut tap = Tap::new(start, None);
    if let Some(u) = hit.usage {
        tap.set_usage(u);
    }
    tap.observe(&body);
    tap.finish_into(&mut rec);
    rec.price_it();
    let meta = Meta {
        deployment: hit.deployment.clone(),
        version: rec.model_version.clone(),
        cache: Some(CacheStatus::Hit),
        cost: rec.cost,
        limits,
        route: rec.route.clone(),
    };
    ctx.accounting.finish(rec);
    if !req.stream {
        return Answer::Full { body, meta, raw: None };
    }
    let mut chunks = crate::cache::as_chunks(&body, req.include_usage);
    if let Some(cost) = meta.cost {
        for u in chunks.iter_mut().filter_map(|c| c.get_mut("usage")) {
            crate::pricing::annotate_usage(u, cost);
        }
    }
    Answer::Replay { chunks, meta }
}

/// Fills the record from a whole body: its usage (reported or counted), times, finish.
fn tap_body(mut tap: Tap, body: &Map<String, Value>, usage: Option<protocol::Usage>, rec: &mut RequestRecord) {
    tap.observe(body);
    if let Some(u) = usage {
        tap.set_usage(u);
    }
    tap.finish_into(rec);
}

/// The deployment that answered, for the record: its name, kind, price and version.
fn served_by(rec: &mut RequestRecord, dep: &Deployment) {
    rec.deployment = Some(dep.name().to_owned());
    rec.backend_kind = Some(dep.cfg.kind.name());
    rec.upstream_model = Some(match &dep.cfg.kind {
        DeploymentKind::OpenAi(r) | DeploymentKind::Ollama(r) => r.model.clone(),
        DeploymentKind::Local(l) => l.path.file_stem().map_or_else(String::new, |s| s.to_string_lossy().into_owned()),
    });
    rec.price = dep.cfg.price.clone();
    trace_version(rec, dep);
}

/// The version that answered, for the record (and its canary comparison).
fn trace_version(rec: &mut RequestRecord, dep: &Deployment) {
    rec.model_version = dep.version.as_ref().map(|v| v.label());
    rec.model_sha256 = dep.model_sha256().map(str::to_owned);
    rec.release = dep.version.clone().map(|v| v as Arc<dyn VersionOutcome>);
}

/// Who a request is for a canary's sticky assignment: the session, else the request's
/// `user`, else the key; empty for none.
fn identity<'a>(session: Option<&'a str>, user: Option<&'a str>, caller: &'a Caller) -> &'a str {
    session.filter(|s| !s.is_empty()).or(user).or(caller.name()).unwrap_or("")
}

/// A session belongs to the key that names it: another key naming the same id gets another
/// session.
fn session_key(session: Option<&str>, caller: &Caller) -> Option<String> {
    session.filter(|s| !s.is_empty() && s.len() <= 256).map(|s| {
        let h = crate::config::sha256(format!("{}\u{0}{s}", caller.name().unwrap_or("")).as_bytes());
        hex::encode(&h[..16])
    })
}

/// The prompt as text, to count its tokens when the backend reports none.
fn prompt_text(p: &Prompt) -> Option<String> {
    Some(match p {
        Prompt::Chat(m) => m.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n"),
        Prompt::Text(t) => t.clone(),
        Prompt::Embed(v) => v.join("\n"),
    })
}

/// The bytes of prompt text, for a token estimate at admission.
fn prompt_bytes(p: &Prompt) -> usize {
    match p {
        Prompt::Chat(m) => m.iter().map(|m| m.content.len()).sum(),
        Prompt::Text(t) => t.len(),
        Prompt::Embed(v) => v.iter().map(String::len).sum(),
    }
}

fn finish_of(body: &Map<String, Value>) -> Option<&str> {
    body.get("choices")?.get(0)?.get("finish_reason")?.as_str()
}

/// Records a request whose client left while it was being routed (the handler's future
/// was dropped before it could answer): upstream work may have been spent on it.
struct Abandoned {
    rec: Option<RequestRecord>,
    accounting: Arc<Accounting>,
    start: Instant,
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some(mut rec) = self.rec.take() {
            rec.status = 499;
            rec.error = Some("client_closed");
            rec.client_closed = true;
            rec.total_ms = ms(self.start.elapsed());
            self.accounting.finish(rec);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Caller {
        Caller::Key(ApiKeyConfig {
            name: name.into(),
            sha256: [0; 32],
            aliases: vec!["*".into()],
            limits: Default::default(),
            guardrails: None,
        })
    }

    #[test]
    fn the_engine_seed_is_the_clients_folded_into_range_or_a_fresh_one() {
        assert_eq!(engine_seed(Some(5)), 5);
        assert_eq!(engine_seed(Some(0)), 0);
        // u32::MAX is llama.cpp's "random seed": a client's -1 must not ask for one.
        assert_eq!(engine_seed(Some(-1)), 0xFFFF_FFFE);
        assert_eq!(engine_seed(Some(1 << 40 | 7)), 7);
        assert!((0..100).all(|_| engine_seed(None) < 1 << 31));
    }

    #[test]
    fn the_canary_identity_is_the_session_then_the_user_then_the_key() {
        let k = key("team");
        assert_eq!(identity(Some("s1"), Some("u1"), &k), "s1");
        assert_eq!(identity(Some(""), Some("u1"), &k), "u1");
        assert_eq!(identity(None, None, &k), "team");
        assert_eq!(identity(None, None, &Caller::Anonymous), "");
    }

    #[test]
    fn a_session_belongs_to_the_key_that_names_it() {
        let (a, b) = (key("a"), key("b"));
        let s = session_key(Some("chat-1"), &a).unwrap();
        assert_eq!(s.len(), 32);
        assert_eq!(session_key(Some("chat-1"), &a).as_deref(), Some(s.as_str()));
        assert_ne!(session_key(Some("chat-1"), &b).as_deref(), Some(s.as_str()));
        assert_eq!(session_key(Some(""), &a), None);
        assert_eq!(session_key(Some(&"x".repeat(257)), &a), None);
        assert_eq!(session_key(None, &a), None);
    }

    #[test]
    fn metadata_must_be_an_object_and_is_kept_as_the_records_tags() {
        let origin = |batch: Option<&str>| Origin {
            caller: key("k"),
            session: None,
            traceparent: None,
            cache: ClientPolicy { lookup: true, store: true },
            batch_id: batch.map(str::to_owned),
            dialect: Dialect::OpenAi,
            native: None,
            guarded: None,
        };
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"metadata":{"team":"x"}}"#;
        let req = protocol::validate(Endpoint::Chat, body).unwrap();
        let rec = record_for(&req, "r1", &origin(Some("b1"))).ok().unwrap();
        assert_eq!((rec.key.as_deref(), rec.batch_id.as_deref()), (Some("k"), Some("b1")));
        assert_eq!(rec.tags, Some(serde_json::json!({"team": "x"})));
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"metadata":"x"}"#;
        let req = protocol::validate(Endpoint::Chat, body).unwrap();
        let refused = record_for(&req, "r2", &origin(None)).err().unwrap();
        assert_eq!(refused.error.param.as_deref(), Some("metadata"));
        assert_eq!(refused.record.map(|r| r.request_id), Some("r2".to_owned()), "the refusal is recorded");
    }
}

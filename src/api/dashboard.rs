//! `GET /dashboard`: the gateway's own page, served by the binary (its HTML, script, styles
//! and the vendored uPlot are compiled in from `assets/dashboard/`), and the two JSON
//! endpoints it polls:
//! - `GET /admin/dashboard/figures?range=15m|1h|24h|7d`: traffic, latency, money and
//!   guardrail figures from this replica's ledger ([`crate::accounting::dashboard`]);
//! - `GET /admin/dashboard/state`: what is live now: each deployment's load (and the
//!   engine's slots, queue, KV cells and sessions), releases with their canaries' error rate
//!   and p95 against production, alerts firing and their history, batches, keys with their
//!   limits and budgets spent, and the shared state's health.
//!
//! Everything here needs the admin key, as the admin API does: as a bearer token, or through
//! the page's login form, which exchanges it for a session cookie (`HttpOnly`,
//! `SameSite=Strict`, 12 hours; the key itself is never stored). A change made from the page
//! (promote, canary, rollback) goes to the admin API with the cookie and the session's CSRF
//! token in `x-tollgate-csrf`, which the page carries. On an open gateway without an admin
//! key the page is open, as the admin API is.
//!
//! Every URL the page uses is relative, so it works behind a reverse proxy under a prefix.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use super::{auth, AppState};
use crate::protocol::error::ApiError;

const INDEX: &str = include_str!("../../assets/dashboard/index.html");
const LOGIN: &str = include_str!("../../assets/dashboard/login.html");
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", "text/javascript; charset=utf-8", include_str!("../../assets/dashboard/app.js")),
    ("app.css", "text/css; charset=utf-8", include_str!("../../assets/dashboard/app.css")),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/dashboard/vendor/uPlot.iife.min.js"),
    ),
    ("uPlot.min.css", "text/css; charset=utf-8", include_str!("../../assets/dashboard/vendor/uPlot.min.css")),
    ("uPlot.LICENSE", "text/plain; charset=utf-8", include_str!("../../assets/dashboard/vendor/uPlot.LICENSE")),
];

/// The session cookie's name.
pub const COOKIE: &str = "tollgate_session";
/// The header a change made from the page carries: its session's CSRF token.
pub const CSRF_HEADER: &str = "x-tollgate-csrf";
const SESSION_MS: u64 = 12 * 3_600_000;
const MAX_SESSIONS: usize = 1024;

/// Logged-in dashboard sessions, by the SHA-256 of their cookie.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<[u8; 32], Session>>);

struct Session {
    /// Who logged in, as the admin API names them in audit records.
    admin: String,
    csrf: String,
    expires_ms: u64,
}

impl Sessions {
    fn open(&self, admin: String, now_ms: u64) -> (String, String) {
        let cookie_value = hex::encode(rand::random::<[u8; 32]>());
        let csrf = hex::encode(rand::random::<[u8; 16]>());
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.retain(|_, v| v.expires_ms > now_ms);
        if s.len() >= MAX_SESSIONS {
            if let Some(oldest) = s.iter().min_by_key(|(_, v)| v.expires_ms).map(|(k, _)| *k) {
                s.remove(&oldest);
            }
        }
        let session = Session { admin, csrf: csrf.clone(), expires_ms: now_ms + SESSION_MS };
        s.insert(crate::config::sha256(cookie_value.as_bytes()), session);
        (cookie_value, csrf)
    }

    /// The session the request's cookie names: (admin, csrf token).
    fn find(&self, headers: &HeaderMap, now_ms: u64) -> Option<(String, String)> {
        let token = cookie(headers, COOKIE)?;
        let s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let v = s.get(&crate::config::sha256(token.as_bytes())).filter(|v| v.expires_ms > now_ms)?;
        Some((v.admin.clone(), v.csrf.clone()))
    }

    fn close(&self, headers: &HeaderMap) {
        if let Some(token) = cookie(headers, COOKIE) {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&crate::config::sha256(token.as_bytes()));
        }
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(name)?.strip_prefix('='))
}

/// The admin behind a request: the admin key as a bearer token (or an open gateway), else a
/// dashboard session; a change (`change`) by session must carry the session's CSRF token.
pub fn admin(st: &AppState, headers: &HeaderMap, change: bool) -> Result<String, ApiError> {
    let (who, csrf) = authorize(st, headers)?;
    if let (true, Some(csrf)) = (change, csrf) {
        let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if !bool::from(subtle::ConstantTimeEq::ct_eq(sent.as_bytes(), csrf.as_bytes())) {
            return Err(ApiError::unauthorized("A change made from the dashboard must carry its CSRF token."));
        }
    }
    Ok(who)
}

/// The admin behind a request, and the CSRF token of the session it came by (none for the
/// key itself or an open gateway).
fn authorize(st: &AppState, headers: &HeaderMap) -> Result<(String, Option<String>), ApiError> {
    let bearer = auth::authenticate_admin(&st.live().auth, headers);
    if bearer.is_ok() || auth::presented_key(headers).is_some() {
        return bearer.map(|who| (who, None));
    }
    match st.dashboard.find(headers, crate::clock::now_ms()) {
        Some((who, csrf)) => Ok((who, Some(csrf))),
        None => bearer.map(|who| (who, None)),
    }
}

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/", get(|| async { axum::response::Redirect::permanent("../dashboard") }))
        .route("/dashboard/login", post(login))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/assets/{file}", get(asset))
        .route("/admin/dashboard/figures", get(figures))
        .route("/admin/dashboard/state", get(state))
}

fn html(status: StatusCode, body: String) -> Response {
    let mut r =
        (status, [(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"))], body).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    r
}

fn login_page(status: StatusCode, message: &str) -> Response {
    let note =
        if message.is_empty() { String::new() } else { format!("<p class=\"error\" role=\"alert\">{message}</p>") };
    html(status, LOGIN.replace("{{message}}", &note))
}

/// The page, or (401) the login form (saying so after a failed login, `?failed`).
async fn page(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let csrf = match authorize(&st, &headers) {
        Ok((_, csrf)) => csrf.unwrap_or_default(),
        Err(_) if st.live().auth.admin_key_sha256.is_none() => {
            return login_page(
                StatusCode::UNAUTHORIZED,
                "This gateway has no admin key: set <code>[auth] admin_key</code> to use the dashboard.",
            )
        }
        Err(_) if q.contains_key("failed") => {
            return login_page(StatusCode::UNAUTHORIZED, "That is not the admin key.")
        }
        Err(_) => return login_page(StatusCode::UNAUTHORIZED, ""),
    };
    html(StatusCode::OK, INDEX.replace("{{csrf}}", &csrf).replace("{{version}}", env!("CARGO_PKG_VERSION")))
}

/// The login form's post (`key=...`, form-encoded): a session cookie, then the page.
async fn login(State(st): State<Arc<AppState>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let key = form_field(&body, "key").unwrap_or_default();
    let mut as_bearer = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", key.trim())) {
        as_bearer.insert(header::AUTHORIZATION, v);
    }
    let auth = &st.live().auth;
    let admin = match (auth.admin_key_sha256, auth::authenticate_admin(auth, &as_bearer)) {
        (Some(_), Ok(admin)) => admin,
        _ => return see_other("../dashboard?failed", None),
    };
    let (token, _) = st.dashboard.open(admin, crate::clock::now_ms());
    let https = headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_MS / 1000,
        if https { "; Secure" } else { "" }
    );
    see_other("../dashboard", HeaderValue::from_str(&cookie).ok())
}

async fn logout(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    st.dashboard.close(&headers);
    see_other("../dashboard", Some(HeaderValue::from_static("tollgate_session=; Path=/; Max-Age=0")))
}

/// A 303 to `to`, relative to `/dashboard/...` (so under whatever prefix a proxy adds).
fn see_other(to: &'static str, cookie: Option<HeaderValue>) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    r.headers_mut().insert(header::LOCATION, HeaderValue::from_static(to));
    if let Some(c) = cookie {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

/// One `application/x-www-form-urlencoded` field (decoded as axum decodes a query).
fn form_field(body: &[u8], name: &str) -> Option<String> {
    let s = std::str::from_utf8(body).ok()?;
    let uri: axum::http::Uri = format!("/?{}", s.trim()).parse().ok()?;
    let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri).ok()?.0;
    pairs.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, kind, body)) => {
            let mut r = ([(header::CONTENT_TYPE, HeaderValue::from_static(kind))], *body).into_response();
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
            r
        }
        None => ApiError::not_found(format!("No dashboard asset '{file}'.")).into_response(),
    }
}

async fn figures(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    admin(&st, &headers, false)?;
    let name = q.get("range").map(String::as_str).unwrap_or("1h");
    let range = crate::accounting::dashboard::Range::parse(name, crate::clock::now_ms()).ok_or_else(|| {
        ApiError::invalid_request(format!("'range' takes 15m, 1h, 24h or 7d; got '{name}'."), Some("range"))
    })?;
    let Some(ledger) = st.accounting.ledger.clone() else {
        return Ok(axum::Json(json!({"ledger": false, "range": range.name})).into_response());
    };
    ledger.flush().await;
    let mut v = tokio::task::spawn_blocking(move || {
        let c = ledger.reader()?;
        crate::accounting::dashboard::figures(&c, &range)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| {
        tracing::error!("dashboard: the ledger cannot be read: {e}");
        ApiError::internal("The ledger cannot be read.")
    })?;
    v["ledger"] = json!(true);
    v["replica"] = json!(st.accounting.limits.cluster().map(|c| c.replica.clone()));
    Ok(axum::Json(v).into_response())
}

async fn state(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let who = admin(&st, &headers, false)?;
    let live = st.live();
    let monitor = &st.accounting.monitor;
    let error_rate = |d: &str| monitor.error_rate(d).map(|(r, n)| json!({"rate": r, "requests": n}));
    let mut deployments = Vec::new();
    let mut releases = Vec::new();
    for alias in live.routes.order.iter().filter_map(|n| live.routes.get(n)) {
        for d in alias.all() {
            let mut o = json!({
                "alias": alias.name,
                "deployment": d.name(),
                "kind": d.cfg.kind.name(),
                "in_flight": d.in_flight(),
                "max_concurrency": d.cfg.max_concurrency,
                "breaker_open": d.breaker.is_open(),
                "version": d.version.as_ref().map(|v| v.label()),
                "error_rate": error_rate(d.name()),
                "total_ms": monitor.window_quantiles(&alias.name, d.name(), "total"),
            });
            if let Some(info) = d.backend.info() {
                o["engine"] = info;
            }
            deployments.push(o);
        }
        if let Some(c) = &alias.canary {
            let side = |d: &crate::router::Deployment| {
                json!({
                    "deployment": d.name(),
                    "version": d.version.as_ref().map(|v| v.label()),
                    "error_rate": error_rate(d.name()),
                    "p95_ms": monitor.window_quantiles(&alias.name, d.name(), "total").map(|q| q[1]),
                })
            };
            let s = c.live.stages();
            releases.push(json!({
                "alias": alias.name,
                "weight": s.canary_weight,
                "staging": side(&c.staging),
                "production": side(&c.production),
            }));
        }
    }
    let now = crate::clock::now_ms();
    let keys: Vec<Value> = live
        .auth
        .keys
        .iter()
        .map(|k| {
            let (day, month) = st.accounting.limits.spent(&k.name, now);
            let l = &k.limits;
            json!({
                "name": k.name,
                "aliases": k.aliases,
                "requests_per_minute": l.requests_per_minute,
                "tokens_per_minute": l.tokens_per_minute,
                "max_concurrent": l.max_concurrent,
                "budget_usd_per_day": l.budget_usd_per_day.map(|d| d.to_string()),
                "budget_usd_per_month": l.budget_usd_per_month.map(|d| d.to_string()),
                "spent_usd_today": day.normalize().to_string(),
                "spent_usd_this_month": month.normalize().to_string(),
            })
        })
        .collect();
    let (batches, _) = match &st.batches.shared {
        Some(sh) => sh.list(None, None, 20).await.unwrap_or_default(),
        None => st.batches.list(None, None, 20),
    };
    let models = super::models::registry_list(&st).unwrap_or_default();
    let mut audit = st.releases.audit_trail(None).await.unwrap_or_default();
    audit.reverse();
    audit.truncate(20);
    let cluster = st.accounting.limits.cluster().map(|c| json!({"replica": c.replica, "redis": c.state()}));
    let ledger = st.accounting.postgres.as_ref().map(|p| json!({"postgres": if p.is_up() { "up" } else { "down" }}));
    let body = json!({
        "admin": who,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": crate::clock::now_s().saturating_sub(st.created),
        "open": live.auth.open,
        "deployments": deployments,
        "releases": releases,
        "models": models,
        "audit": audit,
        "alerts": {"firing": monitor.active_alerts(), "history": monitor.alert_log()},
        "batches": batches,
        "keys": keys,
        "cluster": cluster,
        "shared_ledger": ledger,
    });
    Ok(axum::Json(body).into_response())
}

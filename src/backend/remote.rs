//! What the remote kinds ([`super::openai`], [`super::ollama`]) share: one pooled hyper
//! client per deployment, one way to build a request, one reading of a non-success reply,
//! one health probe.
//!
//! The client speaks HTTP/1.1, and HTTP/2 where the upstream's TLS offers it (ALPN), over
//! rustls with the public roots plus the deployment's `ca_file`; it keeps connections alive
//! (90 s idle) and sets TCP_NODELAY. Redirects are not followed.
//!
//! Every request to the upstream, inference call or health check, carries the deployment's
//! bearer key and its extra headers (an API gateway in front of the upstream may require
//! them on every path), made header values once, when the deployment is built. An inference
//! call adds the request id and the client's trace context. A non-success status becomes
//! [`BackendError::Status`] with the upstream's `retry-after` and its body, read for at most
//! [`ERROR_BODY_TIMEOUT`].

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::{BackendError, BackendRequest, Unhealthy};
use crate::config::{DeploymentConfig, RemoteConfig};

/// How long the body of a non-success reply is read: it only explains the failure.
pub const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The pooled client: HTTP/1.1, or HTTP/2 where TLS negotiates it (ALPN), as reqwest did.
pub type Http = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;
/// An upstream's answer, its body still on the wire.
pub type Response = http::Response<hyper::body::Incoming>;

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// A remote deployment's connection: its client, its config, the headers every request
/// carries (built once), its health-check timeout.
pub struct Remote {
    client: Http,
    cfg: RemoteConfig,
    /// The bearer key and the extra headers, as header values.
    headers: HeaderMap,
    health_timeout: Duration,
}

impl Remote {
    pub fn new(dep: &DeploymentConfig, cfg: RemoteConfig) -> Self {
        let mut headers = HeaderMap::new();
        if let Some(k) = &cfg.api_key {
            match HeaderValue::from_str(&format!("Bearer {}", k.0)) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    headers.insert(AUTHORIZATION, v);
                }
                Err(_) => tracing::error!(deployment = %dep.name, "the api_key is not a valid header value; not sent"),
            }
        }
        for (k, v) in &cfg.headers {
            match (HeaderName::try_from(k.as_str()), HeaderValue::from_str(&v.0)) {
                (Ok(k), Ok(mut v)) => {
                    v.set_sensitive(true);
                    headers.append(k, v);
                }
                _ => tracing::error!(deployment = %dep.name, header = %k, "not a valid header; not sent"),
            }
        }
        Remote {
            client: http_client(dep.connect_timeout, &dep.name, cfg.ca_file.as_deref()),
            cfg,
            headers,
            health_timeout: dep.connect_timeout.max(Duration::from_secs(2)),
        }
    }

    pub fn cfg(&self) -> &RemoteConfig {
        &self.cfg
    }

    /// A request to `uri` with the deployment's key and extra headers, which every request
    /// carries.
    fn request(&self, method: Method, uri: Uri, body: Bytes, extra: usize) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        h.reserve(self.headers.len() + extra);
        for (k, v) in &self.headers {
            h.append(k.clone(), v.clone());
        }
        req
    }

    /// An inference call: the JSON `body` to `uri`, with the request id and trace context.
    pub fn post(&self, uri: Uri, br: &BackendRequest, body: Vec<u8>) -> Request<Full<Bytes>> {
        let mut req = self.request(Method::POST, uri, Bytes::from(body), 3);
        let h = req.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Ok(v) = HeaderValue::from_str(&br.request_id) {
            h.insert(REQUEST_ID.clone(), v);
        }
        if let Some(v) = br.traceparent.as_deref().and_then(|t| HeaderValue::from_str(t).ok()) {
            h.insert(TRACEPARENT.clone(), v);
        }
        req
    }

    /// A `DELETE` of `uri`, with the deployment's key and headers.
    pub fn delete(&self, uri: Uri) -> Request<Full<Bytes>> {
        self.request(Method::DELETE, uri, Bytes::new(), 0)
    }

    /// Sends a request; a non-success reply becomes [`BackendError::Status`].
    pub fn send(&self, req: Request<Full<Bytes>>) -> impl std::future::Future<Output = Result<Response, BackendError>> {
        let sent = self.client.request(req);
        async move {
            let resp = sent.await.map_err(classify)?;
            if resp.status().is_success() {
                Ok(resp)
            } else {
                Err(status_error(resp).await)
            }
        }
    }

    /// Whether `GET {base_url}/{path}` answers with a success status in time.
    pub fn health(&self, path: &'static str) -> BoxFuture<'static, Result<(), Unhealthy>> {
        let uri = match uri(&format!("{}/{path}", self.cfg.base_url)) {
            Ok(u) => u,
            Err(e) => return async move { Err(Unhealthy::Unreachable(e)) }.boxed(),
        };
        let sent = self.client.request(self.request(Method::GET, uri, Bytes::new(), 0));
        let timeout = self.health_timeout;
        async move {
            let r = match tokio::time::timeout(timeout, sent).await {
                Ok(r) => r.map_err(|e| Unhealthy::Unreachable(describe(&e)))?,
                Err(_) => return Err(Unhealthy::TimedOut),
            };
            if r.status().is_success() {
                Ok(())
            } else {
                Err(Unhealthy::Status { path, status: r.status() })
            }
        }
        .boxed()
    }
}

/// `s` as a request URI, or why not.
pub fn uri(s: &str) -> Result<Uri, String> {
    Uri::try_from(s).map_err(|e| format!("'{s}' is not a valid URL: {e}"))
}

/// A whole body (the router bounds the attempt's time).
pub async fn read(resp: Response) -> Result<Bytes, BackendError> {
    match resp.into_body().collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(BackendError::Connect(format!("the body broke: {}", describe(&e)))),
    }
}

/// A body as the stream of its data.
pub fn body_stream(resp: Response) -> BoxStream<'static, Result<Bytes, String>> {
    resp.into_body().into_data_stream().map(|r| r.map_err(|e| describe(&e))).boxed()
}

/// A non-success reply as [`BackendError::Status`]: its status, `retry-after` and body (empty
/// when it does not arrive within [`ERROR_BODY_TIMEOUT`]).
async fn status_error(resp: Response) -> BackendError {
    let status = resp.status();
    let retry_after = parse_retry_after(resp.headers());
    let body = tokio::time::timeout(ERROR_BODY_TIMEOUT, read(resp)).await.ok().and_then(Result::ok).unwrap_or_default();
    BackendError::Status { status, body, retry_after }
}

/// Parses `retry-after` given in seconds (the form upstreams use); dates are ignored.
pub fn parse_retry_after(h: &http::HeaderMap) -> Option<Duration> {
    let v = h.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    v.parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0).map(Duration::from_secs_f64)
}

/// One pooled client for a remote deployment: keep-alive, TCP_NODELAY, HTTPS with the
/// public roots (and the deployment's `ca_file`), HTTP/2 where the upstream's TLS offers
/// it. Redirects are not followed: an API upstream that redirects is misconfigured, and
/// following it would hide that.
pub fn http_client(connect_timeout: Duration, deployment: &str, ca_file: Option<&std::path::Path>) -> Http {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.enforce_http(false);
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = ca_file {
        match crate::config::read_certificates(path) {
            Ok(certs) => {
                let (_, bad) = roots.add_parsable_certificates(certs);
                if bad > 0 {
                    tracing::error!(deployment, path = %path.display(), bad, "certificates in ca_file not usable");
                }
            }
            Err(e) => tracing::error!(deployment, "ca_file: {e}"),
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https)
}

/// An error with its causes, `a: b: c` (hyper's own message names only the outermost).
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let m = c.to_string();
        if !s.ends_with(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cause = c.source();
    }
    s
}

/// Maps a client failure onto our classes: a connect timeout is a timeout, the rest could
/// not reach the upstream (or lost it before an answer).
pub fn classify(e: hyper_util::client::legacy::Error) -> BackendError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    let mut timed_out = false;
    while let Some(c) = cause {
        timed_out |= c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
        cause = c.source();
    }
    let m = describe(&e);
    if timed_out {
        BackendError::Timeout(m)
    } else {
        BackendError::Connect(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_only() {
        let mut h = http::HeaderMap::new();
        assert_eq!(parse_retry_after(&h), None);
        for (v, want) in [
            ("3", Some(Duration::from_secs(3))),
            (" 0.5 ", Some(Duration::from_millis(500))),
            ("-1", None),
            ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ] {
            h.insert(http::header::RETRY_AFTER, v.parse().unwrap());
            assert_eq!(parse_retry_after(&h), want, "{v}");
        }
    }
}

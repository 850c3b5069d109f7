//! What the remote kinds ([`super::openai`], [`super::ollama`]) share: one pooled client per
//! deployment, one way to build a request, one reading of a non-success reply, one health
//! probe.
//!
//! Every request to the upstream, inference call or health check, carries the deployment's
//! bearer key and its extra headers (an API gateway in front of the upstream may require
//! them on every path). An inference call adds the request id and the client's trace
//! context. A non-success status becomes [`BackendError::Status`] with the upstream's
//! `retry-after` and its body, read for at most [`ERROR_BODY_TIMEOUT`].

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Serialize;

use super::{BackendError, BackendRequest, Unhealthy};
use crate::config::{DeploymentConfig, RemoteConfig};

/// How long the body of a non-success reply is read: it only explains the failure.
pub const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A remote deployment's connection: its client, its config, its health-check timeout.
pub struct Remote {
    client: reqwest::Client,
    cfg: RemoteConfig,
    health_timeout: Duration,
}

impl Remote {
    pub fn new(dep: &DeploymentConfig, cfg: RemoteConfig) -> Self {
        Remote {
            client: http_client(dep.connect_timeout),
            cfg,
            health_timeout: dep.connect_timeout.max(Duration::from_secs(2)),
        }
    }

    pub fn cfg(&self) -> &RemoteConfig {
        &self.cfg
    }

    /// The deployment's bearer key and extra headers, which every request carries.
    fn authorized(&self, mut rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(k) = &self.cfg.api_key {
            rb = rb.bearer_auth(&k.0);
        }
        for (k, v) in &self.cfg.headers {
            rb = rb.header(k, &v.0);
        }
        rb
    }

    /// An inference call: `body` as JSON to `url`, with the request id and trace context.
    pub fn post(
        &self,
        url: impl reqwest::IntoUrl,
        br: &BackendRequest,
        body: &impl Serialize,
    ) -> reqwest::RequestBuilder {
        let mut rb = self.client.post(url).header("x-request-id", &br.request_id).json(body);
        if let Some(tp) = &br.traceparent {
            rb = rb.header("traceparent", tp);
        }
        self.authorized(rb)
    }

    /// A `DELETE` of `url`, with the deployment's key and headers.
    pub fn delete(&self, url: impl reqwest::IntoUrl) -> reqwest::RequestBuilder {
        self.authorized(self.client.delete(url))
    }

    /// Whether `GET {base_url}/{path}` answers with a success status in time.
    pub fn health(&self, path: &'static str) -> BoxFuture<'static, Result<(), Unhealthy>> {
        let rb = self.client.get(format!("{}/{path}", self.cfg.base_url)).timeout(self.health_timeout);
        let rb = self.authorized(rb);
        async move {
            let r = rb.send().await.map_err(|e| Unhealthy::Unreachable(e.to_string()))?;
            if r.status().is_success() {
                Ok(())
            } else {
                Err(Unhealthy::Status { path, status: r.status() })
            }
        }
        .boxed()
    }
}

/// Sends a request; a non-success reply becomes [`BackendError::Status`].
pub async fn send(rb: reqwest::RequestBuilder) -> Result<reqwest::Response, BackendError> {
    let resp = rb.send().await.map_err(classify_reqwest)?;
    if resp.status().is_success() {
        Ok(resp)
    } else {
        Err(status_error(resp).await)
    }
}

/// A non-success reply as [`BackendError::Status`]: its status, `retry-after` and body (empty
/// when it does not arrive within [`ERROR_BODY_TIMEOUT`]).
async fn status_error(resp: reqwest::Response) -> BackendError {
    let status = resp.status();
    let retry_after = parse_retry_after(resp.headers());
    let body =
        tokio::time::timeout(ERROR_BODY_TIMEOUT, resp.bytes()).await.ok().and_then(Result::ok).unwrap_or_default();
    BackendError::Status { status, body, retry_after }
}

/// Parses `retry-after` given in seconds (the form upstreams use); dates are ignored.
pub fn parse_retry_after(h: &http::HeaderMap) -> Option<Duration> {
    let v = h.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    v.parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0).map(Duration::from_secs_f64)
}

/// One pooled HTTP client for a remote deployment: keep-alive, TCP_NODELAY.
pub fn http_client(connect_timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        // An API upstream that redirects is misconfigured; following it would hide that.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// Maps a reqwest failure onto our classes.
pub fn classify_reqwest(e: reqwest::Error) -> BackendError {
    if e.is_timeout() {
        BackendError::Timeout(e.to_string())
    } else if e.is_connect() {
        BackendError::Connect(e.to_string())
    } else {
        BackendError::Connect(format!("{e}"))
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

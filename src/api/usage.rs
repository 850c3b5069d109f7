//! `GET /v1/usage` (admin key): the ledger's usage report.
//!
//! Query: `start_time` and `end_time` (Unix seconds; default the last 24 hours up to now),
//! `group_by` (comma-separated or repeated: key, user, alias, deployment, day, batch, endpoint), and the
//! filters `key` and `alias`. Everything finished before the call is included: the ledger is
//! flushed first. With `[ledger] postgres_url` the report is every replica's, from PostgreSQL.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::accounting::usage::{GroupBy, Query};
use crate::protocol::error::ApiError;

pub async fn usage(State(st): State<Arc<AppState>>, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    match run(&st, &headers, &uri).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The query's (name, value) pairs, decoded by axum's own `Query`.
fn pairs(uri: &axum::http::Uri) -> Result<Vec<(String, String)>, ApiError> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::invalid_request(format!("The query string is malformed: {e}"), None))
}

fn parse(pairs: Vec<(String, String)>, now_ms: u64) -> Result<Query, ApiError> {
    let mut out = Query { start_ms: now_ms.saturating_sub(86_400_000), end_ms: now_ms + 1, ..Default::default() };
    for (k, v) in pairs {
        let secs = |name: &str| {
            v.parse::<u64>().map(|s| s * 1000).map_err(|_| {
                ApiError::invalid_request(format!("'{name}' must be a Unix time in seconds, got '{v}'."), Some(name))
            })
        };
        match k.as_str() {
            "start_time" => out.start_ms = secs("start_time")?,
            "end_time" => out.end_ms = secs("end_time")?,
            "group_by" | "group_by[]" => {
                for g in v.split(',').map(str::trim).filter(|g| !g.is_empty()) {
                    let g = GroupBy::parse(g).ok_or_else(|| {
                        ApiError::invalid_request(
                            format!(
                                "'group_by' takes key, user, alias, deployment, day, batch or endpoint; got '{g}'."
                            ),
                            Some("group_by"),
                        )
                    })?;
                    if !out.group_by.contains(&g) {
                        out.group_by.push(g);
                    }
                }
            }
            "key" => out.key = Some(v),
            "alias" | "model" => out.alias = Some(v),
            other => return Err(ApiError::invalid_request(format!("Unknown query parameter '{other}'."), Some(other))),
        }
    }
    if out.end_ms <= out.start_ms {
        return Err(ApiError::invalid_request("'end_time' must be after 'start_time'.", Some("end_time")));
    }
    Ok(out)
}

async fn run(st: &Arc<AppState>, headers: &HeaderMap, uri: &axum::http::Uri) -> Result<serde_json::Value, ApiError> {
    super::dashboard::admin(st, headers, false)?;
    let query = parse(pairs(uri)?, crate::clock::now_ms())?;
    let Some(ledger) = st.accounting.ledger.clone() else {
        return Err(ApiError::invalid_request("The ledger is off (ledger.enabled = false).", None));
    };
    ledger.flush().await;
    // Every replica's records are in PostgreSQL: this one's are shipped first.
    if let Some(pg) = &st.accounting.postgres {
        pg.flush().await;
        return pg.report(&query).await.map_err(|e| {
            tracing::error!("usage: the PostgreSQL ledger cannot be read: {e}");
            ApiError::unavailable("The shared ledger (PostgreSQL) cannot be read right now; retry shortly.")
        });
    }
    tokio::task::spawn_blocking(move || {
        let c = ledger.reader().map_err(|e| {
            tracing::error!("usage: cannot open the ledger: {e}");
            ApiError::unavailable("The ledger database cannot be read right now.")
        })?;
        crate::accounting::usage::report(&c, &query).map_err(|e| {
            tracing::error!("usage: query failed: {e}");
            ApiError::unavailable("The ledger database cannot be read right now.")
        })
    })
    .await
    .map_err(|_| ApiError::internal("The usage query failed."))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str, now_ms: u64) -> Result<Query, ApiError> {
        super::parse(pairs(&format!("/v1/usage?{q}").parse().unwrap())?, now_ms)
    }

    #[test]
    fn query_parsing() {
        let q = parse("start_time=10&end_time=20&group_by=key,day&group_by=alias&key=team%20a", 0).unwrap();
        assert_eq!((q.start_ms, q.end_ms), (10_000, 20_000));
        assert_eq!(q.group_by, vec![GroupBy::Key, GroupBy::Day, GroupBy::Alias]);
        assert_eq!(q.key.as_deref(), Some("team a"));
        assert_eq!(parse("group_by=colour", 0).unwrap_err().param.as_deref(), Some("group_by"));
        assert!(parse("start_time=abc", 0).is_err());
        assert!(parse("start_time=20&end_time=10", 0).is_err());
        assert!(parse("bogus=1", 0).is_err());
    }
}

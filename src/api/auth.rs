//! API-key authentication: keys are accepted as `Authorization: Bearer KEY`, `api-key: KEY`
//! (Azure's) or `x-api-key: KEY` (Anthropic's),
//! hashed with SHA-256 and compared with every configured hash in constant time. Keys are
//! never logged; records carry the key's configured name.

use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::config::{sha256, ApiKeyConfig, AuthConfig};
use crate::gateway::Caller;
use crate::protocol::error::ApiError;

pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if let Some(k) = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")) {
            return Some(k.trim());
        }
    }
    ["api-key", "x-api-key"].iter().find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()).map(str::trim))
}

fn find<'a>(keys: &'a [ApiKeyConfig], presented: &str) -> Option<&'a ApiKeyConfig> {
    let h = sha256(presented.as_bytes());
    let mut found = None;
    // Every key is compared, so the time taken does not say which one matched.
    for k in keys {
        if bool::from(k.sha256.ct_eq(&h)) {
            found = Some(k);
        }
    }
    found
}

pub fn authenticate(auth: &AuthConfig, headers: &HeaderMap) -> Result<Caller, ApiError> {
    match presented_key(headers) {
        Some(k) if !k.is_empty() => match find(&auth.keys, k) {
            Some(cfg) => Ok(Caller::Key(cfg.clone())),
            None if auth.open && auth.keys.is_empty() => Ok(Caller::Anonymous),
            None => Err(ApiError::unauthorized("Incorrect API key provided.")),
        },
        _ if auth.open => Ok(Caller::Anonymous),
        _ => Err(ApiError::unauthorized(
            "You didn't provide an API key. Pass it as 'Authorization: Bearer KEY' or 'api-key: KEY'.",
        )),
    }
}

/// Checks the admin key; the answer names the admin for audit records: `admin:` and the
/// first 12 hex digits of the key's SHA-256 (a rotated key shows as another admin), or
/// `open` on an open gateway without an admin key.
pub fn authenticate_admin(auth: &AuthConfig, headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(h) = auth.admin_key_sha256 else {
        // Open mode without an admin key (a local, zero-config start): the admin endpoints are
        // as open as the rest.
        if auth.open {
            return Ok("open".to_owned());
        }
        return Err(ApiError::unauthorized("No admin key is configured (auth.admin_key)."));
    };
    match presented_key(headers) {
        Some(k) if bool::from(sha256(k.as_bytes()).ct_eq(&h)) => Ok(format!("admin:{}", &hex::encode(h)[..12])),
        _ => Err(ApiError::unauthorized("This endpoint needs the admin key.")),
    }
}

/// A fresh key and its hash: `tollgate keys new`.
pub fn new_key() -> (String, String) {
    use rand::RngCore;
    let mut b = [0u8; 24];
    rand::rng().fill_bytes(&mut b);
    let key = format!("tg-{}", hex::encode(b));
    let hash = hex::encode(sha256(key.as_bytes()));
    (key, hash)
}

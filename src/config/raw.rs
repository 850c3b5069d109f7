//! The config files as written: every table `deny_unknown_fields`, every value optional
//! where it has a default. [`super::load`] turns these into the checked [`super::Config`].

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    pub listen: Option<String>,
    pub data_dir: Option<String>,
    pub routes_dir: Option<String>,
    pub prompts_dir: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub shutdown_grace_secs: Option<u64>,
    pub keepalive_secs: Option<u64>,
    #[serde(default)]
    pub log: LogFile,
    #[serde(default)]
    pub cors: CorsFile,
    #[serde(default)]
    pub auth: AuthFile,
    #[serde(default)]
    pub cache: CacheFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheFile {
    pub enabled: Option<bool>,
    pub ttl_secs: Option<u64>,
    pub max_entries: Option<u64>,
    /// "key" (each API key its own entries, the default) or "global".
    pub scope: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    pub format: Option<String>,
    /// Log prompt and completion text (off by default).
    pub content: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsFile {
    #[serde(default)]
    pub allow_origins: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    /// No keys needed: for local use only, announced loudly at start.
    pub open: Option<bool>,
    pub admin_key: Option<String>,
    pub admin_key_sha256: Option<String>,
    #[serde(default)]
    pub keys: Vec<KeyFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub name: String,
    pub sha256: Option<String>,
    pub key: Option<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    #[serde(default)]
    pub alias: Vec<AliasFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasFile {
    pub name: String,
    pub description: Option<String>,
    /// "ordered" (the default: the first healthy deployment with room) or "prefix_affine".
    pub routing: Option<String>,
    pub affinity_load_factor: Option<f64>,
    #[serde(default)]
    pub deployment: Vec<DeploymentFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentFile {
    pub name: String,
    pub kind: String,
    // Remote kinds.
    pub base_url: Option<String>,
    pub model: Option<String>,
    pub api_key: Option<String>,
    pub max_tokens_field: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    // Every kind.
    pub max_concurrency: Option<usize>,
    pub weight: Option<u32>,
    pub connect_timeout_ms: Option<u64>,
    pub first_token_timeout_ms: Option<u64>,
    pub stall_timeout_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub max_retries: Option<u32>,
    pub embeddings: Option<bool>,
    // The `local` kind (the embedded engine).
    pub path: Option<String>,
    pub context: Option<u32>,
    pub threads: Option<u32>,
    pub parallel: Option<u32>,
    pub batch: Option<u32>,
    pub ubatch: Option<u32>,
    pub queue_depth: Option<usize>,
    pub chat_template: Option<String>,
    pub gpu_layers: Option<u32>,
    pub prefix_cache_tokens: Option<u32>,
    pub prefix_cache_entries: Option<u32>,
    pub session_ttl_secs: Option<u64>,
    pub max_sessions: Option<usize>,
}

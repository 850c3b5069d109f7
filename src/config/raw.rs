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
    /// A connection must deliver a request's whole header within this time of opening, or
    /// of its previous answer ending (so it bounds idle keep-alive connections too).
    pub header_read_timeout_ms: Option<u64>,
    /// Client connections open at once; beyond it a new one is answered 503 and closed.
    pub max_connections: Option<usize>,
    #[serde(default)]
    pub log: LogFile,
    #[serde(default)]
    pub cors: CorsFile,
    #[serde(default)]
    pub auth: AuthFile,
    #[serde(default)]
    pub cache: CacheFile,
    #[serde(default)]
    pub ledger: LedgerFile,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub monitor: MonitorFile,
    #[serde(default)]
    pub batch: BatchFile,
    #[serde(default)]
    pub registry: RegistryFile,
    #[serde(default)]
    pub responses: ResponsesFile,
    /// `[guardrails]`: what the detectors do by default (a key or an alias may override it).
    pub guardrails: Option<GuardrailsFile>,
    /// `[otel]`: OpenTelemetry traces over OTLP/HTTP (off without an endpoint).
    pub otel: Option<OtelFile>,
    /// `[cluster]`: limits, budgets, the response cache and releases shared through Redis.
    pub cluster: Option<ClusterFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// `redis://host:port/db`, without a password (or `"${VAR}"` holding the whole URL).
    pub redis_url: Option<String>,
    /// `"${VAR}"`: the Redis password.
    pub redis_password: Option<String>,
    /// Replicas sharing the limits (each enforces its share while Redis is down; default 1).
    pub replicas: Option<u32>,
    /// `open` (default: while Redis is down, a request beyond the share is admitted) or
    /// `closed` (it is refused with a 429).
    pub fail_mode: Option<String>,
    /// How long one Redis call may take (default 250 ms).
    pub timeout_ms: Option<u64>,
    /// The prefix of tollgate's keys (default `tollgate`).
    pub key_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtelFile {
    /// The collector's OTLP/HTTP base URL, e.g. `http://127.0.0.1:4318` (spans go to `/v1/traces`).
    pub endpoint: Option<String>,
    /// `service.name` of the spans (default `tollgate`).
    pub service_name: Option<String>,
    /// How long spans wait to be sent together (default 1000 ms).
    pub batch_delay_ms: Option<u64>,
}

/// A `guardrails` table: `default` and per-detector actions (`block`, `redact`, `log`, `off`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailsFile {
    pub default: Option<String>,
    #[serde(default)]
    pub detectors: BTreeMap<String, String>,
}

/// `[responses]`: stored Responses (`store: true`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponsesFile {
    /// How long a stored response can be retrieved or continued (default 30 days).
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryFile {
    /// The model registry: `<dir>/<name>/<version>/` (default: `registry` in the data directory).
    pub dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchFile {
    /// Lines of one batch in flight at once (each deployment also bounds its batch work).
    pub concurrency: Option<usize>,
    /// Where uploaded and output files live (default `<data_dir>/files`); with `[cluster]`, a
    /// directory every replica mounts.
    pub files_dir: Option<String>,
    /// With `[cluster]`: how long a replica's claim on a batch line lasts unless renewed.
    pub lease_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerFile {
    /// The durable per-request ledger (SQLite under the data directory); on by default.
    pub enabled: Option<bool>,
    /// One ledger for every replica: records go to this PostgreSQL database (from each
    /// replica's local journal), and usage is read from it.
    pub postgres_url: Option<String>,
    /// `"${VAR}"`: the PostgreSQL password.
    pub postgres_password: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Tokens reserved for the completion when a request sets no max_tokens.
    pub default_max_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorFile {
    pub enabled: Option<bool>,
    pub window_secs: Option<u64>,
    pub error_rate_threshold: Option<f64>,
    pub min_requests: Option<u64>,
    pub drift_window: Option<usize>,
    pub drift_threshold: Option<f64>,
    pub webhook_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheFile {
    pub enabled: Option<bool>,
    pub ttl_secs: Option<u64>,
    pub max_entries: Option<u64>,
    /// "key" (each API key its own entries, the default) or "global".
    pub scope: Option<String>,
    /// With `[cluster]`: answers larger than this are kept out of the shared tier (1 MiB).
    pub max_entry_bytes: Option<usize>,
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
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub max_concurrent: Option<u32>,
    /// USD, a number or a decimal string.
    pub budget_usd_per_day: Option<toml::Value>,
    pub budget_usd_per_month: Option<toml::Value>,
    /// This key's guardrails (over its alias's and the gateway's).
    pub guardrails: Option<GuardrailsFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    #[serde(default)]
    pub alias: Vec<AliasFile>,
    /// Registry models: the desired stages of their versions (the store may override them).
    #[serde(default)]
    pub model: Vec<ModelFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub name: String,
    /// The version answering by default, e.g. "1.0.0".
    pub production: Option<String>,
    /// A canary version, answering `canary_weight` percent of sticky identities.
    pub staging: Option<String>,
    pub canary_weight: Option<f64>,
    pub rollback: Option<RollbackFile>,
}

/// Automatic rollback of a canary that does worse than production.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackFile {
    pub enabled: Option<bool>,
    /// Canary error rate minus production's, as a fraction (0.05: five points).
    pub error_rate_margin: Option<f64>,
    /// Canary p95 latency over production's, as a fraction (0.5: 50% slower).
    pub p95_margin: Option<f64>,
    /// Canary requests needed before judging.
    pub min_requests: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasFile {
    pub name: String,
    pub description: Option<String>,
    /// "ordered" (the default: the first healthy deployment with room) or "prefix_affine".
    pub routing: Option<String>,
    pub affinity_load_factor: Option<f64>,
    /// A small-model router: this alias answers from `small` or `large` (two other aliases).
    pub router: Option<RouterFile>,
    #[serde(default)]
    pub deployment: Vec<DeploymentFile>,
    /// This alias's guardrails (over the gateway's).
    pub guardrails: Option<GuardrailsFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterFile {
    pub small: String,
    pub large: String,
    /// Overrides of the rule scorer's weights and threshold (`crate::policy::smallroute`).
    pub weights: Option<crate::policy::smallroute::RouterWeights>,
    /// A small-model answer cut at max_tokens (`finish_reason: length`) is asked again of the
    /// large model (non-streamed requests). Errors always escalate.
    pub escalate_on_length: Option<bool>,
    /// A named prompt (`prompts/`) that asks the small model "EASY or HARD?" before each
    /// request; the rules decide when it does not answer in time or clearly.
    pub classifier_prompt: Option<String>,
    /// How long the classifier may take (default 500 ms).
    pub classifier_timeout_ms: Option<u64>,
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
    /// `openai` only: `"passthrough"` sends `/v1/responses` to the upstream as the client wrote
    /// it (OpenAI, vLLM); `"translate"` (the default) serves it as a chat completion.
    pub responses: Option<String>,
    /// PEM certificates to trust for an `https://` upstream, besides the public roots.
    pub ca_file: Option<String>,
    // Every kind.
    pub max_concurrency: Option<usize>,
    pub weight: Option<u32>,
    pub connect_timeout_ms: Option<u64>,
    pub first_token_timeout_ms: Option<u64>,
    pub stall_timeout_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub max_retries: Option<u32>,
    pub embeddings: Option<bool>,
    /// USD per million tokens.
    pub price: Option<PriceFile>,
    /// Batch requests this deployment runs at once.
    pub batch_concurrency: Option<usize>,
    // The `local` kind (the embedded engine).
    pub path: Option<String>,
    pub context: Option<u32>,
    pub threads: Option<u32>,
    pub parallel: Option<u32>,
    pub batch: Option<u32>,
    pub ubatch: Option<u32>,
    pub queue_depth: Option<usize>,
    pub chat_template: Option<String>,
    pub chat_template_file: Option<String>,
    pub gpu_layers: Option<u32>,
    pub prefix_cache_tokens: Option<u32>,
    pub prefix_cache_entries: Option<u32>,
    pub deterministic: Option<bool>,
    pub session_ttl_secs: Option<u64>,
    pub max_sessions: Option<usize>,
}

/// USD per million tokens, as numbers or decimal strings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceFile {
    pub input: toml::Value,
    pub cached_input: Option<toml::Value>,
    pub output: toml::Value,
    /// Batch lines pay this fraction of the price (e.g. 0.5).
    pub batch_multiplier: Option<toml::Value>,
}

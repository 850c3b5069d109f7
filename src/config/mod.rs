//! Configuration: the gateway file (`tollgate.toml`), the alias files in `routes/*.toml`, and
//! the named prompts in `prompts/`.
//!
//! Files are read into the unchecked forms of [`raw`] (unknown keys are errors) and then
//! checked into [`Config`]. Loading never stops at the first problem: every problem is
//! collected, each naming its file and key path, so `tollgate check-config` lists them all
//! and `serve` refuses to start with all of them printed. Secrets come only from the
//! environment (`"${VAR}"`); a literal secret in a file is refused.

mod cluster;
mod env;
mod prompts;
pub mod raw;
mod routes;
mod server;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

pub use cluster::{ClusterConfig, PostgresConfig};
use env::{plain, secret};
use prompts::load_prompts;
use routes::{alias_config, check_releases, model_config};
pub use server::duration_secs;
use server::{auth_config, server_config};

/// A secret value read from the environment; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    /// The gateway file, if one was read.
    pub source: Option<PathBuf>,
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub aliases: Vec<AliasConfig>,
    /// Registry models' desired stages (`[[model]]` in `routes/`).
    pub models: Vec<ModelConfig>,
    pub prompts: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    /// SSE keep-alive comment interval while an upstream is silent.
    pub keepalive: Duration,
    /// A connection must deliver a request's whole header within this time of opening or of
    /// its previous answer ending: silent, trickling and idle keep-alive connections close.
    pub header_read_timeout: Duration,
    /// Client connections open at once (`None`: half the open-file limit, since each may
    /// need an upstream connection too).
    pub max_connections: Option<usize>,
    pub log_json: bool,
    pub log_content: bool,
    pub cors_origins: Vec<String>,
    pub cache: CacheConfig,
    /// The durable ledger (`data_dir/ledger/`).
    pub ledger: bool,
    /// Completion tokens reserved against a tokens-per-minute limit when a request sets no
    /// max_tokens.
    pub default_max_tokens: u64,
    pub monitor: MonitorConfig,
    /// Lines of one batch in flight at once.
    pub batch_concurrency: usize,
    /// `[batch] files_dir`: the files' directory (default `data_dir/files`).
    pub files_dir: Option<PathBuf>,
    /// `[batch] lease_ms`: a replica's claim on a shared batch line (`[cluster]`).
    pub batch_lease: Duration,
    /// The model registry (`crate::registry`).
    pub registry_dir: PathBuf,
    /// How long a stored response (`/v1/responses` with `store`) is kept.
    pub responses_ttl: Duration,
    /// `[guardrails]`: the gateway's scope of the guardrails policy.
    pub guardrails: Option<crate::guardrails::Scope>,
    /// `[otel]`: where traces are exported (none by default).
    pub otel: Option<OtelConfig>,
    /// `[cluster]`: state shared with other replicas through Redis (none by default).
    pub cluster: Option<ClusterConfig>,
    /// `[ledger] postgres_url`: the one ledger of every replica (SQLite alone by default).
    pub postgres: Option<PostgresConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("data"),
            max_body_bytes: 16 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
            keepalive: Duration::from_secs(15),
            header_read_timeout: Duration::from_secs(60),
            max_connections: None,
            log_json: false,
            log_content: false,
            cors_origins: Vec::new(),
            cache: CacheConfig::default(),
            ledger: true,
            default_max_tokens: 1024,
            monitor: MonitorConfig::default(),
            batch_concurrency: 16,
            files_dir: None,
            batch_lease: Duration::from_secs(30),
            registry_dir: PathBuf::from("data/registry"),
            responses_ttl: Duration::from_secs(30 * 24 * 3600),
            guardrails: None,
            otel: None,
            cluster: None,
            postgres: None,
        }
    }
}

/// `[otel]`, checked: where the OpenTelemetry traces go (accounting's `telemetry` exports them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtelConfig {
    /// The collector's OTLP/HTTP base URL (`http://127.0.0.1:4318`); spans go to `/v1/traces`.
    pub endpoint: String,
    pub service_name: String,
    /// How long spans wait to be sent in one batch.
    pub batch_delay: Duration,
}

/// The response cache (`[server.cache]`).
#[derive(Clone, Debug, PartialEq)]
pub struct CacheConfig {
    pub enabled: bool,
    pub ttl: Duration,
    pub max_entries: u64,
    /// Shared across API keys (otherwise each key sees only its own entries).
    pub global: bool,
    /// Answers larger than this (as JSON) are not stored in the shared tier.
    pub max_entry_bytes: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: false,
            ttl: Duration::from_secs(3600),
            max_entries: 10_000,
            global: false,
            max_entry_bytes: 1024 * 1024,
        }
    }
}

/// The monitors (`[server.monitor]`).
#[derive(Clone, Debug)]
pub struct MonitorConfig {
    /// Off: `observe` and `observe_fields` return at once.
    pub enabled: bool,
    /// Sliding window for the error rate and latency percentiles.
    pub window: Duration,
    /// Error rate (0..1) above which an alert fires.
    pub error_rate_threshold: f64,
    /// The error rate is judged only over at least this many requests in the window.
    pub min_requests: u64,
    /// Requests per drift window (baseline: a deployment's first; current: its latest). 0: off.
    pub drift_window: usize,
    /// PSI above which a drift alert fires.
    pub drift_threshold: f64,
    /// Alerts are POSTed here as JSON.
    pub webhook_url: Option<String>,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            enabled: true,
            window: Duration::from_secs(300),
            error_rate_threshold: 0.01,
            min_requests: 20,
            drift_window: 500,
            drift_threshold: 0.2,
            webhook_url: None,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    pub open: bool,
    pub admin_key_sha256: Option<[u8; 32]>,
    pub keys: Vec<ApiKeyConfig>,
}

#[derive(Clone, Debug)]
pub struct ApiKeyConfig {
    pub name: String,
    pub sha256: [u8; 32],
    /// Aliases this key may call; `*` means all.
    pub aliases: Vec<String>,
    pub limits: KeyLimits,
    /// This key's scope of the guardrails policy.
    pub guardrails: Option<crate::guardrails::Scope>,
}

/// A key's rate limits and budgets (none by default).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyLimits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub max_concurrent: Option<u32>,
    pub budget_usd_per_day: Option<rust_decimal::Decimal>,
    pub budget_usd_per_month: Option<rust_decimal::Decimal>,
}

impl ApiKeyConfig {
    pub fn allows(&self, alias: &str) -> bool {
        self.aliases.iter().any(|a| a == "*" || a == alias)
    }
}

#[derive(Clone, Debug)]
pub struct AliasConfig {
    pub name: String,
    pub description: Option<String>,
    /// Route replicas by prompt prefix or session (`routing = "prefix_affine"`).
    pub prefix_affine: bool,
    pub load_factor: f64,
    pub file: PathBuf,
    pub deployments: Vec<DeploymentConfig>,
    /// A small-model router instead of deployments.
    pub router: Option<AutoRouterConfig>,
    /// This alias's scope of the guardrails policy.
    pub guardrails: Option<crate::guardrails::Scope>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AutoRouterConfig {
    pub small: String,
    pub large: String,
    pub weights: crate::policy::smallroute::RouterWeights,
    pub escalate_on_length: bool,
    /// The small model asked first, under a timeout.
    pub classifier: Option<Classifier>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Classifier {
    /// A named prompt in `prompts/`.
    pub prompt: String,
    pub timeout: Duration,
}

/// A registry model's stages as `routes/` declares them, and its canary's rollback policy.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub name: String,
    pub production: Option<String>,
    pub staging: Option<String>,
    /// Percent of sticky identities sent to `staging`.
    pub canary_weight: f64,
    pub rollback: RollbackPolicy,
    pub file: PathBuf,
}

/// The outcomes a canary is judged over: its last this many (a rollback's `min_requests`
/// can ask for no more).
pub const ROLLBACK_WINDOW: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RollbackPolicy {
    pub enabled: bool,
    pub error_rate_margin: f64,
    pub p95_margin: f64,
    pub min_requests: u64,
}

impl Default for RollbackPolicy {
    fn default() -> Self {
        RollbackPolicy { enabled: true, error_rate_margin: 0.05, p95_margin: 1.0, min_requests: 100 }
    }
}

/// A deployment served from the registry: `model = "NAME"` follows the model's stages
/// (production, and staging by its canary weight); `model = "NAME@X.Y.Z"` pins a version.
#[derive(Clone, Debug, PartialEq)]
pub struct ReleaseRef {
    pub model: String,
    pub version: Option<String>,
    /// For remote versions: credentials and the upstream's name for the length field.
    pub api_key: Option<Secret>,
    pub max_tokens_field: String,
    pub headers: Vec<(String, Secret)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentConfig {
    pub name: String,
    /// For a registry deployment, `kind` is the template each version is served with (a
    /// GGUF version on the local engine with these settings; a remote version at its endpoint).
    pub release: Option<ReleaseRef>,
    pub kind: DeploymentKind,
    pub max_concurrency: usize,
    pub weight: u32,
    pub connect_timeout: Duration,
    pub first_token_timeout: Duration,
    pub stall_timeout: Duration,
    /// The whole of a non-streamed response.
    pub request_timeout: Duration,
    pub max_retries: u32,
    pub embeddings: bool,
    pub price: Option<crate::pricing::Price>,
    /// Batch requests at once: by default all but one of a local engine's slots (one is kept
    /// for interactive traffic), 8 for a remote deployment.
    pub batch_concurrency: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum DeploymentKind {
    OpenAi(RemoteConfig),
    Ollama(RemoteConfig),
    Local(LocalConfig),
}

impl DeploymentKind {
    pub fn name(&self) -> &'static str {
        match self {
            DeploymentKind::OpenAi(_) => "openai",
            DeploymentKind::Ollama(_) => "ollama",
            DeploymentKind::Local(_) => "local",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RemoteConfig {
    /// Without a trailing slash; for `openai` it includes the `/v1` part.
    pub base_url: String,
    pub model: String,
    pub api_key: Option<Secret>,
    /// The name the upstream takes for the completion length (`max_tokens` by default).
    pub max_tokens_field: String,
    pub headers: Vec<(String, Secret)>,
    /// The upstream speaks the Responses API itself (`responses = "passthrough"`): a
    /// `/v1/responses` request goes to it as the client wrote it, not as a chat completion.
    pub responses_passthrough: bool,
    /// PEM certificates trusted for this upstream's HTTPS besides the public roots
    /// (`ca_file`: a private CA, or the upstream's own self-signed certificate).
    pub ca_file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LocalConfig {
    pub path: PathBuf,
    pub context: u32,
    pub threads: Option<u32>,
    pub parallel: u32,
    pub batch: u32,
    pub ubatch: u32,
    pub queue_depth: usize,
    pub chat_template: Option<String>,
    /// A Jinja chat template file that replaces the GGUF's own (`chat_template_file`).
    pub chat_template_file: Option<PathBuf>,
    pub gpu_layers: u32,
    /// KV cells kept for reusable prompt prefixes (0: no prefix cache).
    pub prefix_cache_tokens: u32,
    pub prefix_cache_entries: u32,
    /// Batch-invariant numerics (a Q8_0 KV cache): an answer does not depend on what else
    /// the engine computes beside it.
    pub deterministic: bool,
    /// Sessions (`x-session-id`): saved under the data directory; idle ones expire.
    pub session_ttl: Duration,
    pub max_sessions: usize,
    pub sessions_dir: Option<PathBuf>,
}

impl Config {
    pub fn alias(&self, name: &str) -> Option<&AliasConfig> {
        self.aliases.iter().find(|a| a.name == name)
    }
}

/// Every problem found, one per line, each naming its file and key path.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Why one configuration file could not be read into its unchecked form.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{}: the config file does not exist", .0.display())]
    Missing(PathBuf),
    #[error("{}: cannot read: {error}", .path.display())]
    Read { path: PathBuf, error: std::io::Error },
    /// Not valid TOML, or not the file's shape: at `line` (1-based) and `key` when known.
    #[error("{}{}: {}{message}", .path.display(), at_line(*.line), key_prefix(.key))]
    Parse { path: PathBuf, line: Option<usize>, key: Option<String>, message: String },
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}

fn key_prefix(key: &Option<String>) -> String {
    key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default()
}

/// Where the configuration comes from.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// The gateway file; `None` reads `./tollgate.toml` if it exists, else uses defaults.
    pub config: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    /// Zero-config: serve this GGUF as one alias.
    pub model: Option<PathBuf>,
    pub model_name: Option<String>,
}

/// Reads the environment through a function, so tests need not mutate the process's.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The data and registry directories only, from the gateway file (or the defaults), without
/// checking routes: `tollgate models add` must work before routes name the new version.
pub fn load_paths(config: Option<&Path>) -> Result<(PathBuf, PathBuf), FileError> {
    let path = config.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("tollgate.toml"));
    let gw: raw::GatewayFile = if path.exists() {
        read_toml(&path)?
    } else if config.is_some() {
        return Err(FileError::Missing(path));
    } else {
        raw::GatewayFile::default()
    };
    let base =
        if path.exists() { path.parent().map(Path::to_path_buf) } else { None }.unwrap_or_else(|| PathBuf::from("."));
    let data = base.join(gw.data_dir.as_deref().unwrap_or("data"));
    let registry = match &gw.registry.dir {
        Some(d) => base.join(d),
        None => data.join("registry"),
    };
    Ok((data, registry))
}

pub fn load(opts: &LoadOptions) -> Result<Config, ConfigErrors> {
    load_with_env(opts, &|k| std::env::var(k).ok())
}

pub fn load_with_env(opts: &LoadOptions, env: Env<'_>) -> Result<Config, ConfigErrors> {
    let mut errs = Vec::new();
    let (gateway_path, explicit) = match &opts.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from("tollgate.toml"), false),
    };
    let (gw, source): (raw::GatewayFile, Option<PathBuf>) = if gateway_path.exists() {
        match read_toml::<raw::GatewayFile>(&gateway_path) {
            Ok(g) => (g, Some(gateway_path.clone())),
            Err(e) => {
                errs.push(e.to_string());
                (raw::GatewayFile::default(), Some(gateway_path.clone()))
            }
        }
    } else if explicit {
        return Err(ConfigErrors(vec![FileError::Missing(gateway_path).to_string()]));
    } else {
        (raw::GatewayFile::default(), None)
    };
    let base = source.as_ref().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_else(|| PathBuf::from("."));
    let gfile = gateway_path.display().to_string();

    let mut server = server_config(&gw, &base, &gfile, opts, &mut errs);
    (server.cluster, server.postgres) = cluster::cluster_config(&gw, &gfile, env, &mut errs);
    let mut auth = auth_config(&gw.auth, &gfile, env, &mut errs);
    if source.is_none() {
        // No gateway file: a local, zero-config start. Said loudly at start.
        auth.open = true;
    }

    let mut aliases = Vec::new();
    let mut models: Vec<ModelConfig> = Vec::new();
    // The routes directory is read when a gateway file names it, or by default beside it;
    // a zero-config start without a gateway file serves only what the command line gives.
    let routes_dir = base.join(gw.routes_dir.as_deref().unwrap_or("routes"));
    if source.is_some() || opts.model.is_none() {
        if gw.routes_dir.is_some() && !routes_dir.is_dir() {
            errs.push(format!("{gfile}: routes_dir: {} is not a directory", routes_dir.display()));
        }
        for file in toml_files(&routes_dir) {
            match read_toml::<raw::RoutesFile>(&file) {
                Ok(r) => {
                    for (i, a) in r.alias.into_iter().enumerate() {
                        if let Some(a) = alias_config(a, i, &file, env, &mut errs) {
                            aliases.push(a);
                        }
                    }
                    for (i, m) in r.model.into_iter().enumerate() {
                        if let Some(m) = model_config(m, i, &file, &mut errs) {
                            models.push(m);
                        }
                    }
                }
                Err(e) => errs.push(e.to_string()),
            }
        }
    }
    if let Some(model) = &opts.model {
        let name = opts.model_name.clone().unwrap_or_else(|| {
            model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "local".into())
        });
        aliases.push(AliasConfig {
            name: name.clone(),
            description: Some("served from the command line (--model)".into()),
            prefix_affine: false,
            load_factor: crate::policy::affinity::DEFAULT_LOAD_FACTOR,
            file: PathBuf::from("--model"),
            router: None,
            guardrails: None,
            deployments: vec![DeploymentConfig {
                name: format!("{name}-local"),
                kind: DeploymentKind::Local(LocalConfig::for_path(model.clone())),
                batch_concurrency: (LocalConfig::for_path(PathBuf::new()).parallel as usize).saturating_sub(1).max(1),
                ..DeploymentConfig::defaults()
            }],
        });
    }
    let mut seen = HashSet::new();
    for a in &aliases {
        if !seen.insert(a.name.clone()) {
            errs.push(format!("{}: alias '{}' is declared more than once", a.file.display(), a.name));
        }
    }
    let mut dep_names = HashSet::new();
    for a in &aliases {
        for d in &a.deployments {
            if !dep_names.insert(d.name.clone()) {
                errs.push(format!(
                    "{}: alias '{}': deployment name '{}' is used twice; deployment names are global",
                    a.file.display(),
                    a.name,
                    d.name
                ));
            }
        }
    }
    for a in &aliases {
        if let Some(r) = &a.router {
            for (role, target) in [("small", &r.small), ("large", &r.large)] {
                match aliases.iter().find(|x| &x.name == target) {
                    None => errs.push(format!("{}: alias '{}': router.{role}: unknown alias '{target}'", a.file.display(), a.name)),
                    Some(t) if t.router.is_some() => errs.push(format!(
                        "{}: alias '{}': router.{role}: '{target}' is itself a router; point at an alias with deployments",
                        a.file.display(),
                        a.name
                    )),
                    _ => {}
                }
            }
        }
    }
    for k in &auth.keys {
        for al in &k.aliases {
            if al != "*" && !aliases.iter().any(|a| &a.name == al) {
                errs.push(format!("{gfile}: auth.keys '{}': aliases: unknown alias '{al}'", k.name));
            }
        }
    }
    for a in &mut aliases {
        for d in &mut a.deployments {
            if let DeploymentKind::Local(l) = &mut d.kind {
                l.sessions_dir = Some(server.data_dir.join("sessions").join(&d.name));
            }
        }
    }
    check_releases(&aliases, &models, &server.registry_dir, &mut errs);
    let prompts_dir = base.join(gw.prompts_dir.as_deref().unwrap_or("prompts"));
    let prompts = load_prompts(&prompts_dir, &mut errs);
    for a in &aliases {
        if let Some(c) = a.router.as_ref().and_then(|r| r.classifier.as_ref()) {
            if !prompts.contains_key(&c.prompt) {
                errs.push(format!(
                    "{}: alias '{}': router.classifier_prompt: no prompt '{}' in {}",
                    a.file.display(),
                    a.name,
                    c.prompt,
                    prompts_dir.display()
                ));
            }
        }
    }
    if errs.is_empty() {
        Ok(Config { source, server, auth, aliases, models, prompts })
    } else {
        Err(ConfigErrors(errs))
    }
}

impl DeploymentConfig {
    fn defaults() -> Self {
        DeploymentConfig {
            name: String::new(),
            release: None,
            kind: DeploymentKind::Local(LocalConfig::for_path(PathBuf::new())),
            max_concurrency: 256,
            weight: 1,
            connect_timeout: Duration::from_secs(5),
            first_token_timeout: Duration::from_secs(120),
            stall_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(600),
            max_retries: 2,
            embeddings: false,
            price: None,
            batch_concurrency: 8,
        }
    }
}

impl LocalConfig {
    pub fn for_path(path: PathBuf) -> Self {
        LocalConfig {
            path,
            context: 4096,
            threads: None,
            parallel: 4,
            batch: 512,
            ubatch: 512,
            queue_depth: 16,
            chat_template: None,
            chat_template_file: None,
            gpu_layers: 0,
            prefix_cache_tokens: 4096,
            prefix_cache_entries: 16,
            deterministic: false,
            session_ttl: Duration::from_secs(24 * 3600),
            max_sessions: 1000,
            sessions_dir: None,
        }
    }
}

fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, FileError> {
    let text = std::fs::read_to_string(path).map_err(|error| FileError::Read { path: path.to_owned(), error })?;
    let de = toml::Deserializer::new(&text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = Some(e.path().to_string()).filter(|k| !k.is_empty() && k != ".");
        let inner = e.into_inner();
        let line = inner.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        FileError::Parse { path: path.to_owned(), line, key, message: inner.message().to_owned() }
    })
}

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn parse_sha256(hex_str: &str) -> Option<[u8; 32]> {
    let v = hex::decode(hex_str.trim()).ok()?;
    v.try_into().ok()
}

/// The PEM certificates in `path` (a deployment's `ca_file`): at least one, each parsed.
pub fn read_certificates(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|e| format!("cannot read '{}': {e}", path.display()))?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("'{}' is not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("'{}' holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests;

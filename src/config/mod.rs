//! Configuration: the gateway file (`tollgate.toml`), the alias files in `routes/*.toml`, and
//! the named prompts in `prompts/`.
//!
//! Files are read into the unchecked forms of [`raw`] (unknown keys are errors) and then
//! checked into [`Config`]. Loading never stops at the first problem: every problem is
//! collected, each naming its file and key path, so `tollgate check-config` lists them all
//! and `serve` refuses to start with all of them printed. Secrets come only from the
//! environment (`"${VAR}"`); a literal secret in a file is refused.

pub mod raw;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

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
    pub log_json: bool,
    pub log_content: bool,
    pub cors_origins: Vec<String>,
    pub cache: crate::cache::CacheConfig,
    /// The durable ledger (`data_dir/ledger/`).
    pub ledger: bool,
    /// Completion tokens reserved against a tokens-per-minute limit when a request sets no
    /// max_tokens.
    pub default_max_tokens: u64,
    pub monitor: crate::monitor::MonitorConfig,
    /// Lines of one batch in flight at once.
    pub batch_concurrency: usize,
    /// The model registry (`crate::registry`).
    pub registry_dir: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("data"),
            max_body_bytes: 16 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
            keepalive: Duration::from_secs(15),
            log_json: false,
            log_content: false,
            cors_origins: Vec::new(),
            cache: crate::cache::CacheConfig::default(),
            ledger: true,
            default_max_tokens: 1024,
            monitor: crate::monitor::MonitorConfig::default(),
            batch_concurrency: 16,
            registry_dir: PathBuf::from("data/registry"),
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
}

#[derive(Clone, Debug, PartialEq)]
pub struct AutoRouterConfig {
    pub small: String,
    pub large: String,
    pub weights: crate::smallroute::RouterWeights,
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
pub fn load_paths(config: Option<&Path>) -> Result<(PathBuf, PathBuf), String> {
    let path = config.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("tollgate.toml"));
    let gw: raw::GatewayFile = if path.exists() {
        read_toml(&path)?
    } else if config.is_some() {
        return Err(format!("{}: the config file does not exist", path.display()));
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
                errs.push(e);
                (raw::GatewayFile::default(), Some(gateway_path.clone()))
            }
        }
    } else if explicit {
        return Err(ConfigErrors(vec![format!("{}: the config file does not exist", gateway_path.display())]));
    } else {
        (raw::GatewayFile::default(), None)
    };
    let base = source.as_ref().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_else(|| PathBuf::from("."));
    let gfile = gateway_path.display().to_string();

    let server = server_config(&gw, &base, &gfile, opts, &mut errs);
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
                Err(e) => errs.push(e),
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
            load_factor: crate::affinity::DEFAULT_LOAD_FACTOR,
            file: PathBuf::from("--model"),
            router: None,
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

fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let de = toml::Deserializer::new(&text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.message().to_owned();
        let at = inner
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                format!(" (line {line})")
            })
            .unwrap_or_default();
        if key.is_empty() || key == "." {
            format!("{}{at}: {msg}", path.display())
        } else {
            format!("{}{at}: {key}: {msg}", path.display())
        }
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

fn server_config(
    gw: &raw::GatewayFile,
    base: &Path,
    file: &str,
    opts: &LoadOptions,
    errs: &mut Vec<String>,
) -> ServerConfig {
    let mut s = ServerConfig::default();
    if let Some(l) = &gw.listen {
        match l.parse() {
            Ok(a) => s.listen = a,
            Err(_) => errs.push(format!("{file}: listen: '{l}' is not an address like 127.0.0.1:8080")),
        }
    }
    if let Some(l) = opts.listen {
        s.listen = l;
    }
    // Relative to the gateway file, like every path in it (the working directory without one).
    s.data_dir = base.join(gw.data_dir.as_deref().unwrap_or("data"));
    s.registry_dir = match &gw.registry.dir {
        Some(d) => base.join(d),
        None => s.data_dir.join("registry"),
    };
    if let Some(b) = gw.max_body_bytes {
        if b < 1024 {
            errs.push(format!("{file}: max_body_bytes: {b} is too small (at least 1024)"));
        }
        s.max_body_bytes = b;
    }
    if let Some(g) = gw.shutdown_grace_secs {
        s.shutdown_grace = Duration::from_secs(g);
    }
    if let Some(k) = gw.keepalive_secs {
        if k == 0 {
            errs.push(format!("{file}: keepalive_secs: must be at least 1"));
        }
        s.keepalive = Duration::from_secs(k.max(1));
    }
    match gw.log.format.as_deref() {
        None | Some("text") => {}
        Some("json") => s.log_json = true,
        Some(o) => errs.push(format!("{file}: log.format: '{o}' is not one of \"text\", \"json\"")),
    }
    s.log_content = gw.log.content.unwrap_or(false);
    s.cors_origins = gw.cors.allow_origins.clone();
    let c = &gw.cache;
    s.cache.enabled = c.enabled.unwrap_or(false);
    if let Some(t) = c.ttl_secs {
        if t == 0 {
            errs.push(format!("{file}: cache.ttl_secs: must be at least 1"));
        }
        s.cache.ttl = Duration::from_secs(t.max(1));
    }
    if let Some(m) = c.max_entries {
        s.cache.max_entries = m;
    }
    match c.scope.as_deref() {
        None | Some("key") => {}
        Some("global") => s.cache.global = true,
        Some(o) => errs.push(format!("{file}: cache.scope: '{o}' is not one of \"key\", \"global\"")),
    }
    s.ledger = gw.ledger.enabled.unwrap_or(true);
    if let Some(c) = gw.batch.concurrency {
        if c == 0 {
            errs.push(format!("{file}: batch.concurrency: must be at least 1"));
        }
        s.batch_concurrency = c.max(1);
    }
    if let Some(m) = gw.limits.default_max_tokens {
        s.default_max_tokens = m;
    }
    let m = &gw.monitor;
    let mc = &mut s.monitor;
    mc.enabled = m.enabled.unwrap_or(mc.enabled);
    if let Some(w) = m.window_secs {
        if w < 10 {
            errs.push(format!("{file}: monitor.window_secs: must be at least 10"));
        }
        mc.window = Duration::from_secs(w.max(10));
    }
    for (name, v) in [("error_rate_threshold", m.error_rate_threshold), ("drift_threshold", m.drift_threshold)] {
        if v.is_some_and(|v| !(v > 0.0 && v.is_finite())) {
            errs.push(format!("{file}: monitor.{name}: must be a positive number"));
        }
    }
    mc.error_rate_threshold = m.error_rate_threshold.unwrap_or(mc.error_rate_threshold);
    mc.drift_threshold = m.drift_threshold.unwrap_or(mc.drift_threshold);
    mc.min_requests = m.min_requests.unwrap_or(mc.min_requests).max(1);
    if let Some(w) = m.drift_window {
        if w < 10 {
            errs.push(format!("{file}: monitor.drift_window: must be at least 10 requests"));
        }
        mc.drift_window = w.max(10);
    }
    if let Some(u) = &m.webhook_url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            errs.push(format!("{file}: monitor.webhook_url: '{u}' is not an http:// or https:// URL"));
        }
        mc.webhook_url = Some(u.clone());
    }
    s
}

/// A positive decimal amount (a price or a budget) from a number or a decimal string.
fn amount(v: &toml::Value, file: &str, key: &str, errs: &mut Vec<String>) -> Option<rust_decimal::Decimal> {
    match crate::pricing::decimal_from_toml(v) {
        Some(d) if d >= rust_decimal::Decimal::ZERO => Some(d),
        _ => {
            errs.push(format!("{file}: {key}: {v} is not a non-negative amount (a number or a decimal string)"));
            None
        }
    }
}

/// `"${VAR}"` → the variable's value. Anything else is a literal.
fn env_ref(value: &str) -> Option<&str> {
    value.strip_prefix("${")?.strip_suffix('}')
}

/// A secret must be an environment reference; a literal is refused with how to fix it.
fn secret(value: &str, file: &str, key: &str, env: Env<'_>, errs: &mut Vec<String>) -> Option<Secret> {
    match env_ref(value) {
        Some(var) => match env(var) {
            Some(v) if !v.is_empty() => Some(Secret(v)),
            _ => {
                errs.push(format!("{file}: {key}: the environment variable {var} is not set"));
                None
            }
        },
        None => {
            errs.push(format!(
                "{file}: {key}: a literal secret is not allowed in a config file; export it as an \
                 environment variable (e.g. TOLLGATE_SECRET=...) and write {key} = \"${{TOLLGATE_SECRET}}\""
            ));
            None
        }
    }
}

/// A non-secret value that may still come from the environment (paths, URLs).
fn plain(value: &str, file: &str, key: &str, env: Env<'_>, errs: &mut Vec<String>) -> Option<String> {
    match env_ref(value) {
        Some(var) => match env(var) {
            Some(v) => Some(v),
            None => {
                errs.push(format!("{file}: {key}: the environment variable {var} is not set"));
                None
            }
        },
        None => Some(value.to_owned()),
    }
}

/// `30s`, `30m`, `24h`, `7d`, or plain seconds.
pub fn duration_secs(s: &str) -> Option<u64> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().ok()?;
    let per = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(per)
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn parse_sha256(hex_str: &str) -> Option<[u8; 32]> {
    let v = hex::decode(hex_str.trim()).ok()?;
    v.try_into().ok()
}

fn auth_config(a: &raw::AuthFile, file: &str, env: Env<'_>, errs: &mut Vec<String>) -> AuthConfig {
    let mut out = AuthConfig { open: a.open.unwrap_or(false), ..Default::default() };
    match (&a.admin_key, &a.admin_key_sha256) {
        (Some(_), Some(_)) => errs.push(format!("{file}: auth: give admin_key or admin_key_sha256, not both")),
        (Some(k), None) => {
            out.admin_key_sha256 = secret(k, file, "auth.admin_key", env, errs).map(|s| sha256(s.0.as_bytes()))
        }
        (None, Some(h)) => match parse_sha256(h) {
            Some(h) => out.admin_key_sha256 = Some(h),
            None => errs.push(format!("{file}: auth.admin_key_sha256: not 64 hex digits")),
        },
        (None, None) => {}
    }
    let mut names = HashSet::new();
    for (i, k) in a.keys.iter().enumerate() {
        let key = format!("auth.keys[{i}]");
        if !names.insert(k.name.clone()) {
            errs.push(format!("{file}: {key}.name: '{}' is used twice", k.name));
        }
        let hash = match (&k.sha256, &k.key) {
            (Some(h), None) => parse_sha256(h).or_else(|| {
                errs.push(format!("{file}: {key}.sha256: not 64 hex digits"));
                None
            }),
            (None, Some(v)) => secret(v, file, &format!("{key}.key"), env, errs).map(|s| sha256(s.0.as_bytes())),
            _ => {
                errs.push(format!("{file}: {key}: give exactly one of sha256 or key"));
                None
            }
        };
        if k.aliases.is_empty() {
            errs.push(format!("{file}: {key}.aliases: list the aliases this key may call (\"*\" for all)"));
        }
        for (name, v) in [
            ("requests_per_minute", k.requests_per_minute.map(u64::from)),
            ("tokens_per_minute", k.tokens_per_minute),
            ("max_concurrent", k.max_concurrent.map(u64::from)),
        ] {
            if v == Some(0) {
                errs.push(format!("{file}: {key}.{name}: must be at least 1 (leave it out for no limit)"));
            }
        }
        let limits = KeyLimits {
            requests_per_minute: k.requests_per_minute,
            tokens_per_minute: k.tokens_per_minute,
            max_concurrent: k.max_concurrent,
            budget_usd_per_day: k
                .budget_usd_per_day
                .as_ref()
                .and_then(|v| amount(v, file, &format!("{key}.budget_usd_per_day"), errs)),
            budget_usd_per_month: k
                .budget_usd_per_month
                .as_ref()
                .and_then(|v| amount(v, file, &format!("{key}.budget_usd_per_month"), errs)),
        };
        if let Some(sha256) = hash {
            out.keys.push(ApiKeyConfig { name: k.name.clone(), sha256, aliases: k.aliases.clone(), limits });
        }
    }
    out
}

fn alias_config(a: raw::AliasFile, i: usize, file: &Path, env: Env<'_>, errs: &mut Vec<String>) -> Option<AliasConfig> {
    let f = file.display().to_string();
    let at = format!("alias[{i}]");
    let before = errs.len();
    if a.name.is_empty() || a.name.contains(char::is_whitespace) {
        errs.push(format!("{f}: {at}.name: '{}' must be non-empty without spaces", a.name));
    }
    match (&a.router, a.deployment.is_empty()) {
        (None, true) => {
            errs.push(format!("{f}: {at}: alias '{}' has no [[alias.deployment]] (or [alias.router])", a.name))
        }
        (Some(_), false) => errs.push(format!("{f}: {at}: alias '{}' has a router and deployments; give one", a.name)),
        (Some(r), true) if r.small == r.large => {
            errs.push(format!("{f}: {at}.router: small and large are the same alias"))
        }
        _ => {}
    }
    let mut deployments = Vec::new();
    for (j, d) in a.deployment.into_iter().enumerate() {
        if let Some(d) = deployment_config(d, &format!("{at}.deployment[{j}]"), &f, file, env, errs) {
            deployments.push(d);
        }
    }
    let prefix_affine = match a.routing.as_deref() {
        None | Some("ordered") => false,
        Some("prefix_affine") => true,
        Some(o) => {
            errs.push(format!("{f}: {at}.routing: '{o}' is not one of \"ordered\", \"prefix_affine\""));
            false
        }
    };
    let load_factor = a.affinity_load_factor.unwrap_or(crate::affinity::DEFAULT_LOAD_FACTOR);
    if load_factor < 1.0 {
        errs.push(format!("{f}: {at}.affinity_load_factor: must be at least 1.0"));
    }
    let router = a.router.map(|r| AutoRouterConfig {
        small: r.small,
        large: r.large,
        weights: r.weights.unwrap_or_default(),
        escalate_on_length: r.escalate_on_length.unwrap_or(false),
        classifier: r.classifier_prompt.map(|prompt| Classifier {
            prompt,
            timeout: Duration::from_millis(r.classifier_timeout_ms.unwrap_or(500).max(1)),
        }),
    });
    (errs.len() == before).then(|| AliasConfig {
        name: a.name,
        description: a.description,
        prefix_affine,
        load_factor,
        file: file.to_path_buf(),
        deployments,
        router,
    })
}

fn deployment_config(
    d: raw::DeploymentFile,
    at: &str,
    f: &str,
    file: &Path,
    env: Env<'_>,
    errs: &mut Vec<String>,
) -> Option<DeploymentConfig> {
    let before = errs.len();
    let mut out = DeploymentConfig { name: d.name.clone(), ..DeploymentConfig::defaults() };
    let ms = |v: Option<u64>, default: Duration| v.map(Duration::from_millis).unwrap_or(default);
    out.connect_timeout = ms(d.connect_timeout_ms, out.connect_timeout);
    out.first_token_timeout = ms(d.first_token_timeout_ms, out.first_token_timeout);
    out.stall_timeout = ms(d.stall_timeout_ms, out.stall_timeout);
    out.request_timeout = ms(d.request_timeout_ms, out.request_timeout);
    for (name, v) in [
        ("connect_timeout_ms", d.connect_timeout_ms),
        ("first_token_timeout_ms", d.first_token_timeout_ms),
        ("stall_timeout_ms", d.stall_timeout_ms),
        ("request_timeout_ms", d.request_timeout_ms),
    ] {
        if v == Some(0) {
            errs.push(format!("{f}: {at}.{name}: must be at least 1"));
        }
    }
    out.max_retries = d.max_retries.unwrap_or(out.max_retries);
    out.weight = d.weight.unwrap_or(1);
    out.embeddings = d.embeddings.unwrap_or(false);
    if let Some(p) = &d.price {
        let k = |n: &str| format!("{at}.price.{n}");
        let input = amount(&p.input, f, &k("input"), errs);
        let output = amount(&p.output, f, &k("output"), errs);
        let cached = p.cached_input.as_ref().and_then(|v| amount(v, f, &k("cached_input"), errs));
        let batch = p.batch_multiplier.as_ref().and_then(|v| amount(v, f, &k("batch_multiplier"), errs));
        if batch.is_some_and(|b| b > rust_decimal::Decimal::ONE) {
            errs.push(format!("{f}: {at}.price.batch_multiplier: must be at most 1 (a discount)"));
        }
        if let (Some(input), Some(output)) = (input, output) {
            out.price = Some(crate::pricing::Price {
                input,
                cached_input: cached.unwrap_or(input),
                output,
                batch_multiplier: batch.unwrap_or(rust_decimal::Decimal::ONE),
            });
        }
    }
    if let Some(c) = d.max_concurrency {
        if c == 0 {
            errs.push(format!("{f}: {at}.max_concurrency: must be at least 1"));
        }
        out.max_concurrency = c;
    }
    let local_only = [
        ("path", d.path.is_some()),
        ("context", d.context.is_some()),
        ("threads", d.threads.is_some()),
        ("parallel", d.parallel.is_some()),
        ("batch", d.batch.is_some()),
        ("ubatch", d.ubatch.is_some()),
        ("queue_depth", d.queue_depth.is_some()),
        ("chat_template", d.chat_template.is_some()),
        ("gpu_layers", d.gpu_layers.is_some()),
        ("prefix_cache_tokens", d.prefix_cache_tokens.is_some()),
        ("prefix_cache_entries", d.prefix_cache_entries.is_some()),
        ("deterministic", d.deterministic.is_some()),
        ("session_ttl_secs", d.session_ttl_secs.is_some()),
        ("max_sessions", d.max_sessions.is_some()),
    ];
    let remote_only = [
        ("base_url", d.base_url.is_some()),
        ("model", d.model.is_some()),
        ("api_key", d.api_key.is_some()),
        ("max_tokens_field", d.max_tokens_field.is_some()),
        ("headers", !d.headers.is_empty()),
    ];
    let misplaced = |fields: &[(&str, bool)], kind: &str, errs: &mut Vec<String>| {
        for (name, set) in fields {
            if *set {
                errs.push(format!("{f}: {at}.{name}: not a setting of kind = \"{kind}\""));
            }
        }
    };
    let registry = d.kind == "registry";
    if registry {
        let (api_key, max_tokens_field, headers) = remote_auth(&d, at, f, env, errs);
        match d.model.as_deref().map(crate::registry::parse_ref) {
            Some(Ok((model, version))) => {
                out.release = Some(ReleaseRef { model, version, api_key, max_tokens_field, headers })
            }
            Some(Err(e)) => errs.push(format!("{f}: {at}.model: {e}")),
            None => errs.push(format!("{f}: {at}.model: required for kind = \"registry\" (NAME or NAME@X.Y.Z)")),
        }
        for (name, set) in remote_only.iter().chain(&local_only[..1]) {
            if *set && matches!(*name, "base_url" | "path") {
                errs.push(format!("{f}: {at}.{name}: not a setting of kind = \"registry\" (the registry holds it)"));
            }
        }
    }
    match d.kind.as_str() {
        "openai" | "ollama" => {
            misplaced(&local_only, &d.kind, errs);
            let base_url = match &d.base_url {
                Some(u) => plain(u, f, &format!("{at}.base_url"), env, errs),
                None => {
                    errs.push(format!("{f}: {at}.base_url: required for kind = \"{}\"", d.kind));
                    None
                }
            };
            if let Some(u) = &base_url {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    errs.push(format!("{f}: {at}.base_url: '{u}' is not an http:// or https:// URL"));
                }
            }
            let model = d.model.clone().unwrap_or_else(|| {
                errs.push(format!("{f}: {at}.model: required (the upstream's model name)"));
                String::new()
            });
            let (api_key, max_tokens_field, headers) = remote_auth(&d, at, f, env, errs);
            let remote = RemoteConfig {
                base_url: base_url.unwrap_or_default().trim_end_matches('/').to_owned(),
                model,
                api_key,
                max_tokens_field,
                headers,
            };
            out.kind = if d.kind == "openai" { DeploymentKind::OpenAi(remote) } else { DeploymentKind::Ollama(remote) };
        }
        "local" | "registry" => {
            if !registry {
                misplaced(&remote_only, "local", errs);
            }
            let path = match &d.path {
                None if registry => None,
                Some(p) => plain(p, f, &format!("{at}.path"), env, errs).map(|p| {
                    let p = PathBuf::from(p);
                    if p.is_relative() {
                        file.parent().and_then(Path::parent).unwrap_or(Path::new(".")).join(p)
                    } else {
                        p
                    }
                }),
                None => {
                    errs.push(format!("{f}: {at}.path: required for kind = \"local\" (the GGUF file)"));
                    None
                }
            };
            let mut l = LocalConfig::for_path(path.unwrap_or_default());
            l.context = d.context.unwrap_or(l.context);
            l.threads = d.threads;
            l.parallel = d.parallel.unwrap_or(l.parallel);
            l.batch = d.batch.unwrap_or(l.batch);
            l.ubatch = d.ubatch.unwrap_or(l.batch.min(l.ubatch));
            l.queue_depth = d.queue_depth.unwrap_or(4 * l.parallel as usize);
            l.chat_template = d.chat_template.clone();
            l.gpu_layers = d.gpu_layers.unwrap_or(0);
            l.prefix_cache_tokens = d.prefix_cache_tokens.unwrap_or(l.context);
            l.prefix_cache_entries = d.prefix_cache_entries.unwrap_or(l.prefix_cache_entries);
            l.deterministic = d.deterministic.unwrap_or(l.deterministic);
            l.session_ttl = d.session_ttl_secs.map(Duration::from_secs).unwrap_or(l.session_ttl);
            l.max_sessions = d.max_sessions.unwrap_or(l.max_sessions);
            if l.parallel > 256 {
                errs.push(format!("{f}: {at}.parallel: must be at most 256 (llama.cpp's sequence limit)"));
            }
            for (name, v) in
                [("context", l.context), ("parallel", l.parallel), ("batch", l.batch), ("ubatch", l.ubatch)]
            {
                if v == 0 {
                    errs.push(format!("{f}: {at}.{name}: must be at least 1"));
                }
            }
            if l.batch < l.parallel {
                errs.push(format!(
                    "{f}: {at}.batch: {} is less than parallel ({}): every decoding sequence needs a place in each step's batch",
                    l.batch, l.parallel
                ));
            }
            if l.context < 64 {
                errs.push(format!("{f}: {at}.context: {} is too small (at least 64)", l.context));
            }
            out.batch_concurrency = (l.parallel as usize).saturating_sub(1).max(1);
            out.kind = DeploymentKind::Local(l);
        }
        other => errs
            .push(format!("{f}: {at}.kind: '{other}' is not one of \"openai\", \"ollama\", \"local\", \"registry\"")),
    }
    if let Some(b) = d.batch_concurrency {
        if b == 0 {
            errs.push(format!("{f}: {at}.batch_concurrency: must be at least 1"));
        }
        out.batch_concurrency = b.max(1);
    }
    (errs.len() == before).then_some(out)
}

/// A remote deployment's (or a registry deployment's remote versions') key, length field
/// name and extra headers.
fn remote_auth(
    d: &raw::DeploymentFile,
    at: &str,
    f: &str,
    env: Env<'_>,
    errs: &mut Vec<String>,
) -> (Option<Secret>, String, Vec<(String, Secret)>) {
    let api_key = d.api_key.as_deref().and_then(|k| secret(k, f, &format!("{at}.api_key"), env, errs));
    let max_tokens_field = d.max_tokens_field.clone().unwrap_or_else(|| "max_tokens".into());
    if !matches!(max_tokens_field.as_str(), "max_tokens" | "max_completion_tokens") {
        errs.push(format!("{f}: {at}.max_tokens_field: must be \"max_tokens\" or \"max_completion_tokens\""));
    }
    let headers = d
        .headers
        .iter()
        .filter_map(|(k, v)| {
            let v = match env_ref(v) {
                Some(_) => secret(v, f, &format!("{at}.headers.{k}"), env, errs)?,
                None => Secret(v.clone()),
            };
            Some((k.clone(), v))
        })
        .collect();
    (api_key, max_tokens_field, headers)
}

fn model_config(m: raw::ModelFile, i: usize, file: &Path, errs: &mut Vec<String>) -> Option<ModelConfig> {
    let f = file.display().to_string();
    let at = format!("model[{i}]");
    let before = errs.len();
    if !crate::registry::valid_name(&m.name) {
        errs.push(format!("{f}: {at}.name: '{}' is not a registry model name", m.name));
    }
    for (k, v) in [("production", &m.production), ("staging", &m.staging)] {
        if let Some(v) = v.as_deref().filter(|v| !crate::registry::valid_version(v)) {
            errs.push(format!("{f}: {at}.{k}: '{v}' is not a version like 1.2.0"));
        }
    }
    let canary_weight = m.canary_weight.unwrap_or(if m.staging.is_some() { 10.0 } else { 0.0 });
    if !(0.0..=100.0).contains(&canary_weight) {
        errs.push(format!("{f}: {at}.canary_weight: {canary_weight} is not a percentage (0 to 100)"));
    }
    if m.staging.is_some() && m.staging == m.production {
        errs.push(format!("{f}: {at}: staging and production are the same version"));
    }
    let mut rollback = RollbackPolicy::default();
    if let Some(r) = m.rollback {
        rollback.enabled = r.enabled.unwrap_or(true);
        for (k, v, slot) in [
            ("error_rate_margin", r.error_rate_margin, &mut rollback.error_rate_margin),
            ("p95_margin", r.p95_margin, &mut rollback.p95_margin),
        ] {
            if let Some(v) = v {
                if !(v >= 0.0 && v.is_finite()) {
                    errs.push(format!("{f}: {at}.rollback.{k}: must be a non-negative fraction"));
                }
                *slot = v;
            }
        }
        rollback.min_requests = r.min_requests.unwrap_or(rollback.min_requests);
        if rollback.min_requests == 0 || rollback.min_requests > crate::release::WINDOW as u64 {
            errs.push(format!(
                "{f}: {at}.rollback.min_requests: must be between 1 and {} (the comparison's window)",
                crate::release::WINDOW
            ));
        }
    }
    (errs.len() == before).then(|| ModelConfig {
        name: m.name,
        production: m.production,
        staging: m.staging,
        canary_weight,
        rollback,
        file: file.to_path_buf(),
    })
}

/// Registry references: pinned versions exist; a followed model is declared once in `[[model]]`.
fn check_releases(aliases: &[AliasConfig], models: &[ModelConfig], registry: &Path, errs: &mut Vec<String>) {
    let reg = crate::registry::Registry::new(registry.to_path_buf());
    let mut seen = HashSet::new();
    for m in models {
        if !seen.insert(m.name.clone()) {
            errs.push(format!("{}: model '{}' is declared more than once", m.file.display(), m.name));
        }
        for v in [&m.production, &m.staging].into_iter().flatten() {
            if let Err(e) = reg.get(&m.name, v) {
                errs.push(format!("{}: model '{}': {e}", m.file.display(), m.name));
            }
        }
    }
    for a in aliases {
        let followed = a.deployments.iter().filter(|d| d.release.as_ref().is_some_and(|r| r.version.is_none()));
        if followed.count() > 1 {
            errs.push(format!(
                "{}: alias '{}': more than one deployment follows a registry model's stages; pin the others \
                 (model = \"NAME@X.Y.Z\") or give each its own alias",
                a.file.display(),
                a.name
            ));
        }
        for d in &a.deployments {
            let Some(r) = &d.release else { continue };
            if let Some(v) = &r.version {
                if let Err(e) = reg.get(&r.model, v) {
                    errs.push(format!("{}: alias '{}': deployment '{}': {e}", a.file.display(), a.name, d.name));
                }
            }
        }
    }
}

/// `prompts/NAME.txt` or `prompts/NAME@VERSION.txt` (or `.md`): named system prompts.
fn load_prompts(dir: &Path, errs: &mut Vec<String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Some(ext) = p.extension().and_then(|x| x.to_str()) else {
            continue;
        };
        if !matches!(ext, "txt" | "md") {
            continue;
        }
        let Some(stem) = p.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if stem.eq_ignore_ascii_case("readme") {
            continue;
        }
        match std::fs::read_to_string(&p) {
            Ok(t) => {
                out.insert(stem.to_owned(), t);
            }
            Err(err) => errs.push(format!("{}: cannot read: {err}", p.display())),
        }
    }
    out
}

#[cfg(test)]
mod tests;

//! The `tollgate` command line: `serve`, `check-config`, `keys new`, `usage`, `batch run`,
//! `models` ([`models`]); `serve` runs the gateway under its signals ([`serve`]).

pub mod batch;
pub mod logging;
pub mod models;
pub mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, DeploymentKind, LoadOptions};

#[derive(Parser, Debug)]
#[command(
    name = "tollgate",
    version,
    about = "An LLM inference gateway: the OpenAI API over an embedded llama.cpp engine and remote backends"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the OpenAI API.
    Serve {
        /// The gateway file (default: ./tollgate.toml if it exists).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address (default 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Zero-config: serve this GGUF model through the whole API.
        #[arg(long)]
        model: Option<PathBuf>,
        /// The alias for --model (default: the file's name without .gguf).
        #[arg(long, requires = "model")]
        name: Option<String>,
        /// Log as JSON lines.
        #[arg(long)]
        log_json: bool,
    },
    /// Validate the configuration and print the aliases and their deployments.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long, requires = "model")]
        name: Option<String>,
    },
    /// API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The model registry and release changes (promote, canary, rollback, audit).
    Models {
        #[command(subcommand)]
        command: models::ModelsCommand,
    },
    /// Bulk jobs through a running gateway's Batch API.
    Batch {
        #[command(subcommand)]
        command: BatchCommand,
    },
    /// Print usage from a running gateway's ledger as a table (needs the admin key).
    Usage {
        /// The gateway.
        #[arg(long, env = "TOLLGATE_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// The admin key (none for an open gateway without one).
        #[arg(long, env = "TOLLGATE_ADMIN_KEY", hide_env_values = true)]
        admin_key: Option<String>,
        /// How far back: e.g. 30m, 24h, 7d.
        #[arg(long, default_value = "24h")]
        since: String,
        /// Group by any of key, user, alias, deployment, day, batch (comma-separated).
        #[arg(long, default_value = "key")]
        group_by: String,
        /// Only this key.
        #[arg(long)]
        key: Option<String>,
        /// Only this alias.
        #[arg(long)]
        alias: Option<String>,
        /// Print the JSON report instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum BatchCommand {
    /// Upload INPUT (OpenAI batch JSONL), run it, show progress, write the results to OUTPUT;
    /// run again after an interruption to resume the same batch.
    Run {
        input: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// The gateway.
        #[arg(long, env = "TOLLGATE_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// The API key (none for an open gateway).
        #[arg(long, env = "TOLLGATE_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        #[arg(long, default_value = "24h")]
        completion_window: String,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Print a fresh key and the config lines that accept it.
    New {
        /// The key's name in records and logs.
        #[arg(long, default_value = "my-app")]
        name: String,
    },
}

#[allow(clippy::print_stdout)] // a command's output is what it prints
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, listen, model, name, log_json } => {
            let opts = LoadOptions { config, listen, model, model_name: name };
            let cfg = match config::load(&opts) {
                Ok(c) => c,
                Err(errs) => {
                    eprintln!("tollgate: the configuration has {} problem(s):\n{errs}", errs.0.len());
                    return std::process::ExitCode::from(2);
                }
            };
            logging::init(cfg.server.log_json || log_json);
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("tollgate: cannot start the runtime: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            match rt.block_on(serve::run(cfg, opts)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("tollgate: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { config, model, name } => {
            let opts = LoadOptions { config, model, model_name: name, ..Default::default() };
            match config::load(&opts) {
                Ok(cfg) => {
                    print_config(&cfg);
                    std::process::ExitCode::SUCCESS
                }
                Err(errs) => {
                    eprintln!("{} problem(s):\n{errs}", errs.0.len());
                    std::process::ExitCode::from(2)
                }
            }
        }
        Command::Batch { command: BatchCommand::Run { input, output, url, api_key, completion_window, quiet } } => {
            let args = batch::Args { url, api_key, input, output, completion_window, quiet };
            match batch::run(args) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tollgate batch: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Usage { url, admin_key, since, group_by, key, alias, json } => {
            match usage(&url, admin_key.as_deref(), &since, &group_by, key, alias) {
                Ok(report) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
                    } else {
                        print!("{}", crate::accounting::usage::table(&report));
                    }
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tollgate usage: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Models { command } => match models::run(command) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tollgate models: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Keys { command: KeysCommand::New { name } } => {
            let (key, hash) = crate::api::auth::new_key();
            println!("key:  {key}");
            println!("\nGive the key to its user; put its hash in the gateway file:\n");
            println!("[[auth.keys]]\nname = \"{name}\"\nsha256 = \"{hash}\"\naliases = [\"*\"]");
            std::process::ExitCode::SUCCESS
        }
    }
}

fn usage(
    url: &str,
    admin_key: Option<&str>,
    since: &str,
    group_by: &str,
    key: Option<String>,
    alias: Option<String>,
) -> anyhow::Result<serde_json::Value> {
    let secs = crate::config::duration_secs(since)
        .ok_or_else(|| anyhow::anyhow!("--since '{since}' is not like 30m, 24h or 7d"))?;
    let now = crate::clock::now_ms() / 1000;
    let mut q: Vec<(&str, String)> = vec![
        ("start_time", now.saturating_sub(secs).to_string()),
        ("end_time", (now + 1).to_string()),
        ("group_by", group_by.to_owned()),
    ];
    if let Some(k) = key {
        q.push(("key", k));
    }
    if let Some(a) = alias {
        q.push(("alias", a));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut req = reqwest::Client::new().get(format!("{}/v1/usage", url.trim_end_matches('/'))).query(&q);
        if let Some(k) = admin_key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await?;
        if !status.is_success() {
            anyhow::bail!("{status}: {}", body["error"]["message"].as_str().unwrap_or("no message"));
        }
        Ok(body)
    })
}

#[allow(clippy::print_stdout)] // a command's output is what it prints
fn print_config(cfg: &Config) {
    match &cfg.source {
        Some(p) => println!("config: {} (valid)", p.display()),
        None => println!("config: none (defaults)"),
    }
    println!("listen: {}", cfg.server.listen);
    if let Some(c) = &cfg.server.cluster {
        // The URL may hold a password (from the environment): its host part only.
        let host = c.redis_url.0.rsplit('@').next().unwrap_or("").trim_start_matches("redis://");
        println!(
            "cluster: redis {host}, {} replica(s), fail_mode {}",
            c.replicas,
            if c.fail_closed { "closed" } else { "open" }
        );
    }
    if let Some(p) = &cfg.server.postgres {
        let host = p.url.0.rsplit('@').next().unwrap_or("");
        println!("ledger: PostgreSQL {host}");
    }
    if cfg.auth.open {
        println!("auth:   OPEN (no key needed)");
    } else {
        println!(
            "auth:   {} key(s), admin key {}",
            cfg.auth.keys.len(),
            if cfg.auth.admin_key_sha256.is_some() { "set" } else { "not set" }
        );
    }
    for k in &cfg.auth.keys {
        let l = &k.limits;
        let mut parts = Vec::new();
        if let Some(v) = l.requests_per_minute {
            parts.push(format!("rpm={v}"));
        }
        if let Some(v) = l.tokens_per_minute {
            parts.push(format!("tpm={v}"));
        }
        if let Some(v) = l.max_concurrent {
            parts.push(format!("concurrent={v}"));
        }
        if let Some(v) = l.budget_usd_per_day {
            parts.push(format!("${v}/day"));
        }
        if let Some(v) = l.budget_usd_per_month {
            parts.push(format!("${v}/month"));
        }
        if !parts.is_empty() {
            println!("  key {}: {}", k.name, parts.join(", "));
        }
    }
    println!("aliases:");
    for a in &cfg.aliases {
        println!("  {} ({})", a.name, a.file.display());
        for (i, d) in a.deployments.iter().enumerate() {
            let target = match &d.kind {
                DeploymentKind::OpenAi(r) | DeploymentKind::Ollama(r) => {
                    format!("{} model={}", r.base_url, r.model)
                }
                DeploymentKind::Local(_) if d.release.is_some() => String::new(),
                DeploymentKind::Local(l) => format!("{} ctx={} parallel={}", l.path.display(), l.context, l.parallel),
            };
            let target = match &d.release {
                Some(r) => {
                    format!("model={}{}", r.model, r.version.as_deref().map(|v| format!("@{v}")).unwrap_or_default())
                }
                None => target,
            };
            let price = d
                .price
                .as_ref()
                .map(|p| format!(", price/M in={} cached={} out={}", p.input, p.cached_input, p.output))
                .unwrap_or_default();
            println!(
                "    {}. {} [{}] {} (max_concurrency={}, weight={}{price})",
                i + 1,
                d.name,
                if d.release.is_some() { "registry" } else { d.kind.name() },
                target,
                d.max_concurrency,
                d.weight
            );
        }
    }
    if !cfg.prompts.is_empty() {
        println!("prompts: {}", cfg.prompts.keys().cloned().collect::<Vec<_>>().join(", "));
    }
    print_models(cfg);
}

/// Registry models: the stages `routes/` declares, the store's (which win), and the drift.
#[allow(clippy::print_stdout)] // a command's output is what it prints
fn print_models(cfg: &Config) {
    if cfg.models.is_empty() {
        return;
    }
    let db = cfg.server.data_dir.join("releases.sqlite");
    let stored = match db.exists().then(|| crate::release::Store::open(&db).and_then(|s| s.all())) {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            println!("models: the release store {} cannot be read: {e}", db.display());
            Default::default()
        }
        None => Default::default(),
    };
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
    println!("models (registry {}):", cfg.server.registry_dir.display());
    for m in &cfg.models {
        println!(
            "  {} routes: production={} staging={} weight={}% (rollback: error rate +{}, p95 +{}%, after {} requests{})",
            m.name,
            show(&m.production),
            show(&m.staging),
            if m.staging.is_some() { m.canary_weight } else { 0.0 },
            m.rollback.error_rate_margin,
            m.rollback.p95_margin * 100.0,
            m.rollback.min_requests,
            if m.rollback.enabled { "" } else { ", off" }
        );
        match stored.get(&m.name) {
            Some(s) => println!(
                "  {} store:  production={} staging={} weight={}% previous={}",
                m.name,
                show(&s.production),
                show(&s.staging),
                s.canary_weight,
                show(&s.previous)
            ),
            None => println!("  {} store:  none yet (seeded from routes/ at the first start)", m.name),
        }
    }
    let drift = crate::release::drift(cfg, &stored);
    if drift.is_empty() {
        println!("  no drift: the store agrees with routes/");
    }
    for d in drift {
        println!("  DRIFT {d} (the store wins; promote or roll back to change it)");
    }
}

//! `tollgate models`: the registry on disk (`add`, `list`), and a running gateway's release
//! changes through its admin API (`promote`, `canary`, `rollback`, `audit`), which load and
//! warm a version before it takes traffic (so they need the gateway, not just its files).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail};
use clap::Subcommand;
use serde_json::{json, Value};

use crate::registry::{Endpoint, Registry};

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// Add a version to the registry: a GGUF file (copied in, its SHA-256 and facts written to
    /// metadata.json), or with --endpoint a remote model.
    Add {
        /// The GGUF file (leave out with --endpoint).
        file: Option<PathBuf>,
        #[arg(long)]
        name: String,
        /// X.Y.Z
        #[arg(long)]
        version: String,
        /// Where it came from (default: the file's path).
        #[arg(long)]
        source: Option<String>,
        /// An evaluation metric, NAME=VALUE (repeatable), e.g. --metric mmlu=0.31
        #[arg(long = "metric")]
        metrics: Vec<String>,
        /// A remote model: its OpenAI-compatible base URL (with /v1) or Ollama's.
        #[arg(long)]
        endpoint: Option<String>,
        /// openai or ollama (with --endpoint).
        #[arg(long, default_value = "openai")]
        kind: String,
        /// The upstream's model name (with --endpoint).
        #[arg(long)]
        upstream_model: Option<String>,
        #[command(flatten)]
        place: Place,
    },
    /// Every version in the registry with its stage.
    List {
        #[command(flatten)]
        place: Place,
        #[arg(long)]
        json: bool,
    },
    /// Blue/green: load and warm VERSION, then move production to it (the old version stays
    /// loaded for a rollback).
    Promote {
        name: String,
        version: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        gw: Gateway,
    },
    /// Stage VERSION as a canary taking WEIGHT percent of identities, or change the weight.
    Canary {
        name: String,
        version: Option<String>,
        #[arg(long)]
        weight: Option<f64>,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        gw: Gateway,
    },
    /// Production goes back to the previous version, from the next request on.
    Rollback {
        name: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        gw: Gateway,
    },
    /// The audit trail of a model's changes.
    Audit {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        gw: Gateway,
    },
}

#[derive(clap::Args, Debug)]
pub struct Place {
    /// The gateway file whose registry to use (default: ./tollgate.toml if it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The registry directory (overrides the gateway file's).
    #[arg(long)]
    registry: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct Gateway {
    #[arg(long, env = "TOLLGATE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The admin key (none for an open gateway without one).
    #[arg(long, env = "TOLLGATE_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
}

#[allow(clippy::print_stdout)] // a command's output is what it prints
pub fn run(cmd: ModelsCommand) -> anyhow::Result<()> {
    match cmd {
        ModelsCommand::Add { file, name, version, source, metrics, endpoint, kind, upstream_model, place } => {
            let (_, dir) = paths(&place)?;
            let reg = Registry::new(dir);
            let mut m = BTreeMap::new();
            for kv in metrics {
                let (k, v) = kv.split_once('=').ok_or_else(|| anyhow!("--metric '{kv}' is not NAME=VALUE"))?;
                let v = v.parse::<f64>().map(Value::from).unwrap_or_else(|_| Value::from(v));
                m.insert(k.to_owned(), v);
            }
            let meta = match (file, endpoint) {
                (Some(f), None) => reg.add_gguf(&f, &name, &version, source, m)?,
                (None, Some(base_url)) => {
                    let model = upstream_model.ok_or_else(|| anyhow!("--upstream-model is needed with --endpoint"))?;
                    reg.add_remote(&name, &version, Endpoint { kind, base_url, model }, source, m)?
                }
                _ => bail!("give a GGUF file or --endpoint (not both)"),
            };
            println!("added {}@{} to {}", meta.name, meta.version, reg.root().display());
            println!("{}", serde_json::to_string_pretty(&meta).unwrap_or_default());
            Ok(())
        }
        ModelsCommand::List { place, json } => {
            let (data, dir) = paths(&place)?;
            let reg = Registry::new(dir);
            let metas = reg.list()?;
            let db = data.join("releases.sqlite");
            let mut stored = if db.exists() { crate::release::Store::open(&db)?.all()? } else { Default::default() };
            // Before the first start, the stages are what routes/ declares.
            let opts = crate::config::LoadOptions { config: place.config.clone(), ..Default::default() };
            if let Ok(cfg) = crate::config::load(&opts) {
                for m in &cfg.models {
                    stored.entry(m.name.clone()).or_insert_with(|| crate::release::declared(m));
                }
            }
            if json {
                let v: Vec<Value> = metas
                    .iter()
                    .map(|m| {
                        let mut v = serde_json::to_value(m).unwrap_or(Value::Null);
                        v["stage"] = json!(crate::release::stage_of(stored.get(&m.name), &m.version));
                        v
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return Ok(());
            }
            if metas.is_empty() {
                println!("the registry at {} is empty: add a version with `tollgate models add`", reg.root().display());
                return Ok(());
            }
            println!(
                "{:<24} {:<12} {:<16} {:<14} {:>8} {:>8} {:<20} SOURCE",
                "MODEL", "VERSION", "STAGE", "SHA256", "QUANT", "PARAMS", "CREATED"
            );
            for m in &metas {
                let s = stored.get(&m.name);
                let mut stage = crate::release::stage_of(s, &m.version).to_owned();
                if let Some(s) = s.filter(|s| s.staging.as_deref() == Some(m.version.as_str())) {
                    stage = format!("staging {}%", s.canary_weight);
                } else if s.is_some_and(|s| s.previous.as_deref() == Some(m.version.as_str())) {
                    stage = "archived (prev)".into();
                }
                let params = m.parameters.map(|p| format!("{:.0}M", p as f64 / 1e6)).unwrap_or_else(|| "-".into());
                let source = match &m.endpoint {
                    Some(e) => format!("{} {} {}", e.kind, e.base_url, e.model),
                    None => m.source.clone().unwrap_or_default(),
                };
                println!(
                    "{:<24} {:<12} {:<16} {:<14} {:>8} {:>8} {:<20} {}",
                    m.name,
                    m.version,
                    stage,
                    m.sha256.as_deref().map(|s| &s[..12.min(s.len())]).unwrap_or("-"),
                    m.quantization.as_deref().unwrap_or("-"),
                    params,
                    m.created_at,
                    source
                );
            }
            Ok(())
        }
        ModelsCommand::Promote { name, version, reason, gw } => {
            let v = call(&gw, &format!("{name}/promote"), Some(json!({"version": version, "reason": reason})))?;
            println!("{name}: production is {}", v["stages"]["production"].as_str().unwrap_or("?"));
            Ok(())
        }
        ModelsCommand::Canary { name, version, weight, reason, gw } => {
            let v = call(
                &gw,
                &format!("{name}/canary"),
                Some(json!({"version": version, "weight": weight, "reason": reason})),
            )?;
            println!(
                "{name}: canary {} at {}%",
                v["stages"]["staging"].as_str().unwrap_or("none"),
                v["stages"]["canary_weight"]
            );
            Ok(())
        }
        ModelsCommand::Rollback { name, reason, gw } => {
            let v = call(&gw, &format!("{name}/rollback"), Some(json!({"reason": reason})))?;
            println!("{name}: production is {} again", v["stages"]["production"].as_str().unwrap_or("?"));
            Ok(())
        }
        ModelsCommand::Audit { name, json, gw } => {
            let v = call(&gw, &format!("{name}/audit"), None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v["data"]).unwrap_or_default());
                return Ok(());
            }
            for e in v["data"].as_array().into_iter().flatten() {
                println!(
                    "{:>4}  {}  {:<16} {:<10} by {:<20} {}",
                    e["id"],
                    crate::registry::rfc3339_ms(e["at_ms"].as_u64().unwrap_or(0)),
                    e["action"].as_str().unwrap_or(""),
                    e["version"].as_str().unwrap_or("-"),
                    e["actor"].as_str().unwrap_or(""),
                    e["reason"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
    }
}

fn paths(place: &Place) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (data, reg) = crate::config::load_paths(place.config.as_deref())?;
    Ok((data, place.registry.clone().unwrap_or(reg)))
}

/// One admin API call: a POST with `body`, or a GET without.
fn call(gw: &Gateway, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let url = format!("{}/v1/admin/models/{path}", gw.url.trim_end_matches('/'));
        let client = reqwest::Client::new();
        let mut req = match body {
            Some(b) => client.post(&url).json(&strip_nulls(b)),
            None => client.get(&url),
        };
        if let Some(k) = &gw.admin_key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.map_err(|e| anyhow!("cannot reach the gateway at {}: {e}", gw.url))?;
        let status = resp.status();
        let v: Value = resp.json().await.map_err(|e| anyhow!("{status}: {e}"))?;
        if !status.is_success() {
            bail!("{status}: {}", v["error"]["message"].as_str().unwrap_or("no message"));
        }
        Ok(v)
    })
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        v => v,
    }
}

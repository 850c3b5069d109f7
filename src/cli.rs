//! The `tollgate` command line: `serve`, `check-config`, `keys new`.

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
            crate::logging::init(cfg.server.log_json || log_json);
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("tollgate: cannot start the runtime: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            match rt.block_on(crate::server::run(cfg, opts)) {
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
        Command::Keys { command: KeysCommand::New { name } } => {
            let (key, hash) = crate::api::auth::new_key();
            println!("key:  {key}");
            println!("\nGive the key to its user; put its hash in the gateway file:\n");
            println!("[[auth.keys]]\nname = \"{name}\"\nsha256 = \"{hash}\"\naliases = [\"*\"]");
            std::process::ExitCode::SUCCESS
        }
    }
}

fn print_config(cfg: &Config) {
    match &cfg.source {
        Some(p) => println!("config: {} (valid)", p.display()),
        None => println!("config: none (defaults)"),
    }
    println!("listen: {}", cfg.server.listen);
    if cfg.auth.open {
        println!("auth:   OPEN (no key needed)");
    } else {
        println!(
            "auth:   {} key(s), admin key {}",
            cfg.auth.keys.len(),
            if cfg.auth.admin_key_sha256.is_some() { "set" } else { "not set" }
        );
    }
    println!("aliases:");
    for a in &cfg.aliases {
        println!("  {} ({})", a.name, a.file.display());
        for (i, d) in a.deployments.iter().enumerate() {
            let target = match &d.kind {
                DeploymentKind::OpenAi(r) | DeploymentKind::Ollama(r) => {
                    format!("{} model={}", r.base_url, r.model)
                }
                DeploymentKind::Local(l) => format!("{} ctx={} parallel={}", l.path.display(), l.context, l.parallel),
            };
            println!(
                "    {}. {} [{}] {} (max_concurrency={}, weight={})",
                i + 1,
                d.name,
                d.kind.name(),
                target,
                d.max_concurrency,
                d.weight
            );
        }
    }
    if !cfg.prompts.is_empty() {
        println!("prompts: {}", cfg.prompts.keys().cloned().collect::<Vec<_>>().join(", "));
    }
}

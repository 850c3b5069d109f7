//! Structured logs through `tracing`: human-readable by default, JSON lines on request.
//! `RUST_LOG` filters as usual (default `info`, llama.cpp's own logs at `warn`).

use tracing_subscriber::EnvFilter;

pub fn init(json: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,llama-cpp-2=warn,llama_cpp_2=warn"));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_target(true);
    let _ = if json { b.json().flatten_event(true).try_init() } else { b.try_init() };
}

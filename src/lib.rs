//! tollgate: an LLM inference gateway. See `README.md` for its use; each module's header
//! says what it owns. The modules are listed in layers, in the order a request passes them;
//! each imports only those listed above it (`python3 ../shared/tools/modgraph.py src`
//! checks that there is no cycle).

// The vocabulary: types and pure functions that everything else speaks.
/// Time: the injectable clock and wall-clock helpers.
pub mod clock;
/// Pure routing policies: the small-model router and prefix affinity.
pub mod policy;
/// Prices, costs and token counts.
pub mod pricing;
/// The OpenAI wire vocabulary: endpoints, sampling, validated requests, usage, the error object.
pub mod protocol;
/// The on-disk model registry: GGUF files, versions and their metadata.
pub mod registry;

// What the operator asked for.
/// The checked configuration: every section's type, loaded from the gateway file and `routes/`.
pub mod config;

// What a request leaves behind.
/// The per-request record and what consumes it: limits, ledger, metrics, monitors, usage reports.
pub mod accounting;
/// Model versions in stages: canaries, promotion, automatic rollback.
pub mod release;

// Where a request is answered.
/// The `Backend` trait and its remote kinds (OpenAI-compatible, Ollama).
pub mod backend;
/// The embedded llama.cpp engine (the `local` kind).
#[cfg(feature = "engine")]
pub mod engine;
/// Alias → deployment: permits, retries, fallback, breakers; builds deployments from config.
pub mod router;

// Above the routing table.
/// The Batch API: files, validation, the runner.
pub mod batch;
/// The response cache, with request coalescing.
pub mod cache;

// One request, in named steps.
/// From validated bytes to an answer: alias, router, limits, cache, dispatch, escalation.
pub mod gateway;

// The edges.
/// HTTP: extract, call, render.
pub mod api;
/// The command line: `serve`, `models`, `batch run`, `keys`, `usage`.
pub mod cli;

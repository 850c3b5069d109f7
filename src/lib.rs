//! tollgate: an LLM inference gateway. See `README.md` for its use; each module's header
//! says what it owns.
//!
//! A request's walk: [`cli`] serves [`api`], which authenticates, reads the body and calls
//! [`gateway::serve`]; the gateway validates it ([`protocol`]), lets an `auto` alias choose
//! ([`policy`]), admits it against the key's limits ([`accounting`]), asks the response
//! [`cache`], and dispatches through the [`router`] to a [`backend`] or the [`engine`]; the
//! answer is rendered by [`api`], and its record goes to [`accounting`] (ledger, metrics,
//! monitors) and to the [`release`] that served it. A [`batch`] line takes the same path.
//!
//! The modules below are listed in that order and in layers: each imports only the modules
//! listed after it (`python3 ../shared/tools/modgraph.py src` checks that there is no cycle).

// The edges.
/// The command line: `serve`, `models`, `batch run`, `keys`, `usage`.
pub mod cli;
/// HTTP: extract, call, render.
pub mod api;

// One request, in named steps.
/// From validated bytes to an answer: alias, router, limits, cache, dispatch, escalation.
pub mod gateway;
/// Credentials and personal data in requests and answers: detected, blocked, redacted, counted.
pub mod guardrails;

// Above the routing table.
/// The Batch API: files, validation, the runner.
pub mod batch;
/// The response cache, with request coalescing.
pub mod cache;
/// Stored Responses and the conversations they chain.
pub mod conversation;

// Where a request is answered.
/// Alias → deployment: permits, retries, fallback, breakers; builds deployments from config.
pub mod router;
/// The embedded llama.cpp engine (the `local` kind).
#[cfg(feature = "engine")]
pub mod engine;
/// The `Backend` trait and its remote kinds (OpenAI-compatible, Ollama).
pub mod backend;

// What a request leaves behind.
/// Model versions in stages: canaries, promotion, automatic rollback.
pub mod release;
/// The per-request record and what consumes it: limits, ledger, metrics, monitors, usage reports.
pub mod accounting;
/// State shared by many replicas through Redis: limits, budgets, the response cache.
pub mod cluster;

// What the operator asked for.
/// The checked configuration: every section's type, loaded from the gateway file and `routes/`.
pub mod config;

// The vocabulary: types and pure functions that everything else speaks.
/// The on-disk model registry: GGUF files, versions and their metadata.
pub mod registry;
/// Pure routing policies: the small-model router and prefix affinity.
pub mod policy;
/// Prices, costs and token counts.
pub mod pricing;
/// Chat formats: Jinja chat templates, tool-call and reasoning syntax.
pub mod chat;
/// The OpenAI wire vocabulary: endpoints, sampling, validated requests, usage, the error object.
pub mod protocol;
/// Time: the injectable clock and wall-clock helpers.
pub mod clock;

//! tollgate: an LLM inference gateway. See `README.md` for use and `../shared/design.md`
//! for the map; each module's header says what it owns.

pub mod accounting;
pub mod affinity;
pub mod api;
pub mod backend;
pub mod batch;
pub mod cache;
pub mod cli;
pub mod config;
pub mod deploy;
#[cfg(feature = "engine")]
pub mod engine;
pub mod ledger;
pub mod limits;
pub mod logging;
pub mod monitor;
pub mod pricing;
pub mod protocol;
pub mod registry;
pub mod release;
pub mod router;
pub mod server;
pub mod smallroute;
pub mod usage;

//! The gateway in front of an OpenAI-compatible upstream that speaks llama-server's wire
//! format byte for byte (recorded transcripts), and the faults such an upstream can have;
//! the upstream reached over plain HTTP/1.1 (`proxy_h2` runs the same cases over HTTPS and
//! HTTP/2).
#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report

mod common;

const WIRE: common::fake::Wire = common::fake::Wire::Http1;

#[path = "proxy/cases.rs"]
mod cases;

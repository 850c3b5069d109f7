//! The proxy's cases (`proxy/cases.rs`) with the upstream behind TLS offering HTTP/2: the
//! gateway's client negotiates h2 by ALPN and trusts the upstream through `ca_file`.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // tests and benches: a panic is the report

mod common;

const WIRE: common::fake::Wire = common::fake::Wire::Tls(common::tls::Alpn::H2);

#[path = "proxy/cases.rs"]
mod cases;

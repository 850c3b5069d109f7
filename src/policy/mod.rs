//! Routing policies: pure, synchronous functions of a request's features and the
//! deployments' state, documented and benchmarked on their own (SMG's `policies/`).
//! They sit below `config` (which reads their knobs) and the router (which calls them).

pub mod affinity;
pub mod smallroute;

//! The binary's own modules (feature `sidecar`). They use the quiesce
//! library only through its public API, like any other user.

pub mod analyzer;
pub mod anonymize;
pub mod http;
pub mod intake;
pub mod metrics;
pub mod pipeline;
pub mod report;
pub mod scheduler;
pub mod serve;
pub mod store;

//! gateway-bench: benchmarks for engine-gateway that talk to it only over HTTP on loopback.
//!
//! The binary is thin glue over these modules; tests drive them directly against real sockets,
//! files and processes.

pub mod child;
pub mod cli;
pub mod client;
pub mod incident;
pub mod incident_client;
pub mod ingest;
pub mod machine;
pub mod procmem;
pub mod raw;
pub mod report;
pub mod sink;
pub mod stats;

//! engine-gateway: authenticated, resumable byte streams into a durable store.
//!
//! The binary (`main.rs`) is thin glue; everything it runs lives here so tests can call it.

pub mod auth;
pub mod budget;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod gateway;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod process_metrics;
pub mod runtime;
pub mod store;
pub mod stream_id;

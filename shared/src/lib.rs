//! graphfeed's shared crate: everything a function *decides*.
//!
//! Functions only wire (`main.rs`) and translate (`handler.rs`); the rules live here, where a test
//! can call them without any Lambda types:
//! - [`clock`]: the one time source, so tests move graphfeed and the Graph simulator together;
//! - [`config`]: typed configuration read once, failing fast with the variable's name;
//! - [`ids`]: newtypes for tenants, subscriptions and drive keys;
//! - [`client_state`]: per-subscription clientState secrets bound by HMAC, and their key ring;
//! - [`secrets`]: reading secrets (Secrets Manager in AWS, env values locally);
//! - [`notification`]: Graph's change-notification payloads, with their real quirks;
//! - [`entra`]: the Entra token endpoint (on-behalf-of, refresh) with errors mapped to actions;
//! - [`envelope`]: the versioned message format of the notifications queue;
//! - [`intake`]: notify's decision: which notifications are genuine, and the messages they become;
//! - [`queue`]: the notifications-queue port and its SQS adapter;
//! - [`graph`]: the Graph client (base URL, User-Agent, timeouts, typed errors);
//! - [`telemetry`]: JSON tracing and CloudWatch embedded-metric-format counters.

pub mod client_state;
pub mod clock;
pub mod config;
pub mod entra;
pub mod envelope;
pub mod graph;
pub mod ids;
pub mod intake;
pub mod notification;
pub mod queue;
pub mod secrets;
pub mod telemetry;

//! graphfeed's shared crate: everything a function *decides*.
//!
//! Functions only wire (`main.rs`) and translate (`handler.rs`); the rules live here, where a test
//! can call them without any Lambda types:
//! - [`clock`]: the one time source, so tests move graphfeed and the Graph simulator together;
//! - [`config`]: typed configuration read once, failing fast with the variable's name;
//! - [`ids`]: newtypes for tenants, subscriptions and drive keys;
//! - [`auth`]: validation of the access token a client presents to graphfeed's API (RS256, JWKS);
//! - [`client_state`]: per-subscription clientState secrets bound by HMAC, and their key ring;
//! - [`secrets`]: reading secrets (Secrets Manager in AWS, env values locally);
//! - [`notification`]: Graph's change-notification payloads, with their real quirks;
//! - [`connect`]: connect and disconnect, from a validated caller to a live subscription;
//! - [`entra`]: the Entra token endpoint (on-behalf-of, refresh) with errors mapped to actions;
//! - [`envelope`]: the versioned message format of the notifications queue;
//! - [`intake`]: notify's decision: which notifications are genuine, and the messages they become;
//! - [`queue`]: the notifications-queue port and its SQS adapter;
//! - [`store`]: users, drive state and subscriptions in DynamoDB, with conditional writes;
//! - [`graph`]: the Graph client (base URL, User-Agent, timeouts, typed errors);
//! - [`telemetry`]: JSON tracing and CloudWatch embedded-metric-format counters;
//! - [`vault`]: refresh tokens under KMS envelope encryption, versioned, with a short warm cache.

pub mod auth;
pub mod client_state;
pub mod clock;
pub mod config;
pub mod connect;
pub mod entra;
pub mod envelope;
pub mod graph;
pub mod ids;
pub mod intake;
pub mod notification;
pub mod queue;
pub mod secrets;
pub mod store;
pub mod telemetry;
pub mod vault;

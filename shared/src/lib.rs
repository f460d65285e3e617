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
//! - [`process`]: process-changes' batch rules (grouping, coalescing, lifecycle, failures);
//! - [`queue`]: the notifications-queue port and its SQS adapter;
//! - [`subscriptions`]: keeping a drive's Graph subscription alive (connect, lifecycle, renew);
//! - [`renew`]: renew's scheduled run: every due subscription renewed, recovered or reported;
//! - [`fleet`]: the fleet indexes renew reads (subscriptions by expiry, drives by last walk);
//! - [`store`]: users, drive state and subscriptions in DynamoDB, with conditional writes;
//! - [`graph`]: the Graph client (base URL, User-Agent, timeouts, typed errors);
//! - [`telemetry`]: JSON tracing and CloudWatch embedded-metric-format counters;
//! - [`delta`]: one delta page at a time, links followed verbatim, 410 resync recognised;
//! - [`changes`]: change events and their derivation from staged delta items and the index;
//! - [`walk_store`]: the item index, staged pages, change log and throttle state in DynamoDB;
//! - [`walker`]: one drive's resumable walk, from checkpoint to published events;
//! - [`tokens`]: Graph access tokens for background work, refreshed from the vault;
//! - [`vault`]: refresh tokens under KMS envelope encryption, versioned, with a short warm cache.

pub mod auth;
pub mod changes;
pub mod client_state;
pub mod clock;
pub mod config;
pub mod connect;
pub mod delta;
pub mod entra;
pub mod envelope;
pub mod fleet;
pub mod graph;
pub mod ids;
pub mod intake;
pub mod notification;
pub mod process;
pub mod queue;
pub mod renew;
pub mod secrets;
pub mod store;
pub mod subscriptions;
pub mod telemetry;
pub mod tokens;
pub mod vault;
pub mod walk_store;
pub mod walker;

//! The Electrum protocol (electrs, Fulcrum, ElectrumX): the backend for towers and clients
//! that have no node of their own.
//!
//! - [`client`]: newline-delimited JSON-RPC over TCP, pipelined, notifications queued.
//! - [`ElectrumBackend`]: the [`crate::ChainBackend`] over it, by scripthash subscriptions,
//!   serving blocks filtered to the watched scripts.
//! - [`headers`]: what a light client can check of each header: its proof of work, and the
//!   difficulty the network's rules require at its height.

mod backend;
pub mod client;
pub mod headers;

pub use backend::{header_from_hex, merkle_root, ElectrumBackend};
pub use client::{scripthash, ElectrumClient, HistoryItem, LineStream, Notification};

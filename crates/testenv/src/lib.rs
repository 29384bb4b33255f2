//! Vigil's test environment, shared by every crate's tests and the benchmarks: the real
//! things a test needs, and nothing the `vigil` binary depends on.
//!
//! - [`chain`]: the embedded regtest chain with the example policy's keys; vaults through the
//!   real ceremony, walked through their graph in-process.
//! - [`process`]: real processes on loopback: `vigil node`, a real `bitcoind`, `electrs`,
//!   `vigil tower` (killable with SIGKILL), and the test PostgreSQL.
//! - [`household`]: the owner's side against those processes: vaults funded from a test
//!   wallet, registered and approved at towers over their signed API.
//! - [`cosigner`], [`family`]: a `vigil cosigner` process, and a family (owner, guardians)
//!   served by it and by real towers: enrollment, the co-signer's ceremony, spends, votes.
//! - [`proxy`]: a TCP proxy counting connections and bytes (what a network observer sees).
//! - [`pty`]: a command in a real terminal, typed into as a person types.
//! - [`smtp`]: a real SMTP server on loopback, for alarms by e-mail.
//! - [`stats`]: whether two timing distributions can be told apart.
//! - [`wallet`]: a key-path test wallet and chain lookups; [`webhook`]: alarm receivers.

pub mod browser;
pub mod chain;
pub mod cosigner;
pub mod family;
pub mod household;
pub mod ledger;
pub mod process;
pub mod proxy;
pub mod pty;
pub mod smtp;
pub mod stats;
pub mod wallet;
pub mod webhook;

use std::time::{Duration, Instant};

pub use chain::{force_leaf_witness, Env, EnvError};
pub use vigil_client::Vault;
pub use vigil_policy::example::Signer;
pub use {vigil_policy, vigil_regtest};

/// Polls `f` until it gives a value (30 s at most, then fails saying `what`).
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Follower events as `+height:hash` / `-height:hash`, in order.
pub fn summary(events: &[vigil_chain::BlockEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            vigil_chain::BlockEvent::Connected { height, hash, .. } => format!("+{height}:{hash}"),
            vigil_chain::BlockEvent::Disconnected { height, hash } => format!("-{height}:{hash}"),
        })
        .collect()
}

//! Vigil's watchtower (`vigil tower --config FILE`), run by an independent party. It holds no
//! spending key: only the fully signed C, E, UE (every rung) of the vaults registered with it.
//!
//! - **Configuration** ([`config`]): typed; secrets come from key files only their owner reads.
//! - **Clients** ([`client`]): each a pinned policy, kept in the store with the changes its
//!   guardians signed, so no vault ever loses the policy it is enforced under.
//! - **Registration** ([`registration`]): the tower rebuilds each vault's graph from the
//!   client's pinned policy and compares txids (so a cancel paying anywhere but the vault's
//!   recovery output is refused), checks every signature with Bitcoin Core's script
//!   verification, and that V is real; only then is the vault stored and acknowledged.
//!   Approvals are judged by the vault's own client.
//! - **Governance** ([`governance`]): guardian-quorum panics (fresh id, validity window) and
//!   policy changes; loosening ones wait [`client::GOVERNANCE_DELAY_BLOCKS`].
//! - **Watching** ([`vigil_chain`]) and **deciding** ([`watch`], a pure machine over
//!   [`vault`]s): an unvault without an approval, or beyond the velocity budget, is cancelled
//!   and alarmed; cancels climb the fee ladder each block until buried; a panic sweeps to the
//!   deep vault; any other spend of a vault is an alarm.
//! - **Getting confirmed** ([`fees`]): the ladder, and a fee wallet for anchor CPFP bumps.
//! - **Persistence** ([`store`]): SQLite or PostgreSQL; each decision is committed before it
//!   is acted on, and alarms leave through a persisted outbox, delivered to each webhook on
//!   its own ([`alarms`]).
//! - **The daemon** ([`daemon`]) ties them together; [`api`] is its HTTP edge.

// Libraries log through `tracing`; printing is for binaries.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod alarms;
pub mod api;
pub mod client;
pub mod config;
pub mod daemon;
pub mod error;
pub mod fees;
pub mod governance;
pub mod index;
pub mod registration;
pub mod store;
pub mod vault;
pub mod watch;
pub mod wire;

use std::time::Duration;

pub use client::{policy_id, Client, GOVERNANCE_DELAY_BLOCKS};
pub use config::{load_config, TowerConfig};
pub use daemon::Tower;
pub use error::{Refusal, StoreError, TowerError};

/// Runs a tower until SIGINT/SIGTERM: catch up, then serve the API and watch.
pub async fn run(config: TowerConfig) -> Result<(), TowerError> {
    let listen = config.listen;
    let tower = tokio::task::spawn_blocking(move || Tower::start(config))
        .await
        .map_err(|_| TowerError::WatchLoopPanicked)??;
    let watcher = tower.clone();
    let watch_thread = std::thread::spawn(move || watcher.run_watch_loop());
    let mut alarm_threads = Vec::new();
    for endpoint in tower.config.alarms.webhooks.clone() {
        // Each endpoint on its own thread and store connection: one dead endpoint never
        // delays another. (PostgreSQL's client blocks: connected off the async threads.)
        let config = tower.config.clone();
        let store = tokio::task::spawn_blocking(move || daemon::open_store(&config))
            .await
            .map_err(|_| TowerError::WatchLoopPanicked)??;
        let t = tower.clone();
        alarm_threads.push(std::thread::spawn(move || alarms::deliver_loop(t, endpoint, store)));
    }
    let listener = api::listen(listen)?;
    tracing::info!(address = %listener.local_addr()?, key = %tower.public_key(), "vigil tower listening");
    let app = api::router(tower.clone());
    let stop = tower.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("signal handler");
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            // Stop on a signal, or when the watch loop failed and stopped the tower.
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    _ = term.recv() => break,
                    _ = tick.tick() => if stop.stopping.load(std::sync::atomic::Ordering::SeqCst) { break },
                }
            }
            stop.shutdown();
        })
        .await?;
    for t in alarm_threads {
        let _ = t.join();
    }
    watch_thread.join().map_err(|_| TowerError::WatchLoopPanicked)??;
    tower.failure().map_or(Ok(()), |why| Err(TowerError::RequestFailed(why)))
}

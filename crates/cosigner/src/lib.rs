//! Vigil's co-signer: the policy server between a household and its money, run outside the
//! household (self-hosted elsewhere, or by a provider for many families). It holds one
//! master key, sealed at rest, and gives each client its own account under it. It signs only
//! what the client's pinned policy allows, and holds no owner or guardian key.
//!
//! - [`service`]: authentication (every request signed by a key of the client's policy, with a
//!   nonce kept across restarts), enrollment by single-use tokens, pinning a policy.
//! - [`emergency`]: lockdowns, the owner's heartbeat (duress), the guardians' panic.
//! - [`ceremony`]: the co-signer's half of a vault ceremony, in DESIGN.md §4's order.
//! - [`governance`]: guardian-signed policy changes, tightening at once, loosening after
//!   the governance delay, relayed to every tower.
//! - [`spends`]: spend requests, limits, velocity, guardians' votes, approvals pushed to every
//!   tower, and the signature of exactly the approved spend after DELAY.
//! - [`store`]: SQLite or PostgreSQL behind one trait; [`alarms`]: the outbox's delivery.
//! - [`api`]: the HTTP edge; [`wire`]: what travels over it; [`client`]: a party's client.

// Libraries log through `tracing`; printing is for binaries.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod alarms;
pub mod api;
pub mod ceremony;
pub mod config;
pub mod emergency;
pub mod error;
pub mod governance;
pub mod joining;
pub mod keys;
pub mod orders;
mod retiring;
pub mod service;
pub mod spends;
pub mod store;
pub mod towers;
pub mod wire;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use config::CosignerConfig;
pub use error::{CosignerError, StoreError};
pub use keys::MasterKey;
pub use service::Cosigner;

use store::{PostgresStore, SqliteStore, Store};
use vigil_tower::config::StoreConfig;

/// Opens the store a configuration names.
pub fn open_store(config: &CosignerConfig) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match &config.store {
        StoreConfig::Sqlite => Arc::new(SqliteStore::open(&config.datadir.join("cosigner.sqlite"))?),
        StoreConfig::Postgres { url, schema } => Arc::new(PostgresStore::connect(url, schema)?),
    })
}

/// Runs the co-signer until SIGINT or SIGTERM: unlocks the key, opens the store, serves the
/// API, delivers alarms, and keeps registering vaults some tower has not acknowledged.
pub async fn run(config: CosignerConfig) -> Result<(), CosignerError> {
    // Unlocking the key, connecting to the store (PostgreSQL's client blocks) and asking the
    // chain all block: off the async threads.
    let setup = config.clone();
    let (cosigner, sinks) = tokio::task::spawn_blocking(move || start(setup))
        .await
        .map_err(|e| CosignerError::Io(std::io::Error::other(e.to_string())))??;
    let listener = vigil_tower::api::listen(config.listen)?;
    if let Some(addr) = config.metrics_listen {
        let metrics = vigil_tower::api::listen(addr)?;
        let router = api::metrics_router(cosigner.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(metrics, router).await {
                tracing::error!(error = %e, "serving metrics");
            }
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    for (sink, store) in sinks {
        let stop = stop.clone();
        match (&config.smtp, sink) {
            (Some(smtp), None) => {
                let smtp = smtp.clone();
                std::thread::spawn(move || alarms::deliver_email(smtp, store, stop));
            }
            (_, Some(url)) => {
                std::thread::spawn(move || alarms::deliver(url, store, stop));
            }
            (None, None) => {}
        }
    }
    if config.client_webhooks != "off" {
        let (store, stop) = (cosigner.store_handle(), stop.clone());
        std::thread::spawn(move || alarms::deliver_to_clients(store, stop));
    }
    {
        let (cosigner, stop) = (cosigner.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                cosigner.retry_registrations();
                cosigner.push_all_orders();
                cosigner.apply_due_changes();
                std::thread::sleep(std::time::Duration::from_secs(5));
            }
        });
    }
    axum::serve(listener, api::router(cosigner)).with_graceful_shutdown(shutdown()).await?;
    stop.store(true, Ordering::Relaxed);
    tracing::info!("co-signer stopped");
    Ok(())
}

/// An alarm sink (a webhook's URL, or `None` for e-mail) and the store it reads.
type Sink = (Option<String>, Arc<dyn Store>);

/// Everything that blocks at start: the key unlocked, the stores opened, the chain asked.
fn start(config: CosignerConfig) -> Result<(Arc<Cosigner>, Vec<Sink>), CosignerError> {
    let network = config.network()?;
    let passphrase =
        vigil_keystore::read_passphrase(config.passphrase_file.as_deref(), config.passphrase_env.as_deref())?;
    let keys = MasterKey::open(&config.key_file, passphrase.as_bytes(), network)?;
    drop(passphrase);
    std::fs::create_dir_all(&config.datadir)?;
    let store = open_store(&config)?;
    let chain = vigil_tower::daemon::backend(&config.chain);
    let tip = chain.tip()?;
    let mut sinks = Vec::new();
    for url in &config.alarms.webhooks {
        sinks.push((Some(url.clone()), store.clone()));
    }
    if config.smtp.is_some() {
        sinks.push((None, store.clone()));
    }
    tracing::info!(listen = %config.listen, key = %keys.fingerprint(), tip = tip.height, "co-signer started");
    Ok((Arc::new(Cosigner::new(keys, config, chain, store)?), sinks))
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

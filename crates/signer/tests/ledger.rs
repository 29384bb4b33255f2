//! The real Ledger Bitcoin app, in the Speculos emulator: run under the emulator's harness,
//! which sets `LEDGER_SPECULOS_APDU` (skipped without it, unless `VIGIL_REQUIRE_LEDGER=1`).

use std::net::SocketAddr;
use std::str::FromStr;

use bitcoin::bip32::DerivationPath;
use bitcoin::Network;
use vigil_signer::ledger::{probe_emulator, Ledger};
use vigil_signer::{DeviceState, Signer};

/// Speculos' public test mnemonic, the harness's default.
const DEFAULT_SEED: &str = "glory promote mansion idle axis finger extra february uncover one trip resource lawn turtle enact monster seven myth punch hobby comfort wild raise skin";

fn emulator() -> Option<SocketAddr> {
    match std::env::var("LEDGER_SPECULOS_APDU") {
        Ok(addr) => Some(addr.parse().expect("LEDGER_SPECULOS_APDU is host:port")),
        Err(_) if std::env::var("VIGIL_REQUIRE_LEDGER").as_deref() == Ok("1") => {
            panic!("VIGIL_REQUIRE_LEDGER=1 but no emulated Ledger (LEDGER_SPECULOS_APDU is not set)")
        }
        Err(_) => None,
    }
}

fn default_seed() -> bool {
    std::env::var("LEDGER_SPECULOS_SEED").map_or(true, |s| s == DEFAULT_SEED)
}

#[test]
fn the_emulated_ledger_is_listed_with_its_app_and_fingerprint_and_gives_its_keys() {
    let Some(addr) = emulator() else {
        eprintln!("skipped: no emulated Ledger");
        return;
    };
    let found = probe_emulator(addr, Network::Regtest);
    let DeviceState::Ready { app, version, fingerprint } = &found.state else {
        panic!("not ready: {}", found.describe())
    };
    assert_eq!((app.as_str(), version.as_str()), ("Bitcoin Test", "2.4.6"));
    let ledger = Ledger::emulator(addr).unwrap();
    assert_eq!(ledger.fingerprint().unwrap().to_string(), *fingerprint);
    let xpub = ledger.xpub(&DerivationPath::from_str("m/48'/1'/0'/2'").unwrap()).unwrap();
    if default_seed() {
        assert_eq!(fingerprint, "f5acc2fd");
        // The value the app gives for this seed and path, read with LedgerHQ's Python client.
        assert_eq!(
            xpub.to_string(),
            "tpubDFAqEGNyad35aBCKUAXbQGDjdVhNueno5ZZVEn3sQbW5ci457gLR7HyTmHBg93oourBssgUxuWz1jX5uhc1qaqFo9VsybY1J5FuedLfm4dK"
        );
    }
    assert_eq!(xpub.depth, 4);

    // A mainnet wallet needs the other app, and says so.
    let found = probe_emulator(addr, Network::Bitcoin);
    assert!(
        matches!(&found.state, DeviceState::WrongNetwork { needed, .. } if needed == "Bitcoin"),
        "{found:?}"
    );
    assert!(found.describe().contains("needs the \"Bitcoin\" app"), "{}", found.describe());
}

//! The real Ledger Bitcoin app, in the Speculos emulator: run under the emulator's harness,
//! which sets `LEDGER_SPECULOS_APDU` (skipped without it, unless `VIGIL_REQUIRE_LEDGER=1`).

use std::net::SocketAddr;
use std::str::FromStr;

use bitcoin::bip32::DerivationPath;
use bitcoin::Network;
use vigil_signer::ledger::{probe_emulator, Ledger};
use vigil_signer::{DeviceState, Signer, SignerError, Wallet};

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

/// A format 2 example policy whose first owner key is the device's (at `m/48'/1'/0'/2'`).
fn policy_with_the_device_as_owner(
    ledger: &Ledger,
    example: vigil_policy::example::ExamplePolicy,
) -> vigil_policy::CompiledPolicy {
    let path = DerivationPath::from_str("m/48'/1'/0'/2'").unwrap();
    let device = format!("[{}/48'/1'/0'/2']{}", ledger.fingerprint().unwrap(), ledger.xpub(&path).unwrap());
    let ours = vigil_policy::example::account_key(&example.keys().owners[0]);
    let text = example.to_toml().replace(&ours, &device);
    assert!(text.contains(&device));
    vigil_policy::CompiledPolicy::new(vigil_policy::Policy::from_toml(&text).unwrap()).unwrap()
}

/// A vault's one-time key as the device takes it: an xpub made from fresh randomness.
fn one_time_xpub(seed: u8) -> String {
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let xpriv = bitcoin::bip32::Xpriv::new_master(bitcoin::NetworkKind::Test, &[seed; 32]).unwrap();
    bitcoin::bip32::Xpub::from_priv(&secp, &xpriv).to_string()
}

fn wallet(w: &vigil_policy::WalletPolicy) -> Wallet {
    let keys = w
        .keys
        .iter()
        .map(|k| match k.as_str() {
            "OO" => one_time_xpub(1),
            "CO" => one_time_xpub(2),
            k => k.to_owned(),
        })
        .collect();
    Wallet { name: w.name.clone(), template: w.template.clone(), keys }
}

#[test]
fn the_app_registers_every_output_an_owner_signs_for_and_derives_vigils_addresses() {
    let Some(addr) = emulator() else {
        eprintln!("skipped: no emulated Ledger");
        return;
    };
    let ledger = Ledger::emulator(addr).unwrap();
    let c = policy_with_the_device_as_owner(
        &ledger,
        vigil_policy::example::ExamplePolicy { format: 2, ..Default::default() },
    );
    let ranged = c.ranged_descriptors().unwrap();
    for w in c.wallet_policies().unwrap() {
        let wallet = wallet(&w);
        if w.name == "Vigil deep vault" {
            // The backup key's device registers it: the owner's holds no key of it.
            let refused = ledger.register(&wallet).unwrap_err();
            assert!(matches!(refused, SignerError::Status(0x6a80)), "{refused:?}");
            continue;
        }
        let registration = ledger.register(&wallet).unwrap_or_else(|e| panic!("{}: {e}", w.name));
        // The device computes the same addresses as Vigil (and as Bitcoin Core, which takes
        // the same descriptors): intake and R addresses.
        let on_device = |change: bool, i: u32| {
            // The app shows testnet addresses on regtest: compare the scripts.
            ledger
                .address(&wallet, Some(&registration), change, i, false)
                .unwrap()
                .assume_checked()
                .script_pubkey()
        };
        let ours = |descriptor: &str, i: u32| {
            let d = vigil_policy::miniscript::Descriptor::<vigil_policy::miniscript::DescriptorPublicKey>::from_str(
                descriptor,
            )
            .unwrap();
            d.at_derivation_index(i).unwrap().script_pubkey()
        };
        match w.name.as_str() {
            "Vigil intake" => {
                assert_eq!(on_device(false, 3), c.intake_address(3).unwrap().script_pubkey());
                assert_eq!(on_device(false, 0), ours(&ranged.intake, 0));
                // A registration it did not make (a record altered, or a device reset) is
                // named as such, so the wallet can register again.
                let mut forged = registration;
                forged.hmac[0] ^= 1;
                let refused = ledger.address(&wallet, Some(&forged), false, 0, false).unwrap_err();
                assert!(matches!(refused, SignerError::NotRegistered), "{refused:?}");
            }
            "Vigil recovery" => assert_eq!(on_device(false, 5), ours(&ranged.recovery, 5)),
            _ => assert!(w.per_vault(), "{}", w.name),
        }
    }
}

#[test]
fn the_app_registers_the_largest_vault_a_policy_may_have() {
    let Some(addr) = emulator() else {
        eprintln!("skipped: no emulated Ledger");
        return;
    };
    let ledger = Ledger::emulator(addr).unwrap();
    // 3 owner keys, 7 guardians: 14 keys in the guarded unvault output, the most there are.
    let example =
        vigil_policy::example::ExamplePolicy { format: 2, owners: 3, guardians: 7, ..Default::default() };
    let c = policy_with_the_device_as_owner(&ledger, example);
    let guarded = c.wallet_policies().unwrap().into_iter().find(|w| w.name == "Vigil guarded vault").unwrap();
    assert_eq!(guarded.keys.len(), 14);
    ledger.register(&wallet(&guarded)).unwrap();
}

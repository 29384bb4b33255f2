//! The hardware signer: registering an account and signing a spend on the real Ledger Bitcoin
//! app (in its emulator, run with its harness: `LEDGER_SPECULOS_APDU`), against the software
//! signer doing the same work in the same run: deriving the account's addresses to check one
//! (registering), signing the same-shaped PSBT with the phrase's key and checking it (signing).
//! The device's times include the emulated holder paging through every screen, as a person
//! must; the ratio says what a signature on the device costs the holder, not the CPU.

use std::str::FromStr;
use std::time::{Duration, Instant};

use vigil_policy::bitcoin::bip32::DerivationPath;
use vigil_policy::bitcoin::secp256k1::Secp256k1;
use vigil_policy::bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, TxOut, Txid};
use vigil_policy::example::{account_key, ExamplePolicy};
use vigil_policy::{CompiledPolicy, Policy, SpendInput};
use vigil_signer::ledger::Ledger;
use vigil_signer::{Signer, Wallet};

use crate::median;

/// A spend of one intake coin of `compiled` at index 3 to an outside address.
fn intake_spend(compiled: &CompiledPolicy) -> vigil_policy::bitcoin::psbt::Psbt {
    let descriptor = compiled.intake_descriptor(3).unwrap();
    let input = SpendInput {
        outpoint: OutPoint { txid: Txid::from_str(&"11".repeat(32)).unwrap(), vout: 0 },
        txout: TxOut { value: Amount::from_sat(1_000_000), script_pubkey: descriptor.script_pubkey() },
        descriptor,
        sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
    };
    let to = ScriptBuf::new_p2wpkh(
        &<vigil_policy::bitcoin::WPubkeyHash as vigil_policy::bitcoin::hashes::Hash>::from_byte_array(
            [7; 20],
        ),
    );
    vigil_policy::spend_psbt(&[input], vec![TxOut { value: Amount::from_sat(990_000), script_pubkey: to }])
        .unwrap()
}

/// The number of script-path signatures of `psbt`, each checked against its sighash.
fn checked_signatures(psbt: &vigil_policy::bitcoin::psbt::Psbt) -> usize {
    use vigil_policy::bitcoin::hashes::Hash;
    use vigil_policy::bitcoin::secp256k1::Message;
    use vigil_policy::bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
    let prevouts: Vec<TxOut> = psbt.inputs.iter().map(|i| i.witness_utxo.clone().unwrap()).collect();
    let mut cache = SighashCache::new(&psbt.unsigned_tx);
    let secp = Secp256k1::verification_only();
    let mut n = 0;
    for (i, input) in psbt.inputs.iter().enumerate() {
        for ((key, leaf), sig) in &input.tap_script_sigs {
            let hash = cache
                .taproot_script_spend_signature_hash(
                    i,
                    &Prevouts::All(&prevouts),
                    *leaf,
                    TapSighashType::Default,
                )
                .unwrap();
            secp.verify_schnorr(&sig.signature, &Message::from_digest(hash.to_byte_array()), key).unwrap();
            n += 1;
        }
    }
    n
}

pub fn register_and_sign() {
    println!("\n== hardware signer (the Ledger Bitcoin app, emulated) vs the software signer");
    let Ok(addr) = std::env::var("LEDGER_SPECULOS_APDU") else {
        println!("skipped: run it under the emulator's harness (../shared/ledger/with-ledger.sh -- cargo run --release --bin vigil-bench -- signer)");
        return;
    };
    let ledger = Ledger::emulator(addr.parse().expect("LEDGER_SPECULOS_APDU is host:port")).unwrap();
    let path = DerivationPath::from_str("m/48'/1'/0'/2'").unwrap();
    let device = format!("[{}/48'/1'/0'/2']{}", ledger.fingerprint().unwrap(), ledger.xpub(&path).unwrap());
    let example = ExamplePolicy { format: 2, ..ExamplePolicy::default() };
    let software_text = example.to_toml();
    let owner_master = example.keys().owners[0];
    let compile = |text: &str| CompiledPolicy::new(Policy::from_toml(text).unwrap()).unwrap();
    let software = compile(&software_text);
    let on_device = compile(&software_text.replace(&account_key(&owner_master), &device));
    let intake = |c: &CompiledPolicy| {
        let w = c.wallet_policies().unwrap().remove(0);
        Wallet { name: w.name, template: w.template, keys: w.keys }
    };
    let rounds = 3;
    let (mut registering, mut checking) = (Vec::new(), Vec::new());
    let (mut signing, mut soft_signing) = (Vec::new(), Vec::new());
    let wallet = intake(&on_device);
    let mut registration = None;
    for _ in 0..rounds {
        let start = Instant::now();
        registration = Some(ledger.register(&wallet).unwrap());
        registering.push(start.elapsed());
        // The software signer's part: the account's addresses, derived to check one.
        let start = Instant::now();
        let _ = intake(&software);
        let _ = software.intake_address(3).unwrap();
        checking.push(start.elapsed());
    }
    let registration = registration.unwrap();
    let secp = Secp256k1::new();
    for _ in 0..rounds {
        let psbt = intake_spend(&on_device);
        let start = Instant::now();
        let signed = ledger.sign(&psbt, &wallet, Some(&registration)).unwrap();
        let on_device = checked_signatures(&signed);
        signing.push(start.elapsed());
        let mut psbt = intake_spend(&software);
        let start = Instant::now();
        let _ = psbt.sign(&owner_master, &secp);
        let in_software = checked_signatures(&psbt);
        soft_signing.push(start.elapsed());
        // Both sign the two leaves the owner's key is in (co-signed and recovery).
        assert_eq!((on_device, in_software), (2, 2));
    }
    let show = |what: &str, device: Duration, soft: Duration| {
        println!(
            "{what:<9} device {:>9.3} s   software {:>9.6} s   ratio {:>9.0}x",
            device.as_secs_f64(),
            soft.as_secs_f64(),
            device.as_secs_f64() / soft.as_secs_f64().max(1e-9)
        );
    };
    println!("medians of {rounds} rounds (the device's include the holder paging through each screen):");
    show("register", median(registering), median(checking));
    show("sign", median(signing), median(soft_signing));
}

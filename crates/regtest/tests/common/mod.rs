//! A key-path taproot key for building test transactions.
#![allow(dead_code)]

use bitcoin::hashes::Hash;
use bitcoin::key::{Keypair, Secp256k1, TapTweak};
use bitcoin::secp256k1::{All, Message};
use bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
use bitcoin::transaction::Version;
use bitcoin::{absolute, Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness};

pub struct TestKey {
    secp: Secp256k1<All>,
    keypair: Keypair,
}

impl TestKey {
    pub fn new(seed: u8) -> Self {
        let secp = Secp256k1::new();
        let keypair = Keypair::from_seckey_slice(&secp, &[seed.max(1); 32]).unwrap();
        TestKey { secp, keypair }
    }

    pub fn script(&self) -> ScriptBuf {
        ScriptBuf::new_p2tr(&self.secp, self.keypair.x_only_public_key().0, None)
    }

    /// Signs every input (all spending this key) with SIGHASH_DEFAULT.
    pub fn sign(&self, mut tx: Transaction, prevouts: &[TxOut]) -> Transaction {
        let tweaked = self.keypair.tap_tweak(&self.secp, None).to_keypair();
        let sigs: Vec<_> = (0..tx.input.len())
            .map(|i| {
                let sighash = SighashCache::new(&tx)
                    .taproot_key_spend_signature_hash(i, &Prevouts::All(prevouts), TapSighashType::Default)
                    .unwrap();
                self.secp.sign_schnorr(&Message::from_digest(sighash.to_byte_array()), &tweaked)
            })
            .collect();
        for (input, sig) in tx.input.iter_mut().zip(sigs) {
            input.witness = Witness::from_slice(&[sig.as_ref()]);
        }
        tx
    }

    pub fn resign(&self, tx: Transaction, prevout: &TxOut) -> Transaction {
        self.sign(tx, std::slice::from_ref(prevout))
    }
}

/// Spends `outpoint` (held by `key`) back to `key`, paying `fee`.
pub fn spend(
    key: &TestKey,
    outpoint: OutPoint,
    prevout: &TxOut,
    fee: Amount,
    sequence: Sequence,
    version: i32,
) -> Transaction {
    let tx = Transaction {
        version: Version(version),
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn { previous_output: outpoint, sequence, ..Default::default() }],
        output: vec![TxOut { value: prevout.value - fee, script_pubkey: key.script() }],
    };
    key.resign(tx, prevout)
}

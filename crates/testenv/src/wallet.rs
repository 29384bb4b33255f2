//! A key-path test wallet living on a node's coinbases, and chain lookups tests share.

use serde_json::{json, Value};
use vigil_chain::{BitcoindRpc, ChainBackend};
use vigil_policy::bitcoin::key::{Keypair, Secp256k1};
use vigil_policy::bitcoin::transaction::Version;
use vigil_policy::bitcoin::{
    Address, Amount, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxOut, Txid,
};
use vigil_policy::{sign_key_path, unsigned_tx};

/// A one-key taproot wallet (the key is public: regtest only).
pub struct Wallet {
    /// Its key.
    pub key: Keypair,
}

impl Default for Wallet {
    fn default() -> Self {
        Wallet::new()
    }
}

impl Wallet {
    /// The test wallet.
    pub fn new() -> Wallet {
        Wallet { key: Keypair::from_seckey_slice(&Secp256k1::new(), &[5u8; 32]).unwrap() }
    }

    /// Its address.
    pub fn address(&self) -> Address {
        Address::p2tr(&Secp256k1::new(), self.key.x_only_public_key().0, None, Network::Regtest)
    }

    /// Spends `outpoint` (worth `prev`) back to itself, paying `fee`.
    pub fn spend(&self, outpoint: OutPoint, prev: &TxOut, fee: u64) -> Transaction {
        let out = TxOut {
            value: prev.value - Amount::from_sat(fee),
            script_pubkey: self.address().script_pubkey(),
        };
        self.signed(&[(outpoint, prev.clone())], vec![out])
    }

    /// `inputs` (outpoint and the output it spends) to `outputs`, signed.
    pub fn signed(&self, inputs: &[(OutPoint, TxOut)], outputs: Vec<TxOut>) -> Transaction {
        let mut tx = unsigned_tx(
            Version::TWO,
            inputs.iter().map(|(op, _)| (*op, Sequence::ENABLE_RBF_NO_LOCKTIME)),
            outputs,
        );
        let prevouts: Vec<TxOut> = inputs.iter().map(|(_, o)| o.clone()).collect();
        for i in 0..tx.input.len() {
            sign_key_path(&mut tx, i, &prevouts, &self.key).unwrap();
        }
        tx
    }

    /// Pays `amount` to `script` from the coinbase of block `height` (mature), change back.
    pub fn pay(
        &self,
        rpc: &BitcoindRpc,
        height: u32,
        script: ScriptBuf,
        amount: Amount,
    ) -> (OutPoint, TxOut) {
        let hash = rpc.block_hash(height).unwrap().unwrap();
        let coinbase = rpc.block(&hash).unwrap().txdata[0].clone();
        let prev = coinbase.output[0].clone();
        let change = TxOut {
            value: prev.value - amount - Amount::from_sat(2_000),
            script_pubkey: self.address().script_pubkey(),
        };
        let coin = OutPoint { txid: coinbase.compute_txid(), vout: 0 };
        let tx = self.signed(&[(coin, prev)], vec![TxOut { value: amount, script_pubkey: script }, change]);
        let txid = rpc.broadcast(&tx).unwrap();
        (OutPoint { txid, vout: 0 }, tx.output[0].clone())
    }
}

/// Mines `n` blocks to `to`; returns their hashes.
pub fn mine(rpc: &BitcoindRpc, n: u32, to: &Address) -> Vec<String> {
    let v = rpc.call("generatetoaddress", json!([n, to.to_string()])).unwrap();
    v.as_array().unwrap().iter().map(|h| h.as_str().unwrap().to_owned()).collect()
}

/// The first coinbase's output.
pub fn mature_coin(backend: &BitcoindRpc) -> (OutPoint, TxOut) {
    let hash = backend.block_hash(1).unwrap().unwrap();
    let coinbase = backend.block(&hash).unwrap().txdata[0].clone();
    (OutPoint { txid: coinbase.compute_txid(), vout: 0 }, coinbase.output[0].clone())
}

/// What spends `outpoint`, in the mempool or the last 60 blocks.
pub fn spend_of(rpc: &BitcoindRpc, outpoint: OutPoint) -> Option<Transaction> {
    spend_of_since(rpc, outpoint, rpc.tip().unwrap().height.saturating_sub(60))
}

/// What spends `outpoint`, in the mempool or the blocks from `from` on.
pub fn spend_of_since(rpc: &BitcoindRpc, outpoint: OutPoint, from: u32) -> Option<Transaction> {
    // The node knows every transaction; scan the mempool and the last blocks.
    let pool = rpc.mempool().unwrap();
    for txid in pool.txids {
        // Replaced since the listing (a ladder climbing): skip it.
        let Some(tx) = rpc.transaction(&txid).unwrap() else { continue };
        if tx.input.iter().any(|i| i.previous_output == outpoint) {
            return Some(tx);
        }
    }
    let tip = rpc.tip().unwrap().height;
    for h in from..=tip {
        let block = rpc.block(&rpc.block_hash(h).unwrap().unwrap()).unwrap();
        if let Some(tx) =
            block.txdata.into_iter().find(|t| t.input.iter().any(|i| i.previous_output == outpoint))
        {
            return Some(tx);
        }
    }
    None
}

/// A transaction's confirmations (0 when pending or unknown).
pub fn confirmations(rpc: &BitcoindRpc, txid: &Txid) -> u64 {
    rpc.call("getrawtransaction", json!([txid.to_string(), true]))
        .ok()
        .and_then(|v| v.get("confirmations").and_then(Value::as_u64))
        .unwrap_or(0)
}

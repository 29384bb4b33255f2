//! Processes and a small wallet shared by the command-line tests.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use vigil_chain::bitcoin::hashes::Hash;
use vigil_chain::bitcoin::key::{Keypair, Secp256k1, TapTweak};
use vigil_chain::bitcoin::secp256k1::Message;
use vigil_chain::bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
use vigil_chain::bitcoin::{
    absolute, transaction::Version, Address, Amount, Network, OutPoint, ScriptBuf, Sequence, Transaction,
    TxIn, TxOut, Witness,
};
use vigil_chain::{BitcoindRpc, ChainBackend};

pub struct Process {
    pub child: Child,
    pub rpc: BitcoindRpc,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.rpc.call("stop", json!([]));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn wait_ready(rpc: &BitcoindRpc) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match rpc.call("getblockcount", json!([])) {
            Ok(_) => return,
            Err(e) if Instant::now() > deadline => panic!("node never answered: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

pub fn vigil_node() -> Process {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "node",
            "--datadir",
            dir.path().join("chain").to_str().unwrap(),
            "--rpcport",
            &port.to_string(),
        ])
        .args(["--rpcuser", "vigil", "--rpcpassword", "secret"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let rpc = BitcoindRpc::new(&format!("http://127.0.0.1:{port}"), "vigil", "secret");
    wait_ready(&rpc);
    Process { child, rpc, dir, port }
}

pub fn bitcoind() -> Option<Process> {
    let Some(exe) = std::env::var_os("BITCOIND_EXE") else {
        assert!(std::env::var("VIGIL_REQUIRE_BITCOIND").is_err(), "BITCOIND_EXE is not set");
        eprintln!("SKIPPED: BITCOIND_EXE is not set (scripts/test.sh builds bitcoind and sets it)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(exe)
        .args([
            "-regtest",
            "-txindex",
            "-listen=0",
            "-printtoconsole=0",
            "-rpcuser=vigil",
            "-rpcpassword=secret",
        ])
        .arg(format!("-datadir={}", dir.path().display()))
        .arg(format!("-rpcport={port}"))
        .spawn()
        .unwrap();
    let rpc = BitcoindRpc::new(&format!("http://127.0.0.1:{port}"), "vigil", "secret");
    wait_ready(&rpc);
    Some(Process { child, rpc, dir, port })
}

pub struct Wallet {
    pub secp: Secp256k1<vigil_chain::bitcoin::secp256k1::All>,
    pub key: Keypair,
}

impl Wallet {
    pub fn new() -> Wallet {
        let secp = Secp256k1::new();
        let key = Keypair::from_seckey_slice(&secp, &[5u8; 32]).unwrap();
        Wallet { secp, key }
    }
    pub fn address(&self) -> Address {
        Address::p2tr(&self.secp, self.key.x_only_public_key().0, None, Network::Regtest)
    }
    pub fn spend(&self, outpoint: OutPoint, prev: &TxOut, fee: u64) -> Transaction {
        let mut tx = Transaction {
            version: Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: outpoint,
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                ..Default::default()
            }],
            output: vec![TxOut {
                value: prev.value - Amount::from_sat(fee),
                script_pubkey: self.address().script_pubkey(),
            }],
        };
        let sighash = SighashCache::new(&tx)
            .taproot_key_spend_signature_hash(0, &Prevouts::All(&[prev]), TapSighashType::Default)
            .unwrap();
        let tweaked = self.key.tap_tweak(&self.secp, None).to_keypair();
        let sig = self.secp.sign_schnorr(&Message::from_digest(sighash.to_byte_array()), &tweaked);
        tx.input[0].witness = Witness::from_slice(&[sig.as_ref()]);
        tx
    }
}

pub fn mine(rpc: &BitcoindRpc, n: u32, to: &Address) -> Vec<String> {
    let v = rpc.call("generatetoaddress", json!([n, to.to_string()])).unwrap();
    v.as_array().unwrap().iter().map(|h| h.as_str().unwrap().to_owned()).collect()
}

/// The first coinbase's output, once mature.
pub fn mature_coin(backend: &BitcoindRpc) -> (OutPoint, TxOut) {
    let hash = backend.block_hash(1).unwrap().unwrap();
    let coinbase = backend.block(&hash).unwrap().txdata[0].clone();
    (OutPoint { txid: coinbase.compute_txid(), vout: 0 }, coinbase.output[0].clone())
}

impl Wallet {
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
        let mut tx = Transaction {
            version: Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint { txid: coinbase.compute_txid(), vout: 0 },
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                ..Default::default()
            }],
            output: vec![
                TxOut { value: amount, script_pubkey: script },
                TxOut {
                    value: prev.value - amount - Amount::from_sat(2_000),
                    script_pubkey: self.address().script_pubkey(),
                },
            ],
        };
        let sighash = SighashCache::new(&tx)
            .taproot_key_spend_signature_hash(0, &Prevouts::All(&[&prev]), TapSighashType::Default)
            .unwrap();
        let tweaked = self.key.tap_tweak(&self.secp, None).to_keypair();
        let sig = self.secp.sign_schnorr(&Message::from_digest(sighash.to_byte_array()), &tweaked);
        tx.input[0].witness = Witness::from_slice(&[sig.as_ref()]);
        let txid = rpc.broadcast(&tx).unwrap();
        (OutPoint { txid, vout: 0 }, tx.output[0].clone())
    }
}

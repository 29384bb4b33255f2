//! What the co-signer's process tests share.
#![allow(dead_code)]

use serde_json::Value;
use vigil_chain::ChainBackend;
use vigil_testenv::family::Family;
use vigil_testenv::process::Node;
use vigil_testenv::wallet::mine;
use vigil_testenv::webhook::Received;
use vigil_testenv::Vault;

/// The example policy of the process tests (DELAY 20; the family sets its towers).
pub use vigil_testenv::household::example;

pub fn block(node: &Node, f: &Family, n: u32) {
    mine(&node.rpc, n, &f.wallet.address());
}

pub fn tip(node: &Node) -> u32 {
    node.rpc.tip().unwrap().height
}

pub fn alarmed(alarms: &Received, kind: &str) -> bool {
    alarms.lock().unwrap().iter().any(|a| a["kind"] == kind)
}

/// The unvault broadcast and confirmed.
pub fn unvault(node: &Node, f: &Family, vault: &Vault) {
    node.rpc.broadcast(vault.graph.unvault()).unwrap();
    block(node, f, 1);
}

pub fn spend(f: &Family, vault: &Vault) -> Result<Value, (u16, String)> {
    f.request_spend(vault, &f.spend_psbt(vault, &f.wallet.address(), 1_000))
}

//! What the co-signer's process tests share.
#![allow(dead_code)]

use serde_json::Value;
use vigil_chain::ChainBackend;
use vigil_policy::example::ExamplePolicy;
use vigil_testenv::family::Family;
use vigil_testenv::household::DELAY;
use vigil_testenv::process::Node;
use vigil_testenv::wallet::mine;
use vigil_testenv::webhook::Received;
use vigil_testenv::Vault;

pub fn example(seed: &str) -> ExamplePolicy {
    ExamplePolicy {
        seed: seed.into(),
        delay: DELAY,
        recovery: 40,
        deep_vault: 60,
        ..ExamplePolicy::default()
    }
}

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

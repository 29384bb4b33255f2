//! Vigil's descriptors, imported unchanged into a real Bitcoin Core (built from the source the
//! kernel crate vendors): Core accepts their checksums and derives the same addresses.
//!
//! Needs `BITCOIND_EXE`; `scripts/test.sh` builds and sets it.
//! Without it the test says it was skipped, unless `VIGIL_REQUIRE_BITCOIND=1` makes it fail.

use serde_json::json;
use vigil_policy::bitcoin::{Address, Amount, Network};
use vigil_policy::example::ExamplePolicy;
use vigil_policy::VaultKind;
use vigil_testenv::process::{bitcoind, Node};
use vigil_testenv::Env;

/// Core's `deriveaddresses`, optionally at one index of a ranged descriptor.
fn addresses(node: &Node, descriptor: &str, index: Option<u32>) -> Vec<String> {
    let params = match index {
        Some(i) => json!([descriptor, [i, i]]),
        None => json!([descriptor]),
    };
    let v =
        node.rpc.call("deriveaddresses", params).unwrap_or_else(|e| panic!("Core refused {descriptor}: {e}"));
    v.as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect()
}

#[test]
fn bitcoin_core_accepts_every_descriptor_and_derives_the_same_addresses() {
    let Some(node) = bitcoind() else { return };
    // Both key formats (ADR 0005): format 2's internal key is an xpub Core derives too.
    for format in [1, 2] {
        let env = Env::new(ExamplePolicy {
            delay: 10,
            recovery: 30,
            deep_vault: 40,
            format,
            ..ExamplePolicy::default()
        })
        .unwrap();
        same_addresses(&node, env);
    }
}

fn same_addresses(node: &Node, mut env: Env) {
    let ranged = env.compiled.ranged_descriptors().unwrap();
    for d in [&ranged.intake, &ranged.recovery, &ranged.deep_vault] {
        let info = node
            .rpc
            .call("getdescriptorinfo", json!([d]))
            .unwrap_or_else(|e| panic!("Core refused {d}: {e}"));
        assert_eq!(info["isrange"], true, "{info}");
        assert_eq!(info["checksum"].as_str(), d.split('#').nth(1), "{info}");
    }
    for i in [0, 5] {
        let ours = env.compiled.intake_address(i).unwrap().to_string();
        assert_eq!(addresses(node, &ranged.intake, Some(i)), vec![ours]);
    }

    // A real vault: every output's definite descriptor gives Core the address on chain.
    let vault = env.create_vault(Amount::from_sat(2_000_000), VaultKind::Guarded).unwrap();
    let address = |spk: &vigil_policy::bitcoin::ScriptBuf| {
        Address::from_script(spk, Network::Regtest).unwrap().to_string()
    };
    let d = &vault.descriptors;
    let g = vault.graph.graph();
    let checks = [
        (d.vault.to_string(), address(&g.vault_txout.script_pubkey)),
        (d.unvault.to_string(), address(&vault.unvault_txout().script_pubkey)),
        (d.recovery.to_string(), address(&g.cancels[0].tx.output[0].script_pubkey)),
        (d.deep_vault.to_string(), address(&g.emergencies[0].tx.output[0].script_pubkey)),
    ];
    for (descriptor, expected) in checks {
        assert_eq!(addresses(node, &descriptor, None), vec![expected], "{descriptor}");
    }
    // The ranged recovery descriptor at this vault's index is the same output.
    assert_eq!(
        addresses(node, &ranged.recovery, Some(vault.plan.index)),
        vec![address(&g.cancels[0].tx.output[0].script_pubkey)]
    );
}

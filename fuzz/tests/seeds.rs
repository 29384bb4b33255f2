//! Writes the seed inputs of every corpus (`cargo test -p vigil-fuzz --test seeds -- --ignored`):
//! well-formed examples of each input, for the fuzzer to mutate from. Run once; the fuzzer's
//! finds are added beside them.

use std::path::PathBuf;

use serde_json::json;
use vigil_policy::bitcoin::consensus::encode::serialize_hex;
use vigil_policy::bitcoin::consensus::serialize;
use vigil_policy::bitcoin::hashes::Hash;
use vigil_policy::bitcoin::{Amount, Network, OutPoint, Txid};
use vigil_policy::example::{auth_keypair, ExamplePolicy};
use vigil_policy::{CompiledPolicy, OneTimeKey, Policy, VaultKind};
use vigil_tower::wire::{self, Approval, ChangePolicy, Panic, PanicRequest, RegisterApproval, RegisterVault};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

#[test]
#[ignore = "writes the seed corpora"]
fn write_seeds() {
    let example = ExamplePolicy::default();
    let text = example.to_toml();
    let keys = example.keys();
    let compiled = CompiledPolicy::new(Policy::from_toml(&text).unwrap()).unwrap();
    let (o, c) = (OneTimeKey::generate(), OneTimeKey::generate());
    let plan =
        compiled.plan(3, Amount::from_sat(2_000_000), VaultKind::Standard, o.public(), c.public()).unwrap();
    let v = OutPoint { txid: Txid::from_byte_array([4; 32]), vout: 0 };
    let g = compiled.build_graph(&plan, v).unwrap();
    let signed = g.finalize(&o.sign(&g).unwrap(), &c.sign(&g).unwrap()).unwrap();
    let id = vigil_tower::policy_id(&text);

    // Blocks: regtest genesis, and one holding a vault's graph (segwit) and a legacy-shaped one.
    let genesis = vigil_policy::bitcoin::constants::genesis_block(Network::Regtest);
    write("block_scan", "genesis", &serialize(&genesis));
    let mut block = genesis.clone();
    block.txdata.extend(signed.transactions().map(|p| p.tx.clone()));
    write("block_scan", "graph", &serialize(&block));
    write("outpoint_index", "steps", &(0u8..=255).collect::<Vec<_>>());

    write("policy_file", "example", text.as_bytes());
    let guarded = ExamplePolicy {
        guardians: 5,
        guardian_threshold: 3,
        owners: 2,
        owner_threshold: 2,
        ..example.clone()
    };
    write("policy_file", "five-guardians", guarded.to_toml().as_bytes());

    let request =
        |tag: u8, name: &str, body: Vec<u8>| write("tower_request", name, &[&[tag][..], &body].concat());
    let register = RegisterVault::new(&id, 1, &plan, &signed, None);
    request(0, "register", serde_json::to_vec(&register).unwrap());
    let approval = Approval {
        vault_outpoint: v.to_string(),
        unvault_txid: signed.unvault().compute_txid().to_string(),
        spend_txid: Txid::all_zeros().to_string(),
        policy_version: 1,
        expiry_height: 500,
        counter: 1,
    };
    let signatures = vec![wire::sign(&approval.digest(), &auth_keypair(&keys.cosigner))];
    request(
        1,
        "approval",
        serde_json::to_vec(&RegisterApproval {
            nonce: 2,
            policy_id: id.clone(),
            approval,
            signatures,
            duress: false,
        })
        .unwrap(),
    );
    let panic = Panic { policy_id: id.clone(), id: "ab".repeat(32), not_after_height: 10 };
    let signatures = (0..2).map(|g| wire::sign(&panic.digest(), &auth_keypair(&keys.guardians[g]))).collect();
    request(2, "panic", serde_json::to_vec(&PanicRequest { nonce: 3, panic, signatures }).unwrap());
    let new = text
        .replace("version = 1", "version = 2")
        .replace("velocity_limit_sat = 10000000", "velocity_limit_sat = 5000000");
    let digest = wire::policy_change_digest(&id, &new);
    let signatures = (0..2).map(|g| wire::sign(&digest, &auth_keypair(&keys.guardians[g]))).collect();
    request(
        3,
        "policy",
        serde_json::to_vec(&ChangePolicy {
            nonce: 4,
            policy_id: id,
            policy: new,
            signatures,
            not_before_height: None,
        })
        .unwrap(),
    );

    let hash = genesis.block_hash().to_string();
    let tx = serialize_hex(signed.unvault());
    for (name, body) in [
        ("getblock", json!({"jsonrpc": "1.0", "id": 1, "method": "getblock", "params": [hash, 0]})),
        ("send", json!({"jsonrpc": "2.0", "id": "x", "method": "sendrawtransaction", "params": [tx, 0]})),
        ("package", json!({"id": 3, "method": "submitpackage", "params": [[tx, tx]]})),
        (
            "generate",
            json!({"id": 4, "method": "vigil_generateblock", "params": [hash, "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", [tx], false]}),
        ),
        (
            "batch",
            json!([{"id": 5, "method": "getblockhash", "params": [0]}, {"id": 6, "method": "gettxout", "params": [hash, 1, true]}, {"id": 7, "method": "getrawmempool", "params": [false, true]}]),
        ),
    ] {
        write("node_rpc", name, body.to_string().as_bytes());
    }
    write("node_rpc", "rest", format!("{hash}.bin").as_bytes());

    let header = serialize_hex(&genesis.header);
    let lines = [
        json!({"jsonrpc": "2.0", "id": 1, "result": {"height": 1, "hex": header}}),
        json!({"jsonrpc": "2.0", "method": "blockchain.scripthash.subscribe", "params": ["ab", "cd"]}),
        json!({"jsonrpc": "2.0", "id": 2, "result": [{"tx_hash": Txid::all_zeros().to_string(), "height": 5}]}),
        json!({"jsonrpc": "2.0", "id": 3, "result": tx}),
        json!({"jsonrpc": "2.0", "id": 4, "error": {"code": 1, "message": "no"}}),
        json!({"jsonrpc": "2.0", "id": 5, "result": {"merkle": [Txid::all_zeros().to_string()], "pos": 1, "block_height": 1}}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    write("electrum_response", "session", text.as_bytes());

    let mut sequence = vec![8u8];
    sequence.extend(b"sequence");
    sequence.push(41);
    sequence.extend([7u8; 32]);
    sequence.push(b'A');
    sequence.extend(9u64.to_le_bytes());
    sequence.push(4);
    sequence.extend(3u32.to_le_bytes());
    write("zmq_frames", "sequence", &sequence);
}

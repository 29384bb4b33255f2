//! The tower as its own process (`vigil tower`), against `vigil node` over loopback.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use vigil_chain::{BitcoindRpc, ChainBackend};
use vigil_policy::bitcoin::secp256k1::Keypair;
use vigil_policy::bitcoin::{Amount, OutPoint, ScriptBuf, Transaction, Txid};
use vigil_policy::VaultKind;
use vigil_testenv::household::{example, get, post, Household, DELAY};
use vigil_testenv::process::{
    free_port, vigil_exe, vigil_node, vigil_node_with_zmq, write_key_file, Node, TowerApi, TowerOptions,
    TowerProcess,
};
use vigil_testenv::wallet::{confirmations, mine, spend_of, spend_of_since};
use vigil_testenv::webhook::webhook;
use vigil_testenv::Vault;
use vigil_testenv::{eventually, vigil_policy};
use vigil_tower::wire::{self, RegisterVault};

#[test]
fn unapproved_unvault_is_cancelled_approved_one_left_alone_and_guardians_alarmed() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let mut client = Household::new(dir.path(), &node, example("tower e2e"));
    let (hook, alarms) = webhook();
    let tower = TowerProcess::new(&node, &[client.policy_path.clone()], 0, Some(&hook));
    let rpc = &node.rpc;

    let stolen = client.create_vault(rpc, Amount::from_sat(3_000_000), VaultKind::Standard);
    let spent = client.create_vault(rpc, Amount::from_sat(3_000_000), VaultKind::Standard);
    for v in [&stolen, &spent] {
        let ack = client.register(&tower.api, v).unwrap();
        assert_eq!(ack["subject"], v.outpoint().to_string());
        // The acknowledgement is signed by the tower's key.
        let key: vigil_policy::bitcoin::key::XOnlyPublicKey =
            ack["tower_key"].as_str().unwrap().parse().unwrap();
        let sig = vigil_policy::bitcoin::secp256k1::schnorr::Signature::from_slice(
            &<Vec<u8> as vigil_policy::bitcoin::hex::FromHex>::from_hex(ack["signature"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
        let digest = wire::ack_digest(&tower.api.key, &v.outpoint().to_string());
        assert_eq!(key, tower.api.key);
        vigil_policy::bitcoin::secp256k1::Secp256k1::verification_only()
            .verify_schnorr(&sig, &digest, &key)
            .unwrap();
        rpc.broadcast(&v.funding).unwrap();
    }
    let approved_spend = client.delayed_spend(&spent);
    client.approve(&tower.api, &spent, approved_spend.compute_txid()).unwrap();
    mine(rpc, 1, &client.wallet.address());
    // Idle vaults keep their cancels and emergencies in the store only.
    assert_eq!(tower.metric("vigil_tower_vault_graphs_in_memory"), Some(0));

    // An attacker with the owner's devices broadcasts both unvaults.
    rpc.broadcast(stolen.graph.unvault()).unwrap();
    rpc.broadcast(spent.graph.unvault()).unwrap();
    // Both are read back from the store as the tower takes them on.
    eventually("both graphs read back", || {
        tower.metric("vigil_tower_vault_graphs_in_memory").filter(|n| *n == 2)
    });
    let start = rpc.tip().unwrap().height;
    let mut cancelled_at = None;
    for _ in 0..DELAY - 1 {
        std::thread::sleep(Duration::from_millis(400));
        mine(rpc, 1, &client.wallet.address());
        if let Some(c) = spend_of(rpc, stolen.unvault_outpoint()) {
            assert!(
                stolen.graph.transactions().any(|p| p.tx.compute_txid() == c.compute_txid()),
                "the tower broadcast our cancel"
            );
            if confirmations(rpc, &c.compute_txid()) >= 1 && cancelled_at.is_none() {
                cancelled_at = Some(rpc.tip().unwrap().height);
            }
        }
        assert!(spend_of(rpc, spent.unvault_outpoint()).is_none(), "the approved unvault was left alone");
    }
    let at = cancelled_at.expect("the unapproved unvault was cancelled");
    assert!(at < start + 1 + DELAY, "cancelled at {at}, before DELAY");
    // The approved spend goes through at DELAY (U confirmed at start + 1).
    mine(rpc, 1, &client.wallet.address());
    assert!(spend_of(rpc, spent.unvault_outpoint()).is_none(), "the approved unvault was left alone");
    let txid = rpc.broadcast(&approved_spend).unwrap();
    mine(rpc, 1, &client.wallet.address());
    assert_eq!(confirmations(rpc, &txid), 1);

    std::thread::sleep(Duration::from_millis(500));
    let seen = alarms.lock().unwrap().clone();
    assert!(seen.iter().any(|a| a["kind"] == "unvault-cancelled"), "{seen:?}");
    assert!(!seen
        .iter()
        .any(|a| a["message"].as_str().unwrap_or_default().contains(&spent.outpoint().to_string())));
    assert_eq!(tower.metric("vigil_tower_vaults_watched"), Some(2));
    // The guardians read the same alarms from the tower's feed, whatever became of the webhook;
    // the owner's keys (a device under duress) and strangers may not.
    let feed = format!("/v1/clients/{}/alarms", client.policy_id);
    let guardian = vigil_policy::example::auth_keypair(&client.keys.guardians[0]);
    let listed = get(&tower.api, &feed, &guardian).unwrap();
    let listed = listed.as_array().unwrap();
    assert!(
        listed
            .iter()
            .any(|a| a["kind"] == "unvault-cancelled" && a["vault"] == stolen.outpoint().to_string()),
        "{listed:?}"
    );
    assert!(listed.windows(2).all(|w| w[0]["id"].as_i64() > w[1]["id"].as_i64()), "newest first");
    assert_eq!(get(&tower.api, &feed, &client.owner_auth()).unwrap_err().0, 403, "the owner");
    let stranger = vigil_policy::example::auth_keypair(&example("a stranger").keys().guardians[0]);
    assert_eq!(get(&tower.api, &feed, &stranger).unwrap_err().0, 403, "another client's guardian");
}

#[test]
fn with_zmq_the_tower_acts_on_notifications_not_on_its_poll() {
    let (node, zmq) = vigil_node_with_zmq();
    let rpc = &node.rpc;
    let dir = tempfile::tempdir().unwrap();
    let mut client = Household::new(dir.path(), &node, example("tower zmq"));
    // Polls a minute apart: anything faster than that came through ZMQ.
    let chain = format!("{}zmq = {zmq:?}\n", node.tower_chain_config());
    let options =
        TowerOptions { top: "poll_interval_ms = 60000\n", chain: &chain, ..TowerOptions::default() };
    let tower = TowerProcess::configured(&node, &[client.policy_path.clone()], 7, options);
    let vault = client.create_vault(rpc, Amount::from_sat(3_000_000), VaultKind::Standard);
    client.protect(rpc, &tower.api, &vault);
    // A block wakes the tower (retrying while the fresh subscription reaches the node).
    let deadline = Instant::now() + Duration::from_secs(20);
    'block: loop {
        let height = rpc.tip().unwrap().height + 1;
        mine(rpc, 1, &client.wallet.address());
        let seen = Instant::now();
        while seen.elapsed() < Duration::from_secs(2) {
            if tower.metric("vigil_tower_tip_height") == Some(height as u64) {
                break 'block;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(Instant::now() < deadline, "no block reached the tower through ZMQ");
    }
    // An unvault in the mempool wakes it too, and it cancels at once.
    let start = Instant::now();
    rpc.broadcast(vault.graph.unvault()).unwrap();
    let cancel = loop {
        if let Some(c) = spend_of(rpc, vault.unvault_outpoint()) {
            break c;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no cancel within 10 s of a 60 s poll");
        std::thread::sleep(Duration::from_millis(10));
    };
    println!("unvault broadcast -> cancel in the mempool: {:?} (poll interval 60 s)", start.elapsed());
    assert!(vault.graph.transactions().any(|p| p.tx.compute_txid() == cancel.compute_txid()));
}

#[test]
fn a_reorg_deeper_than_the_tower_remembers_alarms_and_unvaults_are_still_cancelled() {
    let node = vigil_node();
    let rpc = &node.rpc;
    let dir = tempfile::tempdir().unwrap();
    let mut client = Household::new(dir.path(), &node, example("tower deep reorg"));
    let (hook, alarms) = webhook();
    let options = TowerOptions {
        webhooks: &[&hook],
        top: "poll_interval_ms = 50\nfollow_depth = 4\n",
        ..TowerOptions::default()
    };
    let tower = TowerProcess::configured(&node, &[client.policy_path.clone()], 8, options);
    let vault = client.create_vault(rpc, Amount::from_sat(3_000_000), VaultKind::Standard);
    client.protect(rpc, &tower.api, &vault);
    mine(rpc, 1, &client.wallet.address());
    let fork = rpc.tip().unwrap().height;
    mine(rpc, 8, &client.wallet.address());
    let wait_for = |what: &str, done: &dyn Fn() -> bool| eventually(what, || done().then_some(()));
    wait_for("the tower followed", &|| tower.metric("vigil_tower_tip_height") == Some(fork as u64 + 8));
    assert_eq!(tower.metric("vigil_tower_reorg_too_deep"), Some(0));

    // Nine blocks on the vault's funding block replace the eight above it.
    let mut parent = rpc.block_hash(fork).unwrap().unwrap().to_string();
    for _ in 0..9 {
        let mined = rpc
            .call("vigil_generateblock", json!([parent, client.wallet.address().to_string(), [], false]))
            .unwrap();
        parent = mined["hash"].as_str().unwrap().to_owned();
    }
    wait_for("the tower says it halted", &|| tower.metric("vigil_tower_reorg_too_deep") == Some(1));
    wait_for("the alarm was delivered", &|| {
        alarms.lock().unwrap().iter().any(|a| a["kind"] == "reorg-too-deep")
    });
    assert_eq!(tower.metric("vigil_tower_tip_height"), Some(fork as u64 + 8), "no block was processed");

    // Its tip is not the chain's: a governance wait counted from it could end early, so a
    // loosening waits until the tower follows again; a tightening applies at once.
    let guardian = vigil_policy::example::auth_keypair(&client.keys.guardians[0]);
    let change = |velocity| {
        let req = client.policy_change(&client.policy_at(2, velocity), &[0, 1]);
        post(&tower.api, "/v1/policy", &serde_json::to_vec(&req).unwrap(), &guardian)
    };
    let refused = change(20_000_000).unwrap_err();
    assert!(refused.0 == 503 && refused.1.contains("cannot follow the chain"), "{refused:?}");
    change(5_000_000).expect("a tightening applies at once");

    // The mempool is still watched: an unapproved unvault is cancelled.
    rpc.broadcast(vault.graph.unvault()).unwrap();
    wait_for("the unvault was cancelled", &|| spend_of(rpc, vault.unvault_outpoint()).is_some());
    let cancel = spend_of(rpc, vault.unvault_outpoint()).unwrap();
    assert!(vault.graph.transactions().any(|p| p.tx.compute_txid() == cancel.compute_txid()));
}

#[test]
fn bad_requests_are_refused_with_a_clear_4xx_and_store_nothing() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let mut client = Household::new(dir.path(), &node, example("tower bad input"));
    let tower = TowerProcess::new(&node, &[client.policy_path.clone()], 1, None);
    let vault = client.create_vault(&node.rpc, Amount::from_sat(2_000_000), VaultKind::Standard);
    let other = client.create_vault(&node.rpc, Amount::from_sat(2_000_000), VaultKind::Standard);
    let owner = client.owner_auth();
    let good = RegisterVault::new(&client.policy_id, 1, &vault.plan, &vault.graph, Some(&vault.funding));
    let body = |r: &RegisterVault| serde_json::to_vec(r).unwrap();

    let mut cases: Vec<(&str, Vec<u8>, Keypair, u16, &str)> = Vec::new();
    cases.push(("malformed JSON", b"{\"nonce\": 1,".to_vec(), owner, 400, "body"));
    cases.push(("unknown field", br#"{"nonce":1,"surprise":true}"#.to_vec(), owner, 400, "body"));
    let stranger =
        Keypair::from_seckey_slice(&vigil_policy::bitcoin::secp256k1::Secp256k1::new(), &[9; 32]).unwrap();
    cases.push(("a key the policy does not know", body(&good), stranger, 403, "owner or the co-signer"));
    let mut r = good.clone();
    r.cancels[0] = r.emergencies[0].clone();
    cases.push(("a transaction that does not spend the unvault", body(&r), owner, 400, "cancels[0]"));
    let mut r = good.clone();
    // Our cancel, spending our unvault, but paying the other vault's recovery output.
    let mut elsewhere = vault.graph.cancel(0).unwrap().clone();
    elsewhere.output[0].script_pubkey = other.graph.cancel(0).unwrap().output[0].script_pubkey.clone();
    assert_eq!(elsewhere.input, vault.graph.cancel(0).unwrap().input);
    r.cancels[0] = vigil_policy::bitcoin::consensus::encode::serialize_hex(&elsewhere);
    cases.push(("a cancel that pays elsewhere", body(&r), owner, 400, "cancels[0] is not the transaction"));
    let mut r = good.clone();
    let mut tx: Transaction =
        vigil_policy::bitcoin::consensus::encode::deserialize_hex(&r.cancels[1]).unwrap();
    tx.input[0].witness = vigil_policy::bitcoin::Witness::new();
    r.cancels[1] = vigil_policy::bitcoin::consensus::encode::serialize_hex(&tx);
    cases.push(("an unsigned cancel", body(&r), owner, 400, "not fully signed"));
    let mut r = good.clone();
    r.vault.kind = "golden".into();
    cases.push(("a bad vault kind", body(&r), owner, 400, "vault.kind"));
    let mut r = good.clone();
    r.policy_id = "00".repeat(32);
    cases.push(("an unknown client", body(&r), owner, 404, "unknown client"));
    let mut huge = body(&good);
    huge.extend(std::iter::repeat_n(b' ', 300 * 1024));
    cases.push(("an oversize body", huge, owner, 413, "the limit is"));

    for (name, bytes, key, status, needle) in cases {
        match post(&tower.api, "/v1/vaults", &bytes, &key) {
            Err((code, text)) => {
                assert_eq!(code, status, "{name}: {text}");
                assert!(text.contains(needle), "{name}: {text}");
                println!("{name:>45}: {code} {text}");
            }
            Ok(v) => panic!("{name}: accepted {v}"),
        }
    }
    // A wrong signature: signed over other bytes.
    let (k, sig) = wire::sign_request(&owner, &tower.api.key, "/v1/vaults", b"something else");
    let r = ureq::post(&format!("{}/v1/vaults", tower.api.url))
        .set("x-vigil-key", &k)
        .set("x-vigil-signature", &sig)
        .send_bytes(&body(&good));
    assert!(matches!(r, Err(ureq::Error::Status(401, _))));
    // A path or a method the API does not have: refused in its own shape, naming it.
    let unknown = [
        (post(&tower.api, "/v1/vault", &body(&good), &owner), 404, "no POST /v1/vault here"),
        (get(&tower.api, "/v1/vaults", &owner), 405, "GET /v1/vaults is not a request here"),
    ];
    for (answer, status, needle) in unknown {
        let (code, text) = answer.unwrap_err();
        assert_eq!(code, status, "{text}");
        assert!(text.contains(&format!("{{\"error\":\"{needle}")), "{text}");
    }
    assert_eq!(tower.metric("vigil_tower_vaults_watched"), Some(0), "nothing stored");

    // The good one, then the very same request again (its answer lost, say): the same
    // registration, acknowledged, nothing new stored. Any other request under its nonce (the
    // same fields written otherwise, here) is a replay.
    let first = post(&tower.api, "/v1/vaults", &body(&good), &owner).unwrap();
    let again = post(&tower.api, "/v1/vaults", &body(&good), &owner).unwrap();
    assert_eq!(first["subject"], again["subject"]);
    let other = serde_json::to_vec_pretty(&good).unwrap();
    match post(&tower.api, "/v1/vaults", &other, &owner) {
        Err((409, text)) => assert!(text.contains("replayed"), "{text}"),
        other => panic!("replay: {other:?}"),
    }
    assert_eq!(tower.metric("vigil_tower_vaults_watched"), Some(1));
    let _ = ScriptBuf::new();
}

/// A tiny deterministic generator (the seed is printed so a failure can be replayed).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn register_until_acked(client: &mut Household, tower: &TowerApi, vault: &Vault) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.register(tower, vault) {
            Ok(_) => return,
            Err((code, text)) if code == 0 || code >= 500 => {
                assert!(Instant::now() < deadline, "registration never acknowledged: {text}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((code, text)) => panic!("registration refused: {code} {text}"),
        }
    }
}

fn approve_until_acked(client: &mut Household, tower: &TowerApi, vault: &Vault, spend: Txid) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err((code, text)) = client.approve(tower, vault, spend) {
        assert!(code == 0 || code >= 500, "approval refused: {code} {text}");
        assert!(Instant::now() < deadline, "approval never acknowledged");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn no_missed_cancel_through_hundreds_of_sigkills() {
    let kills_wanted: u64 =
        std::env::var("VIGIL_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    crash_run("sqlite", "", kills_wanted, 40);
}

#[test]
fn no_missed_cancel_through_sigkills_with_the_postgres_store() {
    let Ok(url) = std::env::var("VIGIL_TEST_POSTGRES") else {
        assert!(std::env::var("VIGIL_REQUIRE_POSTGRES").is_err(), "VIGIL_TEST_POSTGRES is not set");
        eprintln!("SKIPPED: VIGIL_TEST_POSTGRES is not set (scripts/test.sh starts PostgreSQL and sets it)");
        return;
    };
    let schema = vigil_testenv::process::unique_schema("tower_crash");
    crash_run(
        "postgres",
        &format!("[store]\nkind = \"postgres\"\nurl = {url:?}\nschema = \"{schema}\"\n"),
        50,
        15,
    );
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).unwrap();
}

/// Runs vault batches against a tower killed with SIGKILL at random points until
/// `kills_wanted` kills landed while something was at stake, then checks every invariant.
fn crash_run(label: &str, store: &str, kills_wanted: u64, batch: usize) {
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    println!("crash test ({label} store) seed {seed}");
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let mut params = example(&format!("tower crash {label}"));
    params.velocity_limit_sat = 10_000_000_000;
    let mut client = Household::new(dir.path(), &node, params);
    mine(&node.rpc, 200, &client.wallet.address()); // coins for every vault
    let tower =
        Arc::new(Mutex::new(TowerProcess::with_store(&node, &[client.policy_path.clone()], 2, store)));
    let url = tower.lock().unwrap().api.clone();
    let rpc = &node.rpc;

    // The killer: restart (which returns once the tower has caught up and serves), let it
    // live a random 0-150 ms, SIGKILL it. Counts kills by what was going on.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let phase = Arc::new(Mutex::new("registration"));
    let counts = Arc::new(Mutex::new(std::collections::BTreeMap::<&str, u64>::new()));
    let killer = {
        let (tower, stop, phase, counts) = (tower.clone(), stop.clone(), phase.clone(), counts.clone());
        std::thread::spawn(move || {
            let mut rng = Rng(seed);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(rng.below(150)));
                let mut t = tower.lock().unwrap();
                t.kill9();
                *counts.lock().unwrap().entry(*phase.lock().unwrap()).or_default() += 1;
                t.start();
            }
        })
    };

    // Batches of vaults until enough kills landed while something was at stake.
    let mut rng = Rng(seed ^ 0x5555);
    let mut vaults = Vec::new();
    let mut u_heights: Vec<Option<u32>> = Vec::new();
    while counts.lock().unwrap().values().sum::<u64>() < kills_wanted || vaults.is_empty() {
        // Registrations and approvals under fire.
        *phase.lock().unwrap() = "registration";
        let first = vaults.len();
        for i in 0..batch {
            let vault = client.create_vault(rpc, Amount::from_sat(1_000_000), VaultKind::Standard);
            register_until_acked(&mut client, &url, &vault);
            let approved = if rng.below(3) == 0 {
                let spend = client.delayed_spend(&vault);
                approve_until_acked(&mut client, &url, &vault, spend.compute_txid());
                Some(spend)
            } else {
                None
            };
            rpc.broadcast(&vault.funding).unwrap();
            if i % 10 == 9 {
                mine(rpc, 1, &client.wallet.address());
            }
            vaults.push((vault, approved));
            u_heights.push(None);
        }
        mine(rpc, 1, &client.wallet.address());

        // One unvault per block, a block every 200 ms, kills all along: right after an
        // unvault enters the mempool, and right after a block (mid-block, mid-broadcast).
        let mut next = first;
        loop {
            if next < vaults.len() {
                rpc.broadcast(vaults[next].0.graph.unvault()).unwrap();
                next += 1;
                *phase.lock().unwrap() = "unvault in mempool";
            }
            std::thread::sleep(Duration::from_millis(100));
            mine(rpc, 1, &client.wallet.address());
            *phase.lock().unwrap() = "block just mined";
            std::thread::sleep(Duration::from_millis(100));
            let tip = rpc.tip().unwrap().height;
            for i in first..vaults.len() {
                if u_heights[i].is_none()
                    && confirmations(rpc, &vaults[i].0.graph.unvault().compute_txid()) > 0
                {
                    u_heights[i] = Some(tip);
                }
            }
            if next == vaults.len()
                && u_heights[first..].iter().all(|h| h.is_some_and(|h| tip >= h + DELAY - 1))
            {
                break;
            }
            assert!(tip < 10_000, "the test did not converge");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    killer.join().unwrap();

    // Count: every unapproved unvault cancelled before DELAY, every approved one untouched.
    let (mut cancelled, mut left_alone) = (0, 0);
    for (i, (v, approved)) in vaults.iter().enumerate() {
        let u_height = u_heights[i].unwrap();
        let spend = spend_of_since(rpc, v.unvault_outpoint(), u_height);
        match approved {
            None => {
                let c = spend
                    .unwrap_or_else(|| panic!("vault {i}: unapproved unvault at {u_height} never cancelled"));
                assert!(
                    v.graph.graph().cancels.iter().any(|p| p.tx.compute_txid() == c.compute_txid()),
                    "vault {i}: spent by a non-cancel"
                );
                let info =
                    rpc.call("getrawtransaction", json!([c.compute_txid().to_string(), true])).unwrap();
                let c_height = rpc.tip().unwrap().height + 1 - info["confirmations"].as_u64().unwrap() as u32;
                assert!(
                    c_height < u_height + DELAY,
                    "vault {i}: cancel at {c_height}, DELAY ends at {}",
                    u_height + DELAY
                );
                cancelled += 1;
            }
            Some(_) => {
                assert!(spend.is_none(), "vault {i}: an approved unvault was touched");
                left_alone += 1;
            }
        }
    }
    let t = tower.lock().unwrap();
    assert_eq!(t.metric("vigil_tower_vaults_watched"), Some(vaults.len() as u64), "no registration lost");
    let counts = counts.lock().unwrap();
    let total: u64 = counts.values().sum();
    println!("{label} store, SIGKILLs: {total} ({counts:?}); unapproved unvaults cancelled before DELAY: {cancelled}/{cancelled}; approved left alone: {left_alone}/{left_alone}; registrations kept: {}/{}", vaults.len(), vaults.len());
    assert!(total >= kills_wanted);
}

/// Unapproved unvaults of `vaults`, broadcast now; mines while the towers work, and returns
/// each cancel's confirmation height against its unvault's.
fn cancel_heights(rpc: &BitcoindRpc, client: &Household, vaults: &[Vault], blocks: u32) -> Vec<(u32, u32)> {
    for v in vaults {
        rpc.broadcast(v.graph.unvault()).unwrap();
    }
    let start = rpc.tip().unwrap().height + 1;
    for _ in 0..blocks {
        std::thread::sleep(Duration::from_millis(150));
        mine(rpc, 1, &client.wallet.address());
    }
    vaults
        .iter()
        .map(|v| {
            let u = v.graph.unvault().compute_txid();
            let tip = rpc.tip().unwrap().height;
            let height_of = |txid: &Txid| tip + 1 - confirmations(rpc, txid) as u32;
            let c = spend_of_since(rpc, v.unvault_outpoint(), start).expect("cancelled");
            (height_of(&u), height_of(&c.compute_txid()))
        })
        .collect()
}

#[test]
fn any_one_of_three_towers_is_enough() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let mut client = Household::new(dir.path(), &node, example("tower k of n"));
    let mut towers: Vec<TowerProcess> =
        (0..3).map(|i| TowerProcess::new(&node, &[client.policy_path.clone()], 10 + i, None)).collect();
    let vaults: Vec<Vault> = (0..3)
        .map(|_| client.create_vault(&node.rpc, Amount::from_sat(1_000_000), VaultKind::Standard))
        .collect();
    for v in &vaults {
        for t in &towers {
            client.register(&t.api, v).unwrap();
        }
        node.rpc.broadcast(&v.funding).unwrap();
    }
    mine(&node.rpc, 1, &client.wallet.address());
    // Two towers die for good.
    towers[0].kill9();
    towers[1].kill9();
    for (u, c) in cancel_heights(&node.rpc, &client, &vaults, DELAY - 1) {
        assert!(c < u + DELAY, "cancel at {c}, unvault at {u}");
    }
    assert_eq!(towers[2].metric("vigil_tower_vaults_watched"), Some(3));
}

#[test]
fn reorgs_of_depth_one_to_six_while_unvault_or_cancel_confirms_miss_nothing() {
    let node = vigil_node();
    let rpc = &node.rpc;
    let dir = tempfile::tempdir().unwrap();
    let mut client = Household::new(dir.path(), &node, example("tower reorgs"));
    let tower = TowerProcess::new(&node, &[client.policy_path.clone()], 20, None);
    let mut outcomes = Vec::new();
    for depth in 1..=6u32 {
        for while_cancel_confirms in [false, true] {
            let v = client.create_vault(rpc, Amount::from_sat(1_000_000), VaultKind::Standard);
            client.protect(rpc, &tower.api, &v);
            mine(rpc, 1, &client.wallet.address());
            rpc.broadcast(v.graph.unvault()).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            mine(rpc, 1, &client.wallet.address());
            if while_cancel_confirms {
                // Let the tower's cancel confirm first.
                for _ in 0..3 {
                    std::thread::sleep(Duration::from_millis(200));
                    mine(rpc, 1, &client.wallet.address());
                }
            }
            // A heavier branch from `depth` blocks below the tip, without our transactions.
            let tip = rpc.tip().unwrap().height;
            let mut parent = rpc.block_hash(tip - depth).unwrap().unwrap().to_string();
            for _ in 0..=depth {
                let other = client.wallet.address().to_string();
                parent = rpc.call("vigil_generateblock", json!([parent, other, [], false])).unwrap()["hash"]
                    .as_str()
                    .unwrap()
                    .to_owned();
            }
            assert_eq!(rpc.tip().unwrap().height, tip + 1, "the branch won");
            // Mine on: the node's pool holds what was disconnected (U only once its v2 funding
            // confirms again, per TRUC, so the attacker re-broadcasts it); the tower re-broadcasts
            // its cancel.
            let mut result = None;
            for _ in 0..DELAY + 3 {
                let _ = rpc.broadcast(v.graph.unvault());
                std::thread::sleep(Duration::from_millis(150));
                mine(rpc, 1, &client.wallet.address());
                let u = confirmations(rpc, &v.graph.unvault().compute_txid());
                if let Some(c) =
                    spend_of(rpc, v.unvault_outpoint()).filter(|c| confirmations(rpc, &c.compute_txid()) > 0)
                {
                    let now = rpc.tip().unwrap().height;
                    let (u_h, c_h) =
                        (now + 1 - u as u32, now + 1 - confirmations(rpc, &c.compute_txid()) as u32);
                    result = Some((u_h, c_h));
                    break;
                }
            }
            let (u_h, c_h) = result.unwrap_or_else(|| panic!("depth {depth}: no cancel after the reorg"));
            assert!(c_h < u_h + DELAY, "depth {depth}: cancel at {c_h}, unvault at {u_h}");
            outcomes.push(format!(
                "depth {depth} while {}: cancel {} blocks after unvault",
                if while_cancel_confirms { "C confirms" } else { "U confirms" },
                c_h - u_h
            ));
        }
    }
    println!("{}", outcomes.join("\n"));
    println!("reorgs: {} scenarios, 0 missed cancels", outcomes.len());
}

/// A loopback TCP proxy that can be switched off, to cut the tower from its backend.
struct Proxy {
    port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    open: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    fn new(target: u16) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (flag, conns) = (up.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !flag.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(client); // the backend is "unreachable": connection closed at once
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else { continue };
                conns.lock().unwrap().push(client.try_clone().unwrap());
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut c, mut s) = (client, server);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut s2);
                    let _ = s2.shutdown(std::net::Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s, &mut c);
                    let _ = c.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Proxy { port, up, open }
    }

    /// `node` as a tower reaching it through this proxy sees it.
    fn in_front_of(&self, node: &Node) -> Node {
        Node {
            child: Command::new("true").spawn().unwrap(),
            rpc: node.rpc.clone(),
            dir: tempfile::tempdir().unwrap(),
            port: self.port,
            p2p: None,
        }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
        if !up {
            // Kept-alive connections die too.
            for c in self.open.lock().unwrap().drain(..) {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

#[test]
fn backend_outages_short_miss_nothing_long_ones_are_loud() {
    let node = vigil_node();
    let rpc = &node.rpc;
    let dir = tempfile::tempdir().unwrap();
    let mut client = Household::new(dir.path(), &node, example("tower outage"));
    let proxy = Proxy::new(node.port);
    let (hook, alarms) = webhook();
    // The tower reaches the node only through the proxy.
    let fake = proxy.in_front_of(&node);
    let tower = TowerProcess::new(&fake, &[client.policy_path.clone()], 30, Some(&hook));
    let v = client.create_vault(rpc, Amount::from_sat(1_000_000), VaultKind::Standard);
    client.protect(rpc, &tower.api, &v);
    mine(rpc, 1, &client.wallet.address());

    // Cut the backend, then unvault and mine 8 blocks: less than DELAY minus the cancel's
    // confirmation budget and burial margin.
    proxy.set_up(false);
    rpc.broadcast(v.graph.unvault()).unwrap();
    let u_height = rpc.tip().unwrap().height + 1;
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(400));
        mine(rpc, 1, &client.wallet.address());
    }
    // Long enough (> outage_alarm_secs = 2 s) to be loud.
    assert_eq!(tower.metric("vigil_tower_backend_up"), Some(0));
    std::thread::sleep(Duration::from_millis(500));
    let loud = alarms.lock().unwrap().iter().any(|a| a["kind"] == "backend-outage");
    assert!(loud, "an outage alarm reached the guardians: {:?}", alarms.lock().unwrap());
    proxy.set_up(true);
    let mut c_height = None;
    for _ in 0..(DELAY - 9) {
        std::thread::sleep(Duration::from_millis(300));
        mine(rpc, 1, &client.wallet.address());
        if let Some(c) =
            spend_of(rpc, v.unvault_outpoint()).filter(|c| confirmations(rpc, &c.compute_txid()) > 0)
        {
            c_height = Some(rpc.tip().unwrap().height + 1 - confirmations(rpc, &c.compute_txid()) as u32);
            break;
        }
    }
    let c = c_height.expect("cancelled after the outage");
    assert!(c < u_height + DELAY, "cancel at {c}, unvault at {u_height}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while tower.metric("vigil_tower_backend_up") != Some(1) {
        assert!(Instant::now() < deadline, "the tower never reported the backend back up");
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "outage of 8 blocks: cancel confirmed {} blocks after the unvault (DELAY {DELAY})",
        c - u_height
    );
}

/// How many alarms of `kind` arrived, each counted once: a delivery cut short by a kill may
/// be repeated by the next run.
fn distinct_alarms(alarms: &vigil_testenv::webhook::Received, kind: &str) -> usize {
    let alarms = alarms.lock().unwrap();
    let ids: std::collections::HashSet<String> =
        alarms.iter().filter(|a| a["kind"] == kind).map(|a| a["id"].to_string()).collect();
    ids.len()
}

/// A tower restarted more often than `outage_alarm_secs` (by a supervisor, while its backend
/// is down) still alarms the outage, and once: the outage's start and its alarm are recorded.
#[test]
fn a_backend_outage_is_alarmed_once_across_restarts_quicker_than_its_alarm() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let client = Household::new(dir.path(), &node, example("tower outage restarts"));
    let proxy = Proxy::new(node.port);
    let (hook, alarms) = webhook();
    let fake = proxy.in_front_of(&node);
    let mut tower = TowerProcess::new(&fake, std::slice::from_ref(&client.policy_path), 63, Some(&hook));
    let outages = || distinct_alarms(&alarms, "backend-outage");
    proxy.set_up(false);
    // Each run lasts well under the 2 s after which an outage is alarmed.
    let mut runs = 0;
    while outages() == 0 {
        assert!(runs < 10, "no outage alarm after {runs} runs of 0.8 s");
        std::thread::sleep(Duration::from_millis(800));
        tower.kill9();
        tower.start();
        runs += 1;
    }
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(800));
        tower.kill9();
        tower.start();
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(outages(), 1, "alarmed once: {:?}", alarms.lock().unwrap());
    // Back, then down again: a new outage, alarmed again.
    proxy.set_up(true);
    eventually("the backend back up", || (tower.metric("vigil_tower_backend_up") == Some(1)).then_some(()));
    proxy.set_up(false);
    eventually("the second outage alarmed", || (outages() == 2).then_some(()));
}

/// A tower that cannot see the chain starts no governance wait: a loosening or an early lift
/// would be dated from a tip the chain may have long passed (a tower started during an outage
/// serves its last recorded one). A tightening and a lockdown apply at once, as always.
#[test]
fn a_tower_cut_from_the_chain_starts_no_governance_wait_and_still_tightens() {
    let node = vigil_node();
    let rpc = &node.rpc;
    let dir = tempfile::tempdir().unwrap();
    let client = Household::new(dir.path(), &node, example("tower governance outage"));
    let proxy = Proxy::new(node.port);
    let fake = proxy.in_front_of(&node);
    let mut tower = TowerProcess::new(&fake, std::slice::from_ref(&client.policy_path), 64, None);
    // Killed, the chain moves on, and it starts again while its backend is down.
    tower.kill9();
    mine(rpc, 5, &client.wallet.address());
    proxy.set_up(false);
    tower.start();
    eventually("the backend seen down", || (tower.metric("vigil_tower_backend_up") == Some(0)).then_some(()));
    let guardian = |i: usize| vigil_policy::example::auth_keypair(&client.keys.guardians[i]);
    let change = |version: u32, velocity: u64| {
        let req = client.policy_change(&client.policy_at(version, velocity), &[0, 1]);
        post(&tower.api, "/v1/policy", &serde_json::to_vec(&req).unwrap(), &guardian(0))
    };
    let lift = |at: u32, until: u32| {
        let req = serde_json::to_vec(&client.lift(at, until)).unwrap();
        post(&tower.api, "/v1/lockdown/lift", &req, &guardian(0))
    };
    let unavailable = |r: Result<serde_json::Value, (u16, String)>| {
        matches!(&r, Err((503, why)) if why.contains("cannot follow the chain")) || panic!("{r:?}")
    };
    assert!(unavailable(change(2, 20_000_000)), "a loosening");
    change(2, 5_000_000).expect("a tightening applies at once");
    let tip = rpc.tip().unwrap().height;
    let lockdown = wire::LockdownRequest {
        nonce: client.next_nonce(),
        policy_id: client.policy_id.clone(),
        until_height: tip + 3_000,
        quiet: false,
    };
    post(&tower.api, "/v1/lockdown", &serde_json::to_vec(&lockdown).unwrap(), &guardian(2))
        .expect("a lockdown");
    assert!(unavailable(lift(tip + 1_015, tip + 3_000)), "an early lift");
    // Back in sight of the chain: both are taken, their waits counted from its tip.
    proxy.set_up(true);
    eventually("the backend back", || (tower.metric("vigil_tower_backend_up") == Some(1)).then_some(()));
    lift(tip + 1_015, tip + 3_000).expect("the lift");
    change(3, 20_000_000).expect("the loosening");
    let view = get(&tower.api, &format!("/v1/clients/{}", client.policy_id), &client.owner_auth()).unwrap();
    let due = view["pending"][0]["effective_height"].as_u64().unwrap() as u32;
    assert!(due >= tip + vigil_tower::GOVERNANCE_DELAY_BLOCKS, "due at {due}, tip {tip}");
}

/// A lift the guardians' quorum signed while this tower was down reaches it after its wait
/// has passed: it applies a full wait from now rather than being refused (which kept the
/// lockdown here, cancelling every unvault, after every other party had lifted it), unless a
/// lockdown was taken here after it can have been signed: that one is not its to end, and
/// absorbed into the older, longer one it cannot be told apart from it. One taken while the
/// tower could not see the chain is dated when it sees it again, not at its last tip.
#[test]
fn a_lift_delivered_late_applies_a_full_wait_from_now_unless_a_lockdown_came_since() {
    let node = vigil_node();
    let rpc = &node.rpc;
    let dir = tempfile::tempdir().unwrap();
    let client = Household::new(dir.path(), &node, example("tower late lift"));
    let proxy = Proxy::new(node.port);
    let fake = proxy.in_front_of(&node);
    let tower = TowerProcess::new(&fake, std::slice::from_ref(&client.policy_path), 66, None);
    let guardian = |i: usize| vigil_policy::example::auth_keypair(&client.keys.guardians[i]);
    let view =
        || get(&tower.api, &format!("/v1/clients/{}", client.policy_id), &client.owner_auth()).unwrap();
    let lock_down = |until: u32| {
        let req = wire::LockdownRequest {
            nonce: client.next_nonce(),
            policy_id: client.policy_id.clone(),
            until_height: until,
            quiet: false,
        };
        post(&tower.api, "/v1/lockdown", &serde_json::to_vec(&req).unwrap(), &guardian(2)).unwrap();
    };
    let lift = |at: u32, until: u32| {
        let req = serde_json::to_vec(&client.lift(at, until)).unwrap();
        post(&tower.api, "/v1/lockdown/lift", &req, &guardian(0))
    };
    // Blocks pass; lifts signed meanwhile are not delivered.
    let blocks_pass = |n: u32| {
        mine(rpc, n, &client.wallet.address());
        let tip = rpc.tip().unwrap().height;
        eventually("the tower at the tip", || (view()["tip"].as_u64() == Some(tip as u64)).then_some(tip))
    };
    let wait = vigil_tower::GOVERNANCE_DELAY_BLOCKS;
    let t0 = rpc.tip().unwrap().height;
    lock_down(t0 + 3_000);
    // The tower's backend down, a guardian's newer, shorter lockdown, absorbed into the first.
    proxy.set_up(false);
    eventually("the backend seen down", || (tower.metric("vigil_tower_backend_up") == Some(0)).then_some(()));
    lock_down(t0 + 2_500);
    mine(rpc, 60, &client.wallet.address());
    proxy.set_up(true);
    eventually("the backend seen back", || (tower.metric("vigil_tower_backend_up") == Some(1)).then_some(()));
    let t1 = blocks_pass(0);
    // The quorum's lift signed at t0 + 10, before the second lockdown, arrives: it may not end
    // that one, and cannot tell it apart: refused.
    let refused = lift(t0 + 10 + wait, t0 + 3_000);
    assert!(
        matches!(&refused, Err((400, why)) if why.contains("a lockdown was taken here after")),
        "{refused:?}"
    );
    assert_eq!(view()["locked_until"].as_u64(), Some(u64::from(t0 + 3_000)), "nothing changed");
    // A lift signed after it, at t1 + 10, arriving 50 blocks later: taken, a full wait from now.
    let t2 = blocks_pass(60);
    lift(t1 + 10 + wait, t0 + 3_000).expect("taken");
    assert_eq!(view()["locked_until"].as_u64(), Some(u64::from(t2 + wait)), "a full wait from now");
    // Handed in again, it is the same lift.
    lift(t1 + 10 + wait, t0 + 3_000).expect("acknowledged again");
    assert_eq!(view()["locked_until"].as_u64(), Some(u64::from(t2 + wait)));
}

/// Started again against a node behind it (one reindexing, or another node), a tower does not
/// date a lockdown at that node's lower tip, where a lift the quorum signed before the
/// lockdown would still end it: it keeps the height it knew (its own tip until the node shows
/// a block above it; the highest height it recorded, should a reorganisation to a shorter
/// branch lower that tip).
#[test]
fn a_tower_restarted_against_a_node_behind_it_dates_a_lockdown_no_earlier_than_it_knew() {
    let Some(core) = vigil_testenv::process::bitcoind() else { return };
    let rpc = &core.rpc;
    let dir = tempfile::tempdir().unwrap();
    let client = Household::new(dir.path(), &core, example("tower node behind"));
    let mut tower = TowerProcess::new(&core, std::slice::from_ref(&client.policy_path), 68, None);
    let guardian = |i: usize| vigil_policy::example::auth_keypair(&client.keys.guardians[i]);
    // The same address and key across the restart.
    let api = tower.api.clone();
    let view = || get(&api, &format!("/v1/clients/{}", client.policy_id), &client.owner_auth());
    let at_tip = |tip: u32| {
        eventually("the tower at the tip", || {
            (view().ok()?["tip"].as_u64() == Some(u64::from(tip))).then_some(())
        })
    };
    let known = rpc.tip().unwrap().height;
    at_tip(known);
    tower.kill9();
    // The node goes 30 blocks back, as one reindexing would be; the tower starts against it.
    let gone = rpc.block_hash(known - 29).unwrap().unwrap().to_string();
    rpc.call("invalidateblock", json!([gone])).unwrap();
    assert_eq!(rpc.tip().unwrap().height, known - 30);
    tower.start();
    eventually("the tower answers", || view().ok());
    let lockdown = wire::LockdownRequest {
        nonce: client.next_nonce(),
        policy_id: client.policy_id.clone(),
        until_height: known + 3_000,
        quiet: false,
    };
    post(&api, "/v1/lockdown", &serde_json::to_vec(&lockdown).unwrap(), &guardian(2)).unwrap();
    // The node back at the height the tower knew, and past it.
    rpc.call("reconsiderblock", json!([gone])).unwrap();
    mine(rpc, 10, &client.wallet.address());
    at_tip(known + 10);
    // A lift the quorum signed at `known - 10`, before the lockdown and above the node's tip
    // when it came, delivered now: that lockdown is not its to end.
    let signed_at = known - 10;
    let lift = client.lift(signed_at + vigil_tower::GOVERNANCE_DELAY_BLOCKS - 6, known + 3_000);
    let refused = post(&api, "/v1/lockdown/lift", &serde_json::to_vec(&lift).unwrap(), &guardian(0));
    assert!(
        matches!(&refused, Err((400, why)) if why.contains("a lockdown was taken here after")),
        "{refused:?}"
    );
    assert_eq!(view().unwrap()["locked_until"].as_u64(), Some(u64::from(known + 3_000)), "still locked");
}

/// The fee wallet's low-balance alarm stands across a restart: the guardians hear it once, not
/// once per restart of a tower whose wallet stays short.
#[test]
fn a_fee_wallet_short_is_alarmed_once_across_a_restart() {
    let node = vigil_node();
    let rpc = &node.rpc;
    let dir = tempfile::tempdir().unwrap();
    let mut client = Household::new(dir.path(), &node, example("tower fee wallet low restart"));
    let (hook, alarms) = webhook();
    let options = TowerOptions {
        webhooks: &[&hook],
        rest: "[fee_wallet]\nkey_file = \"{dir}/fee.key\"\nstress_sat_per_vb = 300\n",
        fee_key: Some([0x7e; 32]),
        ..TowerOptions::default()
    };
    let mut tower = TowerProcess::configured(&node, std::slice::from_ref(&client.policy_path), 65, options);
    let lows = || distinct_alarms(&alarms, "fee-wallet-low");
    // An open vault and an empty fee wallet: short.
    let v = client.create_vault(rpc, Amount::from_sat(1_000_000), VaultKind::Standard);
    client.protect(rpc, &tower.api, &v);
    mine(rpc, 1, &client.wallet.address());
    eventually("the fee wallet alarmed short", || (lows() > 0).then_some(()));
    assert_eq!(lows(), 1, "{:?}", alarms.lock().unwrap());
    tower.kill9();
    tower.start();
    mine(rpc, 1, &client.wallet.address());
    let tip = rpc.tip().unwrap().height as u64;
    // Its alarms for that block, if any, delivered.
    eventually("the restarted tower saw the block", || {
        let seen = tower.metric("vigil_tower_tip_height") == Some(tip);
        (seen && tower.metric("vigil_tower_alarm_outbox") == Some(0)).then_some(())
    });
    assert_eq!(lows(), 1, "alarmed once: {:?}", alarms.lock().unwrap());
}

#[test]
fn a_guardian_quorum_panic_sweeps_every_vault_to_the_deep_vault() {
    let node = vigil_node();
    let rpc = &node.rpc;
    let dir = tempfile::tempdir().unwrap();
    let mut client = Household::new(dir.path(), &node, example("tower panic"));
    let tower = TowerProcess::new(&node, &[client.policy_path.clone()], 40, None);
    let idle = client.create_vault(rpc, Amount::from_sat(1_000_000), VaultKind::Standard);
    let unvaulted = client.create_vault(rpc, Amount::from_sat(1_000_000), VaultKind::Standard);
    for v in [&idle, &unvaulted] {
        client.protect(rpc, &tower.api, v);
    }
    let spend = client.delayed_spend(&unvaulted);
    client.approve(&tower.api, &unvaulted, spend.compute_txid()).unwrap();
    mine(rpc, 1, &client.wallet.address());
    rpc.broadcast(unvaulted.graph.unvault()).unwrap();
    mine(rpc, 1, &client.wallet.address());

    let guardian = |i: usize| vigil_policy::example::auth_keypair(&client.keys.guardians[i]);
    let tip = rpc.tip().unwrap().height;
    let decision =
        wire::Panic { policy_id: client.policy_id.clone(), id: "ab".repeat(32), not_after_height: tip + 10 };
    let body = |signers: &[usize], nonce: u64| {
        let signatures = signers.iter().map(|g| wire::sign(&decision.digest(), &guardian(*g))).collect();
        serde_json::to_vec(&wire::PanicRequest { nonce, panic: decision.clone(), signatures }).unwrap()
    };
    // One guardian is not a quorum, whoever hands it in (any party may relay the quorum's
    // decision: its signatures are the authority); a stranger may hand in nothing.
    let one = body(&[0], 1);
    assert!(
        matches!(post(&tower.api, "/v1/panic", &one, &guardian(0)), Err((400, t)) if t.contains("guardian signatures"))
    );
    let owner_one = body(&[0], 3);
    assert!(matches!(post(&tower.api, "/v1/panic", &owner_one, &client.owner_auth()), Err((400, _))));
    let two = body(&[0, 2], 2);
    let stranger = vigil_policy::bitcoin::secp256k1::Keypair::from_seckey_slice(
        &vigil_policy::bitcoin::secp256k1::Secp256k1::new(),
        &[7; 32],
    )
    .unwrap();
    assert!(matches!(post(&tower.api, "/v1/panic", &two, &stranger), Err((404 | 403, _))));
    post(&tower.api, "/v1/panic", &two, &guardian(1)).unwrap();

    // E for the idle vault, UE for the unvaulted one: both land in their deep vaults.
    let mut swept = (false, false);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(300));
        mine(rpc, 1, &client.wallet.address());
        let e = spend_of(rpc, idle.outpoint());
        let ue = spend_of(rpc, unvaulted.unvault_outpoint());
        swept.0 = e.is_some_and(|t| {
            idle.graph.graph().emergencies.iter().any(|p| p.tx.compute_txid() == t.compute_txid())
                && confirmations(rpc, &t.compute_txid()) > 0
        });
        swept.1 = ue.is_some_and(|t| {
            unvaulted
                .graph
                .graph()
                .unvault_emergencies
                .iter()
                .any(|p| p.tx.compute_txid() == t.compute_txid())
                && confirmations(rpc, &t.compute_txid()) > 0
        });
        if swept == (true, true) {
            break;
        }
    }
    assert_eq!(swept, (true, true), "E and UE confirmed");
    // A replayed panic is refused, even under a fresh nonce.
    assert!(matches!(post(&tower.api, "/v1/panic", &two, &guardian(1)), Err((409, _))));
    let again = body(&[0, 2], 3);
    assert!(
        matches!(post(&tower.api, "/v1/panic", &again, &guardian(1)), Err((409, t)) if t.contains("already acted on"))
    );
}

#[test]
fn a_sweep_under_way_climbs_its_ladder_after_the_tower_is_killed_and_restarted() {
    let node = vigil_node();
    let rpc = &node.rpc;
    let dir = tempfile::tempdir().unwrap();
    let mut client = Household::new(dir.path(), &node, example("tower panic restart"));
    let mut tower = TowerProcess::new(&node, &[client.policy_path.clone()], 45, None);
    let v = client.create_vault(rpc, Amount::from_sat(1_000_000), VaultKind::Standard);
    client.protect(rpc, &tower.api, &v);
    mine(rpc, 1, &client.wallet.address());
    let guardian = |i: usize| vigil_policy::example::auth_keypair(&client.keys.guardians[i]);
    let tip = rpc.tip().unwrap().height;
    let decision =
        wire::Panic { policy_id: client.policy_id.clone(), id: "cd".repeat(32), not_after_height: tip + 10 };
    let signatures = [0, 1].iter().map(|g| wire::sign(&decision.digest(), &guardian(*g))).collect();
    let body = serde_json::to_vec(&wire::PanicRequest { nonce: 1, panic: decision, signatures }).unwrap();
    post(&tower.api, "/v1/panic", &body, &guardian(0)).unwrap();
    let rungs = v.graph.graph().emergencies.len();
    let rung_in_mempool = || {
        let pool = rpc.mempool().unwrap().txids;
        (0..rungs).find(|i| pool.contains(&v.graph.graph().emergencies[*i].tx.compute_txid()))
    };
    let first = eventually("E in the mempool", rung_in_mempool);
    // Killed with its sweep in the mempool; a block that leaves the mempool alone comes
    // while it is down (congestion).
    tower.kill9();
    let empty_block = || {
        let tip = rpc.tip().unwrap().hash.to_string();
        rpc.call("vigil_generateblock", json!([tip, client.wallet.address().to_string(), [], false]))
            .unwrap();
    };
    empty_block();
    tower.start();
    empty_block();
    eventually("the restarted tower climbed the sweep's ladder", || rung_in_mempool().filter(|r| *r > first));
}

/// A tower back from a long outage does not send a cancel as if it had sat unconfirmed in
/// every block it missed: it starts as high as the deadline requires, and no higher.
#[test]
fn a_tower_back_from_an_outage_cancels_as_high_as_each_deadline_requires_and_no_higher() {
    let node = vigil_node();
    let rpc = &node.rpc;
    let dir = tempfile::tempdir().unwrap();
    let mut client = Household::new(dir.path(), &node, example("tower catch-up fees"));
    let mut tower = TowerProcess::new(&node, std::slice::from_ref(&client.policy_path), 62, None);
    let (early, late) = (
        client.create_vault(rpc, Amount::from_sat(1_000_000), VaultKind::Standard),
        client.create_vault(rpc, Amount::from_sat(1_000_000), VaultKind::Standard),
    );
    for v in [&early, &late] {
        client.protect(rpc, &tower.api, v);
    }
    mine(rpc, 1, &client.wallet.address());
    // Down while both unapproved unvaults confirm, 9 blocks apart; back 13 blocks after the
    // first: its spend leaf (DELAY 20) opens in 7 blocks, the second's in 16.
    tower.kill9();
    rpc.broadcast(early.graph.unvault()).unwrap();
    mine(rpc, 9, &client.wallet.address());
    rpc.broadcast(late.graph.unvault()).unwrap();
    mine(rpc, 5, &client.wallet.address());
    let tip = rpc.tip().unwrap().height;
    tower.start();
    let cancel_rung = |v: &Vault| {
        let pool = rpc.mempool().unwrap().txids;
        let cancels = &v.graph.graph().cancels;
        (0..cancels.len()).find(|i| pool.contains(&cancels[*i].tx.compute_txid()))
    };
    let rungs = eventually("both cancels in the mempool", || {
        let view =
            get(&tower.api, &format!("/v1/clients/{}", client.policy_id), &client.owner_auth()).ok()?;
        (view["tip"] == tip).then_some(())?;
        Some((cancel_rung(&early)?, cancel_rung(&late)?))
    });
    let top = early.graph.graph().cancels.len() - 1;
    // The first at the top (a tower that never stopped would be there too); the second at the
    // bottom, not four rungs up for the four blocks missed since its unvault confirmed.
    assert_eq!(rungs, (top, 0), "cancel rungs after catching up, ladder of {}", top + 1);
    mine(rpc, 1, &client.wallet.address());
    for v in [&early, &late] {
        let cancel = spend_of(rpc, v.unvault_outpoint()).expect("cancelled");
        assert_eq!(confirmations(rpc, &cancel.compute_txid()), 1, "confirmed in the next block");
    }
}

#[test]
fn a_change_due_while_the_tower_was_down_applies_at_its_height_when_it_catches_up() {
    let node = vigil_node();
    let rpc = &node.rpc;
    let dir = tempfile::tempdir().unwrap();
    let mut client = Household::new(dir.path(), &node, example("tower catch-up change"));
    let (hook, alarms) = webhook();
    let mut tower = TowerProcess::new(&node, std::slice::from_ref(&client.policy_path), 61, Some(&hook));
    // Two standard vaults of 6M against a velocity limit of 10M: the second fits only once
    // the limit is raised to 20M.
    let vaults: Vec<_> =
        (0..2).map(|_| client.create_vault(rpc, Amount::from_sat(6_000_000), VaultKind::Standard)).collect();
    for v in &vaults {
        client.protect(rpc, &tower.api, v);
    }
    mine(rpc, 1, &client.wallet.address());
    let raised = client.policy_change(&client.policy_at(2, 20_000_000), &[0, 1]);
    let guardian = vigil_policy::example::auth_keypair(&client.keys.guardians[0]);
    post(&tower.api, "/v1/policy", &serde_json::to_vec(&raised).unwrap(), &guardian).unwrap();
    let path = format!("/v1/clients/{}", client.policy_id);
    let due = get(&tower.api, &path, &client.owner_auth()).unwrap()["pending"][0]["effective_height"]
        .as_u64()
        .unwrap() as u32;
    // The first unvault, approved, within the old limit.
    for v in &vaults {
        let spend = client.delayed_spend(v);
        client.approve(&tower.api, v, spend.compute_txid()).unwrap();
    }
    rpc.broadcast(vaults[0].graph.unvault()).unwrap();
    let tip = rpc.tip().unwrap().height;
    mine(rpc, due - 3 - tip, &client.wallet.address());
    eventually("the tower saw the first unvault", || {
        let view =
            get(&tower.api, &format!("/v1/vaults/{}", vaults[0].outpoint()), &client.owner_auth()).ok()?;
        (view["state"]["unvault_seen"] == true && view["tip"] == due - 3).then_some(())
    });
    // Down from two blocks before the change is due to one after the second unvault
    // confirmed: the co-signer, which applied the change at its height, approved it.
    tower.kill9();
    mine(rpc, 3, &client.wallet.address());
    rpc.broadcast(vaults[1].graph.unvault()).unwrap();
    mine(rpc, 1, &client.wallet.address());
    tower.start();
    eventually("the tower caught up", || {
        let view = get(&tower.api, &path, &client.owner_auth()).ok()?;
        (view["tip"] == due + 1 && view["version"] == 2).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(spend_of(rpc, vaults[1].unvault_outpoint()).is_none(), "the approved unvault was cancelled");
    let kinds: Vec<String> =
        alarms.lock().unwrap().iter().map(|a| a["kind"].as_str().unwrap_or_default().to_owned()).collect();
    assert!(!kinds.iter().any(|k| k.contains("cancel") || k.contains("velocity")), "{kinds:?}");
}

#[test]
fn a_tower_config_that_cannot_work_is_refused_at_start_naming_the_field() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let client = Household::new(dir.path(), &node, example("tower config"));
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("tower.key");
    write_key_file(&key_file, &vigil_policy::example::tower_secret("tower config", 0));
    let base = |chain: &str, rest: &str| {
        format!(
            "listen = \"127.0.0.1:{}\"\ndatadir = {:?}\nkey_file = {key_file:?}\n[chain]\n{chain}\
             [[clients]]\npolicy = {:?}\n{rest}",
            free_port(),
            dir.path().join("data"),
            client.policy_path,
        )
    };
    let fee = format!("[fee_wallet]\nkey_file = {key_file:?}\nstress_sat_per_vb = 250\n");
    let readable = keys.path().join("readable.key");
    write_key_file(&readable, &vigil_policy::example::tower_secret("tower config", 1));
    std::fs::set_permissions(&readable, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let inline = format!("secret_key = \"{}\"\n", "11".repeat(32));
    let cases = [
        (
            "a fee wallet that cannot pay beyond the ladder",
            base(&node.tower_chain_config(), &fee),
            "fee_wallet.stress_sat_per_vb",
        ),
        ("an unknown backend", base("kind = \"esplora\"\nurl = \"x\"\n", ""), "unknown variant `esplora`"),
        (
            "an unknown store",
            base(&node.tower_chain_config(), "[store]\nkind = \"mysql\"\n"),
            "unknown variant `mysql`",
        ),
        ("an unknown field", base(&node.tower_chain_config(), "surprise = 1\n"), "surprise"),
        (
            "a key file others can read",
            base(&node.tower_chain_config(), "")
                .replace(key_file.to_str().unwrap(), readable.to_str().unwrap()),
            "chmod 600",
        ),
        ("a secret key in the file", format!("{inline}{}", base(&node.tower_chain_config(), "")), "key file"),
        (
            "an empty RPC password",
            base("url = \"http://127.0.0.1:1\"\nuser = \"u\"\npassword = \"\"\n", ""),
            "password",
        ),
    ];
    for (what, config, names) in cases {
        let path = dir.path().join("tower.toml");
        std::fs::write(&path, config).unwrap();
        let out =
            Command::new(vigil_exe()).args(["tower", "--config", path.to_str().unwrap()]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: the tower started");
        assert!(stderr.contains(names), "{what}: {stderr}");
        println!("{what}: refused: {}", stderr.trim());
    }
    assert!(!dir.path().join("data").exists(), "nothing was created");
}

#[test]
fn a_cancel_stuck_at_the_top_of_its_ladder_is_bumped_through_its_anchor() {
    let node = vigil_node();
    let rpc = &node.rpc;
    let dir = tempfile::tempdir().unwrap();
    let mut client = Household::new(dir.path(), &node, example("tower bump"));
    let fee_secret = [0x42u8; 32];
    let fee_section = "[fee_wallet]\nkey_file = \"{dir}/fee.key\"\nstress_sat_per_vb = 300\n";
    let tower =
        TowerProcess::with_fee_key(&node, &[client.policy_path.clone()], 50, fee_section, &fee_secret);
    // Fund the fee wallet from the test wallet.
    let secp = vigil_policy::bitcoin::secp256k1::Secp256k1::new();
    let fee_key = vigil_policy::bitcoin::secp256k1::Keypair::from_seckey_slice(&secp, &fee_secret).unwrap();
    let fee_script = ScriptBuf::new_p2tr(&secp, fee_key.x_only_public_key().0, None);
    client.wallet.pay(rpc, 150, fee_script, Amount::from_sat(2_000_000));
    let v = client.create_vault(rpc, Amount::from_sat(5_000_000), VaultKind::Standard);
    client.protect(rpc, &tower.api, &v);
    mine(rpc, 1, &client.wallet.address());
    rpc.broadcast(v.graph.unvault()).unwrap();
    mine(rpc, 1, &client.wallet.address());
    let deadline = Instant::now() + Duration::from_secs(10);
    while tower.metric("vigil_tower_fee_wallet_sat") != Some(2_000_000) {
        assert!(Instant::now() < deadline, "the tower never saw its fee coin");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Congestion: blocks that leave the mempool alone. The tower climbs the ladder, then pays.
    let top = v.graph.graph().cancels.len() - 1;
    let c_top = v.graph.cancel(top).unwrap().compute_txid();
    let mut bump = None;
    for _ in 0..(top as u32 + 6) {
        std::thread::sleep(Duration::from_millis(300));
        let tip = rpc.tip().unwrap().hash.to_string();
        rpc.call("vigil_generateblock", json!([tip, client.wallet.address().to_string(), [], false]))
            .unwrap();
        for txid in rpc.mempool().unwrap().txids {
            // Replaced since the mempool was listed (the tower climbs its ladder meanwhile).
            let Some(tx) = rpc.transaction(&txid).unwrap() else { continue };
            if tx.input.iter().any(|i| i.previous_output == OutPoint { txid: c_top, vout: 1 }) {
                bump = Some(tx);
            }
        }
        if bump.is_some() {
            break;
        }
    }
    let bump = bump.expect("the tower bumped its top-rung cancel through the anchor");
    assert_eq!(bump.version.0, 3);
    // Still not mined: two blocks later a replacement, same anchor and coin, pays more.
    let child_of_c = || {
        rpc.mempool()
            .unwrap()
            .txids
            .into_iter()
            .filter_map(|t| rpc.transaction(&t).unwrap())
            .find(|tx| tx.input.iter().any(|i| i.previous_output == OutPoint { txid: c_top, vout: 1 }))
    };
    let mut replacement = None;
    for _ in 0..4 {
        let tip = rpc.tip().unwrap().hash.to_string();
        rpc.call("vigil_generateblock", json!([tip, client.wallet.address().to_string(), [], false]))
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        replacement = child_of_c().filter(|c| c.compute_txid() != bump.compute_txid());
        if replacement.is_some() {
            break;
        }
    }
    let replacement = replacement.expect("a replacement child");
    assert_eq!(replacement.input[1].previous_output, bump.input[1].previous_output, "the same fee coin");
    assert!(replacement.output[0].value < bump.output[0].value, "it pays more");
    mine(rpc, 1, &client.wallet.address());
    assert_eq!(confirmations(rpc, &c_top), 1, "the top rung and its bump confirmed together");
    assert_eq!(confirmations(rpc, &replacement.compute_txid()), 1);
}

#[test]
fn policy_changes_are_alarmed_tightening_applies_at_once_loosening_waits_out_the_delay() {
    let node = vigil_node();
    let rpc = &node.rpc;
    let dir = tempfile::tempdir().unwrap();
    let client = Household::new(dir.path(), &node, example("tower governance"));
    let (hook, alarms) = webhook();
    let tower = TowerProcess::new(&node, std::slice::from_ref(&client.policy_path), 60, Some(&hook));
    let path = format!("/v1/clients/{}", client.policy_id);
    let owner = client.owner_auth();
    assert_eq!(get(&tower.api, &path, &owner).unwrap()["version"], 1);
    let version = |v: u32, velocity: u64| client.policy_at(v, velocity);
    let guardian = |i: usize| vigil_policy::example::auth_keypair(&client.keys.guardians[i]);
    let change = |text: &str, signers: &[usize]| {
        let req = serde_json::to_vec(&client.policy_change(text, signers)).unwrap();
        post(&tower.api, "/v1/policy", &req, &guardian(0))
    };
    // Refused: one guardian; the same version; a policy that does not parse.
    assert!(
        matches!(change(&version(2, 20_000_000), &[0]), Err((400, t)) if t.contains("guardian signatures"))
    );
    assert!(matches!(change(&version(1, 20_000_000), &[0, 1]), Err((400, t)) if t.contains("not above")));
    let r = change(&version(2, 20_000_000).replace("threshold = 2", "threshold = 9"), &[0, 1]);
    assert!(matches!(&r, Err((400, t)) if t.contains("guardians.threshold")), "{r:?}");

    // Loosening (a higher velocity limit) waits 1,009 blocks.
    change(&version(2, 20_000_000), &[0, 2]).unwrap();
    let tip = rpc.tip().unwrap().height;
    let state = get(&tower.api, &path, &owner).unwrap();
    assert_eq!(state["version"], 1);
    assert_eq!(state["pending"][0]["version"], 2);
    assert_eq!(state["pending"][0]["effective_height"].as_u64().unwrap() as u32, tip + 1_009);
    // Tightening applies at once (and supersedes the pending loosening).
    change(&version(3, 5_000_000), &[1, 2]).unwrap();
    let state = get(&tower.api, &path, &owner).unwrap();
    assert_eq!((state["version"].as_u64(), state["pending"].as_array().unwrap().len()), (Some(3), 0));
    // The same change again (its answer lost): acknowledged, nothing changes, no alarm.
    change(&version(3, 5_000_000), &[1, 2]).unwrap();
    assert_eq!(get(&tower.api, &path, &owner).unwrap(), state);
    // Loosening again, then the delay passes.
    change(&version(4, 30_000_000), &[0, 1]).unwrap();
    mine(rpc, 1_008, &client.wallet.address());
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(get(&tower.api, &path, &owner).unwrap()["version"], 3, "one block early");
    mine(rpc, 1, &client.wallet.address());
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&tower.api, &path, &owner).unwrap()["version"] != 4 {
        assert!(Instant::now() < deadline, "version 4 never applied");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A version before it, asked again late: it holds it too.
    change(&version(3, 5_000_000), &[1, 2]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let kinds: Vec<String> =
        alarms.lock().unwrap().iter().map(|a| a["kind"].as_str().unwrap_or_default().to_owned()).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "policy-change").count(), 3, "{kinds:?}");
    assert!(kinds.iter().filter(|k| *k == "policy-applied").count() >= 2, "{kinds:?}");
    // The guardians' feed lists them too, about the client: no vault is named.
    let feed = get(&tower.api, &format!("{path}/alarms"), &guardian(0)).unwrap();
    let about = |kind: &str| {
        let listed = feed.as_array().unwrap().iter().filter(|a| a["kind"] == kind);
        listed
            .map(|a| (a["client"].as_str() == Some(&client.policy_id), a["vault"].is_null()))
            .collect::<Vec<_>>()
    };
    assert_eq!(about("policy-change"), [(true, true); 3], "{feed}");
    assert!(about("policy-applied").len() >= 2, "{feed}");
}

#[test]
fn a_change_the_store_failed_to_write_stops_the_tower_rather_than_being_acknowledged_from_memory() {
    let node = vigil_node();
    let dir = tempfile::tempdir().unwrap();
    let mut h = Household::new(dir.path(), &node, example("store fails"));
    let mut tower = TowerProcess::new(&node, &[h.policy_path.clone()], 7, None);
    let view = |h: &Household, tower: &TowerProcess| {
        get(&tower.api, &format!("/v1/clients/{}", h.policy_id), &h.owner_auth()).unwrap()
    };
    let change = |h: &mut Household, tower: &TowerProcess, text: &str| {
        let req = h.policy_change(text, &[0, 1]);
        let by = vigil_policy::example::auth_keypair(&h.keys.guardians[0]);
        post(&tower.api, "/v1/policy", &serde_json::to_vec(&req).unwrap(), &by)
    };
    // The disk refuses the client's row, as a full one would.
    let db = rusqlite::Connection::open(tower.dir.path().join("data/tower.sqlite")).unwrap();
    db.execute_batch(
        "CREATE TRIGGER full_insert BEFORE INSERT ON clients BEGIN SELECT RAISE(ABORT, 'disk full'); END;
         CREATE TRIGGER full_update BEFORE UPDATE ON clients BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
    )
    .unwrap();
    let loosening = h.policy_at(2, 20_000_000);
    let failed = change(&mut h, &tower, &loosening).unwrap_err();
    assert!(failed.0 == 503 && failed.1.contains("stopping after a failure"), "{failed:?}");
    // Sent again at once, it is not acknowledged from memory (503 while the tower stops), and
    // the tower stops.
    let again = change(&mut h, &tower, &loosening).unwrap_err();
    assert!(again.0 == 503 || again.0 == 0, "{again:?}");
    let exit = tower.exit_within(Duration::from_secs(10)).expect("the tower kept running ahead of its store");
    assert!(!exit.success(), "a failure, for its supervisor to start it again: {exit}");
    db.execute_batch("DROP TRIGGER full_insert; DROP TRIGGER full_update;").unwrap();
    tower.start();
    assert_eq!(view(&h, &tower)["pending"], json!([]), "nothing was written");
    change(&mut h, &tower, &loosening).unwrap();
    tower.kill9();
    tower.start();
    assert_eq!(view(&h, &tower)["pending"][0]["version"], 2, "taken, and kept across a restart");
}

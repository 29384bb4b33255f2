//! The tower's benchmarks, each against a baseline measured in the same run.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use vigil_policy::bitcoin::block::{Header, Version as BlockVersion};
use vigil_policy::bitcoin::consensus::{deserialize, serialize};
use vigil_policy::bitcoin::hashes::{sha256d, Hash};
use vigil_policy::bitcoin::transaction::Version;
use vigil_policy::bitcoin::{
    absolute, Amount, Block, BlockHash, CompactTarget, OutPoint, ScriptBuf, Sequence, Transaction, TxIn,
    TxMerkleNode, TxOut, Txid, Witness,
};
use vigil_policy::example::ExamplePolicy;
use vigil_policy::VaultKind;
use vigil_tower::index::{scan_block, OutpointIndex};
use vigil_tower::store::{SqliteStore, TowerStore};
use vigil_tower::vault::{Vault, VaultState};
use vigil_tower::watch::Watcher;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn outpoint(i: u64) -> OutPoint {
    OutPoint {
        txid: Txid::from_byte_array(sha256d::Hash::hash(&i.to_le_bytes()).to_byte_array()),
        vout: (i % 4) as u32,
    }
}

/// A block shaped like mainnet's: `n` transactions of two P2WPKH inputs and two outputs.
fn synthetic_block(n: usize, seed: u64, spending: &[OutPoint]) -> Block {
    let txs = (0..n)
        .map(|i| {
            let input = |k: u64| TxIn {
                previous_output: spending
                    .get(i * 2 + k as usize)
                    .copied()
                    .unwrap_or_else(|| outpoint(seed ^ ((i as u64) << 8 | k) ^ 0xdead_0000_0000)),
                script_sig: ScriptBuf::new(),
                sequence: Sequence::MAX,
                witness: Witness::from_slice(&[vec![0x30; 72], vec![0x02; 33]]),
            };
            Transaction {
                version: Version::TWO,
                lock_time: absolute::LockTime::ZERO,
                input: vec![input(0), input(1)],
                output: vec![
                    TxOut {
                        value: Amount::from_sat(50_000),
                        script_pubkey: ScriptBuf::from_bytes([&[0u8, 20][..], &[7u8; 20]].concat()),
                    },
                    TxOut {
                        value: Amount::from_sat(40_000),
                        script_pubkey: ScriptBuf::from_bytes([&[0u8, 20][..], &[8u8; 20]].concat()),
                    },
                ],
            }
        })
        .collect();
    Block {
        header: Header {
            version: BlockVersion::TWO,
            prev_blockhash: BlockHash::all_zeros(),
            merkle_root: TxMerkleNode::all_zeros(),
            time: 0,
            bits: CompactTarget::from_consensus(0x207fffff),
            nonce: 0,
        },
        txdata: txs,
    }
}

/// Scanning a full block against 1,000,000 watched vaults vs deserializing it, and the hot
/// index's memory per vault.
pub fn scan_and_memory() {
    let vaults = 1_000_000u64;
    let start = Instant::now();
    let mut index = OutpointIndex::with_capacity(2 * vaults as usize);
    for v in 0..vaults {
        index.insert(&outpoint(2 * v), v as u32);
        index.insert(&outpoint(2 * v + 1), v as u32);
    }
    let built = start.elapsed();
    let hits = [outpoint(10), outpoint(777_777), outpoint(1_999_999)];
    let block = synthetic_block(2_500, 42, &hits);
    let raw = serialize(&block);
    let set: HashSet<OutPoint> = (0..2 * vaults).map(outpoint).collect();

    let (mut de, mut de_set, mut scan) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..41 {
        let t = Instant::now();
        std::hint::black_box(deserialize::<Block>(&raw).unwrap());
        de.push(t.elapsed());
        let t = Instant::now();
        let b: Block = deserialize(&raw).unwrap();
        let n = b.txdata.iter().flat_map(|t| &t.input).filter(|i| set.contains(&i.previous_output)).count();
        std::hint::black_box(n);
        de_set.push(t.elapsed());
        let t = Instant::now();
        let found = scan_block(&raw, &index, None).unwrap();
        scan.push(t.elapsed());
        assert_eq!(found.len(), 2, "hits in tx 5 and tx 388888/999999 (2 txs spend the 3 outpoints)");
    }
    let (de, de_set, scan) = (median(de), median(de_set), median(scan));
    println!();
    println!(
        "3. tower: scanning a block of {} transactions ({} KB) against {vaults} watched vaults",
        block.txdata.len(),
        raw.len() / 1024
    );
    println!("   deserialize the block (rust-bitcoin)            {de:>10.2?}  (baseline)");
    println!(
        "   deserialize + HashSet lookup per input           {de_set:>10.2?}  {:.2}x",
        de_set.as_secs_f64() / de.as_secs_f64()
    );
    println!(
        "   scan raw bytes against the tower's index         {scan:>10.2?}  {:.2}x (goal <= 1.0x)",
        scan.as_secs_f64() / de.as_secs_f64()
    );
    println!(
        "   hot index: {:.1} B per vault ({} outpoints, {:.0} MB, built in {built:.1?}; goal <= 64 B)",
        index.memory_bytes() as f64 / vaults as f64,
        index.len(),
        index.memory_bytes() as f64 / 1e6,
    );
    // hashbrown's table: one control byte plus the element per bucket, at most 7/8 full.
    let buckets = (set.capacity() * 8 / 7).next_power_of_two();
    println!(
        "   a HashSet<OutPoint> of the same outpoints, by its table layout: {:.1} B per vault",
        (buckets * (std::mem::size_of::<OutPoint>() + 1)) as f64 / vaults as f64
    );
}

/// A real vault's graph cloned onto a made-up V outpoint (for populating a watcher).
fn synthetic_vault(template: &Vault, i: u64) -> Vault {
    let mut v = template.clone();
    v.outpoint = outpoint(i ^ 0xfeed_0000_0000);
    v.unvault.input[0].previous_output = v.outpoint;
    let u = OutPoint { txid: v.unvault.compute_txid(), vout: 0 };
    for c in v.cancels.iter_mut().chain(v.unvault_emergencies.iter_mut()) {
        c.input[0].previous_output = u;
    }
    for e in v.emergencies.iter_mut() {
        e.input[0].previous_output = v.outpoint;
    }
    v.state = VaultState::default();
    // A made-up index of its own (an index is used once per client).
    v.index = 1_000_000 + i as u32;
    v
}

/// Unvault observed -> cancel submitted (p50/p99) through the real path with 100,000 vaults
/// watched; catch-up after 2,016 missed blocks; store bytes per vault.
pub fn latency_and_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let chain_dir = dir.path().join("chain");
    let example = ExamplePolicy {
        seed: "bench tower".into(),
        delay: 144,
        velocity_limit_sat: 1_000_000_000_000,
        ..ExamplePolicy::default()
    };
    let samples = 200usize;
    // Real vaults on a kept chain.
    let vaults = {
        let chain = vigil_regtest::RegtestChain::open(&chain_dir).unwrap();
        let mut env = vigil_testenv::Env::with_chain(chain, example.clone()).unwrap();
        (0..samples)
            .map(|_| env.create_vault(Amount::from_sat(1_000_000), VaultKind::Standard).unwrap())
            .collect::<Vec<_>>()
    };
    let policy_path = dir.path().join("policy.toml");
    let text = example.to_toml();
    std::fs::write(&policy_path, &text).unwrap();
    let key_file = dir.path().join("tower.key");
    vigil_testenv::process::write_key_file(&key_file, &vigil_policy::example::tower_secret("bench", 0));
    let tower_config = |port: u16| -> vigil_tower::TowerConfig {
        vigil_tower::config::parse_config(&format!(
            "listen = \"127.0.0.1:0\"\ndatadir = {:?}\nkey_file = {key_file:?}\nmax_vaults_per_client = 200000\n\
             [chain]\nurl = \"http://127.0.0.1:{port}\"\nuser = \"bench\"\npassword = \"bench\"\nrest = true\n\
             [[clients]]\npolicy = {:?}\n",
            dir.path().join("tower"),
            policy_path
        ))
        .unwrap()
    };

    // The tower follows the chain up to here, then goes down.
    let (node, rpc, port) = serve(&chain_dir);
    let start_height = rpc.call("getblockcount", serde_json::json!([])).unwrap().as_u64().unwrap() as u32;
    drop(vigil_tower::Tower::start(tower_config(port)).unwrap());
    rpc.call("stop", serde_json::json!([])).unwrap();
    node.join().unwrap();

    // Meanwhile 2,016 blocks of 100 transactions each: 100 chains of spends, each link
    // confirmed in the block after its parent.
    {
        let chain = vigil_regtest::RegtestChain::open(&chain_dir).unwrap();
        let mut env = vigil_testenv::Env::with_chain(chain, example.clone()).unwrap();
        let secp = vigil_policy::bitcoin::secp256k1::Secp256k1::new();
        let key = vigil_policy::bitcoin::key::Keypair::from_seckey_slice(&secp, &[4u8; 32]).unwrap();
        let script = ScriptBuf::new_p2tr(&secp, key.x_only_public_key().0, None);
        let mut tips: Vec<(OutPoint, TxOut)> = (0..100)
            .map(|_| {
                let op = env.chain.fund(&script, Amount::from_sat(2_000_000)).unwrap();
                (op, TxOut { value: Amount::from_sat(2_000_000), script_pubkey: script.clone() })
            })
            .collect();
        env.chain.mine(1).unwrap();
        for _ in 0..2_016 {
            let txs: Vec<Transaction> = tips
                .iter()
                .map(|(op, prev)| {
                    let out =
                        TxOut { value: prev.value - Amount::from_sat(200), script_pubkey: script.clone() };
                    crate::sign(&key, *op, prev, vec![out])
                })
                .collect();
            env.chain.block().with_pending(false).with_transactions(txs.clone()).mine().unwrap();
            tips = txs
                .iter()
                .map(|t| (OutPoint { txid: t.compute_txid(), vout: 0 }, t.output[0].clone()))
                .collect();
        }
    }

    // The tower comes back: catch-up is its start, which replays every missed block before serving.
    let (_node, rpc, port) = serve(&chain_dir);
    let tip = rpc.call("getblockcount", serde_json::json!([])).unwrap().as_u64().unwrap();
    let t = Instant::now();
    let tower = vigil_tower::Tower::start(tower_config(port)).unwrap();
    let catch_up = t.elapsed();
    let hashes = vigil_chain::ChainBackend::block_hashes(&rpc, start_height + 1..tip as u32 + 1).unwrap();
    let t = Instant::now();
    let raws = vigil_chain::ChainBackend::raw_blocks(&rpc, &hashes).unwrap();
    let fetch_hex = t.elapsed();
    let rest = rpc.clone().with_rest(true);
    let t = Instant::now();
    let raws_rest = vigil_chain::ChainBackend::raw_blocks(&rest, &hashes).unwrap();
    let fetch_rest = t.elapsed();
    assert_eq!(raws, raws_rest);
    let total_kb: usize = raws.iter().map(|r| r.len()).sum::<usize>() / 1024;
    let t = Instant::now();
    for raw in &raws {
        std::hint::black_box(deserialize::<Block>(raw).unwrap());
    }
    let de = t.elapsed();
    let mut watcher = Watcher::new();
    let t = Instant::now();
    for (h, raw) in raws.iter().enumerate() {
        std::hint::black_box(watcher.on_raw_block_connected(start_height + 1 + h as u32, raw).unwrap());
    }
    let scan = t.elapsed();

    // The real vaults and 100,000 - 200 synthetic ones go into the tower's store; the tower
    // restarts and loads them the way it always does (streamed, idle graphs paged out).
    drop(tower);
    let policy_id = vigil_tower::policy_id(&text);
    let to_watched = |v: &vigil_testenv::Vault| Vault::from_signed(&policy_id, 144, &v.graph);
    let real: Vec<Vault> = vaults.iter().map(to_watched).collect();
    let store_bytes_per_vault;
    {
        let mut store = SqliteStore::open(&dir.path().join("tower").join("tower.sqlite")).unwrap();
        let mut payload = 0usize;
        for (i, v) in real.iter().enumerate() {
            let request = serde_json::to_string(&vigil_tower::wire::RegisterVault::new(
                &policy_id,
                1,
                &vaults[i].plan,
                &vaults[i].graph,
                Some(&vaults[i].funding),
            ))
            .unwrap();
            let registration =
                vigil_policy::bitcoin::hashes::sha256::Hash::hash(request.as_bytes()).to_string();
            payload += registration.len() + serde_json::to_string(v).unwrap().len();
            store.register_vault("bench", i as u64 + 1, v, &registration, u32::MAX).unwrap();
        }
        store_bytes_per_vault = payload as f64 / real.len() as f64;
        for i in 0..(100_000 - samples) as u64 {
            let nonce = samples as u64 + 1 + i;
            store
                .register_vault("bench", nonce, &synthetic_vault(&real[0], i), "synthetic", u32::MAX)
                .unwrap();
        }
    }
    // Memory per idle vault: 100,000 vaults added to a watcher that pages their graphs out to
    // the store, as the tower's does. Counted twice: live heap (what the watcher holds), and
    // resident growth (what earlier runs printed; it undercounts when the allocator reuses
    // memory freed by earlier work).
    let (heap_per_vault, rss_per_vault) = {
        let store = SqliteStore::open(&dir.path().join("tower").join("tower.sqlite")).unwrap();
        let mut watcher = Watcher::new();
        watcher.set_graphs(Box::new(vigil_tower::store::StoreGraphs(Box::new(store))));
        let (heap, rss) = (crate::heap::live(), resident_bytes());
        for i in 0..100_000u64 {
            watcher.add_vault(synthetic_vault(&real[0], i));
        }
        assert_eq!(watcher.graphs_in_memory(), 0, "idle vaults keep no graph in memory");
        (
            crate::heap::live().saturating_sub(heap) as f64 / 100_000.0,
            resident_bytes().saturating_sub(rss) as f64 / 100_000.0,
        )
    };
    let tower = vigil_tower::Tower::start(tower_config(port)).unwrap();

    // Observed -> submitted: U enters the node's mempool; one tower step sees it, decides,
    // records the decision durably, and submits C to the node.
    let mut latencies = Vec::new();
    for v in &vaults {
        vigil_chain::ChainBackend::broadcast(&rpc, v.graph.unvault()).unwrap();
        let t = Instant::now();
        tower.step().unwrap();
        latencies.push(t.elapsed());
        let pool = vigil_chain::ChainBackend::mempool(&rpc).unwrap();
        assert!(
            pool.txids.contains(&v.graph.cancel(0).unwrap().compute_txid()),
            "the cancel reached the node"
        );
        rpc.call("generatetoaddress", serde_json::json!([1, "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"]))
            .unwrap();
        tower.step().unwrap();
    }
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!();
    println!(
        "4. tower: unvault observed -> cancel submitted, {} vaults watched, {} samples",
        100_000,
        latencies.len()
    );
    println!("   (one tower step: mempool poll, the vault's graph read back from SQLite, decision, durable commit,");
    println!("    sendrawtransaction to vigil node)");
    println!(
        "   p50 {:.2?}  p99 {:.2?}  max {:.2?}  (goal p99 <= 50 ms)",
        p(0.5),
        p(0.99),
        latencies.last().unwrap()
    );
    println!();
    println!(
        "5. tower: catch-up after {} missed blocks ({total_kb} KB, 2,016 of them with 100 transactions)",
        hashes.len()
    );
    println!("   deserialize them (rust-bitcoin)                   {de:>10.2?}  (baseline)");
    println!(
        "   scan + decide (the tower's processing)            {scan:>10.2?}  {:.2}x",
        scan.as_secs_f64() / de.as_secs_f64()
    );
    println!(
        "   fetch: JSON-RPC getblock, hex, one batch          {fetch_hex:>10.2?}  {:.2}x",
        fetch_hex.as_secs_f64() / de.as_secs_f64()
    );
    println!(
        "   fetch: REST, raw bytes                            {fetch_rest:>10.2?}  {:.2}x",
        fetch_rest.as_secs_f64() / de.as_secs_f64()
    );
    println!(
        "   the tower's restart: replay all, fetch over REST  {catch_up:>10.2?}  {:.2}x (goal <= 2x)",
        catch_up.as_secs_f64() / de.as_secs_f64()
    );
    println!("   store: {store_bytes_per_vault:.0} bytes per vault (row payload: the watched vault with every rung of C/E/UE,");
    println!("          consensus hex, plus the request's digest)");
    println!(
        "   memory per idle watched vault (U and the state; C, E, UE stay in the store): {:.2} KB of live heap",
        heap_per_vault / 1024.0
    );
    println!("          ({:.2} KB resident growth, the measure of earlier runs)", rss_per_vault / 1024.0);
}

/// `vigil node` in-process on `dir`: its thread, a client, its port.
fn serve(dir: &std::path::Path) -> (std::thread::JoinHandle<()>, vigil_chain::BitcoindRpc, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = vigil_node::NodeConfig {
        datadir: dir.to_path_buf(),
        bind: ([127, 0, 0, 1], port).into(),
        rpcuser: Some("bench".into()),
        rpcpassword: Some("bench".into()),
        zmq: Default::default(),
    };
    let thread = std::thread::spawn(move || {
        tokio::runtime::Runtime::new().unwrap().block_on(vigil_node::run(config)).unwrap()
    });
    let rpc = vigil_chain::BitcoindRpc::new(&format!("http://127.0.0.1:{port}"), "bench", "bench");
    let deadline = Instant::now() + Duration::from_secs(30);
    while rpc.call("getblockcount", serde_json::json!([])).is_err() {
        assert!(Instant::now() < deadline, "vigil node did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (thread, rpc, port)
}

/// The process's resident memory, bytes (Linux).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

//! `vigil-bench`: benchmarks of the real paths, each printed as a ratio against a baseline
//! measured in the same run (absolute times on shared machines do not hold).
//!
//! 1. Vaults pre-signed per second (build the graph, both one-time keys sign every
//!    transaction, assemble the witnesses) vs. raw BIP340 signing of the same number of
//!    signatures with the same library. Goal: at most 1.5x.
//! 2. The co-signer: 1,000 spend requests at once across 100 clients, on SQLite and
//!    PostgreSQL: p50/p99 against concurrent signed reads, approvals per second; no request
//!    lost, no approval issued twice, no velocity exceeded.
//! 3. The embedded chain's mining rate with 100 signed transactions per block (each submitted
//!    through the pending pool, then the block validated by the kernel), vs. empty blocks.
//! 4. The owner's unlock: real and duress code distributions, told apart or not (Mann–Whitney),
//!    against opening a one-code key file; goal under 1 s (ADR 0004).
//! 5. The hardware signer (under the Ledger emulator's harness): registering an account and
//!    signing a spend on the device, against the software signer in the same run.

use std::time::{Duration, Instant};

use vigil_policy::bitcoin::hashes::{sha256, Hash};
use vigil_policy::bitcoin::key::{Keypair, Secp256k1};
use vigil_policy::bitcoin::secp256k1::Message;
use vigil_policy::bitcoin::transaction::Version;
use vigil_policy::bitcoin::{
    absolute, Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid,
};
use vigil_policy::example::ExamplePolicy;
use vigil_policy::{CompiledPolicy, OneTimeKey, Policy, VaultKind};
use vigil_regtest::RegtestChain;

mod cosigner;
mod signer;
mod tower;
mod unlock;

/// The heap, counted: live bytes, for memory figures that do not depend on what the allocator
/// kept from earlier work (resident size does).
#[allow(unsafe_code)] // a global allocator is an unsafe trait; this one only forwards and counts
mod heap {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicUsize, Ordering};

    static LIVE: AtomicUsize = AtomicUsize::new(0);

    struct Counting;

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
            System.alloc(layout)
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            System.dealloc(ptr, layout)
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            System.realloc(ptr, layout, new_size)
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    /// Bytes allocated and not freed.
    pub fn live() -> usize {
        LIVE.load(Ordering::Relaxed)
    }
}

fn main() {
    // Figures go to stdout; the libraries' logs only when RUST_LOG asks for them.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    println!("vigil-bench (each ratio compares against a baseline measured in this run)");
    let only = std::env::args().nth(1);
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if run("vault") {
        presigning();
        mining();
    }
    if run("cosigner") {
        cosigner::load();
    }
    if run("unlock") {
        unlock::unlock();
    }
    if run("tower") {
        tower::scan_and_memory();
        tower::latency_and_catch_up();
    }
    if run("signer") {
        signer::register_and_sign();
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn presigning() {
    let compiled =
        CompiledPolicy::new(Policy::from_toml(&ExamplePolicy::default().to_toml()).unwrap()).unwrap();
    let amount = Amount::from_sat(5_000_000);
    let vaults = 200u32;
    let one_vault = |i: u32| {
        let (owner, cosigner) = (OneTimeKey::generate(), OneTimeKey::generate());
        let plan = compiled.plan(i, amount, VaultKind::Standard, owner.public(), cosigner.public()).unwrap();
        let v = OutPoint {
            txid: Txid::from_byte_array(sha256::Hash::hash(&i.to_le_bytes()).to_byte_array()),
            vout: 0,
        };
        let graph = compiled.build_graph(&plan, v).unwrap();
        let signed = graph.finalize(&owner.sign(&graph).unwrap(), &cosigner.sign(&graph).unwrap()).unwrap();
        signed.transactions().count() * 2
    };
    let signatures_per_vault = one_vault(0);
    let total_sigs = signatures_per_vault * vaults as usize;

    let secp = Secp256k1::new();
    let keypair = Keypair::new(&secp, &mut vigil_policy::bitcoin::secp256k1::rand::thread_rng());
    let messages: Vec<Message> = (0..total_sigs)
        .map(|i| Message::from_digest(sha256::Hash::hash(&i.to_le_bytes()).to_byte_array()))
        .collect();

    // Alternate the two measurements so both see the same machine conditions.
    let (mut graph_times, mut raw_times) = (Vec::new(), Vec::new());
    for round in 0..5 {
        let start = Instant::now();
        for i in 0..vaults {
            std::hint::black_box(one_vault(round * vaults + i));
        }
        graph_times.push(start.elapsed());
        let start = Instant::now();
        for m in &messages {
            std::hint::black_box(secp.sign_schnorr(m, &keypair));
        }
        raw_times.push(start.elapsed());
    }
    let (g, r) = (median(graph_times), median(raw_times));

    // Where the time goes: the same work split into its phases.
    let (mut build, mut sign, mut assemble) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for i in 0..vaults {
        let t = Instant::now();
        let (owner, cosigner) = (OneTimeKey::generate(), OneTimeKey::generate());
        let plan = compiled.plan(i, amount, VaultKind::Standard, owner.public(), cosigner.public()).unwrap();
        let graph = compiled.build_graph(&plan, OutPoint::null()).unwrap();
        build += t.elapsed();
        let t = Instant::now();
        let (a, b) = (owner.sign(&graph).unwrap(), cosigner.sign(&graph).unwrap());
        sign += t.elapsed();
        let t = Instant::now();
        std::hint::black_box(graph.finalize(&a, &b).unwrap());
        assemble += t.elapsed();
    }
    println!();
    println!("1. pre-signing vaults ({signatures_per_vault} signatures per vault: U and 3 ladders of C/E/UE, two one-time keys)");
    println!(
        "   vaults pre-signed        {:>10.0} /s  ({vaults} vaults in {:?})",
        vaults as f64 / g.as_secs_f64(),
        g
    );
    println!(
        "   raw Schnorr signatures   {:>10.0} /s  ({total_sigs} signatures in {:?})",
        total_sigs as f64 / r.as_secs_f64(),
        r
    );
    println!("   ratio graph / raw signing: {:.2}x (goal <= 1.5x)", g.as_secs_f64() / r.as_secs_f64());
    let per = |d: Duration| d.as_secs_f64() * 1e6 / vaults as f64;
    println!(
        "   per vault: keys + build {:.0} us, sighashes + signing {:.0} us, witnesses {:.0} us",
        per(build),
        per(sign),
        per(assemble)
    );
}

fn mining() {
    let secp = Secp256k1::new();
    let key = Keypair::from_seckey_slice(&secp, &[3u8; 32]).unwrap();
    let script = ScriptBuf::new_p2tr(&secp, key.x_only_public_key().0, None);
    let blocks = 30usize;
    let per_block = 100usize;

    let mut chain = RegtestChain::new_temporary().unwrap();
    // One confirmed coin per transaction to come: a fan-out of 3,000 outputs in 2 transactions.
    let mut coins: Vec<(OutPoint, TxOut)> = Vec::new();
    for _ in 0..2 {
        let funding = chain.fund_confirmed(&script, Amount::from_sat(30 * 100_000_000)).unwrap();
        let prev = chain.coin(&funding).unwrap().txout;
        let outputs = vec![
            TxOut { value: Amount::from_sat(1_900_000), script_pubkey: script.clone() };
            blocks * per_block / 2
        ];
        let tx = sign(&key, funding, &prev, outputs);
        let txid = chain.submit(&tx).unwrap();
        chain.mine(1).unwrap();
        coins.extend(
            tx.output.iter().enumerate().map(|(i, o)| (OutPoint { txid, vout: i as u32 }, o.clone())),
        );
    }
    let spends: Vec<Transaction> = coins
        .iter()
        .map(|(op, prev)| {
            sign(
                &key,
                *op,
                prev,
                vec![TxOut { value: prev.value - Amount::from_sat(500), script_pubkey: script.clone() }],
            )
        })
        .collect();

    let start = Instant::now();
    for chunk in spends.chunks(per_block) {
        for tx in chunk {
            chain.submit(tx).unwrap();
        }
        chain.mine(1).unwrap();
    }
    let full = start.elapsed();
    let start = Instant::now();
    chain.mine(blocks as u32).unwrap();
    let empty = start.elapsed();
    println!();
    println!("2. embedded chain (kernel validates every block; pool verifies every script on submit)");
    println!(
        "   blocks with {per_block} transactions  {:>8.1} blocks/s ({blocks} blocks in {full:?}, height ~{})",
        blocks as f64 / full.as_secs_f64(),
        chain.height()
    );
    println!(
        "   empty blocks                {:>8.1} blocks/s ({blocks} blocks in {empty:?})",
        blocks as f64 / empty.as_secs_f64()
    );
    println!("   ratio full / empty block time: {:.1}x", full.as_secs_f64() / empty.as_secs_f64());
}

fn sign(key: &Keypair, op: OutPoint, prev: &TxOut, output: Vec<TxOut>) -> Transaction {
    let mut tx = Transaction {
        version: Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: op,
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            ..Default::default()
        }],
        output,
    };
    vigil_policy::sign_key_path(&mut tx, 0, std::slice::from_ref(prev), key).unwrap();
    tx
}

//! The co-signer under load: 1,000 spend requests sent at once across 100 clients (ten vaults
//! each), against the real `vigil cosigner` process on SQLite and on PostgreSQL, with a real
//! tower acknowledging every approval. It prints p50/p99 latency and approvals per second,
//! with the same 1,000 concurrent signed reads as the baseline, and checks that no request
//! is lost, no approval issued twice, and no client's velocity exceeded. Then 500 more spend
//! requests of 50 other clients arrive paced, at half the rate the burst was answered at:
//! the latency a request sees when the server is busy but not overrun.

use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use vigil_cosigner::wire::Signed;
use vigil_policy::bitcoin::Amount;
use vigil_policy::example::ExamplePolicy;
use vigil_policy::VaultKind;
use vigil_testenv::cosigner::{post_raw, unix_now, CosignerApi, CosignerProcess};
use vigil_testenv::family::Family;
use vigil_testenv::process::{vigil_node, TowerProcess};
use vigil_testenv::wallet::mine;

const CLIENTS: usize = 100;
const VAULTS: usize = 10;
/// Of each client's vaults, the standard ones; the others are guarded (their spends wait for
/// the guardians).
const STANDARD: usize = 6;
const VAULT_SAT: u64 = 1_000_000;
/// Each client's velocity budget: five vaults (their unvaults release a little less than the
/// vault each). Of the six standard vaults' requests, racing for it, five are approved at once
/// and one is refused over the budget (the guardians cannot lift it for a standard vault).
const VELOCITY_SAT: u64 = 5 * VAULT_SAT;
/// Clients whose spends arrive paced, not at once (ten vaults each, like the others). Each
/// vault is funded from a coinbase of its own: regtest halves the subsidy every 150 blocks,
/// and from block 1,950 on it is less than a vault's amount.
const PACED_CLIENTS: usize = 50;

/// The `p` quantile of `sorted`; zero for none.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

type Request = (CosignerApi, String, Option<Vec<u8>>, vigil_policy::bitcoin::secp256k1::Keypair);

/// Sends every request at once (one thread each, released together); each answer's status,
/// body and latency.
fn burst(requests: Vec<Request>) -> (Vec<(u16, Value, Duration)>, Duration) {
    send(requests, Duration::ZERO)
}

/// Sends request `i` at `i × spacing` after the start (one thread each, all made before the
/// first is sent); each answer's status, body and latency. The latency counts from the
/// request's slot (at once, the common release), not from when its thread got a core to send
/// it: a client on a machine of its own would have sent it then, and a thousand threads
/// released together start over hundreds of milliseconds on busy cores.
fn send(requests: Vec<Request>, spacing: Duration) -> (Vec<(u16, Value, Duration)>, Duration) {
    let barrier = Arc::new(Barrier::new(requests.len() + 1));
    let start: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let handles: Vec<_> = requests
        .into_iter()
        .enumerate()
        .map(|(i, (api, path, body, key))| {
            let (barrier, start) = (barrier.clone(), start.clone());
            std::thread::spawn(move || {
                let slot = released(&barrier, &start) + spacing * i as u32;
                std::thread::sleep(slot.saturating_duration_since(Instant::now()));
                let (status, bytes) = match &body {
                    Some(b) => post_raw(&api, &path, b, &key),
                    None => match vigil_testenv::cosigner::get(&api, &path, &key) {
                        Ok(v) => (200, v.to_string().into_bytes()),
                        Err((s, t)) => (s, t.into_bytes()),
                    },
                };
                let took = slot.elapsed();
                let answer = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
                (status, answer, took)
            })
        })
        .collect();
    let begun = released(&barrier, &start);
    let answers = handles.into_iter().map(|h| h.join().unwrap()).collect();
    (answers, begun.elapsed())
}

/// Waits at `barrier`; the instant it let everyone through. The last to arrive (the leader,
/// which does not wait) takes it: a thread taking it after its own wait may have been kept off
/// the cores by the runnable others for much of the burst, and one taking it before would
/// count the time the last threads took to arrive.
fn released(barrier: &Barrier, start: &OnceLock<Instant>) -> Instant {
    if barrier.wait().is_leader() {
        let _ = start.set(Instant::now());
    }
    loop {
        match start.get() {
            Some(t) => return *t,
            None => std::thread::yield_now(),
        }
    }
}

/// One run against a co-signer whose configuration ends with `store`.
fn run(label: &str, store: &str) {
    let node = vigil_node();
    let co = CosignerProcess::new(&node, store);
    let tower = TowerProcess::new(&node, &[], 0, None);
    let setup = Instant::now();
    let miner = vigil_testenv::wallet::Wallet::new();
    let all = CLIENTS + PACED_CLIENTS;
    mine(&node.rpc, (all * VAULTS + 120) as u32, &miner.address());
    let mut families = Vec::new();
    for c in 0..all {
        let mut e = ExamplePolicy {
            seed: format!("bench cosigner {c}"),
            delay: 20,
            recovery: 40,
            deep_vault: 60,
            ..ExamplePolicy::default()
        };
        e.velocity_limit_sat = VELOCITY_SAT;
        let mut f = Family::sharing(&node, &co, e, &[&tower]);
        f.use_coins_from(1 + (c * VAULTS) as u32);
        let kind = |i| if i < STANDARD { VaultKind::Standard } else { VaultKind::Guarded };
        let vaults: Vec<_> =
            (0..VAULTS).map(|i| f.vault(&node, Amount::from_sat(VAULT_SAT), kind(i))).collect();
        families.push((f, vaults));
    }
    let paced = families.split_off(CLIENTS);
    eprintln!("{label}: {all} clients with {VAULTS} vaults each set up in {:.0?}", setup.elapsed());

    // The baseline: the same number of concurrent signed requests that only read.
    let reads = families
        .iter()
        .flat_map(|(f, _)| {
            (0..VAULTS).map(move |_| (f.cosigner.clone(), "/v1/spends".to_owned(), None, f.owner()))
        })
        .collect();
    let processes = [Some(std::process::id()), co.pid(), tower.pid()];
    let cpu_before = processes.map(cpu_secs);
    let (base, _) = burst(reads);
    let base_cpu = cpu_of(&processes, cpu_before);
    assert!(base.iter().all(|(s, _, _)| *s == 200), "every read answered");
    let mut base_lat: Vec<Duration> = base.iter().map(|(_, _, d)| *d).collect();
    base_lat.sort();

    // The load: every vault's spend at once.
    let spends = spend_requests(&families);
    let cpu_before = processes.map(cpu_secs);
    let server_before = server_cpu_secs();
    let (answers, wall) = burst(spends);
    let cpu = cpu_of(&processes, cpu_before);
    // PostgreSQL's own processes serve the co-signer's store; SQLite works inside it.
    let server = if store.is_empty() { 0.0 } else { server_cpu_secs() - server_before };
    all_answered(&answers);
    let mut lat: Vec<Duration> = answers.iter().map(|(_, _, d)| *d).collect();
    lat.sort();
    let approved = answers.iter().filter(|(_, v, _)| v["state"] == "approved").count();
    let refused = answers.iter().filter(|(s, _, _)| *s == 409).count();
    // Approved ones wait for the tower's acknowledgement too; waiting ones only for the store.
    let latencies_of = |state: &str| {
        let mut l: Vec<Duration> =
            answers.iter().filter(|(_, v, _)| v["state"] == state).map(|(_, _, d)| *d).collect();
        l.sort();
        l
    };
    let (approved_lat, waiting_lat) = (latencies_of("approved"), latencies_of("waiting"));

    check(&families);
    let p = |v: &[Duration], q| percentile(v, q).as_secs_f64() * 1000.0;
    println!(
        "cosigner {label}: {} spend requests at once across {CLIENTS} clients: p50 {:.1} ms, p99 {:.1} ms \
         (baseline signed reads p50 {:.1} ms, p99 {:.1} ms: {:.2}x at p99); {approved} approved at once \
         (p50 {:.1} ms, p99 {:.1} ms), {refused} refused over the velocity budget, the others waiting for \
         guardians (p50 {:.1} ms, p99 {:.1} ms); \
         {:.0} approvals/s; none lost, none approved twice, no client over its velocity",
        answers.len(),
        p(&lat, 0.5),
        p(&lat, 0.99),
        p(&base_lat, 0.5),
        p(&base_lat, 0.99),
        p(&lat, 0.99) / p(&base_lat, 0.99),
        p(&approved_lat, 0.5),
        p(&approved_lat, 0.99),
        p(&waiting_lat, 0.5),
        p(&waiting_lat, 0.99),
        approved as f64 / wall.as_secs_f64(),
    );
    // What the burst cost the machine: no design answers all of it sooner than its CPU time
    // spread over the cores.
    let per = |secs: f64| secs * 1000.0 / answers.len() as f64;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let total = cpu.iter().sum::<f64>() + server;
    println!(
        "cosigner {label}: CPU per request: co-signer {:.2} ms ({:.1}x a signed read's {:.2} ms), tower {:.2} ms, \
         load generator {:.2} ms{}; the burst took {total:.2} s of CPU in all, so on {cores} cores its last answer \
         cannot come before {:.0} ms (it came after {:.0} ms)",
        per(cpu[1]),
        cpu[1] / base_cpu[1].max(f64::EPSILON),
        per(base_cpu[1]),
        per(cpu[2]),
        per(cpu[0]),
        match (store.is_empty(), server > 0.0) {
            (true, _) => String::new(),
            (false, true) => format!(", the PostgreSQL server {:.2} ms", per(server)),
            (false, false) => ", the PostgreSQL server not counted (not on this machine)".to_owned(),
        },
        total * 1000.0 / cores,
        wall.as_secs_f64() * 1000.0,
    );

    // The other clients' spends, paced at half the rate the burst was answered at: busy,
    // not overrun. Their latency is the service's own, not the queue's.
    let rate = answers.len() as f64 / wall.as_secs_f64() / 2.0;
    let (answers, _) = send(spend_requests(&paced), Duration::from_secs_f64(1.0 / rate));
    all_answered(&answers);
    check(&paced);
    let mut lat: Vec<Duration> = answers.iter().map(|(_, _, d)| *d).collect();
    lat.sort();
    println!(
        "cosigner {label}: {} spend requests of {PACED_CLIENTS} other clients paced at {rate:.0}/s (half the \
         burst's rate): p50 {:.1} ms, p99 {:.1} ms (goal: 100 ms); none lost, none approved twice, no client \
         over its velocity",
        answers.len(),
        p(&lat, 0.5),
        p(&lat, 0.99),
    );
}

/// Asserts every request was answered: 200, or 409 over the velocity budget (the first few
/// that were not are shown).
fn all_answered(answers: &[(u16, Value, Duration)]) {
    let over_budget = |s: u16, v: &Value| s == 409 && v.to_string().contains("velocity budget");
    let lost: Vec<_> = answers
        .iter()
        .filter(|(s, v, _)| *s != 200 && !over_budget(*s, v))
        .map(|(s, v, _)| (s, v.to_string()))
        .collect();
    assert!(lost.is_empty(), "{} requests not answered: {:?}", lost.len(), &lost[..lost.len().min(3)]);
}

type Families = [(Family, Vec<vigil_client::Vault>)];

/// Each vault's spend to the family's own wallet, each client's signed with consecutive nonces.
fn spend_requests(families: &Families) -> Vec<Request> {
    let now = unix_now();
    families
        .iter()
        .flat_map(|(f, vaults)| {
            vaults.iter().map(move |v| {
                let psbt = f.spend_psbt(v, &f.wallet.address(), 1_000);
                let request = json!({
                    "vault_outpoint": v.outpoint().to_string(),
                    "psbt": base64::engine::general_purpose::STANDARD.encode(psbt.serialize()),
                });
                let body = serde_json::to_vec(&Signed { nonce: f.next_nonce(), time: now, request }).unwrap();
                (f.cosigner.clone(), "/v1/spends".to_owned(), Some(body), f.owner())
            })
        })
        .collect()
}

/// What the co-signer recorded for `families`, each of whose vaults had one spend request.
fn check(families: &Families) {
    // Every request is recorded once; no vault approved twice; no client over its budget;
    // every approval acknowledged by the tower before it was answered.
    for (f, _) in families {
        let recorded = f.get("/v1/spends", &f.guardian(0)).unwrap();
        let recorded = recorded.as_array().unwrap();
        // The standard vaults' requests over the budget were refused, and not recorded.
        let approved = recorded.iter().filter(|s| s["state"] == "approved").count();
        assert_eq!(approved, 5, "exactly the velocity's worth approved at once");
        assert_eq!(recorded.len(), VAULTS - (STANDARD - 5), "no request lost or doubled");
        assert!(recorded.iter().all(|s| (s["state"] == "approved") == (s["vault"]["kind"] == "standard")));
        let mut outpoints: Vec<&str> =
            recorded.iter().map(|s| s["vault_outpoint"].as_str().unwrap()).collect();
        outpoints.sort();
        outpoints.dedup();
        assert_eq!(outpoints.len(), recorded.len(), "one request per vault");
        let released: u64 = recorded
            .iter()
            .filter(|s| s["state"] == "approved")
            .map(|s| s["amount_sat"].as_u64().unwrap())
            .sum();
        assert!(released <= VELOCITY_SAT, "velocity exceeded: {released} > {VELOCITY_SAT}");
        assert!(recorded
            .iter()
            .filter(|s| s["state"] == "approved")
            .all(|s| s["towers"][0]["acknowledged"] == true));
    }
}

/// CPU seconds each of `processes` spent since `before`.
fn cpu_of(processes: &[Option<u32>; 3], before: [f64; 3]) -> [f64; 3] {
    let mut spent = processes.map(cpu_secs);
    for (after, before) in spent.iter_mut().zip(before) {
        *after -= before;
    }
    spent
}

/// CPU seconds every `postgres` process on this machine has used so far: the server's, and
/// any other cluster's (none in the test environment). The co-signer's pool keeps its
/// backends open through the burst.
fn server_cpu_secs() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0.0 };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres")
        })
        .map(|pid| cpu_secs(Some(pid)))
        .sum()
}

/// CPU seconds (user and system, every thread) a process has used so far; 0 when it cannot
/// be read.
fn cpu_secs(pid: Option<u32>) -> f64 {
    let Some(stat) = pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok()) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces, so split after its ')'): utime
    // and stime are the 12th and 13th, in clock ticks.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |t| t.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks / clock_ticks_per_sec()
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 on Linux unless told), asked
/// once: every process's CPU is read around each burst.
fn clock_ticks_per_sec() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// SQLite, then PostgreSQL when `VIGIL_TEST_POSTGRES` names a server.
pub fn load() {
    run("SQLite", "");
    match vigil_testenv::process::postgres() {
        Some(url) => {
            let schema = vigil_testenv::process::unique_schema("bench_cosigner");
            run(
                "PostgreSQL",
                &format!("[store]\nkind = \"postgres\"\nurl = \"{url}\"\nschema = \"{schema}\"\n"),
            );
            if let Ok(mut c) = postgres::Client::connect(&url, postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"));
            }
        }
        None => println!("cosigner PostgreSQL: skipped (VIGIL_TEST_POSTGRES is not set)"),
    }
}

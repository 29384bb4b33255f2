//! Processes and a small wallet shared by the command-line tests.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use serde_json::Value;
use std::path::PathBuf;
use vigil_chain::bitcoin::key::{Keypair, Secp256k1};
use vigil_chain::bitcoin::{
    absolute, transaction::Version, Address, Amount, Network, OutPoint, ScriptBuf, Sequence, Transaction,
    TxIn, TxOut,
};
use vigil_chain::{BitcoindRpc, ChainBackend};
use vigil_policy::bitcoin::secp256k1::Keypair as PolicyKeypair;
use vigil_policy::bitcoin::Txid;
use vigil_policy::example::{auth_keypair, ExampleKeys, ExamplePolicy};
use vigil_policy::{CompiledPolicy, FundingInput, OneTimeKey, Policy, VaultKind};
use vigil_testenv::{ceremony, sign_psbt, Signer, Vault};
use vigil_tower::wire::{self, Approval, RegisterApproval, RegisterVault};

/// DELAY of the test policies.
pub const DELAY: u32 = 20;

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

/// Polls `f` until it gives a value (30 s at most, then fails saying `what`).
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Follower events as `+height:hash` / `-height:hash`, in order.
pub fn summary(events: &[vigil_chain::BlockEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            vigil_chain::BlockEvent::Connected { height, hash, .. } => format!("+{height}:{hash}"),
            vigil_chain::BlockEvent::Disconnected { height, hash } => format!("-{height}:{hash}"),
        })
        .collect()
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
    vigil_node_with(&[])
}

/// `vigil node` publishing every ZMQ topic on one address, returned with it.
pub fn vigil_node_with_zmq() -> (Process, String) {
    let zmq = format!("tcp://127.0.0.1:{}", free_port());
    let topics = ["hashblock", "hashtx", "rawblock", "rawtx", "sequence"];
    let flags: Vec<String> = topics.iter().map(|t| format!("--zmqpub{t}={zmq}")).collect();
    (vigil_node_with(&flags.iter().map(String::as_str).collect::<Vec<_>>()), zmq)
}

/// `vigil node` with extra flags.
pub fn vigil_node_with(flags: &[&str]) -> Process {
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
        .args(flags)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let rpc = BitcoindRpc::new(&format!("http://127.0.0.1:{port}"), "vigil", "secret");
    wait_ready(&rpc);
    Process { child, rpc, dir, port }
}

pub fn bitcoind() -> Option<Process> {
    bitcoind_with_p2p(None)
}

/// A real bitcoind; with `p2p`, listening for peers on that loopback port (electrs needs one).
pub fn bitcoind_with_p2p(p2p: Option<u16>) -> Option<Process> {
    let Some(exe) = std::env::var_os("BITCOIND_EXE") else {
        assert!(std::env::var("VIGIL_REQUIRE_BITCOIND").is_err(), "BITCOIND_EXE is not set");
        eprintln!("SKIPPED: BITCOIND_EXE is not set (scripts/test.sh builds bitcoind and sets it)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(exe)
        .args(["-regtest", "-rest", "-txindex", "-printtoconsole=0", "-rpcuser=vigil", "-rpcpassword=secret"])
        .arg(format!("-datadir={}", dir.path().display()))
        .arg(format!("-rpcport={port}"))
        .args(match p2p {
            // electrs 0.10 (the last one that links Debian 12's RocksDB) still reads the
            // `bip125-replaceable` field that Core 31 only gives with -deprecatedrpc.
            Some(p) => vec![
                "-listen=1".to_owned(),
                "-bind=127.0.0.1".to_owned(),
                format!("-port={p}"),
                "-deprecatedrpc=bip125".to_owned(),
            ],
            None => vec!["-listen=0".to_owned()],
        })
        .spawn()
        .unwrap();
    let rpc = BitcoindRpc::new(&format!("http://127.0.0.1:{port}"), "vigil", "secret");
    wait_ready(&rpc);
    Some(Process { child, rpc, dir, port })
}

/// An electrs process indexing `core` (started with a p2p port), killed on drop.
pub struct Electrs {
    child: Option<Child>,
    command: Vec<std::ffi::OsString>,
    /// Its Electrum address, `127.0.0.1:port`.
    pub address: String,
    _dir: tempfile::TempDir,
}

impl Electrs {
    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same address and index.
    pub fn start(&mut self) {
        let (exe, args) = self.command.split_first().unwrap();
        let verbose = std::env::var("VIGIL_ELECTRS_LOG").is_ok();
        let child = Command::new(exe)
            .args(args)
            .stdout(Stdio::null())
            .stderr(if verbose { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .unwrap();
        self.child = Some(child);
    }
}

impl Drop for Electrs {
    fn drop(&mut self) {
        self.kill();
    }
}

/// electrs from `ELECTRS_EXE` (scripts/build-electrs.sh builds it), once it has indexed
/// `core`'s tip; None, saying so, when it is not set.
pub fn electrs(core: &Process, p2p: u16) -> Option<Electrs> {
    let Some(exe) = std::env::var_os("ELECTRS_EXE") else {
        assert!(std::env::var("VIGIL_REQUIRE_ELECTRS").is_err(), "ELECTRS_EXE is not set");
        eprintln!("SKIPPED: ELECTRS_EXE is not set (scripts/test.sh builds electrs and sets it)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let cookie = dir.path().join("cookie");
    std::fs::write(&cookie, "vigil:secret").unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    // Its log only when asked for: VIGIL_ELECTRS_LOG=debug (an env_logger filter).
    let log = std::env::var("VIGIL_ELECTRS_LOG").unwrap_or_else(|_| "error".into());
    let mut command: Vec<std::ffi::OsString> = vec![exe];
    for arg in [
        "--network".to_owned(),
        "regtest".into(),
        "--skip-default-conf-files".into(),
        "--wait-duration-secs".into(),
        "1".into(),
        "--jsonrpc-timeout-secs".into(),
        "30".into(),
        "--db-dir".into(),
        dir.path().join("db").display().to_string(),
        "--daemon-dir".into(),
        core.dir.path().display().to_string(),
        "--cookie-file".into(),
        cookie.display().to_string(),
        "--daemon-rpc-addr".into(),
        format!("127.0.0.1:{}", core.port),
        "--daemon-p2p-addr".into(),
        format!("127.0.0.1:{p2p}"),
        "--electrum-rpc-addr".into(),
        address.clone(),
        "--monitoring-addr".into(),
        format!("127.0.0.1:{}", free_port()),
        "--log-filters".into(),
        log,
    ] {
        command.push(arg.into());
    }
    let mut electrs = Electrs { child: None, command, address, _dir: dir };
    electrs.start();
    wait_indexed(&electrs, core);
    Some(electrs)
}

/// Waits until electrs serves `core`'s tip.
pub fn wait_indexed(electrs: &Electrs, core: &Process) {
    let want = core.rpc.tip().unwrap().height;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let height = vigil_chain::electrum::ElectrumClient::connect(&electrs.address)
            .and_then(|mut c| c.subscribe_headers())
            .ok();
        if height == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "electrs never reached height {want} (at {height:?})");
        std::thread::sleep(Duration::from_millis(100));
    }
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
        vigil_policy::sign_key_path(&mut tx, 0, std::slice::from_ref(prev), &self.key).unwrap();
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
        vigil_policy::sign_key_path(&mut tx, 0, std::slice::from_ref(&prev), &self.key).unwrap();
        let txid = rpc.broadcast(&tx).unwrap();
        (OutPoint { txid, vout: 0 }, tx.output[0].clone())
    }
}

/// The owner's side: policy, keys, a wallet with coinbase coins on the node.
pub struct Client {
    pub example: ExamplePolicy,
    pub keys: ExampleKeys,
    pub compiled: CompiledPolicy,
    pub policy_id: String,
    pub policy_path: PathBuf,
    pub wallet: Wallet,
    next_coin: u32,
    next_index: u32,
    nonce: u64,
}

impl Client {
    pub fn new(dir: &std::path::Path, node: &Process, example: ExamplePolicy) -> Client {
        let text = example.to_toml();
        let policy_path = dir.join(format!("policy-{}.toml", example.seed.replace(' ', "-")));
        std::fs::write(&policy_path, &text).unwrap();
        let compiled = CompiledPolicy::new(Policy::from_toml(&text).unwrap()).unwrap();
        let wallet = Wallet::new();
        if node.rpc.block_hash(1).unwrap().is_none() {
            mine(&node.rpc, 300, &wallet.address());
        }
        Client {
            keys: example.keys(),
            example,
            compiled,
            policy_id: vigil_tower::policy_id(&text),
            policy_path,
            wallet,
            next_coin: 1,
            next_index: 0,
            nonce: 0,
        }
    }

    /// A vault through the whole ceremony; its funding is returned, not broadcast.
    pub fn create_vault(&mut self, rpc: &BitcoindRpc, amount: Amount, kind: VaultKind) -> Vault {
        let (index, coin_height) = (self.next_index, self.next_coin);
        self.next_index += 2;
        self.next_coin += 1;
        let script = self.compiled.intake_descriptor(index).unwrap().script_pubkey();
        let (outpoint, txout) = self.wallet.pay(rpc, coin_height, script, amount + Amount::from_sat(20_000));
        let coin = FundingInput { outpoint, txout, intake_index: index };
        ceremony(
            &self.compiled,
            &self.keys,
            1,
            &coin,
            index,
            index + 1,
            amount,
            kind,
            OneTimeKey::generate(),
            OneTimeKey::generate(),
        )
        .unwrap()
    }

    pub fn owner_auth(&self) -> PolicyKeypair {
        auth_keypair(&self.keys.owners[0])
    }

    pub fn post(
        &mut self,
        tower: &str,
        path: &str,
        body: &Value,
        key: &PolicyKeypair,
    ) -> Result<Value, (u16, String)> {
        let bytes = serde_json::to_vec(body).unwrap();
        post_raw(tower, path, &bytes, key)
    }

    pub fn register(&mut self, tower: &str, vault: &Vault) -> Result<Value, (u16, String)> {
        self.nonce += 1;
        let req = RegisterVault::new(&self.policy_id, self.nonce, &vault.plan, &vault.graph);
        let key = self.owner_auth();
        self.post(tower, "/v1/vaults", &serde_json::to_value(req).unwrap(), &key)
    }

    pub fn approve(&mut self, tower: &str, vault: &Vault, spend: Txid) -> Result<Value, (u16, String)> {
        self.nonce += 1;
        let approval = Approval {
            vault_outpoint: vault.outpoint().to_string(),
            unvault_txid: vault.graph.unvault().compute_txid().to_string(),
            spend_txid: spend.to_string(),
            policy_version: 1,
            expiry_height: 100_000,
            counter: self.nonce,
        };
        let mut signatures = vec![wire::sign_approval(&approval, &auth_keypair(&self.keys.cosigner))];
        if vault.plan.kind == VaultKind::Guarded {
            for g in 0..self.example.guardian_threshold as usize {
                signatures.push(wire::sign_approval(&approval, &auth_keypair(&self.keys.guardians[g])));
            }
        }
        let req =
            RegisterApproval { nonce: self.nonce, policy_id: self.policy_id.clone(), approval, signatures };
        let key = self.owner_auth();
        self.post(tower, "/v1/approvals", &serde_json::to_value(req).unwrap(), &key)
    }

    /// The owner's spend of U at DELAY, to the wallet.
    pub fn delayed_spend(&self, vault: &Vault) -> Transaction {
        self.delayed_spend_paying(vault, 1_000)
    }

    /// The owner's spend of the unvault after DELAY, paying `fee`.
    pub fn delayed_spend_paying(&self, vault: &Vault, fee: u64) -> Transaction {
        let input = vigil_policy::SpendInput {
            outpoint: vault.unvault_outpoint(),
            txout: vault.unvault_txout(),
            descriptor: vault.descriptors.unvault.clone(),
            sequence: vigil_policy::bitcoin::Sequence::from_height(self.example.delay as u16),
        };
        let value = input.txout.value - Amount::from_sat(fee);
        let out =
            vigil_policy::bitcoin::TxOut { value, script_pubkey: self.wallet.address().script_pubkey() };
        let mut psbt = vigil_policy::spend_psbt(&[input], vec![out]).unwrap();
        let mut signers = vec![Signer::Owner(0), Signer::Cosigner];
        if vault.plan.kind == VaultKind::Guarded {
            signers.extend((0..self.example.guardian_threshold as usize).map(Signer::Guardian));
        }
        sign_psbt(&self.keys, &mut psbt, &signers);
        vigil_policy::finalize(psbt).unwrap()
    }
}

pub fn post_raw(tower: &str, path: &str, bytes: &[u8], key: &PolicyKeypair) -> Result<Value, (u16, String)> {
    let (k, sig) = wire::sign_request(key, path, bytes);
    let result = ureq::post(&format!("{tower}{path}"))
        .set("x-vigil-key", &k)
        .set("x-vigil-signature", &sig)
        .set("content-type", "application/json")
        .timeout(Duration::from_secs(10))
        .send_bytes(bytes);
    match result {
        Ok(r) => Ok(r.into_json().unwrap()),
        Err(ureq::Error::Status(code, r)) => Err((code, r.into_string().unwrap_or_default())),
        Err(e) => Err((0, e.to_string())),
    }
}

pub fn spend_of(rpc: &BitcoindRpc, outpoint: OutPoint) -> Option<Transaction> {
    spend_of_since(rpc, outpoint, rpc.tip().unwrap().height.saturating_sub(60))
}

pub fn spend_of_since(rpc: &BitcoindRpc, outpoint: OutPoint, from: u32) -> Option<Transaction> {
    // The node knows every transaction; scan the mempool and the last blocks.
    let pool = rpc.mempool().unwrap();
    for txid in pool.txids {
        let tx = rpc.transaction(&txid).unwrap().unwrap();
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

pub fn confirmations(rpc: &BitcoindRpc, txid: &Txid) -> u64 {
    rpc.call("getrawtransaction", json!([txid.to_string(), true]))
        .ok()
        .and_then(|v| v.get("confirmations").and_then(Value::as_u64))
        .unwrap_or(0)
}

pub fn example(seed: &str) -> ExamplePolicy {
    ExamplePolicy {
        seed: seed.into(),
        delay: DELAY,
        recovery: 40,
        deep_vault: 60,
        towers: 1,
        ..ExamplePolicy::default()
    }
}

/// A `vigil tower` process that can be killed with SIGKILL and restarted.
pub struct TowerProcess {
    child: Option<Child>,
    config: PathBuf,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl TowerProcess {
    pub fn new(node: &Process, policies: &[PathBuf], seed: usize, webhook: Option<&str>) -> TowerProcess {
        Self::with_store(node, policies, seed, webhook, "")
    }

    /// With extra configuration (a `[store]` section).
    pub fn with_store(
        node: &Process,
        policies: &[PathBuf],
        seed: usize,
        webhook: Option<&str>,
        store: &str,
    ) -> TowerProcess {
        Self::configured(policies, seed, webhook, "poll_interval_ms = 50\n", &rpc_of(node), store)
    }

    /// Any configuration: `top` goes before the first table, `chain` is the `[chain]` table's
    /// body, `rest` comes last.
    pub fn configured(
        policies: &[PathBuf],
        seed: usize,
        webhook: Option<&str>,
        top: &str,
        chain: &str,
        rest: &str,
    ) -> TowerProcess {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let secret = vigil_policy::example::tower_secret("tower test", seed);
        let clients: String = policies.iter().map(|p| format!("[[clients]]\npolicy = {:?}\n", p)).collect();
        let webhooks = webhook.map(|w| format!("[alarms]\nwebhooks = [{w:?}]\n")).unwrap_or_default();
        let config = format!(
            "listen = \"127.0.0.1:{port}\"\ndatadir = {:?}\nsecret_key = \"{}\"\noutage_alarm_secs = 2\n{top}\
             [chain]\n{chain}{clients}{webhooks}{rest}",
            dir.path().join("data"),
            wire::hex(&secret.secret_bytes()),
        );
        let path = dir.path().join("tower.toml");
        std::fs::write(&path, config).unwrap();
        let mut tower =
            TowerProcess { child: None, config: path, url: format!("http://127.0.0.1:{port}"), _dir: dir };
        tower.start();
        tower
    }

    pub fn start(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["tower", "--config", self.config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(if std::env::var("VIGIL_TOWER_LOGS").is_ok() { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while ureq::get(&format!("{}/metrics", self.url)).call().is_err() {
            assert!(Instant::now() < deadline, "tower never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no cleanup, no flush, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn metric(&self, name: &str) -> Option<u64> {
        let text = ureq::get(&format!("{}/metrics", self.url)).call().ok()?.into_string().ok()?;
        text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for TowerProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The `[chain]` body for a node's RPC.
pub fn rpc_of(node: &Process) -> String {
    format!("url = \"http://127.0.0.1:{}\"\nuser = \"vigil\"\npassword = \"secret\"\n", node.port)
}

//! Real processes on loopback: `vigil node`, a real `bitcoind`, `electrs`, `vigil tower`, and
//! the PostgreSQL the test script starts. Each is stopped (or SIGKILLed) when dropped.
//!
//! The external programs come from the environment, as `scripts/test.sh` sets it:
//! `BITCOIND_EXE`, `ELECTRS_EXE`, `VIGIL_TEST_POSTGRES`. Without one, a test that needs it
//! prints `SKIPPED: ...` and passes, unless `VIGIL_REQUIRE_*` says it must run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use vigil_chain::{BitcoindRpc, ChainBackend};
use vigil_policy::bitcoin::hex::DisplayHex;
use vigil_policy::bitcoin::key::XOnlyPublicKey;
use vigil_policy::bitcoin::secp256k1::{Keypair, Secp256k1, SecretKey};

/// The `vigil` binary the tests run: `VIGIL_EXE`, or the one cargo built beside the running
/// test or benchmark (`cargo test --workspace` builds it).
pub fn vigil_exe() -> PathBuf {
    if let Some(exe) = std::env::var_os("VIGIL_EXE") {
        return exe.into();
    }
    let me = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test> or target/<profile>/vigil-bench -> target/<profile>/vigil
    let beside = |dir: Option<&Path>| dir.map(|d| d.join("vigil")).filter(|p| p.exists());
    let exe = beside(me.parent())
        .or_else(|| beside(me.parent().and_then(Path::parent)))
        .unwrap_or_else(|| me.parent().and_then(Path::parent).expect("a target directory").join("vigil"));
    assert!(
        exe.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (or `cargo build --bin vigil` first)",
        exe.display()
    );
    exe
}

/// A free loopback port.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// Ports [`free_ports`] handed out in this test process. Tests run on parallel threads: the
/// kernel may give a port just released to another test, whose process could then bind it
/// first; the one that loses exits, and the winner answers in its place.
static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// `N` distinct free ports, none handed out before in this process (each held until all are
/// found, so none comes twice).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < N {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        held.push(listener);
        if handed.insert(port) {
            ports.push(port);
        }
    }
    ports.try_into().expect("N ports")
}

/// Whether a test needing `program` (named by `var`) should run; when it should not, says so.
fn available(var: &str, require: &str, program: &str) -> Option<std::ffi::OsString> {
    match std::env::var_os(var) {
        Some(v) => Some(v),
        None => {
            assert!(std::env::var(require).is_err(), "{var} is not set");
            eprintln!("SKIPPED: {var} is not set (scripts/test.sh provides {program} and sets it)");
            None
        }
    }
}

/// A node process (`vigil node` or `bitcoind`) with its RPC client, stopped when dropped.
pub struct Node {
    /// The process.
    pub child: Child,
    /// Its RPC.
    pub rpc: BitcoindRpc,
    /// Its data directory.
    pub dir: tempfile::TempDir,
    /// Its RPC port.
    pub port: u16,
    /// The loopback port it listens for peers on, if it does.
    pub p2p: Option<u16>,
}

impl Drop for Node {
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

impl Node {
    /// The `[chain]` table's body of a tower following this node's RPC.
    pub fn tower_chain_config(&self) -> String {
        format!("url = \"http://127.0.0.1:{}\"\nuser = \"vigil\"\npassword = \"secret\"\n", self.port)
    }
}

/// Starts a node on fresh ports: `spawn(data directory, RPC port, p2p port)`. A port another
/// process took between our finding it free and the node binding it makes the node exit:
/// then again, on other ports.
fn start_node(with_p2p: bool, spawn: &dyn Fn(&Path, u16, Option<u16>) -> Child) -> Node {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let (port, p2p) = (free_port(), with_p2p.then(free_port));
        let mut child = spawn(dir.path(), port, p2p);
        let rpc = BitcoindRpc::new(&format!("http://127.0.0.1:{port}"), "vigil", "secret");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if rpc.call("getblockcount", json!([])).is_ok() {
                return Node { child, rpc, dir, port, p2p };
            }
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            assert!(Instant::now() < deadline, "the node never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("the node did not start in five attempts");
}

/// Waits until a node answers RPC (60 s at most).
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

/// `vigil node` on a fresh chain.
pub fn vigil_node() -> Node {
    vigil_node_with(&[])
}

/// `vigil node` publishing every ZMQ topic on one address, returned with it.
pub fn vigil_node_with_zmq() -> (Node, String) {
    let zmq = format!("tcp://127.0.0.1:{}", free_port());
    let topics = ["hashblock", "hashtx", "rawblock", "rawtx", "sequence"];
    let flags: Vec<String> = topics.iter().map(|t| format!("--zmqpub{t}={zmq}")).collect();
    (vigil_node_with(&flags.iter().map(String::as_str).collect::<Vec<_>>()), zmq)
}

/// `vigil node` with extra flags (user `vigil`, password `secret`).
pub fn vigil_node_with(flags: &[&str]) -> Node {
    start_node(false, &|dir, port, _| {
        Command::new(vigil_exe())
            .args(["node", "--datadir", dir.join("chain").to_str().unwrap(), "--rpcport", &port.to_string()])
            .args(["--rpcuser", "vigil", "--rpcpassword", "secret"])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(logs("VIGIL_NODE_LOGS"))
            .spawn()
            .unwrap()
    })
}

fn logs(var: &str) -> Stdio {
    if std::env::var_os(var).is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

/// A real bitcoind (`BITCOIND_EXE`), or `None` (skipped) when it is not available.
pub fn bitcoind() -> Option<Node> {
    bitcoind_with_p2p(false)
}

/// A real bitcoind; with `p2p`, listening for peers on a loopback port (electrs needs one).
pub fn bitcoind_with_p2p(p2p: bool) -> Option<Node> {
    bitcoind_configured(p2p, true)
}

/// A real bitcoind as most people run it: without a transaction index (`getrawtransaction`
/// then finds only mempool transactions).
pub fn bitcoind_without_txindex() -> Option<Node> {
    bitcoind_configured(false, false)
}

fn bitcoind_configured(p2p: bool, txindex: bool) -> Option<Node> {
    let exe = available("BITCOIND_EXE", "VIGIL_REQUIRE_BITCOIND", "bitcoind")?;
    Some(start_node(p2p, &|dir, port, p2p| {
        Command::new(&exe)
            .args([
                "-regtest",
                "-rest",
                if txindex { "-txindex=1" } else { "-txindex=0" },
                "-printtoconsole=0",
                "-rpcuser=vigil",
                "-rpcpassword=secret",
            ])
            .arg(format!("-datadir={}", dir.display()))
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
            .unwrap()
    }))
}

/// An electrs process indexing a bitcoind, killed on drop.
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
        let child = Command::new(exe)
            .args(args)
            .stdout(Stdio::null())
            .stderr(logs("VIGIL_ELECTRS_LOG"))
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

/// electrs (`ELECTRS_EXE`) once it has indexed `core`'s tip (started with a p2p port), or
/// `None` (skipped) when it is not available.
pub fn electrs(core: &Node) -> Option<Electrs> {
    let p2p = core.p2p.expect("electrs needs a node that listens for peers");
    let exe = available("ELECTRS_EXE", "VIGIL_REQUIRE_ELECTRS", "electrs")?;
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

/// A real bitcoind with electrs indexing it, or `None` (skipped) when either is unavailable.
pub fn bitcoind_with_electrs() -> Option<(Node, Electrs)> {
    let core = bitcoind_with_p2p(true)?;
    // electrs waits for the node to leave initial block download: give it recent blocks.
    let to = crate::wallet::Wallet::new().address();
    crate::wallet::mine(&core.rpc, 101, &to);
    let electrs = electrs(&core)?;
    Some((core, electrs))
}

/// Waits until electrs serves `core`'s tip, its index included: it answers for headers
/// before its index is ready, and refuses everything else until then ("unavailable index").
pub fn wait_indexed(electrs: &Electrs, core: &Node) {
    let want = core.rpc.tip().unwrap().height;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let height = vigil_chain::electrum::ElectrumClient::connect(&electrs.address)
            .and_then(|mut c| {
                let height = c.subscribe_headers()?;
                c.call("server.ping", serde_json::json!([]))?;
                Ok(height)
            })
            .ok();
        if height == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "electrs never reached height {want} (at {height:?})");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The PostgreSQL the test script started (`VIGIL_TEST_POSTGRES`, a libpq connection
/// string), or `None` (skipped).
pub fn postgres() -> Option<String> {
    available("VIGIL_TEST_POSTGRES", "VIGIL_REQUIRE_POSTGRES", "PostgreSQL")?.into_string().ok()
}

/// A PostgreSQL schema name no run has used: the process id alone repeats across runs on
/// one server (a fresh container starts its processes at the same ids), and a schema left by
/// an earlier run carries its state, its request nonces among them.
pub fn unique_schema(label: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{label}_{}_{nanos}", std::process::id())
}

/// Where a tower's API is and the key requests to it are bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TowerApi {
    /// `http://127.0.0.1:port`.
    pub url: String,
    /// The tower's public key.
    pub key: XOnlyPublicKey,
}

/// Writes a key file only its owner can read.
pub fn write_key_file(path: &Path, secret: &SecretKey) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, secret.secret_bytes().to_lower_hex_string()).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A `vigil tower` process that can be killed with SIGKILL and restarted.
pub struct TowerProcess {
    child: Option<Child>,
    /// Its configuration file.
    pub config: PathBuf,
    /// Its API.
    pub api: TowerApi,
    /// Its identity (what policies name it by).
    pub public_key: vigil_policy::bitcoin::secp256k1::PublicKey,
    /// Its directory (configuration, key files, data).
    pub dir: tempfile::TempDir,
}

/// How to configure a tower, beyond its chain and clients.
#[derive(Debug, Clone, Default)]
pub struct TowerOptions<'a> {
    /// Alarm webhooks.
    pub webhooks: &'a [&'a str],
    /// Lines before the first table (`poll_interval_ms = 50` when empty).
    pub top: &'a str,
    /// The `[chain]` body (the node's RPC when empty).
    pub chain: &'a str,
    /// Tables after the rest (`[store]`, `[fee_wallet]`; `{dir}` is replaced by the tower's
    /// directory, where key files go).
    pub rest: &'a str,
    /// A fee-wallet secret, written to `{dir}/fee.key`.
    pub fee_key: Option<[u8; 32]>,
    /// The tower's identity key (`tower_secret("tower test", seed)` when none).
    pub identity: Option<SecretKey>,
    /// The port it listens on (a free one when none).
    pub port: Option<u16>,
}

impl TowerProcess {
    /// A tower following `node`, serving `policies`, with identity `seed`.
    pub fn new(node: &Node, policies: &[PathBuf], seed: usize, webhook: Option<&str>) -> TowerProcess {
        let hooks: Vec<&str> = webhook.into_iter().collect();
        Self::configured(node, policies, seed, TowerOptions { webhooks: &hooks, ..TowerOptions::default() })
    }

    /// With a `[store]` (or other trailing) section.
    pub fn with_store(node: &Node, policies: &[PathBuf], seed: usize, store: &str) -> TowerProcess {
        Self::configured(node, policies, seed, TowerOptions { rest: store, ..TowerOptions::default() })
    }

    /// With a fee wallet whose key is `secret` (`fee_wallet` names `{dir}/fee.key`).
    pub fn with_fee_key(
        node: &Node,
        policies: &[PathBuf],
        seed: usize,
        fee_wallet: &str,
        secret: &[u8; 32],
    ) -> TowerProcess {
        let options = TowerOptions { rest: fee_wallet, fee_key: Some(*secret), ..TowerOptions::default() };
        Self::configured(node, policies, seed, options)
    }

    /// Any configuration.
    pub fn configured(
        node: &Node,
        policies: &[PathBuf],
        seed: usize,
        options: TowerOptions<'_>,
    ) -> TowerProcess {
        let dir = tempfile::tempdir().unwrap();
        let port = options.port.unwrap_or_else(free_port);
        let secret =
            options.identity.unwrap_or_else(|| vigil_policy::example::tower_secret("tower test", seed));
        write_key_file(&dir.path().join("tower.key"), &secret);
        if let Some(fee) = options.fee_key {
            write_key_file(&dir.path().join("fee.key"), &SecretKey::from_slice(&fee).unwrap());
        }
        let clients: String = policies.iter().map(|p| format!("[[clients]]\npolicy = {p:?}\n")).collect();
        let webhooks = if options.webhooks.is_empty() {
            String::new()
        } else {
            format!("[alarms]\nwebhooks = {:?}\n", options.webhooks)
        };
        let top = if options.top.is_empty() { "poll_interval_ms = 50\n" } else { options.top };
        let chain =
            if options.chain.is_empty() { node.tower_chain_config() } else { options.chain.to_owned() };
        let rest = options.rest.replace("{dir}", &dir.path().display().to_string());
        let config = format!(
            "listen = \"127.0.0.1:{port}\"\ndatadir = {:?}\nkey_file = {:?}\noutage_alarm_secs = 2\n{top}\
             [chain]\n{chain}{clients}{webhooks}{rest}",
            dir.path().join("data"),
            dir.path().join("tower.key"),
        );
        let path = dir.path().join("tower.toml");
        std::fs::write(&path, config).unwrap();
        let key = Keypair::from_secret_key(&Secp256k1::new(), &secret).x_only_public_key().0;
        let mut tower = TowerProcess {
            child: None,
            config: path,
            api: TowerApi { url: format!("http://127.0.0.1:{port}"), key },
            public_key: secret.public_key(&Secp256k1::new()),
            dir,
        };
        tower.start();
        tower
    }

    /// Starts it (again); returns once it serves.
    pub fn start(&mut self) {
        let child = Command::new(vigil_exe())
            .args(["tower", "--config", self.config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(logs("VIGIL_TOWER_LOGS"))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while ureq::get(&format!("{}/metrics", self.api.url)).call().is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("the tower exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "tower never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How it exited, if it did by itself within `limit` (then it is no longer running).
    pub fn exit_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGKILL: no cleanup, no flush, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGSTOP (`stop = true`) or SIGCONT: a hung tower, whose kernel still takes connections
    /// and requests that nobody answers.
    pub fn freeze(&self, stop: bool) {
        let pid = self.pid().expect("running").to_string();
        let signal = if stop { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// A single-use enrollment token (`vigil tower token`, beside the running tower).
    pub fn token(&self) -> String {
        let out = Command::new(vigil_exe())
            .args(["tower", "token", "--config", self.config.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "tower token: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// A metric's value, if the tower answers.
    pub fn metric(&self, name: &str) -> Option<u64> {
        vigil_drill::world::metric(&self.api.url, name)
    }
}

impl Drop for TowerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

//! The system under attack, as the real processes a provider and a family run, on loopback:
//! `vigil node` (the embedded chain), a co-signer, three towers, an alarm sink standing in
//! for the guardians' phones, and a payer living on the chain's coinbases. Each process is
//! the running `vigil` binary itself, with a configuration file in the drill's directory;
//! each is SIGKILLed when dropped.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vigil_chain::{BitcoindRpc, ChainBackend};
use vigil_policy::bitcoin::hex::DisplayHex;
use vigil_policy::bitcoin::key::{Keypair, Secp256k1};
use vigil_policy::bitcoin::secp256k1::{rand, SecretKey};
use vigil_policy::bitcoin::transaction::Version;
use vigil_policy::bitcoin::{Address, Amount, Network, OutPoint, ScriptBuf, Sequence, TxOut};
use vigil_policy::{sign_key_path, unsigned_tx};

use crate::DrillError;

/// Fails with `what` and `why`.
pub(crate) fn step<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> DrillError + '_ {
    move |e| DrillError::Step { what: what.to_owned(), why: e.to_string() }
}

/// A free loopback port.
fn free_port() -> Result<u16, DrillError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Polls `f` every 50 ms until it gives a value; fails after `limit` saying `what`.
pub(crate) fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> Result<Option<T>, DrillError>,
) -> Result<T, DrillError> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(DrillError::Step { what: what.to_owned(), why: format!("not within {limit:?}") });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A service process, SIGKILLed when dropped.
pub struct Service {
    /// What it is (`co-signer`, `tower-1`): its log file's name.
    pub name: String,
    /// `http://127.0.0.1:port`.
    pub url: String,
    /// Where its `/metrics` is read: the co-signer serves them apart from its API.
    pub metrics_url: String,
    /// Its configuration file.
    pub config: PathBuf,
    child: Option<Child>,
    exe: PathBuf,
    subcommand: &'static str,
    logs: PathBuf,
}

impl Service {
    /// Starts it (again) and waits until it serves its metrics.
    pub fn start(&mut self) -> Result<(), DrillError> {
        let log =
            File::options().create(true).append(true).open(self.logs.join(format!("{}.log", self.name)))?;
        let child = Command::new(&self.exe)
            .args([self.subcommand, "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let name = self.name.clone();
        wait_for(&format!("{name} to start"), Duration::from_secs(30), || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(DrillError::Step {
                    what: format!("starting {name}"),
                    why: format!("it exited: {status}"),
                });
            }
            Ok(ureq::get(&format!("{}/metrics", self.metrics_url)).call().is_ok().then_some(()))
        })
    }

    /// SIGKILL: no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it runs.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// A single-use enrollment token from its `token` subcommand.
    pub fn token(&self) -> Result<String, DrillError> {
        let out = Command::new(&self.exe)
            .args([self.subcommand, "token", "--config"])
            .arg(&self.config)
            .output()?;
        if !out.status.success() {
            return Err(DrillError::Step {
                what: format!("a token from {}", self.name),
                why: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// A metric's value, if it answers.
    pub fn metric(&self, name: &str) -> Option<u64> {
        metric(&self.metrics_url, name)
    }
}

/// Metric `name` of the service at `url` (its `/metrics`), if it answers.
pub fn metric(url: &str, name: &str) -> Option<u64> {
    let text = ureq::get(&format!("{url}/metrics")).call().ok()?.into_string().ok()?;
    text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.trim().parse().ok())
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tower: its process and the key policies name it by.
pub struct Tower {
    /// The process.
    pub service: Service,
    /// Its identity, as a policy names it.
    pub public_key: String,
}

/// An alarm as the sink received it.
#[derive(Debug, Clone)]
pub struct Alarm {
    /// When it arrived.
    pub at: Instant,
    /// Its body (`kind`, and `client` from the co-signer or `vault` from a tower).
    pub body: Value,
}

/// What the guardians' phones received: every alarm webhook body, timed.
#[derive(Clone, Default)]
pub struct AlarmSink {
    received: Arc<Mutex<Vec<Alarm>>>,
    /// Its URL.
    pub url: String,
}

/// Serves alarm webhooks on `listener`: each POST's JSON body goes to `on_alarm`, and is
/// answered 200 (a body that is not JSON is answered and dropped).
pub fn serve_webhook(listener: std::net::TcpListener, on_alarm: impl Fn(Value) + Send + 'static) {
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            // A sender that stalls does not hold up the others for long.
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reader = BufReader::new(stream);
            let mut len = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len.min(1 << 20)];
            let _ = reader.read_exact(&mut body);
            if let Ok(body) = serde_json::from_slice(&body) {
                on_alarm(body);
            }
            let _ = reader
                .into_inner()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
}

impl AlarmSink {
    fn start() -> Result<AlarmSink, DrillError> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let sink =
            AlarmSink { received: Arc::default(), url: format!("http://{}/alarm", listener.local_addr()?) };
        let store = sink.received.clone();
        serve_webhook(listener, move |body| {
            store.lock().expect("sink").push(Alarm { at: Instant::now(), body })
        });
        Ok(sink)
    }

    /// Every alarm so far.
    pub fn all(&self) -> Vec<Alarm> {
        self.received.lock().expect("sink").clone()
    }

    /// The first alarm of `kind` since `since` that `matches`, waiting up to `limit`.
    pub fn first(
        &self,
        kind: &str,
        since: Instant,
        limit: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Option<Alarm> {
        wait_for("", limit, || {
            Ok(self.all().into_iter().find(|a| a.at >= since && a.body["kind"] == kind && matches(&a.body)))
        })
        .ok()
    }
}

/// A one-key taproot wallet paid by the coinbases the drill mines (regtest only).
pub struct Payer {
    key: Keypair,
    next_coinbase: u32,
}

impl Payer {
    /// Its address.
    pub fn address(&self) -> Address {
        Address::p2tr(&Secp256k1::new(), self.key.x_only_public_key().0, None, Network::Regtest)
    }

    /// Pays `amount` to `script` from its next mature coinbase, change back; returns the
    /// payment's outpoint (unconfirmed).
    pub fn pay(
        &mut self,
        rpc: &BitcoindRpc,
        script: ScriptBuf,
        amount: Amount,
    ) -> Result<OutPoint, DrillError> {
        let chain = step("paying from the payer's coinbase");
        let hash = rpc.block_hash(self.next_coinbase).map_err(chain)?.ok_or(DrillError::Step {
            what: "paying".into(),
            why: format!("no block {}", self.next_coinbase),
        })?;
        self.next_coinbase += 1;
        let coinbase = rpc.block(&hash).map_err(step("reading a coinbase"))?.txdata[0].clone();
        let prev = coinbase.output[0].clone();
        let change = TxOut {
            value: prev.value - amount - Amount::from_sat(2_000),
            script_pubkey: self.address().script_pubkey(),
        };
        let coin = OutPoint { txid: coinbase.compute_txid(), vout: 0 };
        let mut tx = unsigned_tx(
            Version::TWO,
            [(coin, Sequence::ENABLE_RBF_NO_LOCKTIME)],
            vec![TxOut { value: amount, script_pubkey: script }, change],
        );
        sign_key_path(&mut tx, 0, &[prev], &self.key).map_err(step("signing a payment"))?;
        let txid = rpc.broadcast(&tx).map_err(step("broadcasting a payment"))?;
        Ok(OutPoint { txid, vout: 0 })
    }
}

/// A fresh key the drill holds (an attacker's or a merchant's address).
pub fn fresh_address() -> Address {
    let key = Keypair::from_secret_key(&Secp256k1::new(), &SecretKey::new(&mut rand::thread_rng()));
    Address::p2tr(&Secp256k1::new(), key.x_only_public_key().0, None, Network::Regtest)
}

/// The processes and the chain.
pub struct World {
    /// The `vigil` binary every process runs.
    pub exe: PathBuf,
    /// The drill's own data directory.
    pub dir: PathBuf,
    /// The chain's RPC.
    pub rpc: BitcoindRpc,
    /// Its RPC URL (the wallets read the chain there).
    pub rpc_url: String,
    /// Its RPC cookie file.
    pub rpc_cookie: PathBuf,
    /// The co-signer.
    pub cosigner: Service,
    /// The towers.
    pub towers: Vec<Tower>,
    /// The guardians' alarm receiver.
    pub alarms: AlarmSink,
    /// Funds the households.
    pub payer: Payer,
    node: Child,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.rpc.call("stop", json!([]));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.node.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.node.kill();
    }
}

/// Writes a secret (or a file naming one) only its owner can read.
pub(crate) fn write_secret(path: &Path, text: &str) -> Result<(), DrillError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

impl World {
    /// Starts the chain, the co-signer and `towers` towers in `dir` (made, must be empty), and
    /// mines the payer's coinbases.
    pub fn start(exe: &Path, dir: &Path, towers: usize) -> Result<World, DrillError> {
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let alarms = AlarmSink::start()?;
        let port = free_port()?;
        let node = Command::new(exe)
            .args(["node", "--datadir"])
            .arg(dir.join("chain"))
            .args(["--rpcport", &port.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(File::create(logs.join("node.log"))?)
            .spawn()?;
        let rpc_url = format!("http://127.0.0.1:{port}");
        // Without a user and password the node writes a cookie: nothing secret on a command line.
        let rpc_cookie = dir.join("chain").join(".cookie");
        wait_for("the chain to start", Duration::from_secs(60), || Ok(rpc_cookie.exists().then_some(())))?;
        let rpc = BitcoindRpc::with_cookie(&rpc_url, &rpc_cookie);
        wait_for("the chain to answer", Duration::from_secs(60), || Ok(rpc.tip().ok()))?;
        let chain = format!("[chain]\nurl = {rpc_url:?}\ncookie_file = {rpc_cookie:?}\n");
        let hooks = format!("[alarms]\nwebhooks = [{:?}]\n", alarms.url);

        let service = |name: &str, subcommand, config: PathBuf, port: u16, metrics_port: u16| Service {
            name: name.to_owned(),
            url: format!("http://127.0.0.1:{port}"),
            metrics_url: format!("http://127.0.0.1:{metrics_port}"),
            config,
            child: None,
            exe: exe.to_owned(),
            subcommand,
            logs: logs.clone(),
        };
        let co_dir = dir.join("cosigner");
        std::fs::create_dir_all(&co_dir)?;
        let passphrase = SecretKey::new(&mut rand::thread_rng()).secret_bytes().to_lower_hex_string();
        write_secret(&co_dir.join("passphrase"), &format!("{passphrase}\n"))?;
        // Both held until both are known, so they differ.
        let (co_listener, metrics_listener) =
            (std::net::TcpListener::bind("127.0.0.1:0")?, std::net::TcpListener::bind("127.0.0.1:0")?);
        let (co_port, metrics_port) =
            (co_listener.local_addr()?.port(), metrics_listener.local_addr()?.port());
        drop((co_listener, metrics_listener));
        write_secret(
            &co_dir.join("cosigner.toml"),
            &format!(
                "listen = \"127.0.0.1:{co_port}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\ndatadir = {:?}\nkey_file = {:?}\npassphrase_file = {:?}\n\
                 network = \"regtest\"\n{hooks}{chain}",
                co_dir.join("data"),
                co_dir.join("cosigner.key"),
                co_dir.join("passphrase"),
            ),
        )?;
        let mut cosigner =
            service("co-signer", "cosigner", co_dir.join("cosigner.toml"), co_port, metrics_port);
        let init = Command::new(exe).args(["cosigner", "init", "--config"]).arg(&cosigner.config).output()?;
        if !init.status.success() {
            return Err(DrillError::Step {
                what: "vigil cosigner init".into(),
                why: String::from_utf8_lossy(&init.stderr).into_owned(),
            });
        }
        cosigner.start()?;

        let mut all = Vec::new();
        for i in 1..=towers {
            let t_dir = dir.join(format!("tower-{i}"));
            std::fs::create_dir_all(&t_dir)?;
            let secret = SecretKey::new(&mut rand::thread_rng());
            write_secret(&t_dir.join("tower.key"), &secret.secret_bytes().to_lower_hex_string())?;
            let t_port = free_port()?;
            write_secret(
                &t_dir.join("tower.toml"),
                &format!(
                    "listen = \"127.0.0.1:{t_port}\"\ndatadir = {:?}\nkey_file = {:?}\npoll_interval_ms = 100\n\
                     {chain}{hooks}",
                    t_dir.join("data"),
                    t_dir.join("tower.key"),
                ),
            )?;
            let mut tower = service(&format!("tower-{i}"), "tower", t_dir.join("tower.toml"), t_port, t_port);
            tower.start()?;
            all.push(Tower { service: tower, public_key: secret.public_key(&Secp256k1::new()).to_string() });
        }

        let key = Keypair::from_secret_key(&Secp256k1::new(), &SecretKey::new(&mut rand::thread_rng()));
        let payer = Payer { key, next_coinbase: 1 };
        let world = World {
            exe: exe.to_owned(),
            dir: dir.to_owned(),
            rpc,
            rpc_url,
            rpc_cookie,
            cosigner,
            towers: all,
            alarms,
            payer,
            node,
        };
        // Mature coinbases for the payer (regtest halves every 150 blocks: these pay 50 BTC).
        world.mine_to(120, &world.payer.address())?;
        Ok(world)
    }

    /// The chain's height.
    pub fn height(&self) -> Result<u32, DrillError> {
        Ok(self.rpc.tip().map_err(step("reading the chain's tip"))?.height)
    }

    /// Mines `n` blocks and waits until every running tower has them (time passing).
    pub fn mine(&self, n: u32) -> Result<u32, DrillError> {
        self.mine_to(n, &self.payer.address())
    }

    fn mine_to(&self, n: u32, to: &Address) -> Result<u32, DrillError> {
        if n > 0 {
            self.rpc.call("generatetoaddress", json!([n, to.to_string()])).map_err(step("mining"))?;
        }
        let height = self.height()?;
        for tower in self.towers.iter().filter(|t| t.service.running()) {
            wait_for(
                &format!("{} to reach block {height}", tower.service.name),
                Duration::from_secs(60),
                || {
                    Ok(tower
                        .service
                        .metric("vigil_tower_tip_height")
                        .is_some_and(|h| h >= u64::from(height))
                        .then_some(()))
                },
            )?;
        }
        Ok(height)
    }

    /// Sats paid to `script` by transactions confirmed from `from` on, or in the mempool.
    pub fn received(&self, script: &ScriptBuf, from: u32) -> Result<u64, DrillError> {
        let mut txs = Vec::new();
        for h in from..=self.height()? {
            let hash = self.rpc.block_hash(h).map_err(step("reading the chain"))?;
            if let Some(hash) = hash {
                txs.extend(self.rpc.block(&hash).map_err(step("reading a block"))?.txdata);
            }
        }
        for txid in self.rpc.mempool().map_err(step("reading the mempool"))?.txids {
            txs.extend(self.rpc.transaction(&txid).map_err(step("reading a transaction"))?);
        }
        Ok(txs
            .iter()
            .flat_map(|t| &t.output)
            .filter(|o| o.script_pubkey == *script)
            .map(|o| o.value.to_sat())
            .sum())
    }
}

//! A `vigil cosigner` process (killable with SIGKILL, restartable on the same store) and
//! signed requests to it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;
use vigil_cosigner::wire::Signed;
use vigil_policy::bitcoin::key::XOnlyPublicKey;
use vigil_policy::bitcoin::secp256k1::Keypair;
use vigil_tower::wire::sign_request;

use crate::household::Refused;
use crate::process::{free_ports, vigil_exe, Node};

/// A co-signer process.
pub struct CosignerProcess {
    child: Option<Child>,
    /// `http://127.0.0.1:port`.
    pub url: String,
    /// Where its operator reads `/metrics` (`metrics_listen`): never the API's address.
    pub metrics_url: String,
    /// Its configuration file.
    pub config: PathBuf,
    /// Its directory (configuration, sealed key, passphrase, data).
    pub dir: tempfile::TempDir,
}

/// Where a client reaches its co-signer: the URL, the client's id, and the co-signer's auth
/// key for that client (requests are bound to it).
#[derive(Debug, Clone)]
pub struct CosignerApi {
    /// `http://127.0.0.1:port`.
    pub url: String,
    /// The client's id (its policy's sha256).
    pub client: String,
    /// The co-signer's auth key for this client.
    pub key: XOnlyPublicKey,
}

impl CosignerProcess {
    /// A co-signer following `node`, its key created with `vigil cosigner init`; `extra` is
    /// added to its configuration before `[chain]` (top-level keys, `[alarms]`, `[store]`).
    pub fn new(node: &Node, extra: &str) -> CosignerProcess {
        let dir = tempfile::tempdir().unwrap();
        let passphrase = dir.path().join("passphrase");
        std::fs::write(&passphrase, "correct horse battery staple\n").unwrap();
        let path = dir.path().join("cosigner.toml");
        let mut process = CosignerProcess {
            child: None,
            url: String::new(),
            metrics_url: String::new(),
            config: path.clone(),
            dir,
        };
        // A port found free may be taken by another test before the co-signer binds it: it
        // then exits, and is started again on other ports.
        for attempt in 1.. {
            let [port, metrics_port] = free_ports();
            let dir = process.dir.path();
            let config = format!(
                "listen = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n\
                 datadir = {:?}\nkey_file = {:?}\npassphrase_file = {:?}\n\
                 network = \"regtest\"\n{extra}\n[chain]\n{}",
                dir.join("data"),
                dir.join("cosigner.key"),
                passphrase,
                node.tower_chain_config(),
            );
            std::fs::write(&path, config).unwrap();
            if attempt == 1 {
                let init = Command::new(vigil_exe())
                    .args(["cosigner", "init", "--config", path.to_str().unwrap()])
                    .output()
                    .unwrap();
                assert!(init.status.success(), "cosigner init: {}", String::from_utf8_lossy(&init.stderr));
            }
            process.url = format!("http://127.0.0.1:{port}");
            process.metrics_url = format!("http://127.0.0.1:{metrics_port}");
            match process.launch() {
                Ok(()) => break,
                Err(e) if attempt < 5 => {
                    eprintln!("co-signer start, attempt {attempt}: {e}; again on other ports")
                }
                Err(e) => panic!("{e}"),
            }
        }
        process
    }

    /// A single-use enrollment token (`vigil cosigner token`).
    pub fn token(&self) -> String {
        let out = Command::new(vigil_exe())
            .args(["cosigner", "token", "--config", self.config.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "cosigner token: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Starts it (again); returns once it serves.
    pub fn start(&mut self) {
        self.launch().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts it; returns once both its API and its metrics answer, or why not.
    fn launch(&mut self) -> Result<(), String> {
        let child = Command::new(vigil_exe())
            .args(["cosigner", "--config", self.config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("VIGIL_COSIGNER_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        // Any HTTP answer: the port is bound (by it, while it runs).
        let answers = |url: &str| !matches!(ureq::get(url).call(), Err(ureq::Error::Transport(_)));
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!("the co-signer exited at start: {status}"));
            }
            if answers(&format!("{}/metrics", self.metrics_url)) && answers(&self.url) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill9();
                return Err("the co-signer never answered".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// A metric's value.
    pub fn metric(&self, name: &str) -> Option<u64> {
        vigil_drill::world::metric(&self.metrics_url, name)
    }
}

impl Drop for CosignerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The raw answer to a POST of exactly `body`, signed by `key`: (status, body bytes).
pub fn post_raw(api: &CosignerApi, path: &str, body: &[u8], key: &Keypair) -> (u16, Vec<u8>) {
    let (k, sig) = sign_request(key, &api.key, path, body);
    let answer = ureq::post(&format!("{}{path}", api.url))
        .set("x-vigil-client", &api.client)
        .set("x-vigil-key", &k)
        .set("x-vigil-signature", &sig)
        .set("content-type", "application/json")
        .timeout(Duration::from_secs(30))
        .send_bytes(body);
    raw(answer)
}

fn raw(answer: Result<ureq::Response, ureq::Error>) -> (u16, Vec<u8>) {
    use std::io::Read;
    match answer {
        Ok(r) | Err(ureq::Error::Status(_, r)) => {
            let status = r.status();
            let mut bytes = Vec::new();
            r.into_reader().read_to_end(&mut bytes).unwrap();
            (status, bytes)
        }
        Err(e) => (0, e.to_string().into_bytes()),
    }
}

/// A signed POST of `request` under `nonce`.
pub fn post<T: Serialize>(
    api: &CosignerApi,
    path: &str,
    request: &T,
    nonce: u64,
    key: &Keypair,
) -> Result<Value, Refused> {
    let body = serde_json::to_vec(&Signed { nonce, time: unix_now(), request }).unwrap();
    answer(post_raw(api, path, &body, key))
}

/// A signed GET.
pub fn get(api: &CosignerApi, path: &str, key: &Keypair) -> Result<Value, Refused> {
    let now = unix_now().to_string();
    let (k, sig) = sign_request(key, &api.key, path, now.as_bytes());
    answer(raw(ureq::get(&format!("{}{path}", api.url))
        .set("x-vigil-client", &api.client)
        .set("x-vigil-key", &k)
        .set("x-vigil-signature", &sig)
        .set("x-vigil-time", &now)
        .timeout(Duration::from_secs(30))
        .call()))
}

/// A JSON answer, or the refusal's status and text.
pub fn answer((status, body): (u16, Vec<u8>)) -> Result<Value, Refused> {
    if status == 200 {
        Ok(serde_json::from_slice(&body).unwrap())
    } else {
        Err((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

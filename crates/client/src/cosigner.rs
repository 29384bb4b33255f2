//! A client of the co-signer for one party of one policy: signs each request with the party's
//! auth key, bound to the co-signer's auth key for that client (both read from the policy),
//! with a nonce that keeps increasing across runs ([`Nonces`], a small file beside the key).

use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use vigil_policy::bitcoin::key::{Keypair, XOnlyPublicKey};
use vigil_policy::Policy;
use vigil_tower::wire::sign_request;

use vigil_cosigner::service::now;
use vigil_cosigner::wire::Signed;

/// Why a request did not get its answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The service refused it, saying why.
    #[error("{url} refused ({status}): {message}")]
    Refused {
        /// The service.
        url: String,
        /// The HTTP status.
        status: u16,
        /// Its reason.
        message: String,
    },
    /// The service could not be reached.
    #[error("{url} cannot be reached: {reason}")]
    Unreachable {
        /// Where it was looked for.
        url: String,
        /// Why.
        reason: String,
    },
    /// The policy names no co-signer URL, or does not parse.
    #[error("policy: {0}")]
    Policy(String),
    /// The nonce file cannot be read or written.
    #[error("nonce file {0}: {1}")]
    Nonce(PathBuf, std::io::Error),
    /// The answer was not what was expected.
    #[error("the answer does not parse: {0}")]
    Decode(String),
}

/// A party's request counter: a small file holding the last nonce used. Each nonce is above
/// the last and at least the current unix time, so a lost file still yields fresh ones.
pub struct Nonces {
    file: PathBuf,
    // One request at a time takes a nonce in this process.
    lock: std::sync::Mutex<()>,
}

impl Nonces {
    /// The counter kept in `file`.
    pub fn new(file: PathBuf) -> Nonces {
        Nonces { file, lock: std::sync::Mutex::new(()) }
    }

    /// The counter of a brand-new wallet (`vigil init`): it starts at the clock, so that a
    /// counter restarted later (a lost file, a restored device) starts well above it.
    pub fn fresh(file: PathBuf) -> Result<Nonces, ClientError> {
        if !file.exists() {
            std::fs::write(&file, now().to_string()).map_err(|e| ClientError::Nonce(file.clone(), e))?;
        }
        Ok(Nonces::new(file))
    }

    /// The next nonce, recorded before it is used. The file is replaced atomically (a
    /// process killed mid-write leaves the old number, never an empty file); if it is lost
    /// anyway, counting restarts well above the clock, since nonces run ahead of it when
    /// several requests go out in one second.
    pub fn next(&self) -> Result<u64, ClientError> {
        use std::io::Write;
        let io = |e| ClientError::Nonce(self.file.clone(), e);
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let last = match std::fs::read_to_string(&self.file) {
            Ok(t) => t.trim().parse().unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io(e)),
        };
        let next = if last == 0 { now() + LOST_COUNTER_MARGIN } else { (last + 1).max(now()) };
        let tmp = self.file.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(next.to_string().as_bytes()).and_then(|_| f.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, &self.file).map_err(io)?;
        Ok(next)
    }
}

/// How far above the clock a lost request counter restarts (about 11 days): above where a
/// lost file or a lost device (`vigil init --restore`) left it, which ran above the clock only
/// by its bursts and by this margin the last time it restarted, and within the 2^32 step the
/// co-signer and the towers accept.
const LOST_COUNTER_MARGIN: u64 = 1_000_000;

/// One party's client of the co-signer.
pub struct CosignerClient {
    url: String,
    client: String,
    server: XOnlyPublicKey,
    key: Keypair,
    nonces: Nonces,
}

impl Drop for CosignerClient {
    fn drop(&mut self) {
        self.key.non_secure_erase();
    }
}

impl CosignerClient {
    /// For the pinned policy file `policy_text`, signing as `key`.
    pub fn new(policy_text: &str, key: Keypair, nonce_file: PathBuf) -> Result<CosignerClient, ClientError> {
        CosignerClient::with_nonces(policy_text, key, Nonces::new(nonce_file))
    }

    /// For the pinned policy file `policy_text`, signing as `key`, numbering requests with
    /// `nonces`.
    pub fn with_nonces(
        policy_text: &str,
        key: Keypair,
        nonces: Nonces,
    ) -> Result<CosignerClient, ClientError> {
        let policy = Policy::from_toml(policy_text).map_err(|e| ClientError::Policy(e.to_string()))?;
        let url = policy
            .cosigner_url
            .clone()
            .ok_or_else(|| ClientError::Policy("[cosigner] names no url".into()))?;
        Ok(CosignerClient {
            url: url.trim_end_matches('/').to_owned(),
            client: vigil_tower::policy_id(policy_text),
            server: policy.cosigner.auth_key(),
            key,
            nonces,
        })
    }

    /// Its request counter (shared with the towers' clients).
    pub fn nonces(&self) -> &Nonces {
        &self.nonces
    }

    /// The client's id.
    pub fn client_id(&self) -> &str {
        &self.client
    }

    /// A signed POST.
    pub fn post<T: Serialize, R: DeserializeOwned>(&self, path: &str, request: &T) -> Result<R, ClientError> {
        let body =
            serde_json::to_vec(&Signed { nonce: self.nonces.next()?, time: now(), request }).expect("json");
        let (k, sig) = sign_request(&self.key, &self.server, path, &body);
        answer(
            &self.url,
            ureq::post(&format!("{}{path}", self.url))
                .set("x-vigil-client", &self.client)
                .set("x-vigil-key", &k)
                .set("x-vigil-signature", &sig)
                .set("content-type", "application/json")
                .timeout(Duration::from_secs(60))
                .send_bytes(&body),
        )
    }

    /// A signed GET.
    pub fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R, ClientError> {
        let time = now().to_string();
        let (k, sig) = sign_request(&self.key, &self.server, path, time.as_bytes());
        answer(
            &self.url,
            ureq::get(&format!("{}{path}", self.url))
                .set("x-vigil-client", &self.client)
                .set("x-vigil-key", &k)
                .set("x-vigil-signature", &sig)
                .set("x-vigil-time", &time)
                .timeout(Duration::from_secs(60))
                .call(),
        )
    }
}

/// A request's answer: its JSON, or why there is none.
/// Asks the co-signer at `url` for the policy of the client whose id begins `id_prefix` and
/// whose owner's request key is `key`'s (a lost device's restore). The caller still checks
/// the answer against the id it was given.
pub fn fetch_policy(
    url: &str,
    id_prefix: &str,
    key: &Keypair,
) -> Result<vigil_cosigner::wire::FetchedPolicy, ClientError> {
    let url = url.trim_end_matches('/');
    let request = vigil_cosigner::wire::PolicyFetch::new(id_prefix, key, now());
    answer(
        url,
        ureq::post(&format!("{url}/v1/restore/policy"))
            .timeout(Duration::from_secs(30))
            .send_json(serde_json::to_value(&request).expect("json")),
    )
}

pub(crate) fn answer<R: DeserializeOwned>(
    url: &str,
    result: Result<ureq::Response, ureq::Error>,
) -> Result<R, ClientError> {
    match result {
        Ok(r) => r.into_json().map_err(|e| ClientError::Decode(e.to_string())),
        Err(ureq::Error::Status(status, r)) => {
            let text = r.into_string().unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or(text);
            Err(ClientError::Refused { url: url.to_owned(), status, message })
        }
        Err(e) => Err(ClientError::Unreachable { url: url.to_owned(), reason: e.to_string() }),
    }
}

//! A client of the co-signer for one party of one policy: signs each request with the party's
//! auth key, bound to the co-signer's auth key for that client (both read from the policy),
//! with a nonce that keeps increasing across runs (kept in a small file beside the key).

use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use vigil_policy::bitcoin::key::{Keypair, XOnlyPublicKey};
use vigil_policy::Policy;
use vigil_tower::wire::sign_request;

use crate::service::now;
use crate::wire::Signed;

/// Why a request did not get its answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The co-signer refused it, saying why.
    #[error("the co-signer refused ({status}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Its reason.
        message: String,
    },
    /// The co-signer could not be reached.
    #[error("the co-signer at {url} cannot be reached: {reason}")]
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
    #[error("the co-signer's answer does not parse: {0}")]
    Decode(String),
}

/// One party's client of the co-signer.
pub struct CosignerClient {
    url: String,
    client: String,
    server: XOnlyPublicKey,
    key: Keypair,
    nonce_file: PathBuf,
}

impl CosignerClient {
    /// For the pinned policy file `policy_text`, signing as `key`.
    pub fn new(policy_text: &str, key: Keypair, nonce_file: PathBuf) -> Result<CosignerClient, ClientError> {
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
            nonce_file,
        })
    }

    /// The client's id.
    pub fn client_id(&self) -> &str {
        &self.client
    }

    /// The next nonce: above the last one used, and at least the current unix time (so a
    /// lost nonce file still yields a fresh one).
    fn next_nonce(&self) -> Result<u64, ClientError> {
        let io = |e| ClientError::Nonce(self.nonce_file.clone(), e);
        let last = match std::fs::read_to_string(&self.nonce_file) {
            Ok(t) => t.trim().parse().unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io(e)),
        };
        let next = (last + 1).max(now());
        std::fs::write(&self.nonce_file, next.to_string()).map_err(io)?;
        Ok(next)
    }

    /// A signed POST.
    pub fn post<T: Serialize, R: DeserializeOwned>(&self, path: &str, request: &T) -> Result<R, ClientError> {
        let body =
            serde_json::to_vec(&Signed { nonce: self.next_nonce()?, time: now(), request }).expect("json");
        let (k, sig) = sign_request(&self.key, &self.server, path, &body);
        self.answer(
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
        self.answer(
            ureq::get(&format!("{}{path}", self.url))
                .set("x-vigil-client", &self.client)
                .set("x-vigil-key", &k)
                .set("x-vigil-signature", &sig)
                .set("x-vigil-time", &time)
                .timeout(Duration::from_secs(60))
                .call(),
        )
    }

    fn answer<R: DeserializeOwned>(
        &self,
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
                Err(ClientError::Refused { status, message })
            }
            Err(e) => Err(ClientError::Unreachable { url: self.url.clone(), reason: e.to_string() }),
        }
    }
}

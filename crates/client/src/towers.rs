//! Requests to a watchtower, signed with a party's auth key and bound to the tower's identity
//! key (both from the policy), with a nonce that only increases (shared with the co-signer's).

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use vigil_policy::bitcoin::key::{Keypair, XOnlyPublicKey};
use vigil_tower::wire::sign_request;

use crate::cosigner::{answer, ClientError, Nonces};

/// One party's client of one tower.
pub struct TowerClient<'a> {
    /// The tower's name in the policy.
    pub name: String,
    url: String,
    server: XOnlyPublicKey,
    key: &'a Keypair,
    nonces: &'a Nonces,
}

impl<'a> TowerClient<'a> {
    /// For the tower at `url` whose identity key is `server`.
    pub fn new(name: &str, url: &str, server: XOnlyPublicKey, key: &'a Keypair, nonces: &'a Nonces) -> Self {
        TowerClient { name: name.to_owned(), url: url.trim_end_matches('/').to_owned(), server, key, nonces }
    }

    /// Every tower of `policy`, for `key`.
    pub fn all(policy: &vigil_policy::Policy, key: &'a Keypair, nonces: &'a Nonces) -> Vec<TowerClient<'a>> {
        policy
            .towers
            .iter()
            .map(|t| TowerClient::new(&t.name, &t.url, t.key.x_only_public_key().0, key, nonces))
            .collect()
    }

    /// A signed POST of `request`, whose `nonce` field this sets.
    pub fn post<T: Serialize, R: DeserializeOwned>(&self, path: &str, request: &T) -> Result<R, ClientError> {
        let mut body = serde_json::to_value(request).expect("json");
        body["nonce"] = serde_json::Value::from(self.nonces.next()?);
        let bytes = serde_json::to_vec(&body).expect("json");
        let (k, sig) = sign_request(self.key, &self.server, path, &bytes);
        answer(
            &self.url,
            ureq::post(&format!("{}{path}", self.url))
                .set("x-vigil-key", &k)
                .set("x-vigil-signature", &sig)
                .set("content-type", "application/json")
                .timeout(Duration::from_secs(30))
                .send_bytes(&bytes),
        )
    }

    /// A signed GET (the tower checks the signed time is recent).
    pub fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R, ClientError> {
        let time = vigil_cosigner::service::now().to_string();
        let (k, sig) = sign_request(self.key, &self.server, path, time.as_bytes());
        answer(
            &self.url,
            ureq::get(&format!("{}{path}", self.url))
                .set("x-vigil-key", &k)
                .set("x-vigil-signature", &sig)
                .set("x-vigil-time", &time)
                .timeout(Duration::from_secs(30))
                .call(),
        )
    }
}

/// Locks the client down at every tower directly (not through the co-signer, which may be the
/// party that is compromised): until `until` where the caller read its own chain, else
/// `blocks` past each tower's own tip. Returns each tower's name and, if it was not reached
/// or refused, why.
pub fn lock_down_everywhere(
    towers: &[TowerClient<'_>],
    policy_id: &str,
    until: Option<u32>,
    blocks: u32,
) -> Vec<(String, Option<String>)> {
    towers
        .iter()
        .map(|tower| {
            let until = match until {
                Some(h) => Ok(h),
                None => tower
                    .get::<serde_json::Value>(&format!("/v1/clients/{policy_id}"))
                    .map_err(|e| e.to_string())
                    .and_then(|v| v["tip"].as_u64().ok_or_else(|| "it did not say its height".to_owned()))
                    .map(|tip| (tip as u32).saturating_add(blocks)),
            };
            let done = until.and_then(|until_height| {
                let req = vigil_tower::wire::LockdownRequest {
                    nonce: 0,
                    policy_id: policy_id.to_owned(),
                    until_height,
                    quiet: false,
                };
                tower.post::<_, serde_json::Value>("/v1/lockdown", &req).map(drop).map_err(|e| e.to_string())
            });
            (tower.name.clone(), done.err())
        })
        .collect()
}

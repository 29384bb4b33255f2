//! Requests to a watchtower, signed with a party's auth key and bound to the tower's identity
//! key (both from the policy), with a nonce that only increases (shared with the co-signer's).

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use vigil_cosigner::wire::{Lockdown, LockdownStatus};
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

/// The median of the tips in the towers' client views: one tower lying about the chain's
/// height moves it no further than the honest ones around it. `None`: no tower answered.
pub fn median_tip<'v>(
    views: impl Iterator<Item = &'v Result<serde_json::Value, ClientError>>,
) -> Option<u32> {
    let mut tips: Vec<u32> =
        views.filter_map(|s| u32::try_from(s.as_ref().ok()?["tip"].as_u64()?).ok()).collect();
    tips.sort_unstable();
    tips.get(tips.len() / 2).copied()
}

/// The median tip of `towers`' views of `client`, asked of all at once.
pub fn towers_tip(towers: &[TowerClient], client: &str) -> Option<u32> {
    let views: Vec<Result<serde_json::Value, ClientError>> = std::thread::scope(|scope| {
        let asked: Vec<_> =
            towers.iter().map(|t| scope.spawn(move || t.get(&format!("/v1/clients/{client}")))).collect();
        asked.into_iter().map(|a| a.join().expect("no panic")).collect()
    });
    median_tip(views.iter())
}

/// What each tower said when handed a decision directly: its name and, if it did not take
/// it, why.
pub type TowerAnswers = Vec<(String, Option<String>)>;

/// Hands the change to `text` the guardians' quorum signed (as the co-signer serves it, with
/// its signatures) to every tower directly: a compromised co-signer must not be able to keep
/// a tightening from them. Each tower waits its own delay from then (only the co-signer may
/// name a later height). `None`: the co-signer does not serve that change.
pub fn hand_change_to_every_tower(
    towers: &[TowerClient<'_>],
    policy_id: &str,
    text: &str,
    served: &vigil_cosigner::wire::PolicyChanges,
) -> Option<TowerAnswers> {
    let signed = served.changes.iter().rev().find(|c| c.policy == text)?;
    let request = vigil_tower::wire::ChangePolicy {
        nonce: 0,
        policy_id: policy_id.to_owned(),
        policy: text.to_owned(),
        signatures: signed.signatures.clone(),
        not_before_height: None,
    };
    Some(hand_to_every_tower(towers, "/v1/policy", &request, None))
}

/// Hands the panic the guardians' quorum signed to every tower directly, with the quorum's
/// `signatures` as the co-signer answered them: a compromised co-signer must not be able to
/// hold it back, nor claim it went out. A tower that acted on it already (the co-signer was
/// first) took it. `None`: the co-signer gave no signatures.
pub fn hand_panic_to_every_tower(
    towers: &[TowerClient<'_>],
    panic: vigil_tower::wire::Panic,
    signatures: &[vigil_tower::wire::KeySignature],
) -> Option<TowerAnswers> {
    if signatures.is_empty() {
        return None;
    }
    let request = vigil_tower::wire::PanicRequest { nonce: 0, panic, signatures: signatures.to_vec() };
    Some(hand_to_every_tower(towers, "/v1/panic", &request, Some("already acted on")))
}

/// Hands `request` to every tower directly: what each said. A refusal naming `taken` says
/// the tower has it already.
fn hand_to_every_tower<T: Serialize>(
    towers: &[TowerClient<'_>],
    path: &str,
    request: &T,
    taken: Option<&str>,
) -> TowerAnswers {
    towers
        .iter()
        .map(|tower| {
            let why = match tower.post::<_, serde_json::Value>(path, request) {
                Ok(_) => None,
                Err(e) if taken.is_some_and(|t| e.to_string().contains(t)) => None,
                Err(e) => Some(e.to_string()),
            };
            (tower.name.clone(), why)
        })
        .collect()
}

/// The latest end of a plain lockdown the towers' client views show (a lift counted; never a
/// quiet one).
pub fn shown_lockdown<'a>(views: impl IntoIterator<Item = &'a serde_json::Value>) -> Option<u32> {
    views.into_iter().filter_map(|v| u32::try_from(v["locked_until"].as_u64()?).ok()).max()
}

/// A guardian's lockdown, at the co-signer and at every tower directly.
pub struct GuardianLockdown {
    /// The co-signer's answer.
    pub cosigner: Result<LockdownStatus, ClientError>,
    /// Whether the towers were told to keep it from the owner's device: the co-signer's word
    /// when it answered (the owner typed the duress code), else the guardian's (`silent`).
    pub quiet: bool,
    /// Each tower's name and, if it was not reached or refused, why.
    pub towers: Vec<(String, Option<String>)>,
}

impl GuardianLockdown {
    /// What the co-signer did, in a sentence for the guardian.
    pub fn headline(&self) -> String {
        match &self.cosigner {
            Ok(l) if l.quiet => format!(
                "The wallet is locked down until block {}, quietly: the owner typed the duress code, and \
                 whoever holds their device must not see it.",
                l.until_height
            ),
            Ok(l) => format!("The wallet is locked down until block {}.", l.until_height),
            Err(e) => format!("The co-signer did not take the lockdown: {e}"),
        }
    }

    /// Whether nobody took it: neither the co-signer nor any tower.
    pub fn nobody_took_it(&self) -> bool {
        self.cosigner.is_err() && self.towers.iter().all(|(_, e)| e.is_some())
    }
}

/// Locks the client down for `blocks` as a guardian: at the co-signer, then at every tower of
/// `policy` directly (a compromised co-signer must not keep a guardian's lockdown from them),
/// each counting from its own tip.
pub fn lock_down_as_guardian(
    co: &crate::cosigner::CosignerClient,
    policy: &vigil_policy::Policy,
    key: &Keypair,
    blocks: u32,
    silent: bool,
) -> GuardianLockdown {
    let cosigner: Result<LockdownStatus, _> = co.post("/v1/lockdown", &Lockdown { blocks, sweep: false });
    // The co-signer's word decides when it answers: its own lockdown shows to the owner
    // unless the owner is under duress, so a quiet one at the towers would hide nothing, and
    // only cancel later.
    let quiet = cosigner.as_ref().map_or(silent, |l| l.quiet);
    let towers = TowerClient::all(policy, key, co.nonces());
    let towers = lock_down_everywhere(&towers, co.client_id(), None, blocks, quiet);
    GuardianLockdown { cosigner, quiet, towers }
}

/// Locks the client down at every tower directly (not through the co-signer, which may be the
/// party that is compromised): until `until` where the caller read its own chain, else
/// `blocks` past each tower's own tip; `quiet` keeps it from the owner's device (a guardian's,
/// the owner under duress). Returns each tower's name and, if it was not reached or refused,
/// why.
pub fn lock_down_everywhere(
    towers: &[TowerClient<'_>],
    policy_id: &str,
    until: Option<u32>,
    blocks: u32,
    quiet: bool,
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
                    quiet,
                };
                tower.post::<_, serde_json::Value>("/v1/lockdown", &req).map(drop).map_err(|e| e.to_string())
            });
            (tower.name.clone(), done.err())
        })
        .collect()
}

//! What the co-signer tells a client's towers: each vault it co-signs (before the funding is
//! released) and each approval (before "approved" is answered). Requests go to every tower at
//! once, each signed with the client's co-signer auth key and bound to that tower; an
//! acknowledgement counts only if it carries the tower's own signature.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use vigil_policy::bitcoin::hex::FromHex;
use vigil_policy::bitcoin::key::{Keypair, XOnlyPublicKey};
use vigil_policy::bitcoin::secp256k1::schnorr;
use vigil_policy::Policy;
use vigil_tower::wire::{ack_digest, sign_request, Ack};

use crate::wire::TowerReport;

/// How long one tower may take to answer.
const TOWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a tower that let a request wait out its timeout is given only
/// [`PROBE_TIMEOUT`]: a hung tower (it takes connections, never answers) would otherwise hold
/// every request to it for the whole [`TOWER_TIMEOUT`], one client after the other, each
/// approval of every family it watches included.
const UNANSWERED_RESPITE: Duration = Duration::from_secs(30);

/// What a tower found hung a moment ago is given: enough for one that recovered to answer
/// (and be given what it missed at once), little for one still hung to hold a request.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Connections kept open to each tower between requests (a burst of approvals would
/// otherwise open, and close, one each), and to all towers together: each holds a file
/// handle for as long as it stays idle, and families may name many towers between them.
const IDLE_PER_TOWER: usize = 16;
const IDLE_IN_ALL: usize = 64;

/// How long one agent's connections are reused: a tower whose name moved to another
/// address is reached there within this, not kept on the old one while a connection lasts.
const AGENT_LIFETIME: Duration = Duration::from_secs(60);

/// The agent tower requests go through, so its connections are reused; a new one (with new
/// connections) every [`AGENT_LIFETIME`]. A connection the tower closed meanwhile (a
/// restart) is found closed before reuse and a new one opened.
fn agent() -> ureq::Agent {
    static AGENT: Mutex<Option<(Instant, ureq::Agent)>> = Mutex::new(None);
    let mut current = AGENT.lock().unwrap_or_else(|p| p.into_inner());
    match &*current {
        Some((made, agent)) if made.elapsed() < AGENT_LIFETIME => agent.clone(),
        _ => {
            let agent = ureq::AgentBuilder::new()
                .timeout(TOWER_TIMEOUT)
                .max_idle_connections(IDLE_IN_ALL)
                .max_idle_connections_per_host(IDLE_PER_TOWER)
                .build();
            *current = Some((Instant::now(), agent.clone()));
            agent
        }
    }
}

/// Towers (by URL: one tower serves many clients) that last let a request wait out the
/// timeout, and when.
static UNANSWERED: Mutex<Vec<(String, Instant)>> = Mutex::new(Vec::new());

/// Whether `url` let a request wait out its timeout within [`UNANSWERED_RESPITE`].
fn hung(url: &str) -> bool {
    let mut hung = UNANSWERED.lock().unwrap_or_else(|p| p.into_inner());
    hung.retain(|(_, at)| at.elapsed() < UNANSWERED_RESPITE);
    hung.iter().any(|(u, _)| u == url)
}

/// Records whether `url` just let a request wait out its timeout (else it answered, or
/// refused the connection, and is given the whole timeout again).
fn record_hung(url: &str, timed_out: bool) {
    let mut hung = UNANSWERED.lock().unwrap_or_else(|p| p.into_inner());
    hung.retain(|(u, _)| u != url);
    if timed_out {
        hung.push((url.to_owned(), Instant::now()));
    }
}

/// What is reported of a tower that did not answer in time, given the whole timeout or a
/// probe's: the same words either way (under duress, a lockdown pushed in the background may
/// be what found it hung; a normal session's approval finds it hung itself).
fn unanswered() -> String {
    "it did not answer in time".to_owned()
}

/// One request per tower: `body(i)` is tower `i`'s body (each carries its own nonce). A tower
/// that let a request wait out its timeout a moment ago is given [`PROBE_TIMEOUT`] only (see
/// [`UNANSWERED_RESPITE`]).
/// Returns which acknowledged, with a signature that verifies for `subject`.
pub fn post_all(
    policy: &Policy,
    key: &Keypair,
    path: &str,
    subject: &str,
    body: &(dyn Fn(usize) -> Vec<u8> + Sync),
    only: Option<&[String]>,
) -> Vec<TowerReport> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = policy
            .towers
            .iter()
            .enumerate()
            .map(|(i, tower)| {
                let skip = only.is_some_and(|names| !names.contains(&tower.name));
                scope.spawn(move || {
                    let name = tower.name.clone();
                    if skip {
                        return TowerReport { name, acknowledged: true, refused: None, error: None };
                    }
                    let timeout = if hung(&tower.url) { PROBE_TIMEOUT } else { TOWER_TIMEOUT };
                    let tower_key = tower.key.x_only_public_key().0;
                    let sent = Instant::now();
                    let mut answer = post(&tower.url, &tower_key, path, &body(i), key, timeout);
                    let timed_out = matches!(answer, Err((None, _))) && sent.elapsed() >= timeout;
                    record_hung(&tower.url, timed_out);
                    if timed_out {
                        answer = Err((None, unanswered()));
                    }
                    match answer {
                        Ok(ack) => {
                            TowerReport {
                                name,
                                acknowledged: verified(&ack, &tower_key, subject),
                                refused: None,
                                error: None,
                            }
                        }
                        Err((status, e)) => {
                            tracing::warn!(tower = %tower.name, path, error = %e, "tower did not acknowledge");
                            // A 401 is the tower not knowing the signer yet (the client's
                            // enrollment still owed); to an enrollment it is the token refused,
                            // which asking again does not change.
                            let refused = status.is_some_and(|s| {
                                (400..500).contains(&s) && (s != 401 || path == crate::joining::ENROLL_PATH)
                            });
                            TowerReport { name, acknowledged: false, refused: refused.then(|| e.clone()), error: Some(e) }
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("tower request thread")).collect()
    })
}

/// The tower's acknowledgement, or its HTTP status (none when it was not reached) and why.
fn post(
    url: &str,
    tower: &XOnlyPublicKey,
    path: &str,
    body: &[u8],
    key: &Keypair,
    timeout: Duration,
) -> Result<Ack, (Option<u16>, String)> {
    let (k, sig) = sign_request(key, tower, path, body);
    let answer = agent()
        .post(&format!("{}{path}", url.trim_end_matches('/')))
        .timeout(timeout)
        .set("x-vigil-key", &k)
        .set("x-vigil-signature", &sig)
        .set("content-type", "application/json")
        .send_bytes(body);
    match answer {
        Ok(r) => r.into_json::<Ack>().map_err(|e| (None, e.to_string())),
        Err(ureq::Error::Status(code, r)) => {
            Err((Some(code), format!("{code}: {}", r.into_string().unwrap_or_default())))
        }
        Err(e) => Err((None, e.to_string())),
    }
}

/// Whether `ack` is `tower`'s signature over `subject` (a subject ending in `*` names what
/// the acknowledgement must start with: a tower says when a policy change applies).
fn verified(ack: &Ack, tower: &XOnlyPublicKey, subject: &str) -> bool {
    let sig = <[u8; 64]>::from_hex(&ack.signature).ok().and_then(|b| schnorr::Signature::from_slice(&b).ok());
    let named = match subject.strip_suffix('*') {
        Some(prefix) => ack.subject.starts_with(prefix),
        None => ack.subject == subject,
    };
    let ok = named
        && sig.is_some_and(|s| {
            vigil_policy::secp().verify_schnorr(&s, &ack_digest(tower, &ack.subject), tower).is_ok()
        });
    if !ok {
        tracing::warn!(%tower, subject, acknowledged = %ack.subject, "a tower's acknowledgement does not verify");
    }
    ok
}

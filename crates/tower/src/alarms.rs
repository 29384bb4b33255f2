//! Alarm delivery: the outbox (written with the decision that raised each alarm) is delivered
//! to every webhook, each endpoint on its own thread with its own store connection and its own
//! backoff, so a dead or black-holed endpoint never delays another (G2: guardians hear within
//! a minute).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::daemon::Tower;
use crate::store::{OutboxAlarm, TowerStore};

/// How long one delivery attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest wait between two attempts at one alarm.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Delivers the outbox to `endpoint` until the tower stops.
pub(crate) fn deliver_loop(tower: Arc<Tower>, endpoint: String, mut store: Box<dyn TowerStore>) {
    let agent = ureq::AgentBuilder::new().timeout(ATTEMPT_TIMEOUT).build();
    let endpoints = tower.config.alarms.webhooks.clone();
    let pause = Duration::from_millis(tower.config.poll_interval_ms.clamp(50, 1_000));
    let mut backoff: HashMap<i64, Instant> = HashMap::new();
    if let Err(e) = store.settle_alarms(&endpoints) {
        tracing::error!(%endpoint, error = %e, "settling alarms owed only to removed endpoints");
    }
    while !tower.stopping.load(Ordering::SeqCst) {
        let pending = match store.undelivered_alarms(&endpoint) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(%endpoint, error = %e, "reading the alarm outbox");
                std::thread::sleep(pause);
                continue;
            }
        };
        for alarm in pending {
            if backoff.get(&alarm.id).is_some_and(|t| Instant::now() < *t) {
                continue;
            }
            let delivered = send(&agent, &tower, &endpoint, &alarm);
            if delivered {
                backoff.remove(&alarm.id);
            } else {
                let wait = Duration::from_secs(1 << alarm.attempts.min(5)).min(MAX_BACKOFF);
                backoff.insert(alarm.id, Instant::now() + wait);
            }
            if let Err(e) = store.alarm_attempted(alarm.id, &endpoint, delivered, &endpoints) {
                tracing::error!(%endpoint, error = %e, "recording an alarm delivery");
            }
            if tower.stopping.load(Ordering::SeqCst) {
                return;
            }
        }
        std::thread::sleep(pause);
    }
}

fn send(agent: &ureq::Agent, tower: &Tower, endpoint: &str, alarm: &OutboxAlarm) -> bool {
    let body = serde_json::json!({
        "tower": tower.public_key().to_string(),
        "id": alarm.id,
        "kind": alarm.kind,
        "vault": alarm.vault,
        "client": alarm.client,
        "message": alarm.message,
    });
    match agent.post(endpoint).send_json(body) {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(%endpoint, alarm = alarm.id, error = %e, "alarm delivery failed; will retry");
            false
        }
    }
}

//! Alarm delivery: every alarm is in the outbox, committed with the event that raised it;
//! each sink (a webhook, the mail relay) has its own thread, so a dead one delays no other,
//! and an alarm leaves a sink's queue only once that sink accepted it (a 2xx, or the
//! relay's 250). Nothing is lost across restarts: delivery resumes from the
//! outbox, with backoff while a sink is down.

use std::time::Duration;

use crate::config::SmtpConfig;
use crate::service::ClientRecord;
use crate::store::{kind, OutboxEntry, Store};

/// Delivers the outbox to `url` forever (call on a thread of its own).
pub fn deliver(
    url: String,
    store: std::sync::Arc<dyn Store>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let mut backoff = Duration::from_millis(200);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let pending = match store.undelivered(&url, 50) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the alarm outbox");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if pending.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        for alarm in pending {
            let sent = ureq::post(&url)
                .set("content-type", "application/json")
                .timeout(Duration::from_secs(10))
                .send_string(&alarm.body);
            match sent {
                Ok(_) => {
                    backoff = Duration::from_millis(200);
                    if let Err(e) = store.delivered(alarm.id, &url) {
                        tracing::error!(error = %e, "cannot record an alarm's delivery");
                    }
                }
                Err(e) => {
                    tracing::warn!(%url, error = %e, retry_in = ?backoff, "alarm webhook failed");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    break;
                }
            }
        }
    }
}

/// The outbox sink name of delivery to clients' own webhooks.
pub const CLIENT_WEBHOOKS_SINK: &str = "client-webhooks";
/// How many of one client's alarms are in hand at once: a client whose webhooks are down
/// holds up its own alarms, never another's.
const PER_CLIENT: u32 = 20;

/// Posts every alarm to its client's own webhooks (its guardians'), forever (a thread of
/// its own). An alarm leaves the queue once each of them accepted it; one that does not
/// answer rests a while (backing off). Clients are served side by side, so one whose
/// webhooks are slow or down holds up its own alarms only.
pub fn deliver_to_clients(
    store: std::sync::Arc<dyn Store>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let state = ClientWebhooks::default();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let pending = match store.undelivered_by_client(CLIENT_WEBHOOKS_SINK, PER_CLIENT) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the alarm outbox");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let mut by_client: Vec<(String, Vec<OutboxEntry>)> = Vec::new();
        for alarm in pending {
            let client = serde_json::from_str::<serde_json::Value>(&alarm.body)
                .ok()
                .and_then(|v| v["client"].as_str().map(str::to_owned))
                .unwrap_or_default();
            match by_client.iter_mut().find(|(c, _)| *c == client) {
                Some((_, alarms)) => alarms.push(alarm),
                None => by_client.push((client, vec![alarm])),
            }
        }
        let mut delivered = 0;
        for chunk in by_client.chunks(CLIENTS_AT_ONCE) {
            delivered += std::thread::scope(|s| {
                let posting: Vec<_> = chunk
                    .iter()
                    .map(|(client, alarms)| s.spawn(|| state.deliver(&*store, client, alarms)))
                    .collect();
                posting.into_iter().map(|p| p.join().unwrap_or(0)).sum::<usize>()
            });
        }
        if delivered == 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// What the delivery to clients' webhooks remembers between passes.
#[derive(Default)]
struct ClientWebhooks {
    /// Per alarm, the webhooks that accepted it already (a retry of the others does not
    /// repeat it).
    accepted: std::sync::Mutex<std::collections::HashMap<i64, std::collections::HashSet<String>>>,
    /// Webhooks resting after a failure: until when, and the next wait.
    resting: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, Duration)>>,
}

impl ClientWebhooks {
    /// Posts `client`'s `alarms` to its webhooks; how many left the queue.
    fn deliver(&self, store: &dyn Store, client: &str, alarms: &[OutboxEntry]) -> usize {
        let urls = store
            .get(kind::CLIENT, client)
            .ok()
            .flatten()
            .and_then(|t| serde_json::from_str::<ClientRecord>(&t).ok())
            .map(|c| c.alarm_webhooks)
            .unwrap_or_default();
        let mut delivered = 0;
        for alarm in alarms {
            let mut done =
                self.accepted.lock().unwrap_or_else(|p| p.into_inner()).remove(&alarm.id).unwrap_or_default();
            for url in &urls {
                if !done.contains(url) && !self.rests(url) && self.post(client, url, &alarm.body) {
                    done.insert(url.clone());
                }
            }
            // Every webhook of the client has it (or it has none): it leaves the queue.
            if urls.iter().all(|u| done.contains(u)) {
                match store.delivered(alarm.id, CLIENT_WEBHOOKS_SINK) {
                    Ok(()) => {
                        delivered += 1;
                        continue;
                    }
                    Err(e) => tracing::error!(error = %e, "cannot record an alarm's delivery"),
                }
            }
            self.accepted.lock().unwrap_or_else(|p| p.into_inner()).insert(alarm.id, done);
        }
        delivered
    }

    fn rests(&self, url: &str) -> bool {
        let resting = self.resting.lock().unwrap_or_else(|p| p.into_inner());
        resting.get(url).is_some_and(|(until, _)| std::time::Instant::now() < *until)
    }

    /// Posts one alarm; whether the webhook accepted it (if not, it rests, backing off).
    fn post(&self, client: &str, url: &str, body: &str) -> bool {
        let sent = ureq::post(url)
            .set("content-type", "application/json")
            .timeout(Duration::from_secs(10))
            .send_string(body);
        let mut resting = self.resting.lock().unwrap_or_else(|p| p.into_inner());
        match sent {
            Ok(_) => {
                resting.remove(url);
                true
            }
            Err(e) => {
                let wait = resting.get(url).map_or(Duration::from_millis(500), |(_, w)| *w);
                tracing::warn!(%client, error = %e, retry_in = ?wait, "a client's alarm webhook failed");
                let next = (wait * 2).min(Duration::from_secs(60));
                resting.insert(url.to_owned(), (std::time::Instant::now() + wait, next));
                false
            }
        }
    }
}

/// How many clients' webhooks are posted to side by side.
const CLIENTS_AT_ONCE: usize = 32;

/// The outbox sink name of e-mail delivery.
pub const EMAIL_SINK: &str = "smtp";

/// E-mails every alarm to its client's guardians' addresses, forever (a thread of its own).
pub fn deliver_email(
    smtp: SmtpConfig,
    store: std::sync::Arc<dyn Store>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use lettre::Transport;
    let mailer = match mailer(&smtp) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up the mail relay: alarms are not e-mailed");
            return;
        }
    };
    let mut backoff = Duration::from_millis(200);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let pending = store.undelivered(EMAIL_SINK, 20).unwrap_or_default();
        if pending.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        for alarm in pending {
            let message = match email(&smtp, &*store, &alarm.body) {
                Ok(Some(m)) => m,
                // No address for this client: nothing to send.
                Ok(None) => {
                    let _ = store.delivered(alarm.id, EMAIL_SINK);
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "an alarm cannot be written as an e-mail; skipped");
                    let _ = store.delivered(alarm.id, EMAIL_SINK);
                    continue;
                }
            };
            match mailer.send(&message) {
                Ok(_) => {
                    backoff = Duration::from_millis(200);
                    if let Err(e) = store.delivered(alarm.id, EMAIL_SINK) {
                        tracing::error!(error = %e, "cannot record an alarm's delivery");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "the mail relay refused an alarm");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    break;
                }
            }
        }
    }
}

fn mailer(smtp: &SmtpConfig) -> Result<lettre::SmtpTransport, String> {
    use lettre::transport::smtp::authentication::Credentials;
    let builder = match smtp.tls.as_str() {
        "none" => lettre::SmtpTransport::builder_dangerous(&smtp.host),
        "tls" => lettre::SmtpTransport::relay(&smtp.host).map_err(|e| e.to_string())?,
        _ => lettre::SmtpTransport::starttls_relay(&smtp.host).map_err(|e| e.to_string())?,
    };
    let mut builder = builder.port(smtp.port).timeout(Some(Duration::from_secs(20)));
    if let (Some(user), Some(var)) = (&smtp.user, &smtp.password_env) {
        let password = std::env::var(var).map_err(|_| format!("smtp.password_env: {var} is not set"))?;
        builder = builder.credentials(Credentials::new(user.clone(), password));
    }
    Ok(builder.build())
}

/// The e-mail of an outbox alarm, to its client's guardians; `None` when it has no address.
fn email(smtp: &SmtpConfig, store: &dyn Store, body: &str) -> Result<Option<lettre::Message>, String> {
    let alarm: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    let client_id = alarm["client"].as_str().unwrap_or_default();
    let Some(text) = store.get(kind::CLIENT, client_id).map_err(|e| e.to_string())? else { return Ok(None) };
    let client: ClientRecord = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if client.alarm_emails.is_empty() {
        return Ok(None);
    }
    let kind = alarm["kind"].as_str().unwrap_or("alarm");
    let mut message = lettre::Message::builder()
        .from(smtp.from.parse().map_err(|e: lettre::address::AddressError| e.to_string())?)
        .subject(format!("Vigil alarm: {kind} (client {})", &client_id[..client_id.len().min(12)]));
    for to in &client.alarm_emails {
        message = message.to(to.parse().map_err(|e: lettre::address::AddressError| e.to_string())?);
    }
    let text = format!(
        "{}\n\nWhat happened: {kind}\nClient: {client_id}\nWhen (unix time): {}\n\n\
         You receive this because you are a guardian of this client. Act only through your Vigil\n\
         guardian application; never on instructions given by phone or message.\n",
        alarm["message"].as_str().unwrap_or_default(),
        alarm["time"],
    );
    message.body(text).map(Some).map_err(|e| e.to_string())
}

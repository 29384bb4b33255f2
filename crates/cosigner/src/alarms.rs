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
            match post(&url, &posted(&alarm)) {
                Ok(()) => {
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

/// An alarm's id for its receivers: the same at every delivery of it, so that a repeat can be
/// dropped (an alarm is sent again when its delivery could not be recorded, or the co-signer
/// stopped before it was). A digest of its outbox number and its text: another alarm with the
/// same number (a store restored from a backup, another co-signer) has another id, and the
/// number of alarms the provider raised for all its clients is not told.
fn alarm_id(alarm: &OutboxEntry) -> String {
    use vigil_policy::bitcoin::hashes::{sha256, Hash};
    let digest = sha256::Hash::hash(&[&alarm.id.to_le_bytes()[..], alarm.body.as_bytes()].concat());
    digest.to_string()[..32].to_owned()
}

/// An alarm as it is posted: its outbox body with its [`alarm_id`].
fn posted(alarm: &OutboxEntry) -> String {
    match serde_json::from_str::<serde_json::Value>(&alarm.body) {
        Ok(serde_json::Value::Object(mut fields)) => {
            fields.insert("alarm_id".into(), alarm_id(alarm).into());
            serde_json::Value::Object(fields).to_string()
        }
        _ => alarm.body.clone(),
    }
}

/// Posts one alarm to a webhook; only a 2xx accepts it. A redirect is not followed: a
/// client's webhook answering one must not turn the co-signer's post into a request to a
/// host inside the provider's network that the operator's `client_webhooks` never allowed.
fn post(url: &str, body: &str) -> Result<(), String> {
    static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
    let agent =
        AGENT.get_or_init(|| ureq::AgentBuilder::new().redirects(0).timeout(Duration::from_secs(10)).build());
    match agent.post(url).set("content-type", "application/json").send_string(body) {
        Ok(r) if (200..300).contains(&r.status()) => Ok(()),
        Ok(r) => Err(format!("answered {} (a redirect is not followed)", r.status())),
        Err(e) => Err(e.to_string()),
    }
}

/// How often a client record that does not parse is logged again: its alarms wait for the
/// operator, who must not lose sight of it after the first line.
const UNREADABLE_REPEAT: Duration = Duration::from_secs(3600);

/// What the delivery to clients' webhooks remembers between passes.
#[derive(Default)]
struct ClientWebhooks {
    /// Per alarm, the webhooks that accepted it already (a retry of the others does not
    /// repeat it).
    accepted: std::sync::Mutex<std::collections::HashMap<i64, std::collections::HashSet<String>>>,
    /// Webhooks resting after a failure: until when, and the next wait.
    resting: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, Duration)>>,
    /// Clients whose record does not parse, why, and until when that was said: said again
    /// only when the reason changes or an hour passed, not at every pass.
    unreadable: std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
}

impl ClientWebhooks {
    /// Posts `client`'s `alarms` to its webhooks; how many left the queue.
    fn deliver(&self, store: &dyn Store, client: &str, alarms: &[OutboxEntry]) -> usize {
        // A record that cannot be read now (the database restarting) is not a client without
        // webhooks: its alarms wait for the next pass, not counted as delivered to nobody.
        let urls = match store.get(kind::CLIENT, client) {
            Ok(None) => Vec::new(),
            Ok(Some(text)) => {
                let parsed = serde_json::from_str::<ClientRecord>(&text);
                let mut unreadable = self.unreadable.lock().unwrap_or_else(|p| p.into_inner());
                match parsed {
                    Ok(c) => {
                        unreadable.remove(client);
                        c.alarm_webhooks
                    }
                    Err(e) => {
                        let why = e.to_string();
                        let said = unreadable
                            .get(client)
                            .is_some_and(|(said, until)| *said == why && std::time::Instant::now() < *until);
                        if !said {
                            tracing::error!(%client, error = %why, "a client's record cannot be read: its alarms wait");
                            unreadable.insert(
                                client.to_owned(),
                                (why, std::time::Instant::now() + UNREADABLE_REPEAT),
                            );
                        }
                        return 0;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(%client, error = %e, "cannot read a client's webhooks: its alarms wait");
                return 0;
            }
        };
        let mut delivered = 0;
        for alarm in alarms {
            let body = posted(alarm);
            let mut done =
                self.accepted.lock().unwrap_or_else(|p| p.into_inner()).remove(&alarm.id).unwrap_or_default();
            for url in &urls {
                if !done.contains(url) && !self.rests(url) && self.post(client, url, &body) {
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
        let sent = post(url, body);
        let mut resting = self.resting.lock().unwrap_or_else(|p| p.into_inner());
        match sent {
            Ok(()) => {
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
        let send = |m: &lettre::Message| mailer.send(m).map(|_| ()).map_err(|e| e.to_string());
        let pass = email_pass(&smtp, &*store, &pending, send);
        if pass.sent > 0 {
            backoff = Duration::from_millis(200);
        }
        match pass.stalled {
            None => {}
            // The store is back within a second or two (a database restarting): a short
            // wait of its own, so that an alarm is not held a minute behind a grown backoff.
            Some(Stalled::Store) => std::thread::sleep(Duration::from_secs(1)),
            Some(Stalled::Relay) => {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// What one pass over the pending e-mails did.
struct EmailPass {
    /// E-mails the relay accepted.
    sent: usize,
    /// Why it stopped before the end, if it did.
    stalled: Option<Stalled>,
}

/// What an e-mail pass waits for before the next.
#[derive(Debug, PartialEq, Eq)]
enum Stalled {
    /// The mail relay refused or did not answer.
    Relay,
    /// The store could not be read or written.
    Store,
}

/// E-mails `pending` in order, each recorded as delivered once sent (or once it is plain
/// there is nothing to send); stops at the first that must be tried again later (the relay
/// or the store failing). One sent whose delivery cannot be recorded stops it too: going on
/// would send the same alarms again and again while the store refuses writes.
fn email_pass(
    smtp: &SmtpConfig,
    store: &dyn Store,
    pending: &[OutboxEntry],
    send: impl Fn(&lettre::Message) -> Result<(), String>,
) -> EmailPass {
    let mut pass = EmailPass { sent: 0, stalled: None };
    for alarm in pending {
        let message = match email(smtp, store, alarm) {
            Ok(Some(m)) => m,
            // No address for this client: nothing to send.
            Ok(None) => {
                let _ = store.delivered(alarm.id, EMAIL_SINK);
                continue;
            }
            Err(Unsent::Later(e)) => {
                tracing::warn!(error = %e, "cannot read an alarm's addresses; tried again");
                pass.stalled = Some(Stalled::Store);
                return pass;
            }
            Err(Unsent::Never(e)) => {
                tracing::error!(error = %e, "an alarm cannot be written as an e-mail; skipped");
                let _ = store.delivered(alarm.id, EMAIL_SINK);
                continue;
            }
        };
        if let Err(e) = send(&message) {
            tracing::warn!(error = %e, "the mail relay refused an alarm; tried again");
            pass.stalled = Some(Stalled::Relay);
            return pass;
        }
        pass.sent += 1;
        if let Err(e) = store.delivered(alarm.id, EMAIL_SINK) {
            tracing::error!(error = %e, "cannot record an alarm's delivery; it may be sent again");
            pass.stalled = Some(Stalled::Store);
            return pass;
        }
    }
    pass
}

/// Why an alarm was not made into an e-mail.
#[derive(Debug)]
enum Unsent {
    /// The store could not be read: try again.
    Later(String),
    /// The alarm or an address is malformed: it never will be.
    Never(String),
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
/// Its Message-ID is the alarm's [`alarm_id`], the same at every sending, so that a mail
/// system can drop a repeat.
fn email(
    smtp: &SmtpConfig,
    store: &dyn Store,
    entry: &OutboxEntry,
) -> Result<Option<lettre::Message>, Unsent> {
    let alarm: serde_json::Value =
        serde_json::from_str(&entry.body).map_err(|e| Unsent::Never(e.to_string()))?;
    let client_id = alarm["client"].as_str().unwrap_or_default();
    let Some(text) = store.get(kind::CLIENT, client_id).map_err(|e| Unsent::Later(e.to_string()))? else {
        return Ok(None);
    };
    let client: ClientRecord = serde_json::from_str(&text).map_err(|e| Unsent::Never(e.to_string()))?;
    if client.alarm_emails.is_empty() {
        return Ok(None);
    }
    let kind = alarm["kind"].as_str().unwrap_or("alarm");
    let from: lettre::message::Mailbox =
        smtp.from.parse().map_err(|e: lettre::address::AddressError| Unsent::Never(e.to_string()))?;
    let mut message = lettre::Message::builder()
        .message_id(Some(message_id(entry, &from)))
        .from(from)
        .subject(format!("Vigil alarm: {kind} (client {})", &client_id[..client_id.len().min(12)]));
    for to in &client.alarm_emails {
        message = message
            .to(to.parse().map_err(|e: lettre::address::AddressError| Unsent::Never(e.to_string()))?);
    }
    let text = format!(
        "{}\n\nWhat happened: {kind}\nClient: {client_id}\nWhen (unix time): {}\n\n\
         You receive this because you are a guardian of this client. Act only through your Vigil\n\
         guardian application; never on instructions given by phone or message.\n",
        alarm["message"].as_str().unwrap_or_default(),
        alarm["time"],
    );
    message.body(text).map(Some).map_err(|e| Unsent::Never(e.to_string()))
}

/// The Message-ID of an outbox alarm's e-mail: its [`alarm_id`] at the sender's domain when
/// that is a plain host name with a dot (a bare IPv4 address too), else at `vigil.invalid`
/// (a non-ASCII domain would come out malformed; a sender at a bracketed IP literal does not
/// parse, and the configuration refuses it).
fn message_id(entry: &OutboxEntry, from: &lettre::message::Mailbox) -> String {
    let domain = from.email.domain();
    let plain =
        domain.contains('.') && domain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    format!("<{}@{}>", alarm_id(entry), if plain { domain } else { "vigil.invalid" })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::error::StoreError;
    use crate::store::{Batch, SqliteStore};

    /// A store whose reads of single records fail while `down` is set (a database
    /// restarting under a connection of the pool); everything else works.
    struct Flaky {
        inner: SqliteStore,
        down: AtomicBool,
        /// Recording deliveries fails (the writer stopped, the disk full).
        writes_down: AtomicBool,
    }

    impl Store for Flaky {
        fn get(&self, kind: &str, id: &str) -> Result<Option<String>, StoreError> {
            if self.down.load(Ordering::Relaxed) {
                return Err(StoreError::Corrupt("the connection was closed".into()));
            }
            self.inner.get(kind, id)
        }
        fn list(&self, kind: &str, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
            self.inner.list(kind, prefix)
        }
        fn count(&self, kind: &str) -> Result<u64, StoreError> {
            self.inner.count(kind)
        }
        fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
            self.inner.commit(batch)
        }
        fn deliver_to(&self, sinks: &[String]) -> Result<(), StoreError> {
            self.inner.deliver_to(sinks)
        }
        fn undelivered(&self, sink: &str, limit: u32) -> Result<Vec<OutboxEntry>, StoreError> {
            self.inner.undelivered(sink, limit)
        }
        fn undelivered_by_client(&self, sink: &str, per_client: u32) -> Result<Vec<OutboxEntry>, StoreError> {
            self.inner.undelivered_by_client(sink, per_client)
        }
        fn delivered(&self, id: i64, sink: &str) -> Result<(), StoreError> {
            if self.writes_down.load(Ordering::Relaxed) {
                return Err(StoreError::Unavailable("the disk is full".into()));
            }
            self.inner.delivered(id, sink)
        }
        fn outbox_depth(&self, sinks: &[String]) -> Result<u64, StoreError> {
            self.inner.outbox_depth(sinks)
        }
        fn client_alarms(
            &self,
            c: &str,
            kinds: Option<&[&str]>,
            limit: u32,
        ) -> Result<Vec<OutboxEntry>, StoreError> {
            self.inner.client_alarms(c, kinds, limit)
        }
    }

    /// A webhook answering with a redirect has not accepted the alarm, and the co-signer does
    /// not follow it to where it points (a host the operator never allowed).
    #[test]
    fn a_webhook_redirect_is_not_followed_and_delivers_nothing() {
        use std::io::{Read, Write};
        let inside = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let webhook = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/alarm", webhook.local_addr().unwrap());
        let target = format!("http://{}/metadata", inside.local_addr().unwrap());
        let answering = std::thread::spawn(move || {
            let (mut conn, _) = webhook.accept().unwrap();
            let _ = conn.read(&mut [0u8; 4096]).unwrap();
            write!(conn, "HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n").unwrap();
        });
        let refused = post(&url, "{}").unwrap_err();
        answering.join().unwrap();
        assert!(refused.contains("302"), "{refused}");
        inside.set_nonblocking(true).unwrap();
        assert!(inside.accept().is_err(), "nothing reached the redirect's target");
    }

    #[test]
    fn alarm_delivery_waits_out_a_failing_store_without_dropping_or_repeating_alarms() {
        let dir = tempfile::tempdir().unwrap();
        let store = Flaky {
            inner: SqliteStore::open(&dir.path().join("co.db")).unwrap(),
            down: true.into(),
            writes_down: false.into(),
        };
        store.deliver_to(&[EMAIL_SINK.to_owned(), CLIENT_WEBHOOKS_SINK.to_owned()]).unwrap();
        let mut batch = Batch::default();
        batch.alarm(crate::service::alarm("c1", "duress", "the duress code was used".into()));
        store.commit(&batch).unwrap();
        let smtp = SmtpConfig {
            host: "127.0.0.1".into(),
            port: 25,
            tls: "none".into(),
            from: "vigil@example.org".into(),
            user: None,
            password_env: None,
        };
        let pending = |sink: &str| store.undelivered(sink, 20).unwrap();

        // The database is down: neither sink takes the alarm for delivered.
        let sent = std::cell::Cell::new(0);
        let ids = std::cell::RefCell::new(Vec::new());
        let send = |m: &lettre::Message| {
            sent.set(sent.get() + 1);
            ids.borrow_mut().push(m.headers().get_raw("Message-ID").unwrap_or_default().to_owned());
            Ok(())
        };
        assert_eq!(email_pass(&smtp, &store, &pending(EMAIL_SINK), send).stalled, Some(Stalled::Store));
        assert_eq!(pending(EMAIL_SINK).len(), 1);
        let webhooks = ClientWebhooks::default();
        assert_eq!(webhooks.deliver(&store, "c1", &pending(CLIENT_WEBHOOKS_SINK)), 0);
        assert_eq!(pending(CLIENT_WEBHOOKS_SINK).len(), 1);

        // Back up: a client with neither addresses nor webhooks has nothing to be sent.
        store.down.store(false, Ordering::Relaxed);
        assert_eq!(email_pass(&smtp, &store, &pending(EMAIL_SINK), send).stalled, None);
        assert_eq!(webhooks.deliver(&store, "c1", &pending(CLIENT_WEBHOOKS_SINK)), 1);
        assert!(pending(EMAIL_SINK).is_empty() && pending(CLIENT_WEBHOOKS_SINK).is_empty());
        assert_eq!(sent.get(), 0);

        // An e-mail sent whose delivery cannot be recorded stops the pass: the next alarms are
        // not sent on, to be sent again and again while the store refuses writes.
        let record = r#"{"id":"c2","account":0,"policy":"","lockdown_until":0,"duress_until":0,
            "heartbeat_real":"","heartbeat_duress":"","next_spend":0,"tower_nonce":0,
            "alarm_emails":["guardians@family.example"]}"#;
        let mut batch = Batch::default();
        batch.put(kind::CLIENT, "c2", record);
        for kind in ["duress", "lockdown"] {
            batch.alarm(crate::service::alarm("c2", kind, "the duress code was used".into()));
        }
        store.commit(&batch).unwrap();
        store.writes_down.store(true, Ordering::Relaxed);
        let pass = email_pass(&smtp, &store, &pending(EMAIL_SINK), send);
        assert_eq!((pass.sent, pass.stalled), (1, Some(Stalled::Store)));
        assert_eq!(sent.get(), 1);
        store.writes_down.store(false, Ordering::Relaxed);
        let pass = email_pass(&smtp, &store, &pending(EMAIL_SINK), send);
        assert_eq!(
            (pass.sent, pass.stalled),
            (2, None),
            "the first again (its delivery was not recorded), then the second"
        );
        assert!(pending(EMAIL_SINK).is_empty());
        // The first sent twice, under the same Message-ID (a mail system drops the repeat).
        let ids = ids.borrow();
        assert!(ids[0].len() == 32 + "<@example.org>".len() && ids[0].ends_with("@example.org>"), "{ids:?}");
        assert_eq!(ids[0], ids[1], "{ids:?}");
        assert_ne!(ids[1], ids[2], "{ids:?}");
    }

    /// A client's webhook receives the alarm with its id, as [`alarm_id`] makes it.
    #[test]
    fn a_clients_webhook_receives_the_alarm_with_its_id() {
        use std::io::{BufRead, BufReader, Read, Write};
        let hook = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/alarm", hook.local_addr().unwrap());
        let receiving = std::thread::spawn(move || {
            let (conn, _) = hook.accept().unwrap();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            write!(&conn, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()
        });
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("co.db")).unwrap();
        store.deliver_to(&[CLIENT_WEBHOOKS_SINK.to_owned()]).unwrap();
        let record = serde_json::json!({"id": "c3", "account": 0, "policy": "", "lockdown_until": 0,
            "duress_until": 0, "heartbeat_real": "", "heartbeat_duress": "", "next_spend": 0,
            "tower_nonce": 0, "alarm_webhooks": [url]});
        let mut batch = Batch::default();
        batch.put(kind::CLIENT, "c3", record.to_string());
        batch.alarm(crate::service::alarm("c3", "duress", "the duress code was used".into()));
        store.commit(&batch).unwrap();
        let pending = store.undelivered(CLIENT_WEBHOOKS_SINK, 20).unwrap();
        assert_eq!(ClientWebhooks::default().deliver(&store, "c3", &pending), 1);
        let received = receiving.join().unwrap();
        assert_eq!(received["kind"], "duress");
        assert_eq!(received["alarm_id"].as_str(), Some(alarm_id(&pending[0]).as_str()), "{received}");
    }

    /// An e-mail's Message-ID names the sender's domain only when it is a plain host name.
    #[test]
    fn a_message_id_falls_back_to_an_invalid_domain_for_an_address_it_cannot_carry() {
        let entry = OutboxEntry { id: 7, body: crate::service::alarm("c1", "duress", "d".into()) };
        let id = alarm_id(&entry);
        for (from, right) in [
            ("Vigil <alarms@cosigner.example.org>", "cosigner.example.org"),
            ("alarms@localhost", "vigil.invalid"),
            ("alarms@192.0.2.1", "192.0.2.1"),
            ("alarms@bücher.example", "vigil.invalid"),
        ] {
            let mailbox: lettre::message::Mailbox = from.parse().unwrap_or_else(|e| panic!("{from}: {e}"));
            assert_eq!(message_id(&entry, &mailbox), format!("<{id}@{right}>"), "{from}");
        }
    }

    /// What a test's log subscriber writes.
    #[derive(Clone, Default)]
    struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A client whose record does not parse keeps its alarms, and is logged once an hour, not
    /// at every pass; mended, it is delivered to and forgotten.
    #[test]
    fn a_client_record_that_does_not_parse_holds_its_alarms_and_is_said_once_an_hour() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("co.db")).unwrap();
        store.deliver_to(&[CLIENT_WEBHOOKS_SINK.to_owned()]).unwrap();
        let mut batch = Batch::default();
        batch.put(kind::CLIENT, "c4", "{\"id\": \"c4\"");
        batch.alarm(crate::service::alarm("c4", "duress", "the duress code was used".into()));
        store.commit(&batch).unwrap();
        let webhooks = ClientWebhooks::default();
        let pending = || store.undelivered(CLIENT_WEBHOOKS_SINK, 20).unwrap();
        let logs = Logs::default();
        // Three delivery passes, logging into `logs`: none delivers.
        let three_passes = || {
            let writer = logs.clone();
            let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).finish();
            tracing::subscriber::with_default(subscriber, || {
                for _ in 0..3 {
                    assert_eq!(webhooks.deliver(&store, "c4", &pending()), 0);
                }
            });
        };
        let said = || String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        three_passes();
        assert_eq!(pending().len(), 1, "the alarm waits");
        assert_eq!(said().matches("a client's record cannot be read").count(), 1, "{}", said());
        // An hour on, still unread: said again, and then not again for another hour.
        for (_, until) in webhooks.unreadable.lock().unwrap().values_mut() {
            *until = std::time::Instant::now();
        }
        three_passes();
        assert_eq!(said().matches("a client's record cannot be read").count(), 2, "{}", said());
        let record = serde_json::json!({"id": "c4", "account": 0, "policy": "", "lockdown_until": 0,
            "duress_until": 0, "heartbeat_real": "", "heartbeat_duress": "", "next_spend": 0,
            "tower_nonce": 0});
        let mut batch = Batch::default();
        batch.put(kind::CLIENT, "c4", record.to_string());
        store.commit(&batch).unwrap();
        assert_eq!(
            webhooks.deliver(&store, "c4", &pending()),
            1,
            "mended: no webhook, so it leaves the queue"
        );
        assert!(webhooks.unreadable.lock().unwrap().is_empty());
    }

    /// Every post of one alarm carries its id, so a webhook drops a repeat.
    #[test]
    fn an_alarm_is_posted_with_its_id() {
        let entry = |id, body: &str| OutboxEntry { id, body: body.into() };
        let body = crate::service::alarm("c1", "duress", "the duress code was used".into());
        let id = |n, body: &str| {
            let posted: serde_json::Value = serde_json::from_str(&posted(&entry(n, body))).unwrap();
            assert_eq!(posted["kind"], "duress");
            posted["alarm_id"].as_str().unwrap().to_owned()
        };
        assert_eq!(id(7, &body), id(7, &body), "the same at every delivery");
        assert_eq!(id(7, &body).len(), 32);
        let later = body.replace("the duress code", "The duress code");
        assert_ne!(id(7, &body), id(7, &later), "another alarm under the same number (a restored store)");
        assert_ne!(id(7, &body), id(8, &body));
        assert_eq!(posted(&entry(8, "not json")), "not json", "posted as stored");
    }
}

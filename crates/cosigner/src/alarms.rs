//! Alarm delivery: every alarm is in the outbox, committed with the event that raised it;
//! each webhook has its own thread and store connection, so a dead endpoint delays no other,
//! and an alarm leaves a sink's queue only once that sink answered 2xx. Nothing is lost
//! across restarts: delivery resumes from the outbox.

use std::time::Duration;

use crate::store::Store;

/// Delivers the outbox to `url` forever (call on a thread of its own).
pub fn deliver(url: String, mut store: Box<dyn Store>, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
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

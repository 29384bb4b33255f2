//! A subscriber to Bitcoin Core's ZMQ notifications (`-zmqpub*`; `vigil node` publishes the
//! same). ZMQ drops messages when a subscriber lags or reconnects, so a notification is a
//! doorbell and a hint, never the record: a follower still reads blocks and the mempool over
//! RPC, and only learns sooner that it should.

use std::sync::mpsc::{self, Receiver};

use zeromq::{Socket, SocketRecv};

use crate::BackendError;

/// One notification as Core sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// `hashblock`, `hashtx`, `rawblock`, `rawtx` or `sequence`.
    pub topic: String,
    /// The body (see Core's `doc/zmq.md`).
    pub body: Vec<u8>,
    /// The publisher's counter for this topic; a gap means messages were lost.
    pub counter: u32,
}

impl Notification {
    /// A notification from a multipart message as Core sends it: topic, body, and the
    /// publisher's 4-byte little-endian counter. Anything else is not a notification.
    pub fn from_frames<F: AsRef<[u8]>>(frames: &[F]) -> Option<Notification> {
        let [topic, body, counter] = frames else { return None };
        let counter = <[u8; 4]>::try_from(counter.as_ref()).ok()?;
        Some(Notification {
            topic: String::from_utf8_lossy(topic.as_ref()).into_owned(),
            body: body.as_ref().to_vec(),
            counter: u32::from_le_bytes(counter),
        })
    }

    /// For `sequence`: the hash (display order), the label (`C`, `D`, `A`, `R`) and, for `A`
    /// and `R`, the mempool sequence.
    pub fn sequence(&self) -> Option<([u8; 32], u8, Option<u64>)> {
        if self.topic != "sequence" || self.body.len() < 33 {
            return None;
        }
        let hash: [u8; 32] = self.body[..32].try_into().ok()?;
        let mempool = self.body.get(33..41).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        Some((hash, self.body[32], mempool))
    }
}

/// Connects to `endpoint` (`tcp://127.0.0.1:28332`) and subscribes to `topics` (an empty
/// topic means all). Notifications arrive on the returned channel until it is dropped. A
/// publisher that is not up yet is retried every second, and the socket reconnects by itself
/// if the publisher restarts: a tower may start before its node.
pub fn subscribe(endpoint: &str, topics: &[&str]) -> Result<Receiver<Notification>, BackendError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BackendError::Unreachable(format!("zmq runtime: {e}")))?;
    let endpoint = endpoint.to_owned();
    let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    let (sender, receiver) = mpsc::channel();
    std::thread::Builder::new()
        .name("zmq-subscriber".into())
        .spawn(move || {
            runtime.block_on(async move {
                let mut socket = loop {
                    let mut socket = zeromq::SubSocket::new();
                    let connected = async {
                        socket.connect(&endpoint).await?;
                        for topic in &topics {
                            socket.subscribe(topic).await?;
                        }
                        Ok::<_, zeromq::ZmqError>(())
                    };
                    match connected.await {
                        Ok(()) => break socket,
                        Err(e) => {
                            tracing::warn!(%endpoint, error = %e, "ZMQ publisher not reachable yet; retrying");
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        }
                    }
                };
                loop {
                    let message = match socket.recv().await {
                        Ok(m) => m,
                        // The peer went away; the socket reconnects, keep reading.
                        Err(_) => {
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let Some(notification) = Notification::from_frames(&message.into_vec()) else { continue };
                    if sender.send(notification).is_err() {
                        break;
                    }
                }
            })
        })
        .map_err(|e| BackendError::Unreachable(format!("zmq thread: {e}")))?;
    Ok(receiver)
}

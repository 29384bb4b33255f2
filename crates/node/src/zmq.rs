//! Bitcoin Core's ZMQ notifications (`doc/zmq.md` in Core), published from the chain's events.
//!
//! Each message has three frames, as Core sends them: the topic, the body, and a 4-byte
//! little-endian counter kept per topic and address (a subscriber that sees it skip knows it
//! missed messages). Bodies:
//! - `hashblock`, `hashtx`: the 32-byte hash, in the byte order the RPC displays;
//! - `rawblock`, `rawtx`: the serialized block or transaction (every transaction of a connected
//!   or disconnected block is also published as `rawtx`/`hashtx`, as Core does);
//! - `sequence`: the hash, then `C` (block connected), `D` (disconnected) or `A` (entered the
//!   mempool, followed by the 8-byte little-endian mempool sequence). Core also sends `R` when a
//!   transaction leaves the mempool for a reason other than a block; this node does not, so a
//!   subscriber must (and Vigil's does) treat `getrawmempool` as the truth.
//!
//! Like Core, this is fire-and-forget: a subscriber that connects late or lags loses messages.

use std::collections::BTreeMap;
use std::sync::mpsc::Receiver;

use vigil_regtest::bitcoin::consensus::serialize;
use vigil_regtest::bitcoin::hashes::Hash;
use vigil_regtest::bitcoin::Transaction;
use vigil_regtest::ChainEvent;
use zeromq::{Socket, SocketSend, ZmqMessage};

/// The `-zmqpub*` options: topic → address (`tcp://127.0.0.1:28332`). Topics may share one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZmqConfig {
    /// `-zmqpubhashblock`
    pub hashblock: Option<String>,
    /// `-zmqpubhashtx`
    pub hashtx: Option<String>,
    /// `-zmqpubrawblock`
    pub rawblock: Option<String>,
    /// `-zmqpubrawtx`
    pub rawtx: Option<String>,
    /// `-zmqpubsequence`
    pub sequence: Option<String>,
}

impl ZmqConfig {
    fn topics(&self) -> impl Iterator<Item = (&'static str, &String)> {
        [
            ("hashblock", &self.hashblock),
            ("hashtx", &self.hashtx),
            ("rawblock", &self.rawblock),
            ("rawtx", &self.rawtx),
            ("sequence", &self.sequence),
        ]
        .into_iter()
        .filter_map(|(topic, address)| address.as_ref().map(|a| (topic, a)))
    }

    /// Whether any notification is configured.
    pub fn is_empty(&self) -> bool {
        self.topics().next().is_none()
    }
}

/// One bound socket and the topics published on it, each with its counter.
struct Publisher {
    socket: zeromq::PubSocket,
    counters: BTreeMap<&'static str, u32>,
}

/// Binds every configured address, then publishes each chain event until the chain is dropped.
/// Returns once bound, so a subscriber may connect as soon as the node says it is listening.
pub async fn start(config: &ZmqConfig, events: Receiver<ChainEvent>) -> Result<(), zeromq::ZmqError> {
    let mut publishers: BTreeMap<String, Publisher> = BTreeMap::new();
    for (topic, address) in config.topics() {
        if !publishers.contains_key(address) {
            let mut socket = zeromq::PubSocket::new();
            socket.bind(address).await?;
            tracing::info!(%address, "vigil node publishing ZMQ");
            publishers.insert(address.clone(), Publisher { socket, counters: BTreeMap::new() });
        }
        publishers.get_mut(address).expect("just inserted").counters.insert(topic, 0);
    }
    // The chain reports on a std channel from inside its lock; hand over to the async side.
    let (forward, mut queue) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while let Ok(event) = events.recv() {
            if forward.send(event).is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(event) = queue.recv().await {
            for (topic, body) in messages(&event) {
                for publisher in publishers.values_mut() {
                    let Some(counter) = publisher.counters.get_mut(topic) else { continue };
                    let mut message = ZmqMessage::from(topic);
                    message.push_back(body.clone().into());
                    message.push_back(counter.to_le_bytes().to_vec().into());
                    *counter = counter.wrapping_add(1);
                    // A send fails only when the socket is gone; nothing to retry, like Core.
                    let _ = publisher.socket.send(message).await;
                }
            }
        }
    });
    Ok(())
}

/// The (topic, body) pairs Core would publish for one event, in Core's order.
fn messages(event: &ChainEvent) -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let per_tx = |out: &mut Vec<(&'static str, Vec<u8>)>, tx: &Transaction| {
        out.push(("hashtx", display_order(tx.compute_txid().to_byte_array())));
        out.push(("rawtx", serialize(tx)));
    };
    match event {
        ChainEvent::BlockConnected { block, .. } => {
            let hash = block.block_hash();
            for tx in &block.txdata {
                per_tx(&mut out, tx);
            }
            out.push(("sequence", sequence_body(hash.to_byte_array(), b'C')));
            out.push(("hashblock", display_order(hash.to_byte_array())));
            out.push(("rawblock", serialize(block.as_ref())));
        }
        ChainEvent::BlockDisconnected { block, .. } => {
            for tx in &block.txdata {
                per_tx(&mut out, tx);
            }
            out.push(("sequence", sequence_body(block.block_hash().to_byte_array(), b'D')));
        }
        ChainEvent::TransactionAccepted { tx, sequence } => {
            per_tx(&mut out, tx);
            let mut body = sequence_body(tx.compute_txid().to_byte_array(), b'A');
            body.extend_from_slice(&sequence.to_le_bytes());
            out.push(("sequence", body));
        }
    }
    out
}

fn sequence_body(hash: [u8; 32], label: u8) -> Vec<u8> {
    let mut body = display_order(hash);
    body.push(label);
    body
}

/// Core publishes hashes reversed from their internal order, as the RPC shows them.
fn display_order(mut hash: [u8; 32]) -> Vec<u8> {
    hash.reverse();
    hash.to_vec()
}

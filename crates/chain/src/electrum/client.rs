//! An Electrum-protocol client.
//!
//! Electrum serves no blocks, so watching works by script: subscribe to the scripthash of
//! every watched output (V's and U's), and fetch the history when its status changes. Newline-
//! delimited JSON-RPC over TCP; responses are matched by id, and notifications that arrive in
//! between are queued for [`ElectrumClient::notifications`].

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
use bitcoin::hashes::{sha256, Hash};
use bitcoin::hex::DisplayHex;
use bitcoin::{Script, Transaction, Txid};
use serde_json::{json, Value};

use crate::BackendError;

/// A notification pushed by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// A new tip: `blockchain.headers.subscribe`.
    Header {
        /// Its height.
        height: u32,
    },
    /// A subscribed script's history changed: `blockchain.scripthash.subscribe`.
    Scripthash {
        /// The scripthash.
        scripthash: String,
        /// Its new status (None when the history is empty).
        status: Option<String>,
    },
}

/// One entry of a script's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryItem {
    /// The transaction.
    pub txid: Txid,
    /// Its height; 0 or negative while in the mempool.
    pub height: i64,
}

/// The Electrum scripthash of an output script: sha256, byte-reversed, hex.
pub fn scripthash(script: &Script) -> String {
    let mut h = sha256::Hash::hash(script.as_bytes()).to_byte_array();
    h.reverse();
    h.to_lower_hex_string()
}

/// A connection to an Electrum server.
pub struct ElectrumClient<S: BufRead + Write> {
    stream: S,
    next_id: u64,
    pending: VecDeque<Notification>,
}

/// A TCP stream read by lines and written whole.
pub struct LineStream {
    reader: BufReader<TcpStream>,
}

impl BufRead for LineStream {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.reader.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        self.reader.consume(amt)
    }
}

impl std::io::Read for LineStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reader.read(buf)
    }
}

impl Write for LineStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.reader.get_mut().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.reader.get_mut().flush()
    }
}

impl ElectrumClient<LineStream> {
    /// Connects to `host:port` (plain TCP; put TLS in front with a local proxy if needed).
    pub fn connect(address: &str) -> Result<Self, BackendError> {
        let stream =
            TcpStream::connect(address).map_err(|e| BackendError::Unreachable(format!("{address}: {e}")))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| BackendError::Unreachable(e.to_string()))?;
        let mut client = ElectrumClient::new(LineStream { reader: BufReader::new(stream) });
        client.call("server.version", json!(["vigil", "1.4"]))?;
        Ok(client)
    }
}

impl<S: BufRead + Write> ElectrumClient<S> {
    /// A client over any line stream (tests use an in-memory one).
    pub fn new(stream: S) -> Self {
        ElectrumClient { stream, next_id: 0, pending: VecDeque::new() }
    }

    /// Calls `method`; notifications read while waiting are queued.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, BackendError> {
        self.call_many(&[(method, params)])?.pop().expect("one answer per call")
    }

    /// Sends every call at once, then reads the answers (pipelined: one round trip, not one
    /// per call). Answers come back in call order; notifications read meanwhile are queued.
    pub fn call_many(
        &mut self,
        calls: &[(&str, Value)],
    ) -> Result<Vec<Result<Value, BackendError>>, BackendError> {
        let first = self.next_id + 1;
        let mut lines = Vec::new();
        for (method, params) in calls {
            self.next_id += 1;
            let request = json!({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params});
            serde_json::to_writer(&mut lines, &request).map_err(|e| BackendError::Decode(e.to_string()))?;
            lines.push(b'\n');
        }
        self.stream.write_all(&lines).map_err(|e| BackendError::Unreachable(e.to_string()))?;
        self.stream.flush().map_err(|e| BackendError::Unreachable(e.to_string()))?;
        let mut answers: Vec<Option<Result<Value, BackendError>>> = vec![None; calls.len()];
        let mut missing = calls.len();
        while missing > 0 {
            let message = self.read_message()?;
            let slot = message
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|id| id.checked_sub(first))
                .and_then(|i| answers.get_mut(i as usize));
            match slot {
                Some(slot @ None) => {
                    *slot = Some(match message.get("error").filter(|e| !e.is_null()) {
                        Some(error) => Err(BackendError::Rpc {
                            code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
                            message: error
                                .get("message")
                                .and_then(Value::as_str)
                                .map(str::to_owned)
                                .unwrap_or_else(|| error.to_string()),
                        }),
                        None => Ok(message.get("result").cloned().unwrap_or(Value::Null)),
                    });
                    missing -= 1;
                }
                _ => {
                    if let Some(n) = parse_notification(&message) {
                        self.pending.push_back(n);
                    }
                }
            }
        }
        Ok(answers.into_iter().map(|a| a.expect("every answer arrived")).collect())
    }

    fn read_message(&mut self) -> Result<Value, BackendError> {
        let mut line = String::new();
        let n = self.stream.read_line(&mut line).map_err(|e| BackendError::Unreachable(e.to_string()))?;
        if n == 0 {
            return Err(BackendError::Unreachable("the Electrum server closed the connection".into()));
        }
        serde_json::from_str(&line).map_err(|e| BackendError::Decode(format!("{e}: {}", line.trim())))
    }

    /// Notifications received so far.
    pub fn notifications(&mut self) -> Vec<Notification> {
        self.pending.drain(..).collect()
    }

    /// Subscribes to new tips; returns the current height.
    pub fn subscribe_headers(&mut self) -> Result<u32, BackendError> {
        let v = self.call("blockchain.headers.subscribe", json!([]))?;
        v.get("height")
            .and_then(Value::as_u64)
            .map(|h| h as u32)
            .ok_or_else(|| BackendError::Decode(format!("no height in {v}")))
    }

    /// Subscribes to a script; returns its current status.
    pub fn subscribe_script(&mut self, script: &Script) -> Result<Option<String>, BackendError> {
        let v = self.call("blockchain.scripthash.subscribe", json!([scripthash(script)]))?;
        Ok(v.as_str().map(str::to_owned))
    }

    /// A script's history (confirmed and mempool).
    pub fn history(&mut self, script: &Script) -> Result<Vec<HistoryItem>, BackendError> {
        parse_history(&self.call("blockchain.scripthash.get_history", json!([scripthash(script)]))?)
    }

    /// A transaction by txid.
    pub fn transaction(&mut self, txid: &Txid) -> Result<Transaction, BackendError> {
        let v = self.call("blockchain.transaction.get", json!([txid.to_string()]))?;
        let hex = v.as_str().ok_or_else(|| BackendError::Decode("expected hex".into()))?;
        deserialize_hex(hex).map_err(|e| BackendError::Decode(e.to_string()))
    }

    /// Broadcasts a transaction.
    pub fn broadcast(&mut self, tx: &Transaction) -> Result<Txid, BackendError> {
        let v = self.call("blockchain.transaction.broadcast", json!([serialize_hex(tx)]))?;
        v.as_str()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| BackendError::Decode(format!("not a txid: {v}")))
    }
}

/// A `blockchain.scripthash.get_history` answer.
pub fn parse_history(v: &Value) -> Result<Vec<HistoryItem>, BackendError> {
    v.as_array()
        .ok_or_else(|| BackendError::Decode(format!("history is not a list: {v}")))?
        .iter()
        .map(|item| {
            let txid = item.get("tx_hash").and_then(Value::as_str).and_then(|t| t.parse().ok());
            let height = item.get("height").and_then(Value::as_i64);
            match (txid, height) {
                (Some(txid), Some(height)) => Ok(HistoryItem { txid, height }),
                _ => Err(BackendError::Decode(format!("bad history item {item}"))),
            }
        })
        .collect()
}

/// A notification the server pushed, if `message` is one this client understands.
pub fn parse_notification(message: &Value) -> Option<Notification> {
    let params = message.get("params")?.as_array()?;
    match message.get("method")?.as_str()? {
        "blockchain.headers.subscribe" => {
            let height = params.first()?.get("height")?.as_u64()? as u32;
            Some(Notification::Header { height })
        }
        "blockchain.scripthash.subscribe" => Some(Notification::Scripthash {
            scripthash: params.first()?.as_str()?.to_owned(),
            status: params.get(1).and_then(Value::as_str).map(str::to_owned),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A scripted server: the client's writes are recorded, its reads come from `replies`.
    struct Scripted {
        replies: Cursor<Vec<u8>>,
        written: Vec<u8>,
    }

    impl std::io::Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.replies.read(buf)
        }
    }
    impl BufRead for Scripted {
        fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
            self.replies.fill_buf()
        }
        fn consume(&mut self, amt: usize) {
            self.replies.consume(amt)
        }
    }
    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn client(replies: &[&str]) -> ElectrumClient<Scripted> {
        let text = replies.iter().map(|r| format!("{r}\n")).collect::<String>();
        ElectrumClient::new(Scripted { replies: Cursor::new(text.into_bytes()), written: Vec::new() })
    }

    #[test]
    fn scripthash_is_reversed_sha256() {
        // The example from the Electrum protocol documentation (P2PKH of 1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa).
        let hash160 = "62e907b15cbf27d5425399ebf6f0fb50ebb88f18";
        let script = bitcoin::ScriptBuf::from_hex(&format!("76a914{hash160}88ac")).unwrap();
        assert_eq!(scripthash(&script), "8b01df4e368ea28f8dc0423bcf7a4923e3a12d307c875e47a0cfbf90b5c39161");
    }

    #[test]
    fn requests_are_newline_json_and_answers_match_by_id_with_notifications_queued() {
        let mut c = client(&[
            r#"{"jsonrpc":"2.0","method":"blockchain.headers.subscribe","params":[{"height":101,"hex":"00"}]}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"height":100,"hex":"00"}}"#,
            r#"{"jsonrpc":"2.0","method":"blockchain.scripthash.subscribe","params":["ab","cd"]}"#,
            r#"{"jsonrpc":"2.0","id":2,"result":[{"tx_hash":"1111111111111111111111111111111111111111111111111111111111111111","height":5},{"tx_hash":"2222222222222222222222222222222222222222222222222222222222222222","height":0}]}"#,
            r#"{"jsonrpc":"2.0","id":3,"error":{"code":1,"message":"missing-inputs"}}"#,
        ]);
        assert_eq!(c.subscribe_headers().unwrap(), 100);
        let h = c.history(bitcoin::Script::new()).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!((h[0].height, h[1].height), (5, 0));
        let tx = Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: vec![],
            output: vec![],
        };
        assert_eq!(c.broadcast(&tx), Err(BackendError::Rpc { code: 1, message: "missing-inputs".into() }));
        assert_eq!(
            c.notifications(),
            vec![
                Notification::Header { height: 101 },
                Notification::Scripthash { scripthash: "ab".into(), status: Some("cd".into()) }
            ]
        );
        let written = String::from_utf8(c.stream.written.clone()).unwrap();
        let lines: Vec<Value> = written.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["method"], "blockchain.headers.subscribe");
        assert_eq!(lines[1]["method"], "blockchain.scripthash.get_history");
        assert_eq!(lines[2]["method"], "blockchain.transaction.broadcast");
        assert_eq!(lines.iter().map(|l| l["id"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn garbage_and_a_closed_connection_are_errors_not_panics() {
        let mut c = client(&["this is not json"]);
        assert!(matches!(c.subscribe_headers(), Err(BackendError::Decode(_))));
        let mut c = client(&[]);
        assert!(matches!(c.subscribe_headers(), Err(BackendError::Unreachable(_))));
        let mut c = client(&[r#"{"jsonrpc":"2.0","id":1,"result":[{"tx_hash":"zz","height":1}]}"#]);
        assert!(matches!(c.history(bitcoin::Script::new()), Err(BackendError::Decode(_))));
    }
}
